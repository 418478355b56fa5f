//! Bundled health checker `check-http`: an HTTP request to the backend,
//! healthy when the status is in the expected ranges and the body holds the
//! expected substring and matches the expected regex (each when configured).
//!
//! ```toml
//! [plugins.http-up]
//! source = "builtin:check-http"
//! config = { path = "/healthz", host = "api.example.com", status = ["200-299"], body_contains = "ok" }
//! ```

use regex::Regex;
use serde::Deserialize;
use std::time::Duration;
use weir_sdk::health::*;

/// One expected status: `200`, `"204"` or an inclusive range `"200-399"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StatusSpec {
    Code(u16),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "get")]
    method: String,
    #[serde(default = "root")]
    path: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    status: Option<Vec<StatusSpec>>,
    #[serde(default)]
    body_contains: Option<String>,
    #[serde(default)]
    body_regex: Option<String>,
    #[serde(default)]
    timeout_ms: u32,
}

fn get() -> String {
    "GET".into()
}

fn root() -> String {
    "/".into()
}

/// What a check sends and expects, validated.
#[derive(Debug)]
pub struct Check {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    status: Vec<(u16, u16)>,
    body_contains: Option<String>,
    body_regex: Option<Regex>,
    timeout: Duration,
}

fn parse_status(i: usize, spec: &StatusSpec) -> Result<(u16, u16), String> {
    let bad =
        |what: &str| format!("status[{i}]: `{what}` is not a status (`200`) or a range (`200-399`) within 100-599");
    let (lo, hi) = match spec {
        StatusSpec::Code(c) => (*c, *c),
        StatusSpec::Text(t) => {
            let (lo, hi) = t.split_once('-').unwrap_or((t, t));
            match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                (Ok(lo), Ok(hi)) => (lo, hi),
                _ => return Err(bad(t)),
            }
        }
    };
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        let text = match spec {
            StatusSpec::Code(c) => c.to_string(),
            StatusSpec::Text(t) => t.clone(),
        };
        return Err(bad(&text));
    }
    Ok((lo, hi))
}

impl Check {
    /// Validate the JSON config.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let invalid = |m: String| Error::InvalidConfig(m);
        let method = s.method.trim().to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(invalid(format!("method: `{}` is not an HTTP method", s.method)));
        }
        if !s.path.starts_with('/') {
            return Err(invalid(format!("path: `{}` must start with `/`", s.path)));
        }
        let mut headers = s.headers;
        if let Some(host) = s.host {
            if host.is_empty() {
                return Err(invalid("host: must not be empty (leave it out to send the backend's address)".into()));
            }
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("host"));
            headers.push(("host".into(), host));
        }
        let status = match s.status {
            None => vec![(200, 399)],
            Some(list) if list.is_empty() => {
                return Err(invalid("status: must list at least one status or range".into()))
            }
            Some(list) => list.iter().enumerate().map(|(i, s)| parse_status(i, s)).collect::<Result<_, _>>()?,
        };
        let body_regex =
            s.body_regex.map(|r| Regex::new(&r).map_err(|e| invalid(format!("body_regex: {e}")))).transpose()?;
        Ok(Self {
            method,
            path: s.path,
            headers,
            status,
            body_contains: s.body_contains,
            body_regex,
            timeout: Duration::from_millis(s.timeout_ms as u64),
        })
    }

    /// The URL checked on a backend at `address` (`host:port`).
    pub fn url(&self, address: &str) -> String {
        format!("http://{address}{}", self.path)
    }

    /// Judge a response.
    pub fn judge(&self, status: u16, body: &[u8]) -> Health {
        if !self.status.iter().any(|&(lo, hi)| (lo..=hi).contains(&status)) {
            let want: Vec<String> = self
                .status
                .iter()
                .map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") })
                .collect();
            return unhealthy(format!("HTTP {status}, expected {}", want.join(", ")));
        }
        if self.body_contains.is_none() && self.body_regex.is_none() {
            return Health::Healthy;
        }
        let body = String::from_utf8_lossy(body);
        if let Some(needle) = &self.body_contains {
            if !body.contains(needle.as_str()) {
                return unhealthy(format!("HTTP {status}: body does not contain `{needle}`"));
            }
        }
        if let Some(re) = &self.body_regex {
            if !re.is_match(&body) {
                return unhealthy(format!("HTTP {status}: body does not match `{}`", re.as_str()));
            }
        }
        Health::Healthy
    }
}

