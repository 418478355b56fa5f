//! Bundled health checker `check-probe`: send bytes to the backend over TCP,
//! TLS or UDP and match the reply against a substring or a regex
//! (gobetween's `probe`).
//!
//! ```toml
//! [plugins.redis-up]
//! source = "builtin:check-probe"
//! config = { protocol = "tcp", send = "PING\r\n", expect = "+PONG" }
//! ```

use regex::bytes::Regex;
use serde::Deserialize;
use std::time::Duration;
use weir_sdk::health::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "tcp")]
    protocol: String,
    #[serde(default)]
    send: Option<String>,
    #[serde(default)]
    send_hex: Option<String>,
    #[serde(default)]
    expect: Option<String>,
    #[serde(default)]
    expect_regex: Option<String>,
    #[serde(default = "read_max")]
    read_max: u32,
    /// TLS: the name sent as SNI and checked (default: the backend's host).
    #[serde(default)]
    server_name: Option<String>,
    /// TLS: check the certificate against the Mozilla roots.
    #[serde(default = "yes")]
    verify: bool,
    #[serde(default)]
    timeout_ms: u32,
}

fn tcp() -> String {
    "tcp".into()
}

fn yes() -> bool {
    true
}

fn read_max() -> u32 {
    4096
}

/// Transport of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Connect, send, read up to `read_max` bytes.
    Tcp,
    /// One datagram out, the first datagram back.
    Udp,
    /// As TCP, after a TLS handshake.
    Tls,
}

/// What the reply must hold.
#[derive(Debug)]
pub enum Expect {
    /// Anything (even nothing, over TCP) will do.
    Anything,
    /// These bytes somewhere in the reply.
    Contains(Vec<u8>),
    /// A match of this regex somewhere in the reply.
    Regex(Regex),
}

/// A validated probe.
#[derive(Debug)]
pub struct Probe {
    /// Transport.
    pub protocol: Protocol,
    /// Bytes sent.
    pub send: Vec<u8>,
    /// What the reply must hold.
    pub expect: Expect,
    /// Bytes read back at most (TCP; UDP replies are matched in full up to this).
    pub read_max: u32,
    /// Timeout of the whole probe.
    pub timeout: Duration,
    /// TLS: SNI and verification.
    pub tls: io::TlsOptions,
}

/// Decode `\n`, `\r`, `\t`, `\0`, `\\`, `\"` and `\xHH` escapes.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('"') => out.push(b'"'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let byte = (hex.len() == 2)
                    .then(|| u8::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| format!("`\\x{hex}` is not `\\x` and two hex digits"))?;
                out.push(byte);
            }
            Some(other) => return Err(format!("unknown escape `\\{other}` (use \\n \\r \\t \\0 \\\\ \\\" or \\xHH)")),
            None => return Err("a lone `\\` at the end".into()),
        }
    }
    Ok(out)
}

/// Decode hex digits; whitespace between bytes is allowed (`"de ad be ef"`).
pub fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).unwrap_or("?");
            u8::from_str_radix(text, 16).map_err(|_| format!("`{text}` is not a hex byte"))
        })
        .collect()
}

impl Probe {
    /// Validate the JSON config.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let invalid = |m: String| Error::InvalidConfig(m);
        let protocol = match s.protocol.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "tls" => Protocol::Tls,
            _ => return Err(invalid(format!("protocol: expected `tcp`, `tls` or `udp`, found `{}`", s.protocol))),
        };
        let send = match (s.send, s.send_hex) {
            (Some(_), Some(_)) => return Err(invalid("send, send_hex: give one or the other, not both".into())),
            (Some(text), None) => unescape(&text).map_err(|e| invalid(format!("send: {e}")))?,
            (None, Some(hex)) => decode_hex(&hex).map_err(|e| invalid(format!("send_hex: {e}")))?,
            (None, None) => Vec::new(),
        };
        if protocol == Protocol::Udp && send.is_empty() {
            return Err(invalid("send: a UDP probe needs something to send (`send` or `send_hex`)".into()));
        }
        let expect = match (s.expect, s.expect_regex) {
            (Some(_), Some(_)) => return Err(invalid("expect, expect_regex: give one or the other, not both".into())),
            (Some(text), None) => {
                let bytes = unescape(&text).map_err(|e| invalid(format!("expect: {e}")))?;
                if bytes.is_empty() {
                    return Err(invalid("expect: must not be empty (leave it out to accept any reply)".into()));
                }
                Expect::Contains(bytes)
            }
            (None, Some(re)) => Expect::Regex(Regex::new(&re).map_err(|e| invalid(format!("expect_regex: {e}")))?),
            (None, None) => Expect::Anything,
        };
        if !matches!(expect, Expect::Anything) && s.read_max == 0 {
            return Err(invalid("read_max: must be above 0 when a reply is expected".into()));
        }
        Ok(Self {
            protocol,
            send,
            expect,
            read_max: s.read_max,
            timeout: Duration::from_millis(s.timeout_ms as u64),
            tls: io::TlsOptions { server_name: s.server_name, verify: s.verify },
        })
    }

    /// How many bytes a TCP probe reads back: none when nothing is expected.
    pub fn tcp_read_max(&self) -> u32 {
        match self.expect {
            Expect::Anything => 0,
            _ => self.read_max,
        }
    }

    /// Judge a reply.
    pub fn judge(&self, reply: &[u8]) -> Health {
        let reply = &reply[..reply.len().min(self.read_max as usize)];
        let ok = match &self.expect {
            Expect::Anything => true,
            Expect::Contains(needle) => reply.windows(needle.len()).any(|w| w == needle.as_slice()),
            Expect::Regex(re) => re.is_match(reply),
        };
        if ok {
            Health::Healthy
        } else {
            let shown: String = String::from_utf8_lossy(&reply[..reply.len().min(64)]).escape_debug().collect();
            let what = match &self.expect {
                Expect::Contains(n) => format!("does not contain `{}`", String::from_utf8_lossy(n).escape_debug()),
                Expect::Regex(re) => format!("does not match `{}`", re.as_str()),
                Expect::Anything => unreachable!(),
            };
            unhealthy(format!("reply `{shown}` ({} bytes) {what}", reply.len()))
        }
    }
}

