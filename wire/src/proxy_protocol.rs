//! The PROXY protocol codec (HAProxy's `proxy-protocol.txt`, v1 text and
//! v2 binary): parsing the header a trusted proxy sends before its
//! client's bytes, and writing one. Pure functions over bytes; the host
//! reads and writes sockets around them (`host/src/proxy_protocol.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature: the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The start of every v1 header.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 header, CRLF included.
pub const V1_MAX: usize = 107;
/// A header version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text header: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary header.
    V2,
}

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection from `source` to `destination`.
    Proxy {
        /// The client.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// No addresses (v2 `LOCAL`, v1 `UNKNOWN`, or a family without IP
    /// addresses): the connection's own endpoints stand.
    Local,
}

/// The result of parsing the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header, `usize` bytes long; any bytes after it are the client's.
    Complete(Header, usize),
    /// Every byte so far belongs to a header that is not complete yet.
    Incomplete,
    /// Not a valid header.
    Invalid(&'static str),
}

/// Parse the start of a connection as a v1 or v2 header. Never reads past
/// the header: `Complete`'s length is where the client's bytes begin.
pub fn parse(buf: &[u8]) -> Parsed {
    match buf.first() {
        None => Parsed::Incomplete,
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Parsed::Invalid("neither a v1 nor a v2 header"),
    }
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Parsed::Invalid("neither a v1 nor a v2 header");
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    // Only what a v1 line can hold, so garbage is refused at once rather
    // than after the timeout. The same rule holds for a whole line (an
    // UNKNOWN line's ignored rest included), so a header is accepted or
    // refused alike however its bytes are split across reads.
    let line_end = window.iter().position(|&b| b == b'\n');
    let line = &window[..line_end.unwrap_or(window.len())];
    if line.iter().any(|&b| !(b.is_ascii_alphanumeric() || b" .:\r".contains(&b))) {
        return Parsed::Invalid("v1: unexpected character");
    }
    if line.iter().position(|&b| b == b'\r').is_some_and(|cr| cr + 1 < line.len()) {
        return Parsed::Invalid("v1: CR not followed by LF");
    }
    let Some(end) = line_end else {
        return if buf.len() >= V1_MAX { Parsed::Invalid("v1: no CRLF within 107 bytes") } else { Parsed::Incomplete };
    };
    if end < V1_PREFIX.len() + 1 || window[end - 1] != b'\r' {
        return Parsed::Invalid("v1: LF without CR");
    }
    let Ok(line) = std::str::from_utf8(&window[V1_PREFIX.len()..end - 1]) else {
        return Parsed::Invalid("v1: not ASCII");
    };
    let mut words = line.split(' ');
    let header = match words.next() {
        // The rest of an UNKNOWN line is to be ignored.
        Some("UNKNOWN") => return Parsed::Complete(Header::Local, end + 1),
        Some("TCP4") => v1_addresses(words, |s| s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)),
        Some("TCP6") => v1_addresses(words, |s| s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)),
        _ => return Parsed::Invalid("v1: protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    match header {
        Some(h) => Parsed::Complete(h, end + 1),
        None => Parsed::Invalid("v1: bad addresses or ports"),
    }
}

fn v1_addresses<'a>(mut words: impl Iterator<Item = &'a str>, ip: impl Fn(&str) -> Option<IpAddr>) -> Option<Header> {
    let port = |s: &str| -> Option<u16> {
        // Decimal without sign or leading zeros, as the spec writes them.
        (s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))).then(|| s.parse().ok())?
    };
    let (src, dst) = (ip(words.next()?)?, ip(words.next()?)?);
    let (sport, dport) = (port(words.next()?)?, port(words.next()?)?);
    if words.next().is_some() {
        return None;
    }
    Some(Header::Proxy { source: SocketAddr::new(src, sport), destination: SocketAddr::new(dst, dport) })
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Parsed::Invalid("neither a v1 nor a v2 header");
    }
    if buf.len() < 16 {
        return Parsed::Incomplete;
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Parsed::Invalid("v2: unknown version");
    }
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let total = 16 + len;
    // Refuse what cannot be valid before waiting for the rest.
    let needed = match family {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Parsed::Invalid("v2: unknown address family"),
    };
    if transport > 2 {
        return Parsed::Invalid("v2: unknown transport");
    }
    match command {
        0 => {}
        1 if len < needed => return Parsed::Invalid("v2: address block too short for its family"),
        1 => {}
        _ => return Parsed::Invalid("v2: unknown command"),
    }
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    if command == 0 {
        // LOCAL: a health check or the proxy's own connection.
        return Parsed::Complete(Header::Local, total);
    }
    let a = &buf[16..total];
    let header = match (family, transport) {
        // A stream, or a transport the sender leaves unsaid.
        (1, 0 | 1) => {
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Header::Proxy { source: SocketAddr::new(ip(0), port(8)), destination: SocketAddr::new(ip(4), port(10)) }
        }
        (2, 0 | 1) => {
            let ip = |o: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Header::Proxy { source: SocketAddr::new(ip(0), port(32)), destination: SocketAddr::new(ip(16), port(34)) }
        }
        (_, 2) => return Parsed::Invalid("v2: datagram addresses on a stream connection"),
        // UNSPEC or UNIX: no IP address to use.
        _ => Header::Local,
    };
    Parsed::Complete(header, total)
}

