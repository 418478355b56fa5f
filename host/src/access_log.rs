//! The access log: one line per HTTP request (when its response body ends),
//! TCP connection (when it closes) or UDP session (when it ends), with the
//! fields a listener's config names, logged at `info` under the
//! `weir::access` target (so it can be filtered, and follows
//! `--log-format json`).

use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A field of an access-log line: a name from the list below, or
/// `header:NAME` for a request header's value (logged as `header.NAME=`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Field {
    /// Client `ip:port`.
    Client,
    /// Listener name.
    Listener,
    /// HTTP method.
    Method,
    /// HTTP host.
    Host,
    /// HTTP path and query.
    Path,
    /// How the pool was chosen: `default` (no router), `router`,
    /// `no-match`, `respond` (the router answered) or `router-failed-open`.
    Route,
    /// The pool the request or connection went to.
    Pool,
    /// The backend that served it.
    Backend,
    /// HTTP status sent to the client.
    Status,
    /// Response body bytes sent to the client (HTTP), or reply bytes (UDP).
    BytesOut,
    /// Time from the request head to the end of the response body, or the
    /// connection's life (TCP), in milliseconds.
    DurationMs,
    /// Time until the backend's response head (HTTP), in milliseconds.
    HeadMs,
    /// The request id (`x-request-id`).
    RequestId,
    /// What went wrong, when something did.
    Error,
    /// A request header's value (HTTP; empty when the request has none).
    Header(http::HeaderName),
}

/// The names a field may have, for the error that lists them.
const FIELD_NAMES: &str = "client, listener, method, host, path, route, pool, backend, status, bytes_out, \
                           duration_ms, head_ms, request_id, error or header:NAME";

impl TryFrom<String> for Field {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Ok(match name.as_str() {
            "client" => Field::Client,
            "listener" => Field::Listener,
            "method" => Field::Method,
            "host" => Field::Host,
            "path" => Field::Path,
            "route" => Field::Route,
            "pool" => Field::Pool,
            "backend" => Field::Backend,
            "status" => Field::Status,
            "bytes_out" => Field::BytesOut,
            "duration_ms" => Field::DurationMs,
            "head_ms" => Field::HeadMs,
            "request_id" => Field::RequestId,
            "error" => Field::Error,
            other => match other.strip_prefix("header:") {
                Some(h) => Field::Header(
                    http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("`{h}` is not a header name"))?,
                ),
                None => return Err(format!("unknown field `{other}`, expected {FIELD_NAMES}")),
            },
        })
    }
}

/// The fields logged when a listener turns the log on without naming any.
pub const DEFAULT_FIELDS: [Field; 12] = [
    Field::Client,
    Field::Listener,
    Field::Method,
    Field::Host,
    Field::Path,
    Field::Route,
    Field::Pool,
    Field::Backend,
    Field::Status,
    Field::BytesOut,
    Field::DurationMs,
    Field::RequestId,
];

/// One request's or connection's entry, filled in as it goes and written
/// when dropped (so an entry is never lost, whatever path the work took).
#[derive(Debug)]
pub struct Entry {
    fields: Arc<[Field]>,
    started: Instant,
    /// Client `ip:port`.
    pub client: String,
    /// Listener name.
    pub listener: Arc<str>,
    /// HTTP method.
    pub method: String,
    /// HTTP host.
    pub host: String,
    /// HTTP path and query.
    pub path: String,
    /// How the pool was chosen.
    pub route: &'static str,
    /// Pool name.
    pub pool: String,
    /// Backend address.
    pub backend: String,
    /// HTTP status (0: none).
    pub status: u16,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Time to the response head.
    pub head: Option<Duration>,
    /// Request id.
    pub request_id: String,
    /// What went wrong.
    pub error: String,
    /// The values of the `header:NAME` fields, in their order.
    pub headers: Vec<String>,
}

impl Entry {
    /// An entry for work starting now.
    pub fn new(fields: Arc<[Field]>, listener: Arc<str>, client: String) -> Self {
        Self {
            fields,
            started: Instant::now(),
            client,
            listener,
            method: String::new(),
            host: String::new(),
            path: String::new(),
            route: "",
            pool: String::new(),
            backend: String::new(),
            status: 0,
            bytes_out: 0,
            head: None,
            request_id: String::new(),
            error: String::new(),
            headers: Vec::new(),
        }
    }

