//! The PROXY protocol parser on arbitrary bytes: it must not panic, never
//! claim bytes past the header, agree with itself as bytes arrive, and
//! read back exactly what the encoder writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use weir_wire::proxy_protocol::{encode, parse, Header, Parsed, Version};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parsed::Complete(header, len) => {
            assert!(len <= data.len());
            // The client's bytes after the header change nothing.
            let mut longer = data[..len].to_vec();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(parse(&longer), Parsed::Complete(header, len));
            // Every shorter prefix of a header is incomplete.
            if len > 0 {
                assert_eq!(parse(&data[..len - 1]), Parsed::Incomplete);
            }
        }
        Parsed::Incomplete => {
            if !data.is_empty() {
                assert_eq!(parse(&data[..data.len() - 1]), Parsed::Incomplete);
            }
        }
        Parsed::Invalid(_) => {}
    }
    // Round trip: addresses and ports taken from the input.
    if data.len() >= 36 {
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        a.copy_from_slice(&data[..16]);
        b.copy_from_slice(&data[16..32]);
        let source = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), u16::from_be_bytes([data[32], data[33]]));
        let destination = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), u16::from_be_bytes([data[34], data[35]]));
        let canonical = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
        for version in [Version::V1, Version::V2] {
            let bytes = encode(version, source, destination);
            let Parsed::Complete(Header::Proxy { source: s, destination: d }, n) = parse(&bytes) else {
                panic!("{version:?}: {bytes:?} does not parse back");
            };
            assert_eq!(n, bytes.len());
            // Both IPv4-mapped: written (and read) as IPv4.
            let same = |x: SocketAddr, y: SocketAddr| canonical(x) == canonical(y);
            assert!(same(s, source) && same(d, destination), "{version:?}: {s} {d} from {source} {destination}");
        }
    }
});
