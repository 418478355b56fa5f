//! Bundled discovery adapter `discover-http-json`: `GET url` and pick the
//! backends out of a JSON response of any shape with JSONPath (RFC 9535)
//! expressions: `items` selects the entries, and per entry `address` (or
//! `host` and `port`), `weight`, `priority` and `tags` select its fields.
//!
//! ```toml
//! [plugins.registry]
//! source = "builtin:discover-http-json"
//! config = { url = "http://10.0.0.9:8080/v1/instances", items = "$.instances[?@.state == 'up']", host = "ip", port = "ports.http" }
//! grants = { http = ["http://10.0.0.9:8080/v1/instances"] }
//! ```
//!
//! A per-entry path that does not start with `$` is a member path relative
//! to the entry: `ports.http` means `$.ports.http`. `port` may also be a
//! number, the same port for every entry.

use serde::Deserialize;
use serde_json::Value;
use serde_json_path::JsonPath;
use std::time::Duration;
use weir_sdk::discovery::*;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortSpec {
    Fixed(u16),
    Path(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default = "all")]
    items: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<PortSpec>,
    #[serde(default)]
    weight: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    tags: Option<String>,
    #[serde(default)]
    timeout_ms: u32,
}

fn all() -> String {
    "$[*]".into()
}

/// A compiled path, with its text for messages.
#[derive(Debug)]
pub struct Path {
    text: String,
    path: JsonPath,
}

impl Path {
    /// Compile `text` for config key `key`; `relative` paths without `$` get `$.`.
    fn new(key: &str, text: &str, relative: bool) -> Result<Self, Error> {
        let text = text.trim();
        let full = if relative && !text.starts_with('$') { format!("$.{text}") } else { text.to_string() };
        let path = JsonPath::parse(&full).map_err(|e| Error::InvalidConfig(format!("{key}: `{full}`: {e}")))?;
        Ok(Self { text: full, path })
    }

    /// The one value this path selects in `v`, if any.
    fn one<'a>(&self, what: &str, v: &'a Value) -> Result<Option<&'a Value>, String> {
        let nodes = self.path.query(v).all();
        match nodes.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            many => Err(format!("`{what}` path `{}` selects {} values, expected one", self.text, many.len())),
        }
    }
}

/// Where the address comes from.
#[derive(Debug)]
enum AddressFrom {
    Address(Path),
    HostPort(Path, Port),
}

#[derive(Debug)]
enum Port {
    Fixed(u16),
    Path(Path),
}

/// A validated extraction.
#[derive(Debug)]
pub struct Extract {
    /// The URL read.
    pub url: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    items: Path,
    address: AddressFrom,
    weight: Option<Path>,
    priority: Option<Path>,
    tags: Option<Path>,
    /// Timeout of the request.
    pub timeout: Duration,
}

fn number(what: &str, v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("`{what}` is {v}, not a whole number"))
}

