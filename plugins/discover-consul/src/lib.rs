//! Bundled discovery adapter `discover-consul`: the instances of a Consul
//! service whose checks pass, from Consul's health API
//! (`GET /v1/health/service/<service>?passing=true`). The address is
//! `Service.Address`, or `Node.Address` when that is empty; the port is
//! `Service.Port`; the weight `Service.Weights.Passing`; tags `Service.Tags`.
//!
//! ```toml
//! [plugins.consul-web]
//! source = "builtin:discover-consul"
//! config = { endpoint = "http://127.0.0.1:8500", service = "web", tag = "v2" }
//! grants = { http = ["http://127.0.0.1:8500/v1/health/service/"] }
//! ```

use serde::Deserialize;
use std::time::Duration;
use weir_sdk::discovery::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    endpoint: String,
    service: String,
    #[serde(default)]
    dc: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default = "yes")]
    passing: bool,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    timeout_ms: u32,
}

fn yes() -> bool {
    true
}

/// A validated health query.
#[derive(Debug)]
pub struct Query {
    /// The full request URL.
    pub url: String,
    token: Option<String>,
    /// Timeout of the request.
    pub timeout: Duration,
}

/// Percent-encode a path segment or query value (RFC 3986 unreserved kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    #[serde(default)]
    node: Node,
    service: Service,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(default, rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    #[serde(default)]
    passing: Option<u32>,
}

/// The backends in a `/v1/health/service` response.
pub fn parse_response(body: &[u8]) -> Result<Vec<Discovered>, Error> {
    let entries: Vec<Entry> =
        serde_json::from_slice(body).map_err(|e| Error::Other(format!("not a Consul health response: {e}")))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let host = if e.service.address.is_empty() { e.node.address } else { e.service.address };
            if host.is_empty() {
                let who = if e.service.id.is_empty() { format!("entry {i}") } else { e.service.id };
                return Err(Error::Other(format!(
                    "{who} on node `{}` has neither Service.Address nor Node.Address",
                    e.node.node
                )));
            }
            Ok(Discovered {
                address: join_host_port(&host, e.service.port),
                weight: e.service.weights.and_then(|w| w.passing).filter(|&w| w > 0).unwrap_or(1),
                priority: 0,
                tags: e.service.tags.unwrap_or_default(),
            })
        })
        .collect()
}

impl Query {
    /// Validate the JSON config.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let endpoint = s.endpoint.trim().trim_end_matches('/');
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(Error::InvalidConfig(format!(
                "endpoint: `{}` must be an http:// or https:// URL like `http://127.0.0.1:8500`",
                s.endpoint
            )));
        }
        if s.service.trim().is_empty() {
            return Err(Error::InvalidConfig("service: must not be empty".into()));
        }
        let mut query = Vec::new();
        if s.passing {
            query.push("passing=true".to_string());
        }
        if let Some(dc) = s.dc.filter(|d| !d.is_empty()) {
            query.push(format!("dc={}", encode(&dc)));
        }
        if let Some(tag) = s.tag.filter(|t| !t.is_empty()) {
            query.push(format!("tag={}", encode(&tag)));
        }
        let mut url = format!("{endpoint}/v1/health/service/{}", encode(s.service.trim()));
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        Ok(Self { url, token: s.token.filter(|t| !t.is_empty()), timeout: Duration::from_millis(s.timeout_ms as u64) })
    }

    /// Request headers: the ACL token, when there is one.
    pub fn headers(&self) -> Vec<(&str, &str)> {
        self.token.as_deref().map(|t| vec![("x-consul-token", t)]).unwrap_or_default()
    }
}

struct DiscoverConsul(Query);

impl Discovery for DiscoverConsul {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(Query::from_config(&config)?))
    }

    fn discover(&mut self) -> Result<Vec<Discovered>, Error> {
        let q = &self.0;
        let resp = io::http_request("GET", &q.url, &q.headers(), &[], q.timeout)?.success_or_err(&q.url)?;
        parse_response(&resp.body).map_err(|e| Error::Other(format!("{}: {}", q.url, e.message())))
    }
}

weir_sdk::export_discovery!(DiscoverConsul);

#[cfg(test)]
mod tests {
    use super::*;

    fn query(json: &str) -> Query {
        Query::from_config(&Config::from_json(json.into())).unwrap()
    }

