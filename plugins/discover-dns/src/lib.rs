//! Bundled discovery adapter `discover-dns`: backends from DNS, through the
//! DNS server the instance is granted. `type = "A"` takes every address of
//! `name` (A and AAAA records) with the configured `port`; `type = "SRV"`
//! takes port, weight and priority from each SRV record and resolves its
//! target to addresses (or keeps the target's name with `resolve = false`).
//!
//! ```toml
//! [plugins.dns-web]
//! source = "builtin:discover-dns"
//! config = { name = "_http._tcp.web.service.consul", type = "SRV" }
//! grants = { dns = "127.0.0.1:8600" }
//! ```

use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;
use weir_sdk::discovery::*;
use weir_sdk::io::SrvRecord;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    name: String,
    #[serde(default = "a", rename = "type")]
    kind: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    priority: u32,
    #[serde(default = "any")]
    family: String,
    #[serde(default = "yes")]
    resolve: bool,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    timeout_ms: u32,
}

fn a() -> String {
    "A".into()
}
fn one() -> u32 {
    1
}
fn any() -> String {
    "any".into()
}
fn yes() -> bool {
    true
}

/// Which records to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A and AAAA records, with a configured port.
    A {
        /// The backends' port.
        port: u16,
    },
    /// SRV records.
    Srv,
}

/// Which addresses to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 and IPv6.
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

impl Family {
    fn keeps(self, ip: &IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        }
    }
}

/// A validated lookup.
#[derive(Debug)]
pub struct Lookup {
    /// The name looked up.
    pub name: String,
    /// Record type.
    pub kind: Kind,
    weight: u32,
    priority: u32,
    family: Family,
    resolve: bool,
    tags: Vec<String>,
    /// Timeout of each lookup.
    pub timeout: Duration,
}

impl Lookup {
    /// Validate the JSON config.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let invalid = |m: String| Error::InvalidConfig(m);
        let name = s.name.trim().to_string();
        if name.is_empty() {
            return Err(invalid("name: must not be empty".into()));
        }
        let kind = match s.kind.to_ascii_uppercase().as_str() {
            "A" | "AAAA" => match s.port {
                Some(port) if port > 0 => Kind::A { port },
                _ => return Err(invalid("port: required (1-65535) with `type = \"A\"`".into())),
            },
            "SRV" => {
                if s.port.is_some() {
                    return Err(invalid("port: SRV records carry their own port; leave `port` out".into()));
                }
                Kind::Srv
            }
            _ => return Err(invalid(format!("type: expected `A` or `SRV`, found `{}`", s.kind))),
        };
        let family = match s.family.to_ascii_lowercase().as_str() {
            "any" => Family::Any,
            "ipv4" => Family::V4,
            "ipv6" => Family::V6,
            _ => return Err(invalid(format!("family: expected `any`, `ipv4` or `ipv6`, found `{}`", s.family))),
        };
        Ok(Self {
            name,
            kind,
            weight: s.weight,
            priority: s.priority,
            family,
            resolve: s.resolve,
            tags: s.tags,
            timeout: Duration::from_millis(s.timeout_ms as u64),
        })
    }

    fn backend(&self, address: String, weight: u32, priority: u32) -> Discovered {
        Discovered { address, weight, priority, tags: self.tags.clone() }
    }

    /// Backends from the addresses of an A lookup.
    pub fn from_ips(&self, port: u16, ips: &[IpAddr]) -> Vec<Discovered> {
        let mut ips: Vec<IpAddr> = ips.iter().copied().filter(|ip| self.family.keeps(ip)).collect();
        ips.sort();
        ips.dedup();
        ips.iter().map(|ip| self.backend(join_host_port(&ip.to_string(), port), self.weight, self.priority)).collect()
    }

    /// Backends from SRV records; `resolve` looks a target's addresses up.
    /// A target of `.` ("no service here", RFC 2782) is skipped. SRV weight
    /// 0 becomes 1 (weir gives every backend some traffic).
    pub fn from_srv(
        &self,
        records: &[SrvRecord],
        mut resolve: impl FnMut(&str) -> Result<Vec<IpAddr>, Error>,
    ) -> Result<Vec<Discovered>, Error> {
        let mut out = Vec::new();
        for r in records {
            let target = r.target.strip_suffix('.').unwrap_or(&r.target);
            if target.is_empty() || r.port == 0 {
                continue;
            }
            let (weight, priority) = (u32::from(r.weight.max(1)), u32::from(r.priority));
            if !self.resolve {
                out.push(self.backend(join_host_port(target, r.port), weight, priority));
                continue;
            }
            let ips: Vec<IpAddr> = match target.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => resolve(target)?,
            };
            for d in self.from_ips(r.port, &ips) {
                if !out.iter().any(|o: &Discovered| o.address == d.address) {
                    out.push(Discovered { weight, priority, ..d });
                }
            }
        }
        Ok(out)
    }
}

struct DiscoverDns(Lookup);