impl Extract {
    /// Validate the JSON config.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let invalid = |m: &str| Error::InvalidConfig(m.to_string());
        if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
            return Err(Error::InvalidConfig(format!("url: `{}` must be an http:// or https:// URL", s.url)));
        }
        let address = match (s.address, s.host, s.port) {
            (Some(a), None, None) => AddressFrom::Address(Path::new("address", &a, true)?),
            (None, Some(h), Some(p)) => AddressFrom::HostPort(
                Path::new("host", &h, true)?,
                match p {
                    PortSpec::Fixed(0) => return Err(invalid("port: must be 1-65535")),
                    PortSpec::Fixed(n) => Port::Fixed(n),
                    PortSpec::Path(p) => Port::Path(Path::new("port", &p, true)?),
                },
            ),
            (Some(_), _, _) => return Err(invalid("address: give `address` or `host` and `port`, not both")),
            (None, Some(_), None) => return Err(invalid("port: required with `host`")),
            (None, None, Some(_)) => return Err(invalid("host: required with `port`")),
            (None, None, None) => return Err(invalid("address: give `address`, or `host` and `port`")),
        };
        let opt = |key: &str, p: Option<String>| p.map(|p| Path::new(key, &p, true)).transpose();
        Ok(Self {
            url: s.url,
            headers: s.headers,
            items: Path::new("items", &s.items, false)?,
            address,
            weight: opt("weight", s.weight)?,
            priority: opt("priority", s.priority)?,
            tags: opt("tags", s.tags)?,
            timeout: Duration::from_millis(s.timeout_ms as u64),
        })
    }

    fn entry(&self, item: &Value) -> Result<Discovered, String> {
        let required = |what: &str, p: &Path| {
            p.one(what, item)?.ok_or_else(|| format!("`{what}` path `{}` selects nothing", p.text))
        };
        let address = match &self.address {
            AddressFrom::Address(p) => {
                let v = required("address", p)?;
                let a = v.as_str().ok_or_else(|| format!("`address` is {v}, not a string"))?;
                if split_host_port(a).is_none() {
                    return Err(format!("`address` `{a}` is not `host:port`"));
                }
                a.to_string()
            }
            AddressFrom::HostPort(h, p) => {
                let v = required("host", h)?;
                let host = v.as_str().filter(|s| !s.is_empty()).ok_or_else(|| format!("`host` is {v}, not a host"))?;
                let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
                let port = match p {
                    Port::Fixed(n) => *n,
                    Port::Path(p) => {
                        let v = required("port", p)?;
                        u16::try_from(number("port", v)?).map_err(|_| format!("`port` {v} is not 0-65535"))?
                    }
                };
                join_host_port(host, port)
            }
        };
        let int = |what: &str, p: &Option<Path>, default: u32| -> Result<u32, String> {
            let Some(p) = p else { return Ok(default) };
            match p.one(what, item)? {
                None | Some(Value::Null) => Ok(default),
                Some(v) => u32::try_from(number(what, v)?).map_err(|_| format!("`{what}` {v} is too large")),
            }
        };
        let tags = match &self.tags {
            None => Vec::new(),
            Some(p) => match p.one("tags", item)? {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|t| t.as_str().map(String::from).ok_or_else(|| format!("tag {t} is not a string")))
                    .collect::<Result<_, _>>()?,
                Some(v) => return Err(format!("`tags` is {v}, not a list of strings")),
            },
        };
        Ok(Discovered {
            address,
            weight: int("weight", &self.weight, 1)?,
            priority: int("priority", &self.priority, 0)?,
            tags,
        })
    }

    /// The backends in a response body.
    pub fn parse(&self, body: &[u8]) -> Result<Vec<Discovered>, Error> {
        let doc: Value = serde_json::from_slice(body)
            .map_err(|e| Error::Other(format!("{}: response is not JSON: {e}", self.url)))?;
        let mut items = self.items.path.query(&doc).all();
        // `$.list` (the list itself) means the same as `$.list[*]`.
        if let [Value::Array(list)] = items.as_slice() {
            items = list.iter().collect();
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.entry(item).map_err(|m| Error::Other(format!("{}: items[{i}]: {m}", self.url))))
            .collect()
    }
}

struct DiscoverHttpJson(Extract);

impl Discovery for DiscoverHttpJson {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(Extract::from_config(&config)?))
    }

    fn discover(&mut self) -> Result<Vec<Discovered>, Error> {
        let x = &self.0;
        let mut headers: Vec<(&str, &str)> = vec![("accept", "application/json")];
        headers.extend(x.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let resp = io::http_request("GET", &x.url, &headers, &[], x.timeout)?.success_or_err(&x.url)?;
        x.parse(&resp.body)
    }
}