    fn err(json: &str) -> String {
        match Query::from_config(&Config::from_json(json.into())) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn urls() {
        let q = query(r#"{"endpoint": "http://127.0.0.1:8500/", "service": "web"}"#);
        assert_eq!(q.url, "http://127.0.0.1:8500/v1/health/service/web?passing=true");
        assert!(q.headers().is_empty());
        let q = query(
            r#"{"endpoint": "https://consul:8501", "service": "my web", "dc": "eu-1", "tag": "v2&x", "passing": false,
                "token": "secret"}"#,
        );
        assert_eq!(q.url, "https://consul:8501/v1/health/service/my%20web?dc=eu-1&tag=v2%26x");
        assert_eq!(q.headers(), [("x-consul-token", "secret")]);
    }

    // The example response of Consul's "List Service Instances for Service"
    // (GET /v1/health/service/:service), trimmed of the fields weir ignores
    // only where they are long; a second entry has no Service.Address.
    const RESPONSE: &str = r#"[
      {
        "Node": {
          "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
          "Node": "foobar",
          "Address": "10.1.10.12",
          "Datacenter": "dc1",
          "TaggedAddresses": {"lan": "10.1.10.12", "wan": "10.1.10.12"},
          "Meta": {"instance_type": "t2.medium"}
        },
        "Service": {
          "ID": "redis",
          "Service": "redis",
          "Tags": ["primary"],
          "Address": "10.1.10.12",
          "TaggedAddresses": {
            "lan": {"address": "10.1.10.12", "port": 8000},
            "wan": {"address": "198.18.1.2", "port": 80}
          },
          "Meta": {"redis_version": "4.0"},
          "Port": 8000,
          "Weights": {"Passing": 10, "Warning": 1},
          "Namespace": "default"
        },
        "Checks": [
          {
            "Node": "foobar",
            "CheckID": "service:redis",
            "Name": "Service 'redis' check",
            "Status": "passing",
            "Notes": "",
            "Output": "",
            "ServiceID": "redis",
            "ServiceName": "redis",
            "ServiceTags": ["primary"],
            "Namespace": "default"
          },
          {
            "Node": "foobar",
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Notes": "",
            "Output": "",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Namespace": "default"
          }
        ]
      },
      {
        "Node": {"Node": "baz", "Address": "fd00::7"},
        "Service": {"ID": "redis-2", "Service": "redis", "Tags": null, "Address": "", "Port": 8001},
        "Checks": []
      }
    ]"#;

    #[test]
    fn documented_response() {
        let got = parse_response(RESPONSE.as_bytes()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].address.as_str(), got[0].weight, got[0].priority), ("10.1.10.12:8000", 10, 0));
        assert_eq!(got[0].tags, ["primary"]);
        assert_eq!((got[1].address.as_str(), got[1].weight), ("[fd00::7]:8001", 1));
        assert!(got[1].tags.is_empty());
    }

    #[test]
    fn empty_and_broken_responses() {
        assert!(parse_response(b"[]").unwrap().is_empty());
        let Err(Error::Other(m)) =
            parse_response(br#"[{"Node": {"Node": "n1", "Address": ""}, "Service": {"ID": "web-1", "Port": 80}}]"#)
        else {
            panic!()
        };
        assert_eq!(m, "web-1 on node `n1` has neither Service.Address nor Node.Address");
        let Err(Error::Other(m)) = parse_response(br#"[{"Node": {"Address": "a"}, "Service": {"Address": "b"}}]"#)
        else {
            panic!()
        };
        assert!(m.contains("missing field `Port`"), "{m}");
        assert!(parse_response(br#"{"error": "ACL not found"}"#).is_err());
    }

    #[test]
    fn bad_configs() {
        assert!(err(r#"{"service": "web"}"#).contains("missing field `endpoint`"));
        assert!(err(r#"{"endpoint": "http://c:8500"}"#).contains("missing field `service`"));
        assert!(err(r#"{"endpoint": "c:8500", "service": "web"}"#).starts_with("endpoint: "));
        assert_eq!(err(r#"{"endpoint": "http://c:8500", "service": " "}"#), "service: must not be empty");
        assert!(err(r#"{"endpoint": "http://c:8500", "service": "w", "passing": "yes"}"#)
            .starts_with("passing: invalid type"));
    }
}
