//! The ClientHello parser on arbitrary bytes: it must not panic, and its
//! answers must agree with each other as bytes arrive one read at a time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::client_hello::{parse, Parsed, MAX_HELLO};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    match &whole {
        // More bytes can only complete or refute what is incomplete, so
        // every shorter prefix was incomplete too.
        Parsed::Incomplete => {
            assert!(data.len() < MAX_HELLO);
            if !data.is_empty() {
                assert_eq!(parse(&data[..data.len() - 1]), Parsed::Incomplete);
            }
        }
        // A whole ClientHello stays the same whatever follows it.
        Parsed::Hello(hello) => {
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"trailing application data");
            assert_eq!(parse(&longer), whole);
            if let Some(sni) = &hello.sni {
                assert!(!sni.is_empty() && sni.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()));
            }
        }
        Parsed::Invalid(_) => {}
    }
});