weir_sdk::export_discovery!(DiscoverHttpJson);

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(json: &str) -> Extract {
        Extract::from_config(&Config::from_json(json.into())).unwrap()
    }

    fn err(json: &str) -> String {
        match Extract::from_config(&Config::from_json(json.into())) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    fn addrs(d: &[Discovered]) -> Vec<(&str, u32, u32)> {
        d.iter().map(|d| (d.address.as_str(), d.weight, d.priority)).collect()
    }

    #[test]
    fn top_level_list_of_addresses() {
        let x = extract(r#"{"url": "http://r/", "address": "addr"}"#);
        let got = x.parse(br#"[{"addr": "10.0.0.1:80"}, {"addr": "[::1]:81"}]"#).unwrap();
        assert_eq!(addrs(&got), [("10.0.0.1:80", 1, 0), ("[::1]:81", 1, 0)]);
        assert!(x.parse(b"[]").unwrap().is_empty());
    }

    #[test]
    fn nested_shape_with_filter() {
        let x = extract(
            r#"{"url": "http://r/v1/instances", "items": "$.data.instances[?@.state == 'up']",
                "host": "ip", "port": "$.ports.http", "weight": "meta.weight", "priority": "meta.tier", "tags": "labels"}"#,
        );
        let body = br#"{"data": {"instances": [
            {"ip": "10.0.0.1", "state": "up", "ports": {"http": 8080}, "meta": {"weight": 3, "tier": "1"}, "labels": ["a", "b"]},
            {"ip": "10.0.0.2", "state": "down", "ports": {"http": 8080}},
            {"ip": "fd00::3", "state": "up", "ports": {"http": "8081"}, "meta": {"weight": null}, "labels": "solo"}
        ]}}"#;
        let got = x.parse(body).unwrap();
        assert_eq!(addrs(&got), [("10.0.0.1:8080", 3, 1), ("[fd00::3]:8081", 1, 0)]);
        assert_eq!(got[0].tags, ["a", "b"]);
        assert_eq!(got[1].tags, ["solo"]);
    }

    #[test]
    fn list_path_without_wildcard_and_fixed_port() {
        let x = extract(r#"{"url": "http://r/", "items": "$.hosts", "host": "$", "port": 9000}"#);
        let got = x.parse(br#"{"hosts": ["a.internal", "b.internal"]}"#).unwrap();
        assert_eq!(addrs(&got), [("a.internal:9000", 1, 0), ("b.internal:9000", 1, 0)]);
        // A path selecting nothing is an empty list, not an error.
        assert!(x.parse(br#"{"other": []}"#).unwrap().is_empty());
    }

    #[test]
    fn standard_functions() {
        let x = extract(
            r#"{"url": "http://r/", "items": "$[?match(@.name, 'web-[0-9]+') && length(@.checks) == 0]", "address": "a"}"#,
        );
        let body = br#"[{"name": "web-1", "a": "a:1", "checks": []}, {"name": "web-2", "a": "b:1", "checks": ["x"]},
                        {"name": "db-1", "a": "c:1", "checks": []}]"#;
        assert_eq!(addrs(&x.parse(body).unwrap()), [("a:1", 1, 0)]);
    }

    #[test]
    fn bad_entries_name_the_item() {
        let x = extract(r#"{"url": "http://r/", "items": "$.s[*]", "host": "h", "port": "p"}"#);
        let e = |body: &str| match x.parse(body.as_bytes()) {
            Err(Error::Other(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            e(r#"{"s": [{"h": "a", "p": 1}, {"p": 2}]}"#),
            "http://r/: items[1]: `host` path `$.h` selects nothing"
        );
        assert_eq!(e(r#"{"s": [{"h": "a", "p": 70000}]}"#), "http://r/: items[0]: `port` 70000 is not 0-65535");
        assert_eq!(e(r#"{"s": [{"h": 5, "p": 1}]}"#), "http://r/: items[0]: `host` is 5, not a host");
        assert_eq!(e(r#"{"s": [{"h": "a", "p": "x"}]}"#), "http://r/: items[0]: `port` is \"x\", not a whole number");
        assert!(e("nope").starts_with("http://r/: response is not JSON"));
        let x = extract(r#"{"url": "http://r/", "address": "$..a"}"#);
        let Err(Error::Other(m)) = x.parse(br#"[{"a": "x:1", "b": {"a": "y:2"}}]"#) else { panic!() };
        assert_eq!(m, "http://r/: items[0]: `address` path `$..a` selects 2 values, expected one");
        let Err(Error::Other(m)) = x.parse(br#"[{"a": "x"}]"#) else { panic!() };
        assert_eq!(m, "http://r/: items[0]: `address` `x` is not `host:port`");
    }

    #[test]
    fn bad_configs() {
        assert!(err("{}").contains("missing field `url`"));
        assert!(err(r#"{"url": "r/x", "address": "a"}"#).starts_with("url: "));
        assert_eq!(err(r#"{"url": "http://r/"}"#), "address: give `address`, or `host` and `port`");
        assert_eq!(err(r#"{"url": "http://r/", "host": "h"}"#), "port: required with `host`");
        assert_eq!(err(r#"{"url": "http://r/", "port": 80}"#), "host: required with `port`");
        assert!(err(r#"{"url": "http://r/", "address": "a", "host": "h"}"#).starts_with("address: give"));
        assert!(err(r#"{"url": "http://r/", "address": "a", "items": "items[*]"}"#).starts_with("items: `items[*]`: "));
        assert!(err(r#"{"url": "http://r/", "address": "a[", "items": "$[*]"}"#).starts_with("address: `$.a[`: "));
        assert_eq!(err(r#"{"url": "http://r/", "host": "h", "port": 0}"#), "port: must be 1-65535");
    }
}
