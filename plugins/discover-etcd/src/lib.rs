//! Bundled discovery adapter `discover-etcd`: the backends stored under a
//! key prefix of an etcd v3 cluster, read through its JSON gRPC gateway
//! (`POST /v3/kv/range`) on every discovery round. A value is `host:port`
//! (optionally with `weight=N priority=N tags=a,b`, as in `discover-file`)
//! or JSON `{"address": "host:port", "weight": N, "priority": N, "tags": [..]}`.
//!
//! ```toml
//! [plugins.etcd-web]
//! source = "builtin:discover-etcd"
//! config = { endpoint = "http://127.0.0.1:2379", prefix = "/services/web/" }
//! grants = { http = ["http://127.0.0.1:2379/v3/kv/range"] }
//! ```

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use std::time::Duration;
use weir_sdk::discovery::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    endpoint: String,
    prefix: String,
    #[serde(default)]
    timeout_ms: u32,
}

/// A validated range read.
#[derive(Debug)]
pub struct Range {
    /// `{endpoint}/v3/kv/range`.
    pub url: String,
    /// The key prefix.
    pub prefix: String,
    /// Timeout of the request.
    pub timeout: Duration,
}

/// The smallest key after every key that starts with `prefix` (etcd's
/// `range_end` for a prefix read): the prefix with its last byte below 0xff
/// incremented and what follows dropped; `\0` (every key) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonValue {
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

fn b64(what: &str, text: &str) -> Result<Vec<u8>, Error> {
    B64.decode(text).map_err(|e| Error::Other(format!("etcd answered a {what} that is not base64: {e}")))
}

/// One backend from a stored value; `key` names it in errors. An empty
/// value is skipped (a key being written, or a directory marker).
pub fn parse_value(key: &str, value: &[u8]) -> Result<Option<Discovered>, Error> {
    let bad = |m: String| Error::Other(format!("key `{key}`: {m}"));
    let text = std::str::from_utf8(value).map_err(|_| bad("value is not UTF-8".into()))?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.starts_with('{') {
        let v: JsonValue = serde_json::from_str(text).map_err(|e| bad(format!("JSON value: {e}")))?;
        if split_host_port(&v.address).is_none() {
            return Err(bad(format!("`{}` is not `host:port`", v.address)));
        }
        return Ok(Some(Discovered { address: v.address, weight: v.weight, priority: v.priority, tags: v.tags }));
    }
    parse_backend_line(text).map_err(bad)
}

impl Range {
    /// Validate the JSON config.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let endpoint = s.endpoint.trim().trim_end_matches('/');
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(Error::InvalidConfig(format!(
                "endpoint: `{}` must be an http:// or https:// URL like `http://127.0.0.1:2379`",
                s.endpoint
            )));
        }
        if s.prefix.is_empty() {
            return Err(Error::InvalidConfig("prefix: must not be empty (e.g. `/services/web/`)".into()));
        }
        Ok(Self {
            url: format!("{endpoint}/v3/kv/range"),
            prefix: s.prefix,
            timeout: Duration::from_millis(s.timeout_ms as u64),
        })
    }

    /// The JSON body of the range request.
    pub fn request_body(&self) -> Vec<u8> {
        serde_json::json!({
            "key": B64.encode(self.prefix.as_bytes()),
            "range_end": B64.encode(prefix_end(self.prefix.as_bytes())),
        })
        .to_string()
        .into_bytes()
    }

    /// The backends in a range response, in key order.
    pub fn parse_response(&self, body: &[u8]) -> Result<Vec<Discovered>, Error> {
        let r: RangeResponse = serde_json::from_slice(body)
            .map_err(|e| Error::Other(format!("{}: not an etcd range response: {e}", self.url)))?;
        let mut out = Vec::with_capacity(r.kvs.len());
        for kv in r.kvs {
            let key = String::from_utf8_lossy(&b64("key", &kv.key)?).into_owned();
            if let Some(d) = parse_value(&key, &b64("value", &kv.value)?)? {
                out.push(d);
            }
        }
        Ok(out)
    }
}

struct DiscoverEtcd(Range);

impl Discovery for DiscoverEtcd {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(Range::from_config(&config)?))
    }

    fn discover(&mut self) -> Result<Vec<Discovered>, Error> {
        let r = &self.0;
        let headers = [("content-type", "application/json")];
        let resp = io::http_request("POST", &r.url, &headers, &r.request_body(), r.timeout)?;
        r.parse_response(&resp.success_or_err(&r.url)?.body)
    }
}

