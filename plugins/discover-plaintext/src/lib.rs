//! Bundled discovery adapter `discover-plaintext`: `GET url` and parse each
//! line of the body with a regex whose named groups `host` and `port` (and
//! optionally `weight`, `priority`) give a backend (gobetween's
//! `plaintext`). Lines that do not match are skipped.
//!
//! ```toml
//! [plugins.list]
//! source = "builtin:discover-plaintext"
//! config = { url = "http://10.0.0.9/backends.txt", regex = '^(?P<host>\S+)\s+(?P<port>\d+)$' }
//! grants = { http = ["http://10.0.0.9/backends.txt"] }
//! ```

use regex::Regex;
use serde::Deserialize;
use std::time::Duration;
use weir_sdk::discovery::*;

/// The default line format: `host:port [weight=N] [priority=N]`, an IPv6
/// host in brackets.
pub const DEFAULT_REGEX: &str = r"^\s*\[?(?P<host>[^\s\[\]]+?)\]?:(?P<port>\d+)(?:\s+weight=(?P<weight>\d+))?(?:\s+priority=(?P<priority>\d+))?\s*$";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default = "default_regex")]
    regex: String,
    #[serde(default)]
    timeout_ms: u32,
}

fn default_regex() -> String {
    DEFAULT_REGEX.into()
}

/// A validated source.
#[derive(Debug)]
pub struct Source {
    /// The URL read.
    pub url: String,
    regex: Regex,
    /// Timeout of the request.
    pub timeout: Duration,
}

impl Source {
    /// Validate the JSON config.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let invalid = |m: String| Error::InvalidConfig(m);
        if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
            return Err(invalid(format!("url: `{}` must be an http:// or https:// URL", s.url)));
        }
        let regex = Regex::new(&s.regex).map_err(|e| invalid(format!("regex: {e}")))?;
        let names: Vec<&str> = regex.capture_names().flatten().collect();
        for needed in ["host", "port"] {
            if !names.contains(&needed) {
                return Err(invalid(format!("regex: needs a named group `(?P<{needed}>...)`")));
            }
        }
        if let Some(other) = names.iter().find(|n| !["host", "port", "weight", "priority"].contains(n)) {
            return Err(invalid(format!(
                "regex: unknown group `{other}`; the groups are `host`, `port`, `weight` and `priority`"
            )));
        }
        Ok(Self { url: s.url, regex, timeout: Duration::from_millis(s.timeout_ms as u64) })
    }

    /// The backends in a body; a matching line with a bad number is an error
    /// naming the line.
    pub fn parse(&self, body: &str) -> Result<Vec<Discovered>, Error> {
        let mut out = Vec::new();
        for (i, line) in body.lines().enumerate() {
            let Some(c) = self.regex.captures(line) else { continue };
            let bad = |m: String| Error::Other(format!("{} line {}: {m}", self.url, i + 1));
            let group = |name: &str| c.name(name).map(|m| m.as_str()).filter(|s| !s.is_empty());
            let host = group("host").ok_or_else(|| bad("empty `host`".into()))?;
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            let port = group("port").unwrap_or("");
            let port = port.parse::<u16>().map_err(|_| bad(format!("port `{port}` is not 0-65535")))?;
            let number = |name: &str, default: u32| match group(name) {
                None => Ok(default),
                Some(v) => v.parse::<u32>().map_err(|_| bad(format!("{name} `{v}` is not a whole number"))),
            };
            out.push(Discovered {
                address: join_host_port(host, port),
                weight: number("weight", 1)?,
                priority: number("priority", 0)?,
                tags: Vec::new(),
            });
        }
        Ok(out)
    }
}

struct DiscoverPlaintext(Source);

impl Discovery for DiscoverPlaintext {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(Source::from_config(&config)?))
    }

    fn discover(&mut self) -> Result<Vec<Discovered>, Error> {
        let s = &self.0;
        let resp = io::http_get(&s.url, s.timeout)?.success_or_err(&s.url)?;
        s.parse(&String::from_utf8_lossy(&resp.body))
    }
}

weir_sdk::export_discovery!(DiscoverPlaintext);

#[cfg(test)]
mod tests {
    use super::*;

    fn source(json: &str) -> Source {
        Source::from_config(&Config::from_json(json.into())).unwrap()
    }

    fn err(json: &str) -> String {
        match Source::from_config(&Config::from_json(json.into())) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    fn addrs(d: &[Discovered]) -> Vec<(&str, u32, u32)> {
        d.iter().map(|d| (d.address.as_str(), d.weight, d.priority)).collect()
    }

    #[test]
    fn default_format() {
        let s = source(r#"{"url": "http://list/b.txt"}"#);
        let body =
            "# backends\n10.0.0.1:80\n  10.0.0.2:81 weight=3 priority=1\n[::1]:82 weight=2\nfd00::9:83\ngarbage\n\n";
        assert_eq!(
            addrs(&s.parse(body).unwrap()),
            [("10.0.0.1:80", 1, 0), ("10.0.0.2:81", 3, 1), ("[::1]:82", 2, 0), ("[fd00::9]:83", 1, 0)]
        );
        assert!(s.parse("").unwrap().is_empty());
    }

    #[test]
    fn custom_regex() {
        // gobetween's documentation example: `host port weight` columns.
        let s =
            source(r#"{"url": "https://list/", "regex": "^(?P<host>\\S+)\\s+(?P<port>\\d+)(\\s+(?P<weight>\\d+))?$"}"#);
        let got = s.parse("web1 8080 5\nweb2 8080\n").unwrap();
        assert_eq!(addrs(&got), [("web1:8080", 5, 0), ("web2:8080", 1, 0)]);
    }

    #[test]
    fn bad_numbers_name_the_line() {
        let s = source(r#"{"url": "http://l/", "regex": "^(?P<host>\\S+) (?P<port>\\d+)$"}"#);
        let Err(Error::Other(m)) = s.parse("a 80\nb 99999\n") else { panic!() };
        assert_eq!(m, "http://l/ line 2: port `99999` is not 0-65535");
    }

    #[test]
    fn bad_configs() {
        assert!(err("{}").contains("missing field `url`"));
        assert!(err(r#"{"url": "list.txt"}"#).starts_with("url: "));
        assert!(err(r#"{"url": "http://l/", "regex": "("}"#).starts_with("regex: "));
        assert_eq!(
            err(r#"{"url": "http://l/", "regex": "(?P<host>.*)"}"#),
            "regex: needs a named group `(?P<port>...)`"
        );
        assert!(err(r#"{"url": "http://l/", "regex": "(?P<host>.*):(?P<port>.*) (?P<w>.*)"}"#)
            .starts_with("regex: unknown group `w`"));
    }
}