/// The header saying `source` connected to `destination`. Addresses of
/// different families are both written as IPv6 (IPv4-mapped).
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (mut src, mut dst) = (source.ip().to_canonical(), destination.ip().to_canonical());
    if src.is_ipv4() != dst.is_ipv4() {
        let v6 = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        };
        (src, dst) = (v6(src), v6(dst));
    }
    let (sport, dport) = (source.port(), destination.port());
    match version {
        Version::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {family} {src} {dst} {sport} {dport}\r\n").into_bytes()
        }
        Version::V2 => {
            let mut out = Vec::with_capacity(52);
            out.extend_from_slice(V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[0x11, 0, 12]); // INET, STREAM; 12 bytes
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V6(v6) => v6.octets(),
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    };
                    out.extend_from_slice(&[0x21, 0, 36]); // INET6, STREAM; 36 bytes
                    out.extend_from_slice(&v6(s));
                    out.extend_from_slice(&v6(d));
                }
            }
            out.extend_from_slice(&sport.to_be_bytes());
            out.extend_from_slice(&dport.to_be_bytes());
            out
        }
    }
}

/// The header of a connection weir opens on its own behalf, not for a
/// client: a health check of a backend that expects PROXY (v1 `UNKNOWN`,
/// v2 `LOCAL`; the receiver keeps the connection's own endpoints), as
/// HAProxy's checks of a `send-proxy` server do.
pub fn encode_local(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.extend_from_slice(&[0x20, 0x00, 0, 0]); // version 2, LOCAL; UNSPEC; no address
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn local_headers_parse_as_local() {
        for v in [Version::V1, Version::V2] {
            let h = encode_local(v);
            assert!(matches!(parse(&h), Parsed::Complete(Header::Local, n) if n == h.len()), "{v:?}");
        }
    }

    fn proxy(source: &str, destination: &str) -> Header {
        Header::Proxy { source: addr(source), destination: addr(destination) }
    }

    fn v2_local() -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0, 0]);
        h
    }

    /// Every valid header, with what it says.
    fn valid() -> Vec<(Vec<u8>, Header)> {
        let mut v = vec![
            (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec(), proxy("192.0.2.1:56324", "198.51.100.2:443")),
            (b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n".to_vec(), proxy("[2001:db8::1]:1", "[::1]:65535")),
            (b"PROXY UNKNOWN\r\n".to_vec(), Header::Local),
            (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".to_vec(), Header::Local),
            (v2_local(), Header::Local),
        ];
        // The longest v1 headers: TCP6 with the longest addresses, and the
        // spec's worst case, UNKNOWN with them, exactly 107 bytes.
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6 = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        v.push((tcp6.into_bytes(), proxy(&format!("[{full}]:65535"), &format!("[{full}]:65535"))));
        let longest = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(longest.len(), V1_MAX);
        v.push((longest.into_bytes(), Header::Local));
        for (s, d) in [("10.1.2.3:4000", "10.9.8.7:80"), ("[2001:db8::7]:5", "[2001:db8::8]:6")] {
            let h = proxy(s, d);
            v.push((encode(Version::V1, addr(s), addr(d)), h));
            v.push((encode(Version::V2, addr(s), addr(d)), h));
        }
        // v2 with TLVs after the addresses (they are skipped).
        let mut tlv = encode(Version::V2, addr("10.0.0.1:1"), addr("10.0.0.2:2"));
        tlv[15] += 9;
        tlv.extend_from_slice(&[0x01, 0, 2, b'h', b'2', 0x04, 0, 1, 0]);
        v.push((tlv, proxy("10.0.0.1:1", "10.0.0.2:2")));
        v
    }

    #[test]
    fn valid_headers_parse_to_their_exact_length() {
        for (bytes, header) in valid() {
            let shown = String::from_utf8_lossy(&bytes).into_owned();
            assert_eq!(parse(&bytes), Parsed::Complete(header, bytes.len()), "{shown:?}");
            // The client's bytes after the header are never taken.
            let mut more = bytes.clone();
            more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(parse(&more), Parsed::Complete(header, bytes.len()), "{shown:?}");
            // Every cut-short prefix waits for more.
            for k in 0..bytes.len() {
                assert_eq!(parse(&bytes[..k]), Parsed::Incomplete, "{shown:?} cut at {k}");
            }
        }
    }

    #[test]
    fn invalid_headers_are_refused_without_waiting() {
        let too_long = format!("PROXY TCP4 {}\r\n", "1".repeat(100));
        let cases: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\n".to_vec(),
            b"SSH-2.0-OpenSSH\r\n".to_vec(),
            b"PROXY TCP5 1.2.3.4 1.2.3.5 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 3\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4  1.2.3.5 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 65536\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 1.2.3.5 01 2\r\n".to_vec(),
            b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(),
            b"PROXY TCP6 1.2.3.4 1.2.3.5 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n".to_vec(),
            b"PROXY TCP4 1.2.3.4\r1.2.3.5 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 1.2.3.5 +1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 \xff".to_vec(),
            b"PROXY\r\n".to_vec(),
            // Found by fuzzing: refused whole, as its first 19 bytes are.
            b"PROXY UNKNOWN \r\r\x08\x0e\r\n\n\0\r\n".to_vec(),
            b"PROXYTCP4".to_vec(),
            too_long.into_bytes(),
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\0\x0c".to_vec(),
        ];
        for bytes in &cases {
            assert!(
                matches!(parse(bytes), Parsed::Invalid(_)),
                "{:?}: {:?}",
                String::from_utf8_lossy(bytes),
                parse(bytes)
            );
        }
        let v2 = |ver_cmd: u8, fam: u8, len: u16| {
            let mut h = V2_SIGNATURE.to_vec();
            h.push(ver_cmd);
            h.push(fam);
            h.extend_from_slice(&len.to_be_bytes());
            h
        };
        // Refused from the 16 fixed bytes alone.
        for h in [
            v2(0x11, 0x11, 12),
            v2(0x22, 0x11, 12),
            v2(0x21, 0x41, 12),
            v2(0x21, 0x13, 12),
            v2(0x21, 0x11, 11),
            v2(0x21, 0x21, 12),
        ] {
            assert!(matches!(parse(&h), Parsed::Invalid(_)), "{h:?}");
        }
        let mut dgram = v2(0x21, 0x12, 12);
        dgram.extend_from_slice(&[0; 12]);
        assert!(matches!(parse(&dgram), Parsed::Invalid(_)));
    }

    #[test]
    fn v2_without_ip_addresses_keeps_the_peer() {
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0, 3, 1, 2, 3]);
        assert_eq!(parse(&unspec), Parsed::Complete(Header::Local, 19));
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[b'/'; 216]);
        assert_eq!(parse(&unix), Parsed::Complete(Header::Local, 232));
    }

    #[test]
    fn garbage_never_panics() {
        // A fixed-seed xorshift: the same bytes every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds: Vec<Vec<u8>> = valid().into_iter().map(|(b, _)| b).collect();
        for i in 0..20_000 {
            let mut bytes = seeds[i % seeds.len()].clone();
            // Flip a few bytes, then cut somewhere.
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            bytes.truncate((next() as usize) % (bytes.len() + 1));
            if let Parsed::Complete(_, len) = parse(&bytes) {
                assert!(len <= bytes.len());
            }
        }
    }

    #[test]
    fn mixed_families_are_written_as_ipv6() {
        let h = encode(Version::V1, addr("10.0.0.1:5"), addr("[2001:db8::1]:80"));
        assert_eq!(h, b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::1 5 80\r\n");
        let h = encode(Version::V2, addr("10.0.0.1:5"), addr("[2001:db8::1]:80"));
        assert_eq!(parse(&h), Parsed::Complete(proxy("[::ffff:10.0.0.1]:5", "[2001:db8::1]:80"), 52));
        // IPv4-mapped on both sides (a dual-stack listener) is written as IPv4.
        let h = encode(Version::V1, addr("[::ffff:10.0.0.1]:5"), addr("[::ffff:10.0.0.2]:80"));
        assert_eq!(h, b"PROXY TCP4 10.0.0.1 10.0.0.2 5 80\r\n");
    }
}
