//! Example user access filter `key-access`: refuse listed client addresses
//! and requests without a known API key. It is the Rust twin of
//! `examples/plugins/js/key-access`: the two take the same config and give
//! the same verdicts.
//!
//! ```toml
//! config = { deny_clients = ["192.0.2.7", "2001:db8::1"], key_header = "x-api-key", keys = ["k1", "k2"] }
//! ```
//!
//! A connection from a `deny_clients` address is refused when it is
//! accepted (L4), and each of its requests with 403 (HTTP). A request whose
//! `key_header` is missing answers 401, one with a key not in `keys` 403;
//! with no `keys` every other request is allowed.

use serde::Deserialize;
use std::collections::HashSet;
use std::net::IpAddr;
use weir_sdk::access::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    deny_clients: Vec<String>,
    #[serde(default = "default_header")]
    key_header: String,
    keys: Option<Vec<String>>,
}

fn default_header() -> String {
    "x-api-key".into()
}

struct KeyAccess {
    deny_clients: HashSet<IpAddr>,
    key_header: String,
    keys: Option<HashSet<String>>,
}

fn deny(reason: String, status: u16) -> Verdict {
    Verdict::Deny(DenyInfo { reason, status: Some(status), headers: vec![] })
}

impl KeyAccess {
    fn client_denied(&self, conn: &Connection) -> Option<Verdict> {
        let ip = client_ip(conn);
        self.deny_clients.contains(&ip).then(|| deny(format!("client {ip} is denied"), 403))
    }

    /// The verdict on a request from an admitted client carrying `key`.
    fn key_verdict(&self, key: Option<&str>) -> Verdict {
        match (&self.keys, key) {
            (None, _) => Verdict::Allow,
            (Some(_), None) => deny(format!("no {}", self.key_header), 401),
            (Some(keys), Some(k)) if !keys.contains(k) => deny(format!("unknown {}", self.key_header), 403),
            _ => Verdict::Allow,
        }
    }
}

impl AccessFilter for KeyAccess {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let mut deny_clients = HashSet::new();
        for (i, c) in s.deny_clients.iter().enumerate() {
            let ip =
                c.parse().map_err(|_| Error::InvalidConfig(format!("deny_clients[{i}]: `{c}` is not an address")))?;
            deny_clients.insert(ip);
        }
        if s.key_header.is_empty() {
            return Err(Error::InvalidConfig("key_header: expected a header name".into()));
        }
        Ok(KeyAccess { deny_clients, key_header: s.key_header, keys: s.keys.map(|k| k.into_iter().collect()) })
    }

    fn check_connection(&mut self, conn: &Connection) -> Result<Verdict, Error> {
        Ok(self.client_denied(conn).unwrap_or(Verdict::Allow))
    }

    fn check_request(&mut self, conn: &Connection, req: &Request) -> Result<Verdict, Error> {
        if let Some(denied) = self.client_denied(conn) {
            return Ok(denied);
        }
        Ok(self.key_verdict(req.header(&self.key_header).as_deref()))
    }
}

weir_sdk::export_access_filter!(KeyAccess);
