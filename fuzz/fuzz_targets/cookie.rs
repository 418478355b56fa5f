//! The `Cookie` header parser on arbitrary fields: it must not panic, and
//! a value it finds is bytes of one of the fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::cookie::value;

fuzz_target!(|data: &[u8]| {
    // The first byte says how long the cookie name is; the rest are header
    // fields, one per line.
    let Some((&n, rest)) = data.split_first() else { return };
    let n = (n as usize).min(rest.len());
    let Ok(name) = std::str::from_utf8(&rest[..n]) else { return };
    let fields: Vec<&[u8]> = rest[n..].split(|&b| b == b'\n').collect();
    if let Some(v) = value(fields.iter().copied(), name) {
        let inside = |f: &&[u8]| f.windows(v.len().max(1)).any(|w| w == v.as_bytes());
        assert!(v.is_empty() || fields.iter().any(inside), "{v:?} is in no field");
    }
});
