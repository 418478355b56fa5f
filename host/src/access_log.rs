//! The access log: one line per HTTP request (when its response body ends),
//! TCP connection (when it closes) or UDP session (when it ends), with the
//! fields a listener's config names.
//!
//! Where lines go is process-wide (`[access_log]`, a [`Sink`]): by default
//! into the application log at `info` under the `weir::access` target (so
//! `--log-level` filters it); with `file`, appended to that file, which
//! [`reopen`] (SIGUSR1) opens again after logrotate renamed it. Formats:
//! `logfmt` (`key=value`), `json` (one object per line, typed fields) and
//! `combined` (nginx's and Apache's). A line is one `write(2)` on an
//! `O_APPEND` file, so lines of different threads never interleave and a
//! rename loses none: lines before the reopen land in the renamed file,
//! later ones in the new. The write blocks the event loop for the time a
//! page-cache write takes, as nginx's access log does.

use arc_swap::ArcSwap;
use serde::Deserialize;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `key=value` pairs in the configured order (values with spaces or
    /// quotes quoted).
    Logfmt,
    /// One JSON object per line: `timestamp` and the configured fields,
    /// numbers as numbers.
    Json,
    /// nginx's and Apache's `combined`: `client - - [time] "request"
    /// status bytes "referer" "user-agent"` (a fixed set of fields).
    Combined,
}

/// Where access-log lines go, and in which format.
#[derive(Debug)]
pub struct Sink {
    format: Format,
    target: Target,
}

#[derive(Debug)]
enum Target {
    /// The application log (stderr), `weir::access` at `info`.
    Log,
    /// A file, opened for appending; reopened by [`reopen`].
    File { path: PathBuf, file: ArcSwap<std::fs::File> },
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Whether the application log is JSON (`--log-format json`): the access
/// log then defaults to JSON too.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Say that the application log is JSON (before any config is applied).
pub fn set_json_logs(json: bool) {
    JSON_LOGS.store(json, std::sync::atomic::Ordering::Relaxed);
}

static SINK: LazyLock<ArcSwap<Sink>> =
    LazyLock::new(|| ArcSwap::from_pointee(Sink { format: Format::Logfmt, target: Target::Log }));

impl Sink {
    /// The sink `[access_log]` asks for (`file` relative to `base`),
    /// keeping the open file of `current` when it names the same path.
    /// Fails when the file cannot be opened for appending.
    pub fn new(file: Option<&str>, format: Option<Format>, base: &Path) -> std::io::Result<Arc<Sink>> {
        let json = JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed);
        let format = format.unwrap_or(if json { Format::Json } else { Format::Logfmt });
        let target = match file {
            None => Target::Log,
            Some(f) => {
                let path = base.join(f);
                let current = SINK.load();
                let file = match &current.target {
                    Target::File { path: p, file } if *p == path => file.load_full(),
                    _ => Arc::new(open_append(&path)?),
                };
                Target::File { path, file: ArcSwap::new(file) }
            }
        };
        Ok(Arc::new(Sink { format, target }))
    }

    /// Make this the sink every line goes to from now on.
    pub fn install(self: Arc<Self>) {
        SINK.store(self);
    }
}

/// Open the access-log file again (after logrotate renamed it): lines
/// written from now on go to a new file at the configured path. Returns
/// the path, or `None` when the log goes to stderr.
pub fn reopen() -> Option<std::io::Result<PathBuf>> {
    let sink = SINK.load();
    let Target::File { path, file } = &sink.target else { return None };
    Some(open_append(path).map(|f| {
        file.store(Arc::new(f));
        path.clone()
    }))
}

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
    /// HTTP version of the request (`HTTP/1.1`, `HTTP/2.0`).
    pub version: &'static str,
    /// `User-Agent` and `Referer` (kept for the `combined` format).
    pub agent_and_referer: Option<(String, String)>,
}