struct CheckProbe(Probe);

impl HealthChecker for CheckProbe {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(Probe::from_config(&config)?))
    }

    fn check(&mut self, target: &Backend) -> Result<Health, Error> {
        let p = &self.0;
        let reply = match p.protocol {
            Protocol::Tcp => io::tcp_probe(&target.address, &p.send, p.tcp_read_max(), p.timeout),
            Protocol::Udp => io::udp_probe(&target.address, &p.send, p.timeout),
            Protocol::Tls => io::tls_probe(&target.address, &p.tls, &p.send, p.tcp_read_max(), p.timeout),
        };
        match reply {
            Ok(reply) => Ok(p.judge(&reply)),
            Err(e) => unhealthy_from(e),
        }
    }
}

weir_sdk::export_health_checker!(CheckProbe);

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(json: &str) -> Probe {
        Probe::from_config(&Config::from_json(json.into())).unwrap()
    }

    fn err(json: &str) -> String {
        match Probe::from_config(&Config::from_json(json.into())) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    fn healthy(h: Health) -> bool {
        matches!(h, Health::Healthy)
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape(r#"PING\r\n"#).unwrap(), b"PING\r\n");
        assert_eq!(unescape(r#"a\x00\xffé\\\"\t\0"#).unwrap(), b"a\x00\xff\xc3\xa9\\\"\t\0");
        assert!(unescape(r"\q").unwrap_err().contains("unknown escape `\\q`"));
        assert!(unescape(r"\x4").is_err());
        assert!(unescape(r"\xzz").is_err());
        assert!(unescape("end\\").is_err());
        assert_eq!(decode_hex("de ad BE ef").unwrap(), [0xde, 0xad, 0xbe, 0xef]);
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
    }

    #[test]
    fn connect_only_by_default() {
        let p = probe("{}");
        assert_eq!(p.protocol, Protocol::Tcp);
        assert!(p.send.is_empty());
        assert_eq!(p.tcp_read_max(), 0);
        assert!(healthy(p.judge(b"")));
    }

    #[test]
    fn redis_ping() {
        let p = probe(r#"{"send": "PING\\r\\n", "expect": "+PONG"}"#);
        assert_eq!(p.send, b"PING\r\n");
        assert_eq!(p.tcp_read_max(), 4096);
        assert!(healthy(p.judge(b"+PONG\r\n")));
        let Health::Unhealthy(r) = p.judge(b"-ERR auth\r\n") else { panic!() };
        assert_eq!(r, r"reply `-ERR auth\r\n` (11 bytes) does not contain `+PONG`");
    }

    #[test]
    fn udp_hex_and_regex() {
        let p = probe(
            r#"{"protocol": "UDP", "send_hex": "00 01", "expect_regex": "^\\x00\\x02(?-u:\\xff)?", "read_max": 2}"#,
        );
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.send, [0, 1]);
        assert!(healthy(p.judge(&[0, 2, 0xff])));
        assert!(!healthy(p.judge(&[0, 3])));
        // Only the first read_max bytes count.
        let p = probe(r#"{"send": "x", "expect": "ok", "read_max": 2}"#);
        assert!(!healthy(p.judge(b"--ok")));
    }

    #[test]
    fn bad_configs() {
        assert!(err(r#"{"protocol": "sctp"}"#).starts_with("protocol: "));
        assert!(err(r#"{"send": "a", "send_hex": "00"}"#).starts_with("send, send_hex: "));
        assert!(err(r#"{"send_hex": "0"}"#).starts_with("send_hex: "));
        assert!(err(r#"{"send": "\\q"}"#).starts_with("send: unknown escape"));
        assert!(err(r#"{"protocol": "udp"}"#).starts_with("send: a UDP probe"));
        assert!(err(r#"{"expect": "a", "expect_regex": "b"}"#).starts_with("expect, expect_regex: "));
        assert!(err(r#"{"expect": ""}"#).starts_with("expect: "));
        assert!(err(r#"{"expect_regex": "["}"#).starts_with("expect_regex: "));
        assert!(err(r#"{"expect": "x", "read_max": 0}"#).starts_with("read_max: "));
        assert!(err(r#"{"recv": "x"}"#).contains("unknown field `recv`"));
    }
}
