//! I/O for the background phases (health checks and discovery): HTTP, TCP
//! and UDP probes, DNS, files and programs, through the host.
//!
//! Every call is checked by the host against what the plugin instance's
//! config grants (`grants` in `[plugins.NAME]`); a health checker may always
//! reach the backend it is checking. A call outside the grant fails with
//! `Error::Other("denied: ...")` and does nothing.
//!
//! Timeouts: the host clamps every timeout to the time left in the current
//! call, and [`UNTIL_CALL_LIMIT`] (zero) means "as long as the call may run".
//! Non-zero durations are rounded up to whole milliseconds.
//!
//! Only available in the `health-checker` and `discovery-adapter` worlds.
//! Natively (unit tests) there is no host: these functions panic, so keep
//! the logic worth testing in plain functions.

#[doc(hidden)]
pub mod bindings {
    // `wit/` has no import-only world for `io`, so the SDK declares one of its
    // own (in a package of its own) over the same interface; the health and
    // discovery worlds map their `io` import onto these bindings.
    wit_bindgen::generate!({
        path: "../wit",
        inline: "package weir:sdk;\nworld io-imports {\n  import weir:plugin/io@0.2.0;\n}\n",
        world: "io-imports",
        with: {
            "weir:plugin/types@0.2.0": crate::imports::weir::plugin::types,
            "weir:plugin/io@0.2.0": generate,
        },
    });
}

use crate::Error;
use bindings::weir::plugin::io;
use std::net::IpAddr;
use std::time::Duration;

pub use io::{ExecOutput, HttpResponse, SrvRecord, TlsOptions};

/// A timeout of zero: as long as the host lets the current call run.
pub const UNTIL_CALL_LIMIT: Duration = Duration::ZERO;

/// Milliseconds for the host: zero stays zero ("until the call limit"),
/// anything else rounds up so a short timeout never turns into "no timeout".
pub fn timeout_ms(timeout: Duration) -> u32 {
    if timeout.is_zero() {
        0
    } else {
        let ms = timeout.as_nanos().div_ceil(1_000_000);
        ms.clamp(1, u32::MAX as u128) as u32
    }
}

/// An HTTP request to a URL under a granted prefix. The whole response body
/// is read. Non-2xx statuses are responses, not errors.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, Error> {
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    io::http_request(method, url, &headers, body, timeout_ms(timeout))
}

/// `GET url` with no extra headers.
pub fn http_get(url: &str, timeout: Duration) -> Result<HttpResponse, Error> {
    http_request("GET", url, &[], &[], timeout)
}

impl HttpResponse {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as UTF-8 text, or an error naming the problem.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body).map_err(|e| Error::Other(format!("response body is not UTF-8: {e}")))
    }

    /// `Ok(self)` for a 2xx status, else an error naming the status and `url`.
    pub fn success_or_err(self, url: &str) -> Result<Self, Error> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(Error::Other(format!("{url} answered HTTP {}", self.status)))
        }
    }
}

/// Connect to `address` (`host:port`), send `send` (may be empty) and read up
/// to `read_max` bytes back (0: read nothing, just connect). Returns what was read.
pub fn tcp_probe(address: &str, send: &[u8], read_max: u32, timeout: Duration) -> Result<Vec<u8>, Error> {
    io::tcp_probe(address, send, read_max, timeout_ms(timeout))
}

/// [`tcp_probe`] over TLS: connect, handshake (SNI and certificate check as
/// `tls` says), send `send`, and return the first bytes that come back.
pub fn tls_probe(
    address: &str,
    tls: &TlsOptions,
    send: &[u8],
    read_max: u32,
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    io::tls_probe(address, tls, send, read_max, timeout_ms(timeout))
}

/// Send one datagram to `address` (`host:port`) and return the first reply.
pub fn udp_probe(address: &str, send: &[u8], timeout: Duration) -> Result<Vec<u8>, Error> {
    io::udp_probe(address, send, timeout_ms(timeout))
}

/// A and AAAA records of `name`, through the granted DNS server.
pub fn dns_lookup_ip(name: &str, timeout: Duration) -> Result<Vec<IpAddr>, Error> {
    io::dns_lookup_ip(name, timeout_ms(timeout))?
        .iter()
        .map(|a| a.parse().map_err(|_| Error::Other(format!("host answered `{a}` for {name}, not an IP address"))))
        .collect()
}

/// SRV records of `name`, through the granted DNS server.
pub fn dns_lookup_srv(name: &str, timeout: Duration) -> Result<Vec<SrvRecord>, Error> {
    io::dns_lookup_srv(name, timeout_ms(timeout))
}

/// The contents of a granted file.
pub fn read_file(path: &str) -> Result<Vec<u8>, Error> {
    io::read_file(path)
}

/// Run a granted program with arguments (no shell) and collect its exit
/// status and output.
pub fn exec(program: &str, args: &[String], timeout: Duration) -> Result<ExecOutput, Error> {
    io::exec(program, args, timeout_ms(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_and_zero_stays_unlimited() {
        assert_eq!(timeout_ms(UNTIL_CALL_LIMIT), 0);
        assert_eq!(timeout_ms(Duration::from_nanos(1)), 1);
        assert_eq!(timeout_ms(Duration::from_micros(1500)), 2);
        assert_eq!(timeout_ms(Duration::from_secs(2)), 2000);
        assert_eq!(timeout_ms(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn response_helpers() {
        let r = HttpResponse {
            status: 204,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: b"ok".to_vec(),
        };
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("x"), None);
        assert_eq!(r.text().unwrap(), "ok");
        assert!(r.is_success());
        let bad = HttpResponse { status: 500, headers: vec![], body: vec![0xff] };
        assert!(bad.text().is_err());
        assert!(matches!(bad.success_or_err("http://x/"), Err(Error::Other(m)) if m.contains("HTTP 500")));
    }
}