/// A field's value: text, a number, or nothing known.
enum Value {
    Text(String),
    Integer(u64),
    Millis(Duration),
    Null,
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
            version: "",
            agent_and_referer: None,
        }
    }

    /// Keep what the line needs of a request's headers: the values of the
    /// `header:NAME` fields, and for `combined` the user agent and referer.
    pub fn capture_headers(&mut self, headers: &http::HeaderMap) {
        let text =
            |name: &http::HeaderName| headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        for field in self.fields.iter() {
            if let Field::Header(name) = field {
                self.headers.push(text(name).unwrap_or_default());
            }
        }
        if SINK.load().format == Format::Combined {
            let (agent, referer) = (text(&http::header::USER_AGENT), text(&http::header::REFERER));
            self.agent_and_referer = Some((agent.unwrap_or_default(), referer.unwrap_or_default()));
        }
    }

    /// The configured fields in order, as key and value.
    fn values(&self) -> impl Iterator<Item = (std::borrow::Cow<'static, str>, Value)> + '_ {
        use std::borrow::Cow::{Borrowed, Owned};
        let mut headers = self.headers.iter();
        let text = |s: &str| Value::Text(s.to_string());
        self.fields.iter().map(move |field| match field {
            Field::Client => (Borrowed("client"), text(&self.client)),
            Field::Listener => (Borrowed("listener"), text(&self.listener)),
            Field::Method => (Borrowed("method"), text(&self.method)),
            Field::Host => (Borrowed("host"), text(&self.host)),
            Field::Path => (Borrowed("path"), text(&self.path)),
            Field::Route => (Borrowed("route"), text(self.route)),
            Field::Pool => (Borrowed("pool"), text(&self.pool)),
            Field::Backend => (Borrowed("backend"), text(&self.backend)),
            Field::Status => (Borrowed("status"), Value::Integer(self.status.into())),
            Field::BytesOut => (Borrowed("bytes_out"), Value::Integer(self.bytes_out)),
            Field::DurationMs => (Borrowed("duration_ms"), Value::Millis(self.started.elapsed())),
            Field::HeadMs => (Borrowed("head_ms"), self.head.map_or(Value::Null, Value::Millis)),
            Field::RequestId => (Borrowed("request_id"), text(&self.request_id)),
            Field::Error => (Borrowed("error"), text(&self.error)),
            Field::Header(name) => (Owned(format!("header.{name}")), text(headers.next().map_or("", |h| h.as_str()))),
        })
    }

    /// The `logfmt` line: `key=value` pairs in the configured order; values
    /// with spaces, quotes or `=`, and empty ones, are quoted.
    pub fn line(&self) -> String {
        let mut line = String::new();
        for (key, value) in self.values() {
            if !line.is_empty() {
                line.push(' ');
            }
            let _ = match value {
                Value::Text(v) if v.is_empty() || v.contains([' ', '"', '=']) => write!(line, "{key}={v:?}"),
                Value::Text(v) => write!(line, "{key}={v}"),
                Value::Integer(n) => write!(line, "{key}={n}"),
                Value::Millis(d) => write!(line, "{key}={:.3}", d.as_secs_f64() * 1e3),
                Value::Null => write!(line, "{key}=\"\""),
            };
        }
        line
    }

    /// The `json` object: `timestamp` and the configured fields, typed.
    fn json(&self, time: SystemTime) -> serde_json::Map<String, serde_json::Value> {
        let mut object = serde_json::Map::new();
        object.insert("timestamp".into(), humantime::format_rfc3339_micros(time).to_string().into());
        for (key, value) in self.values() {
            let value = match value {
                Value::Text(v) => v.into(),
                Value::Integer(n) => n.into(),
                Value::Millis(d) => ((d.as_secs_f64() * 1e6).round() / 1e3).into(),
                Value::Null => serde_json::Value::Null,
            };
            object.insert(key.into_owned(), value);
        }
        object
    }

    /// The `combined` line. TCP connections and UDP sessions have no
    /// request line or status: `"-"` and `-`, as Apache writes them.
    fn combined(&self, time: SystemTime) -> String {
        let ip = self.client.parse::<std::net::SocketAddr>().map_or(self.client.clone(), |a| a.ip().to_string());
        let request = if self.method.is_empty() {
            "-".to_string()
        } else {
            format!("{} {} {}", self.method, self.path, self.version)
        };
        let status = if self.status == 0 { "-".to_string() } else { self.status.to_string() };
        let (agent, referer) = self.agent_and_referer.clone().unwrap_or_default();
        let dash = |s: String| if s.is_empty() { "-".to_string() } else { s.replace('"', "\\\"") };
        format!(
            "{ip} - - [{}] \"{}\" {status} {} \"{}\" \"{}\"",
            clf_time(time),
            request.replace('"', "\\\""),
            self.bytes_out,
            dash(referer),
            dash(agent)
        )
    }

    /// Write the entry where the sink says.
    fn write(&self) {
        let sink = SINK.load();
        let now = SystemTime::now();
        match &sink.target {
            Target::Log => {
                if !tracing::enabled!(target: "weir::access", tracing::Level::INFO) {
                    return;
                }
                match sink.format {
                    Format::Logfmt => tracing::info!(target: "weir::access", "{}", self.line()),
                    // Written whole to stderr, so the fields stay fields
                    // (tracing would make the line one quoted message).
                    Format::Json => {
                        let mut object = self.json(now);
                        object.insert("level".into(), "INFO".into());
                        object.insert("target".into(), "weir::access".into());
                        let mut text = serde_json::Value::Object(object).to_string();
                        text.push('\n');
                        let _ = std::io::stderr().write_all(text.as_bytes());
                    }
                    Format::Combined => {
                        let _ = std::io::stderr().write_all(format!("{}\n", self.combined(now)).as_bytes());
                    }
                }
            }
            Target::File { file, .. } => {
                let mut text = match sink.format {
                    Format::Logfmt => format!("time={} {}", humantime::format_rfc3339_micros(now), self.line()),
                    Format::Json => serde_json::Value::Object(self.json(now)).to_string(),
                    Format::Combined => self.combined(now),
                };
                text.push('\n');
                let file = file.load();
                if let Err(e) = (&**file).write_all(text.as_bytes()) {
                    tracing::warn!("access log: {e}");
                }
            }
        }
    }
}

