//! Bundled access filter `ip-access`: ordered CIDR rules, first match wins,
//! like gobetween's `access` section.
//!
//! ```toml
//! [plugins.office-only]
//! source = "builtin:ip-access"
//! config = { default = "deny", rules = ["allow 10.0.0.0/8", "deny 10.9.0.0/16"] }
//! ```
//! (Rules are checked in order; the first one whose network contains the
//! client address decides. `default` applies when none does.)

use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;
use weir_sdk::access::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "allow")]
    default: String,
    #[serde(default)]
    rules: Vec<String>,
    /// HTTP status for denied requests on L7 listeners.
    #[serde(default)]
    status: Option<u16>,
}

fn allow() -> String {
    "allow".into()
}

/// The parsed rule list, independent of the plugin ABI so it tests natively.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<(bool, IpNet)>,
    default_allow: bool,
}

fn parse_action(word: &str) -> Result<bool, String> {
    match word {
        "allow" => Ok(true),
        "deny" => Ok(false),
        other => Err(format!("expected `allow` or `deny`, found `{other}`")),
    }
}

impl Rules {
    /// Parse `default` and rules of the form `allow 10.0.0.0/8` or `deny ::1`.
    pub fn parse(default: &str, rules: &[String]) -> Result<Self, String> {
        let default_allow = parse_action(default).map_err(|e| format!("default: {e}"))?;
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let (action, net) = rule
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| format!("rules[{i}]: expected `allow CIDR` or `deny CIDR`, found `{rule}`"))?;
                let action = parse_action(action).map_err(|e| format!("rules[{i}]: {e}"))?;
                let net = net.trim();
                let net = net
                    .parse::<IpNet>()
                    .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("rules[{i}]: `{net}` is not an address or CIDR network"))?;
                Ok((action, net))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { rules, default_allow })
    }

    /// Whether the address is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.rules.iter().find(|(_, net)| net.contains(&ip)).map_or(self.default_allow, |(allow, _)| *allow)
    }
}

struct IpAccess {
    rules: Rules,
    status: Option<u16>,
}

impl IpAccess {
    fn verdict(&self, conn: &Connection) -> Verdict {
        let ip = client_ip(conn);
        if self.rules.allows(ip) {
            Verdict::Allow
        } else {
            deny(format!("{ip} denied by ip-access"), self.status)
        }
    }
}

impl AccessFilter for IpAccess {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let rules = Rules::parse(&s.default, &s.rules).map_err(Error::InvalidConfig)?;
        Ok(Self { rules, status: s.status })
    }

    fn check_connection(&mut self, conn: &Connection) -> Result<Verdict, Error> {
        // The client's address is all this filter looks at: an allowed
        // connection's requests need not be asked about one by one.
        Ok(match self.verdict(conn) {
            Verdict::Allow => Verdict::AllowConnection,
            denied => denied,
        })
    }

    fn check_request(&mut self, conn: &Connection, _req: &Request) -> Result<Verdict, Error> {
        Ok(self.verdict(conn))
    }
}

weir_sdk::export_access_filter!(IpAccess);

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(default: &str, r: &[&str]) -> Rules {
        Rules::parse(default, &r.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn first_match_wins() {
        let r = rules("deny", &["deny 10.9.0.0/16", "allow 10.0.0.0/8"]);
        assert!(r.allows("10.1.2.3".parse().unwrap()));
        assert!(!r.allows("10.9.2.3".parse().unwrap()));
        assert!(!r.allows("192.168.1.1".parse().unwrap()));
    }

    #[test]
    fn default_allow_and_single_addresses() {
        let r = rules("allow", &["deny 127.0.0.1", "deny ::1"]);
        assert!(!r.allows("127.0.0.1".parse().unwrap()));
        assert!(r.allows("127.0.0.2".parse().unwrap()));
        assert!(!r.allows("::1".parse().unwrap()));
        assert!(!r.allows("::ffff:127.0.0.1".parse().unwrap()), "v4-mapped v6 matches v4 rules");
    }

    #[test]
    fn bad_rules_name_their_position() {
        let err = Rules::parse("allow", &["allow 10.0.0.0/8".into(), "permit 1.2.3.4".into()]).unwrap_err();
        assert!(err.contains("rules[1]"), "{err}");
        let err = Rules::parse("allow", &["deny 300.1.1.1".into()]).unwrap_err();
        assert!(err.contains("300.1.1.1"), "{err}");
        assert!(Rules::parse("maybe", &[]).unwrap_err().starts_with("default"));
    }
}
