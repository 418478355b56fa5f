//! Parsers for what weir reads off the wire before it proxies: the TLS
//! ClientHello of a passthrough connection, the PROXY protocol header of a
//! trusted proxy, and the `Cookie` request header.
//! They take untrusted bytes, never panic, and have no dependencies, so
//! `fuzz/` can fuzz them alone.

#![deny(missing_docs)]

pub mod client_hello;
pub mod cookie;
pub mod proxy_protocol;