    /// Keep the values of the `header:NAME` fields from a request's headers.
    pub fn capture_headers(&mut self, headers: &http::HeaderMap) {
        for field in self.fields.iter() {
            if let Field::Header(name) = field {
                let value = headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                self.headers.push(value.unwrap_or_default());
            }
        }
    }

    /// The line, `key=value` pairs in the configured order; values with
    /// spaces or quotes are quoted.
    pub fn line(&self) -> String {
        let mut line = String::new();
        let mut headers = self.headers.iter();
        for field in self.fields.iter() {
            let header_key;
            let (key, value) = match field {
                Field::Client => ("client", self.client.clone()),
                Field::Listener => ("listener", self.listener.to_string()),
                Field::Method => ("method", self.method.clone()),
                Field::Host => ("host", self.host.clone()),
                Field::Path => ("path", self.path.clone()),
                Field::Route => ("route", self.route.to_string()),
                Field::Pool => ("pool", self.pool.clone()),
                Field::Backend => ("backend", self.backend.clone()),
                Field::Status => ("status", self.status.to_string()),
                Field::BytesOut => ("bytes_out", self.bytes_out.to_string()),
                Field::DurationMs => ("duration_ms", format!("{:.3}", self.started.elapsed().as_secs_f64() * 1e3)),
                Field::HeadMs => {
                    ("head_ms", self.head.map_or(String::new(), |d| format!("{:.3}", d.as_secs_f64() * 1e3)))
                }
                Field::RequestId => ("request_id", self.request_id.clone()),
                Field::Error => ("error", self.error.clone()),
                Field::Header(name) => {
                    header_key = format!("header.{name}");
                    (header_key.as_str(), headers.next().cloned().unwrap_or_default())
                }
            };
            if !line.is_empty() {
                line.push(' ');
            }
            if value.is_empty() || value.contains([' ', '"', '=']) {
                let _ = write!(line, "{key}={value:?}");
            } else {
                let _ = write!(line, "{key}={value}");
            }
        }
        line
    }
}

/// The access-log entry of one connection, session or request, when its
/// listener logs; every change is skipped (and costs nothing) when it does not.
#[derive(Debug, Default)]
pub struct Line(Option<Entry>);

impl Line {
    /// A line for work from `client` starting now, when `fields` are logged.
    pub fn new(fields: Option<&Arc<[Field]>>, listener: &Arc<str>, client: std::net::SocketAddr) -> Self {
        Self(fields.map(|f| Entry::new(f.clone(), listener.clone(), client.to_string())))
    }

    /// Change the entry, when there is one.
    pub fn set(&mut self, change: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.0.as_mut() {
            change(entry);
        }
    }

    /// Say what went wrong.
    pub fn error(&mut self, why: impl std::fmt::Display) {
        self.set(|e| e.error = why.to_string());
    }

    /// The entry, to be written when something else ends (an HTTP
    /// response body); this line writes nothing after.
    pub fn take(&mut self) -> Option<Entry> {
        self.0.take()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        tracing::info!(target: "weir::access", "{}", self.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_in_the_configured_order_and_odd_values_are_quoted() {
        let mut e =
            Entry::new(Arc::from([Field::Status, Field::Path, Field::Error]), "web".into(), "127.0.0.1:9".into());
        e.status = 502;
        e.path = "/a b".into();
        assert_eq!(e.line(), r#"status=502 path="/a b" error="""#);
        std::mem::forget(e);
    }

    #[test]
    fn header_fields_log_the_request_headers_values() {
        let fields: Vec<Field> = ["path", "header:X-Region", "header:x-missing"]
            .into_iter()
            .map(|f| Field::try_from(f.to_string()).unwrap())
            .collect();
        let mut e = Entry::new(Arc::from(fields), "web".into(), "127.0.0.1:9".into());
        let mut headers = http::HeaderMap::new();
        headers.insert("x-region", http::HeaderValue::from_static("eu west"));
        e.path = "/".into();
        e.capture_headers(&headers);
        assert_eq!(e.line(), r#"path=/ header.x-region="eu west" header.x-missing="""#);
        std::mem::forget(e);
        let bad = Field::try_from("header:bad name".to_string()).unwrap_err();
        assert!(bad.contains("not a header name"), "{bad}");
        let unknown = Field::try_from("bytes".to_string()).unwrap_err();
        assert!(unknown.contains("header:NAME"), "{unknown}");
    }
}
