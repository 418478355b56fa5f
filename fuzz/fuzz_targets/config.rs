//! The config loader on arbitrary text: `weir check`, `weir run`, a
//! reload and `POST /reload` all hand it a file an operator wrote, or a
//! body anyone holding the admin token sent. It must answer an error that
//! names a line, never panic nor overflow the stack, and a text it accepts
//! must parse the same again from its own `GET /config` redaction's input.
//! The loader and the two modules it reads types from are included by path,
//! so the target builds without wasmtime or the bundled plugins.
#![no_main]

#[path = "../../host/src/config/mod.rs"]
#[allow(dead_code, unused_imports)]
mod config;

#[path = "../../host/src/access_log.rs"]
#[allow(dead_code)]
mod access_log;

#[path = "../../host/src/proxy_protocol.rs"]
#[allow(dead_code, unused_imports)]
mod proxy_protocol;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let source = || config::Source { origin: "fuzz.toml".into(), text: text.into() };
    match config::Loaded::parse(source()) {
        Ok(_) => {
            // What loads once loads again the same way.
            assert!(config::Loaded::parse(source()).is_ok());
        }
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with("fuzz.toml:"), "an error names where: {e}");
        }
    }
    let _ = config::redacted(text);
});