struct CheckHttp(Check);

impl HealthChecker for CheckHttp {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(Check::from_config(&config)?))
    }

    fn check(&mut self, target: &Backend) -> Result<Health, Error> {
        let c = &self.0;
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match io::http_request(&c.method, &c.url(&target.address), &headers, &[], c.timeout) {
            Ok(resp) => Ok(c.judge(resp.status, &resp.body)),
            Err(e) => unhealthy_from(e),
        }
    }
}

weir_sdk::export_health_checker!(CheckHttp);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Check {
        Check::from_config(&Config::from_json(json.into())).unwrap()
    }

    fn err(json: &str) -> String {
        match Check::from_config(&Config::from_json(json.into())) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    fn healthy(h: Health) -> bool {
        matches!(h, Health::Healthy)
    }

    fn reason(h: Health) -> String {
        match h {
            Health::Unhealthy(r) => r,
            Health::Healthy => panic!("expected unhealthy"),
        }
    }

    #[test]
    fn defaults() {
        let c = check("{}");
        assert_eq!(c.method, "GET");
        assert_eq!(c.url("10.0.0.1:8080"), "http://10.0.0.1:8080/");
        assert_eq!(c.url("[::1]:80"), "http://[::1]:80/");
        assert!(c.headers.is_empty());
        assert!(healthy(c.judge(200, b"")));
        assert!(healthy(c.judge(302, b"")));
        assert_eq!(reason(c.judge(404, b"")), "HTTP 404, expected 200-399");
        assert!(!healthy(c.judge(199, b"")));
    }

    #[test]
    fn configured_request() {
        let c = check(
            r#"{"method": "head", "path": "/healthz?full=1", "host": "api.example.com",
                "headers": [["Host", "ignored"], ["x-check", "weir"]]}"#,
        );
        assert_eq!(c.method, "HEAD");
        assert_eq!(c.url("b:81"), "http://b:81/healthz?full=1");
        assert_eq!(c.headers, [("x-check".to_string(), "weir".to_string()), ("host".into(), "api.example.com".into())]);
    }

    #[test]
    fn status_lists() {
        let c = check(r#"{"status": ["200-204", 301, "418"]}"#);
        assert!(healthy(c.judge(204, b"")));
        assert!(healthy(c.judge(301, b"")));
        assert!(healthy(c.judge(418, b"")));
        assert_eq!(reason(c.judge(205, b"")), "HTTP 205, expected 200-204, 301, 418");
    }

    #[test]
    fn body_checks() {
        let c = check(r#"{"body_contains": "\"status\":\"UP\"", "body_regex": "version\":\\s*\"2\\."}"#);
        assert!(healthy(c.judge(200, br#"{"status":"UP","version": "2.4"}"#)));
        assert!(reason(c.judge(200, br#"{"status":"DOWN","version":"2.4"}"#)).contains("does not contain"));
        assert!(reason(c.judge(200, br#"{"status":"UP","version":"3.0"}"#)).contains("does not match"));
        // Status is judged before the body.
        assert!(reason(c.judge(500, br#"{"status":"UP"}"#)).starts_with("HTTP 500"));
        // Bodies that are not UTF-8 are matched lossily rather than failing.
        let c = check(r#"{"body_contains": "ok"}"#);
        assert!(healthy(c.judge(200, b"\xff ok")));
    }

    #[test]
    fn bad_configs() {
        assert!(err(r#"{"path": "healthz"}"#).starts_with("path: "));
        assert!(err(r#"{"method": "GE T"}"#).starts_with("method: "));
        assert!(err(r#"{"host": ""}"#).starts_with("host: "));
        assert_eq!(
            err(r#"{"status": ["200-x"]}"#),
            "status[0]: `200-x` is not a status (`200`) or a range (`200-399`) within 100-599"
        );
        assert!(err(r#"{"status": ["399-200"]}"#).starts_with("status[0]: "));
        assert!(err(r#"{"status": [200, 700]}"#).starts_with("status[1]: "));
        assert!(err(r#"{"status": []}"#).starts_with("status: "));
        assert!(err(r#"{"body_regex": "("}"#).starts_with("body_regex: "));
        assert!(err(r#"{"expect": 200}"#).contains("unknown field `expect`"));
        assert!(err(r#"{"timeout_ms": -1}"#).starts_with("timeout_ms: "));
    }
}