impl Discovery for DiscoverDns {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(Lookup::from_config(&config)?))
    }

    fn discover(&mut self) -> Result<Vec<Discovered>, Error> {
        let l = &self.0;
        match l.kind {
            Kind::A { port } => Ok(l.from_ips(port, &io::dns_lookup_ip(&l.name, l.timeout)?)),
            Kind::Srv => {
                let records = io::dns_lookup_srv(&l.name, l.timeout)?;
                l.from_srv(&records, |target| io::dns_lookup_ip(target, l.timeout))
            }
        }
    }
}

weir_sdk::export_discovery!(DiscoverDns);

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(json: &str) -> Lookup {
        Lookup::from_config(&Config::from_json(json.into())).unwrap()
    }

    fn err(json: &str) -> String {
        match Lookup::from_config(&Config::from_json(json.into())) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn addrs(d: &[Discovered]) -> Vec<(&str, u32, u32)> {
        d.iter().map(|d| (d.address.as_str(), d.weight, d.priority)).collect()
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord { priority, weight, port, target: target.into() }
    }

    #[test]
    fn a_records() {
        let l = lookup(r#"{"name": "web.internal", "port": 8080, "weight": 2, "tags": ["dns"]}"#);
        assert_eq!(l.kind, Kind::A { port: 8080 });
        let got = l.from_ips(8080, &ips(&["10.0.0.2", "2001:db8::1", "10.0.0.1", "10.0.0.2"]));
        assert_eq!(addrs(&got), [("10.0.0.1:8080", 2, 0), ("10.0.0.2:8080", 2, 0), ("[2001:db8::1]:8080", 2, 0)]);
        assert_eq!(got[0].tags, ["dns"]);
        assert!(l.from_ips(80, &[]).is_empty());
        let v6 = lookup(r#"{"name": "w", "type": "aaaa", "port": 80, "family": "ipv6"}"#);
        assert_eq!(addrs(&v6.from_ips(80, &ips(&["10.0.0.1", "::1"]))), [("[::1]:80", 1, 0)]);
    }

    #[test]
    fn srv_records_resolved() {
        let l = lookup(r#"{"name": "_http._tcp.web.service.consul", "type": "SRV"}"#);
        let records = [
            srv(1, 10, 8080, "node-a.node.dc1.consul."),
            srv(2, 0, 8081, "node-b.node.dc1.consul."),
            srv(1, 5, 9000, "10.1.1.1"),
            srv(0, 0, 0, "."),
        ];
        let mut asked = Vec::new();
        let got = l
            .from_srv(&records, |t| {
                asked.push(t.to_string());
                Ok(match t {
                    "node-a.node.dc1.consul" => ips(&["10.0.0.1", "10.0.0.2"]),
                    _ => ips(&["fd00::b"]),
                })
            })
            .unwrap();
        assert_eq!(asked, ["node-a.node.dc1.consul", "node-b.node.dc1.consul"]);
        assert_eq!(
            addrs(&got),
            [("10.0.0.1:8080", 10, 1), ("10.0.0.2:8080", 10, 1), ("[fd00::b]:8081", 1, 2), ("10.1.1.1:9000", 5, 1)]
        );
    }

    #[test]
    fn srv_records_by_name() {
        let l = lookup(r#"{"name": "_x._tcp.example", "type": "srv", "resolve": false}"#);
        let got = l.from_srv(&[srv(0, 3, 443, "a.example.")], |_| panic!("no lookup")).unwrap();
        assert_eq!(addrs(&got), [("a.example:443", 3, 0)]);
        assert!(l.from_srv(&[], |_| panic!()).unwrap().is_empty());
    }

    #[test]
    fn srv_resolution_failure_is_an_error() {
        let l = lookup(r#"{"name": "_x._tcp.example", "type": "SRV"}"#);
        let r = l.from_srv(&[srv(0, 1, 80, "gone.example.")], |_| Err(Error::Other("NXDOMAIN".into())));
        assert!(matches!(r, Err(Error::Other(m)) if m == "NXDOMAIN"));
    }

    #[test]
    fn bad_configs() {
        assert!(err("{}").contains("missing field `name`"));
        assert_eq!(err(r#"{"name": " ", "port": 80}"#), "name: must not be empty");
        assert_eq!(err(r#"{"name": "a"}"#), "port: required (1-65535) with `type = \"A\"`");
        assert_eq!(err(r#"{"name": "a", "port": 0}"#), "port: required (1-65535) with `type = \"A\"`");
        assert!(err(r#"{"name": "a", "port": 70000}"#).starts_with("port: invalid value"));
        assert!(err(r#"{"name": "a", "type": "SRV", "port": 80}"#).starts_with("port: SRV records"));
        assert_eq!(err(r#"{"name": "a", "type": "MX"}"#), "type: expected `A` or `SRV`, found `MX`");
        assert!(err(r#"{"name": "a", "port": 1, "family": "v4"}"#).starts_with("family: "));
    }
}