weir_sdk::export_discovery!(DiscoverEtcd);

#[cfg(test)]
mod tests {
    use super::*;

    fn range(json: &str) -> Range {
        Range::from_config(&Config::from_json(json.into())).unwrap()
    }

    fn err(json: &str) -> String {
        match Range::from_config(&Config::from_json(json.into())) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/services/web/"), b"/services/web0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn request() {
        let r = range(r#"{"endpoint": "http://127.0.0.1:2379/", "prefix": "/services/web/"}"#);
        assert_eq!(r.url, "http://127.0.0.1:2379/v3/kv/range");
        let body: serde_json::Value = serde_json::from_slice(&r.request_body()).unwrap();
        // base64("/services/web/") and base64("/services/web0")
        assert_eq!(body, serde_json::json!({"key": "L3NlcnZpY2VzL3dlYi8=", "range_end": "L3NlcnZpY2VzL3dlYjA="}));
    }

    #[test]
    fn range_response() {
        let r = range(r#"{"endpoint": "http://etcd:2379", "prefix": "/services/web/"}"#);
        let kv = |k: &str, v: &str| {
            format!(
                r#"{{"key":"{}","create_revision":"5","mod_revision":"7","version":"2","value":"{}"}}"#,
                B64.encode(k),
                B64.encode(v)
            )
        };
        let body = format!(
            r#"{{"header":{{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"9","raft_term":"2"}},
               "kvs":[{},{},{},{}],"count":"4"}}"#,
            kv("/services/web/a", "10.0.0.1:80"),
            kv("/services/web/b", r#"{"address": "[fd00::2]:80", "weight": 5, "tags": ["canary"]}"#),
            kv("/services/web/c", "10.0.0.3:80 priority=1"),
            kv("/services/web/dir", ""),
        );
        let got = r.parse_response(body.as_bytes()).unwrap();
        let addrs: Vec<_> = got.iter().map(|d| (d.address.as_str(), d.weight, d.priority)).collect();
        assert_eq!(addrs, [("10.0.0.1:80", 1, 0), ("[fd00::2]:80", 5, 0), ("10.0.0.3:80", 1, 1)]);
        assert_eq!(got[1].tags, ["canary"]);
    }

    #[test]
    fn empty_range_has_no_kvs_field() {
        let r = range(r#"{"endpoint": "http://etcd:2379", "prefix": "/x/"}"#);
        let body = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"9","raft_term":"2"}}"#;
        assert!(r.parse_response(body).unwrap().is_empty());
    }

    #[test]
    fn bad_values_name_the_key() {
        let r = range(r#"{"endpoint": "http://etcd:2379", "prefix": "/x/"}"#);
        let body =
            format!(r#"{{"kvs":[{{"key":"{}","value":"{}"}}]}}"#, B64.encode("/x/a"), B64.encode("not-an-address"));
        let Err(Error::Other(m)) = r.parse_response(body.as_bytes()) else { panic!() };
        assert_eq!(m, "key `/x/a`: `not-an-address` is not `host:port`");
        let body =
            format!(r#"{{"kvs":[{{"key":"{}","value":"{}"}}]}}"#, B64.encode("/x/b"), B64.encode(r#"{"weight": 2}"#));
        let Err(Error::Other(m)) = r.parse_response(body.as_bytes()) else { panic!() };
        assert!(m.starts_with("key `/x/b`: JSON value: missing field `address`"), "{m}");
        let Err(Error::Other(m)) = r.parse_response(br#"{"kvs":[{"key":"%%%","value":""}]}"#) else { panic!() };
        assert!(m.starts_with("etcd answered a key that is not base64"), "{m}");
        let Err(Error::Other(m)) = r.parse_response(b"<html>") else { panic!() };
        assert!(m.starts_with("http://etcd:2379/v3/kv/range: not an etcd range response"), "{m}");
    }

    #[test]
    fn bad_configs() {
        assert!(err(r#"{"prefix": "/x/"}"#).contains("missing field `endpoint`"));
        assert!(err(r#"{"endpoint": "127.0.0.1:2379", "prefix": "/x/"}"#).starts_with("endpoint: "));
        assert!(err(r#"{"endpoint": "http://e:2379", "prefix": ""}"#).starts_with("prefix: "));
        assert!(err(r#"{"endpoint": "http://e:2379", "prefix": "/x/", "keys": 1}"#).contains("unknown field `keys`"));
    }
}
