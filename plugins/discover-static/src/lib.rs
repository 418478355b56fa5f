//! Bundled discovery adapter `discover-static`: the backend list written in
//! its config, as `host:port` strings or tables with weight, priority and tags.
//!
//! ```toml
//! [plugins.fixed]
//! source = "builtin:discover-static"
//! config = { backends = ["10.0.0.1:80", { address = "10.0.0.2:80", weight = 3, priority = 1, tags = ["spare"] }] }
//! ```

use serde::Deserialize;
use weir_sdk::discovery::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    priority: u32,
    #[serde(default)]
    tags: Vec<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    backends: Vec<serde_json::Value>,
}

/// The configured backends, validated.
pub fn backends(config: &Config) -> Result<Vec<Discovered>, Error> {
    let s: Settings = config.parse()?;
    s.backends
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let d = match entry {
                serde_json::Value::String(address) => Discovered::new(address),
                table @ serde_json::Value::Object(_) => {
                    let t: Table = serde_json::from_value(table)
                        .map_err(|e| Error::InvalidConfig(format!("backends[{i}]: {e}")))?;
                    Discovered { address: t.address, weight: t.weight, priority: t.priority, tags: t.tags }
                }
                other => {
                    return Err(Error::InvalidConfig(format!(
                        "backends[{i}]: expected `\"host:port\"` or a table {{ address, weight, priority, tags }}, found {other}"
                    )))
                }
            };
            match split_host_port(&d.address) {
                Some(_) => Ok(d),
                None => Err(Error::InvalidConfig(format!("backends[{i}]: `{}` is not `host:port`", d.address))),
            }
        })
        .collect()
}

struct DiscoverStatic(Vec<Discovered>);

impl Discovery for DiscoverStatic {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(backends(&config)?))
    }

    fn discover(&mut self) -> Result<Vec<Discovered>, Error> {
        Ok(self.0.clone())
    }
}

weir_sdk::export_discovery!(DiscoverStatic);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<Discovered>, Error> {
        backends(&Config::from_json(json.into()))
    }

    fn err(json: &str) -> String {
        match parse(json) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn strings_and_tables() {
        let got = parse(
            r#"{"backends": ["10.0.0.1:80", {"address": "[::1]:81", "weight": 3, "priority": 2, "tags": ["a"]},
                {"address": "b.example:82"}]}"#,
        )
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].address.as_str(), got[0].weight, got[0].priority), ("10.0.0.1:80", 1, 0));
        assert_eq!((got[1].address.as_str(), got[1].weight, got[1].priority), ("[::1]:81", 3, 2));
        assert_eq!(got[1].tags, ["a"]);
        assert_eq!((got[2].weight, got[2].priority, got[2].tags.len()), (1, 0, 0));
    }

    #[test]
    fn empty_list_is_fine() {
        assert!(parse(r#"{"backends": []}"#).unwrap().is_empty());
    }

    #[test]
    fn bad_configs() {
        assert!(err("{}").contains("missing field `backends`"));
        assert_eq!(err(r#"{"backends": ["a:1", "nope"]}"#), "backends[1]: `nope` is not `host:port`");
        assert_eq!(err(r#"{"backends": [{"address": "::1:80"}]}"#), "backends[0]: `::1:80` is not `host:port`");
        assert_eq!(
            err(r#"{"backends": [{"addr": "a:1"}]}"#),
            "backends[0]: unknown field `addr`, expected one of `address`, `weight`, `priority`, `tags`"
        );
        assert_eq!(
            err(r#"{"backends": [{"address": "a:1", "weight": "x"}]}"#),
            "backends[0]: invalid type: string \"x\", expected u32"
        );
        assert!(err(r#"{"backends": [80]}"#).starts_with("backends[0]: expected `\"host:port\"` or a table"));
        assert!(err(r#"{"backends": "a:1"}"#).starts_with("backends: invalid type"));
    }
}
