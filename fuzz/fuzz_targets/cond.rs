//! The `cond` router's expression parser (a plugin's config, written by
//! an operator but parsed inside weir) on arbitrary text: it must not
//! panic, nor overflow the stack on deep nesting, and what it accepts
//! evaluates without panicking. The parser is plain std Rust; it is
//! included by path so that the target needs no Wasm SDK.
#![no_main]

#[path = "../../plugins/cond/src/expr.rs"]
#[allow(dead_code)]
mod expr;

use expr::{parse, Facts};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

struct Request;

impl Facts for Request {
    fn host(&self) -> Option<String> {
        Some("a.example.com".into())
    }
    fn path(&self) -> String {
        "/api/v1/x".into()
    }
    fn method(&self) -> String {
        "GET".into()
    }
    fn header(&self, name: &str) -> Option<String> {
        (name == "x-user").then(|| "alice".into())
    }
    fn cookie(&self, name: &str) -> Option<String> {
        (name == "group").then(|| "beta".into())
    }
    fn query(&self, name: &str) -> Option<String> {
        (name == "v").then(|| "2".into())
    }
    fn client_ip(&self) -> IpAddr {
        IpAddr::from([10, 1, 2, 3])
    }
    fn sni(&self) -> Option<String> {
        None
    }
    fn client_identity(&self) -> Option<String> {
        None
    }
    fn alpn(&self) -> Vec<String> {
        vec!["h2".into()]
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cond) = parse(text) {
        cond.eval(&Request);
    }
});