/// A time as the common log format writes it: `07/Dec/2026:03:55:36 +0000`.
fn clf_time(time: SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    // `2026-12-07T03:55:36Z`
    let t = humantime::format_rfc3339_seconds(time).to_string();
    let month = t[5..7].parse::<usize>().map_or("Jan", |m| MONTHS[(m.clamp(1, 12)) - 1]);
    format!("{}/{month}/{}:{} +0000", &t[8..10], &t[0..4], &t[11..19])
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
        self.write();
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

    #[test]
    fn json_fields_are_typed_and_combined_is_the_common_log_format_plus_two() {
        let fields = [Field::Client, Field::Status, Field::BytesOut, Field::HeadMs, Field::Path];
        let mut e = Entry::new(Arc::from(fields), "web".into(), "127.0.0.1:9".into());
        (e.status, e.bytes_out, e.method, e.path, e.version) = (200, 512, "GET".into(), "/a \"b\"".into(), "HTTP/1.1");
        e.agent_and_referer = Some(("curl/8.0".into(), String::new()));
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_765_078_536);
        let json = serde_json::Value::Object(e.json(at));
        assert_eq!(json["timestamp"], "2025-12-07T03:35:36.000000Z");
        assert_eq!((json["status"].as_u64(), json["bytes_out"].as_u64()), (Some(200), Some(512)));
        assert_eq!(
            (&json["head_ms"], &json["client"], &json["path"]),
            (&serde_json::Value::Null, &"127.0.0.1:9".into(), &"/a \"b\"".into())
        );
        assert_eq!(
            e.combined(at),
            r#"127.0.0.1 - - [07/Dec/2025:03:35:36 +0000] "GET /a \"b\" HTTP/1.1" 200 512 "-" "curl/8.0""#
        );
        // A TCP connection has no request line nor status.
        (e.method, e.status) = (String::new(), 0);
        assert!(e.combined(at).contains(r#"] "-" - 512 "-""#), "{}", e.combined(at));
        std::mem::forget(e);
    }
}
