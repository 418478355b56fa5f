//! What the admin API answers and takes, as types, and its routes as one
//! table: the dispatcher matches requests against [`ROUTES`] and the OpenAPI
//! document (`GET /openapi.json`, `weir openapi`) is built from the same
//! table and the types' schemas (utoipa's `ToSchema`), so the description
//! cannot drift from what is served. A test in `tests/tests/admin.rs`
//! validates every route's real answers against the document.

use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Ref, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, RefOr, Required, ResponseBuilder,
};
use utoipa::ToSchema;

/// An error: what went wrong (4xx, 5xx).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// `GET /`: the process.
#[derive(Debug, Serialize, ToSchema)]
pub struct About {
    /// `weir`.
    pub name: &'static str,
    /// weir's version.
    pub version: &'static str,
    /// Seconds since the process started.
    pub uptime_secs: u64,
    /// The process id (it changes with `weir upgrade`).
    pub pid: u32,
    /// Load shedding now.
    pub overload: Overload,
    /// The wasmtime major version plugins run on.
    pub wasmtime: &'static str,
}

/// What load shedding sees now and has refused so far.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overload {
    /// Reasons new work is refused for now (`loop_lag`, `plugin_time`, `memory`).
    pub refusing: Vec<&'static str>,
    /// Connections and requests refused so far, by reason.
    pub shed: BTreeMap<String, u64>,
    /// The longest an event loop has gone without its ticker, when watched.
    pub loop_lag_ms: Option<f64>,
    /// Mean plugin call time over the last sample.
    pub plugin_call_mean_us: f64,
    /// Resident memory at the last sample.
    pub resident_bytes: u64,
    /// The configured limits (`runtime.shed_*`; null: not watched).
    pub limits: OverloadLimits,
}

/// `runtime.shed_*`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverloadLimits {
    /// `shed_loop_lag`.
    pub loop_lag_ms: Option<f64>,
    /// `shed_plugin_time`.
    pub plugin_time_us: Option<f64>,
    /// `shed_memory`.
    pub memory_bytes: Option<u64>,
}

/// A listener's protocol.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// TCP.
    Tcp,
    /// TLS (terminated or passed through).
    Tls,
    /// HTTP/1.1 and h2c.
    Http,
    /// HTTP over TLS.
    Https,
    /// UDP sessions.
    Udp,
}

/// Counts by HTTP status class.
#[derive(Debug, Serialize, ToSchema)]
pub struct ByClass {
    /// 1xx.
    #[serde(rename = "1xx")]
    pub c1: u64,
    /// 2xx.
    #[serde(rename = "2xx")]
    pub c2: u64,
    /// 3xx.
    #[serde(rename = "3xx")]
    pub c3: u64,
    /// 4xx.
    #[serde(rename = "4xx")]
    pub c4: u64,
    /// 5xx.
    #[serde(rename = "5xx")]
    pub c5: u64,
}

impl ByClass {
    /// From a counter per class (1 to 5).
    pub fn of(count: impl Fn(u16) -> u64) -> Self {
        Self { c1: count(1), c2: count(2), c3: count(3), c4: count(4), c5: count(5) }
    }
}

/// A listener.
#[derive(Debug, Serialize, ToSchema)]
pub struct Listener {
    /// Its name in the config.
    pub name: String,
    /// The bound address.
    pub address: String,
    /// Its protocol.
    #[schema(value_type = ListenerProtocol)]
    pub protocol: &'static str,
    /// Its pool.
    pub pool: String,
    /// Client connections (UDP: sessions) open now.
    pub active_connections: u64,
    /// Client connections (UDP: sessions) accepted.
    pub connections: u64,
    /// HTTP responses sent, by status class.
    pub responses: ByClass,
    /// Median time from request head to response head (HTTP).
    pub response_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub response_p99_ms: Option<f64>,
    /// UDP: datagrams dropped (null on other listeners).
    pub dropped_datagrams: Option<u64>,
    /// TCP, TLS, HTTP: `max_connections` (null: no cap, or UDP).
    pub max_connections: Option<u64>,
    /// TCP, TLS, HTTP: `max_connections_per_client` (null: no cap, or UDP).
    pub max_connections_per_client: Option<u64>,
    /// TCP, TLS, HTTP: connections closed at the per-client cap (null on UDP).
    pub refused_connections: Option<u64>,
    /// TCP, TLS, HTTP: times accepting paused at a cap (null on UDP).
    pub accept_paused: Option<u64>,
}

/// A pool, in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolSummary {
    /// Its name.
    pub name: String,
    /// Its balancer (a plugin instance, or `native:round-robin`).
    pub balancer: String,
    /// Backends in its member list.
    pub backends: usize,
    /// Of which healthy.
    pub healthy: usize,
}

/// A pool and its backends.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pool {
    /// Its name.
    pub name: String,
    /// Its balancer.
    pub balancer: String,
    /// The member-list version (+1 per change).
    pub version: u64,
    /// Retries made.
    pub retries: u64,
    /// Its backends.
    pub backends: Vec<Backend>,
}

/// A backend of a pool: health and live numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Backend {
    /// Its place in the member list (shifts when the list changes).
    pub slot: u32,
    /// `host:port`, which names it in the API.
    pub address: String,
    /// Relative weight.
    pub weight: u32,
    /// Priority group.
    pub priority: u32,
    /// Labels.
    pub tags: Vec<String>,
    /// May it get new work.
    pub healthy: bool,
    /// The active checks' verdict.
    pub checked_up: bool,
    /// Taken out by hand.
    pub disabled: bool,
    /// Out after `max_fails` failures (passive health).
    pub ejected: bool,
    /// Why the last check failed (empty: none did).
    pub last_check_failure: String,
    /// Health changes.
    pub health_transitions: u64,
    /// Connections, sessions and requests open now.
    pub active: u32,
    /// TCP connections and UDP sessions open now.
    pub active_connections: u32,
    /// HTTP requests in progress.
    pub active_requests: u32,
    /// `connections` + `requests`.
    pub total: u64,
    /// TCP connections and UDP sessions opened.
    pub connections: u64,
    /// HTTP requests sent.
    pub requests: u64,
    /// `connect_failures` + `failed_responses`.
    pub failures: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// HTTP responses with a status the pool counts as a failure.
    pub failed_responses: u64,
    /// Bytes from the backend (HTTP: bodies).
    pub rx_bytes: u64,
    /// Bytes to the backend (HTTP: bodies).
    pub tx_bytes: u64,
    /// Recent bytes per second, both ways.
    pub bytes_per_sec: u64,
    /// Recent latency (peak-EWMA), microseconds.
    pub latency_us: u32,
    /// HTTP responses, by status class.
    pub responses: ByClass,
}

/// A canary generation serving a share of the calls.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rollout {
    /// The generation rolling out.
    pub generation: u64,
    /// Its share of calls.
    pub percent: u32,
    /// Calls it made.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
}

/// A plugin instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Plugin {
    /// Its name.
    pub name: String,
    /// The phase it serves.
    pub world: &'static str,
    /// Where its component came from (`builtin:NAME`, a path, `upload`).
    pub source: String,
    /// Short content hash of the component.
    pub hash: String,
    /// Generation in use (1, then +1 per swap).
    pub generation: u64,
    /// When that generation went live, Unix seconds.
    pub loaded_at: u64,
    /// Calls made.
    pub calls: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Calls that trapped.
    pub traps: u64,
    /// Calls stopped at their deadline.
    pub timeouts: u64,
    /// Calls stopped at the memory limit.
    pub memory_exceeded: u64,
    /// Answers the host could not use.
    pub bad_answers: u64,
    /// Wasm instances made.
    pub instances_created: u64,
    /// A canary rolling out, if any.
    pub rollout: Option<Rollout>,
    /// Median call time.
    pub call_p50_us: Option<f64>,
    /// 99th percentile call time.
    pub call_p99_us: Option<f64>,
}

/// `PUT /plugins/{name}`: the generation now serving.
#[derive(Debug, Serialize, ToSchema)]
pub struct Swapped {
    /// The plugin instance.
    pub name: String,
    /// The new generation.
    pub generation: u64,
    /// Its content hash.
    pub hash: String,
    /// Time to compile, check, link and instantiate it.
    pub swap_ms: f64,
    /// The canary's share of calls, when rolled out.
    pub rollout: Option<u32>,
}

/// `POST /upgrade`: the process that took over.
#[derive(Debug, Serialize, ToSchema)]
pub struct Upgraded {
    /// The new process.
    pub pid: u32,
    /// This one, which drains and stops.
    pub previous: u32,
    /// Changes made only through this API that the new process lacks.
    pub not_carried_over: Vec<String>,
}

/// A backend changed by hand.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackendChanged {
    /// The backend.
    pub address: String,
    /// Its weight now (weight changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Whether it is disabled now (enable, disable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Its slot (additions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// It left the pool (removals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
}

/// `POST /pools/{name}/backends`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewBackend {
    /// `host:port`.
    pub address: String,
    /// Relative weight (default 1).
    pub weight: Option<u32>,
    /// Priority group (default 0).
    pub priority: Option<u32>,
    /// Labels.
    pub tags: Option<Vec<String>>,
}

/// `POST /pools/{name}/backends/{backend}/weight`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewWeight {
    /// The weight.
    pub weight: u32,
}

/// `POST /listeners`: the listener's name and any keys of `[listeners.NAME]`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewListener {
    /// Its name.
    pub name: String,
    /// Address to bind.
    pub bind: String,
    /// Its pool.
    pub pool: String,
    /// `tcp`, `tls`, `http`, `https` or `udp` (default `tcp`).
    #[schema(value_type = Option<ListenerProtocol>)]
    pub protocol: Option<String>,
}

/// The application log's filter (`RUST_LOG` syntax).
#[derive(Debug, Serialize, ToSchema)]
pub struct LogLevel {
    /// `info`, `debug`, `weir::access=off,info`, ...
    pub level: String,
}

/// The schemas a document collects, by name.
type Schemas = Vec<(String, RefOr<Schema>)>;

/// What a route answers or takes.
#[derive(Clone, Copy)]
pub enum Body {
    /// JSON of a type.
    Json(fn(&mut Schemas) -> RefOr<Schema>),
    /// Text of a media type.
    Text(&'static str),
    /// Bytes of a media type (a component upload).
    Bytes(&'static str),
}

fn json<T: ToSchema>(components: &mut Schemas) -> RefOr<Schema> {
    T::schemas(components);
    components.push((T::name().into_owned(), T::schema()));
    Ref::from_schema_name(T::name()).into()
}

fn list<T: ToSchema>(components: &mut Schemas) -> RefOr<Schema> {
    ArrayBuilder::new().items(json::<T>(components)).into()
}

/// The operations the API serves; [`ROUTES`] has one entry for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `Live` (see [`ROUTES`]).
    Live,
    /// `Ready` (see [`ROUTES`]).
    Ready,
    /// `About` (see [`ROUTES`]).
    About,
    /// `Metrics` (see [`ROUTES`]).
    Metrics,
    /// `Config` (see [`ROUTES`]).
    Config,
    /// `OpenApi` (see [`ROUTES`]).
    OpenApi,
    /// `Listeners` (see [`ROUTES`]).
    Listeners,
    /// `Listener` (see [`ROUTES`]).
    Listener,
    /// `AddListener` (see [`ROUTES`]).
    AddListener,
    /// `RemoveListener` (see [`ROUTES`]).
    RemoveListener,
    /// `Pools` (see [`ROUTES`]).
    Pools,
    /// `Pool` (see [`ROUTES`]).
    Pool,
    /// `Backend` (see [`ROUTES`]).
    Backend,
    /// `AddBackend` (see [`ROUTES`]).
    AddBackend,
    /// `RemoveBackend` (see [`ROUTES`]).
    RemoveBackend,
    /// `Disable` (see [`ROUTES`]).
    Disable,
    /// `Enable` (see [`ROUTES`]).
    Enable,
    /// `Weight` (see [`ROUTES`]).
    Weight,
    /// `Plugins` (see [`ROUTES`]).
    Plugins,
    /// `Plugin` (see [`ROUTES`]).
    Plugin,
    /// `PushPlugin` (see [`ROUTES`]).
    PushPlugin,
    /// `Reload` (see [`ROUTES`]).
    Reload,
    /// `Upgrade` (see [`ROUTES`]).
    Upgrade,
    /// `LogLevel` (see [`ROUTES`]).
    LogLevel,
    /// `SetLogLevel` (see [`ROUTES`]).
    SetLogLevel,
}

/// One route: method, path (`{name}` for a parameter), what it takes and answers.
pub struct Route {
    /// What it does.
    pub op: Op,
    /// The method.
    pub method: http::Method,
    /// The path, `{name}` segments standing for parameters.
    pub path: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// Whether it needs the token (when one is configured).
    pub auth: bool,
    /// The request body, if any.
    pub request: Option<Body>,
    /// Answers: status, what it means, the body.
    pub responses: &'static [(u16, &'static str, Body)],
}

const ERROR: Body = Body::Json(json::<ErrorBody>);

macro_rules! route {
    ($op:ident, $method:ident, $path:literal, $summary:literal, auth = $auth:literal, request = $request:expr, [$($status:literal => $what:literal, $body:expr);* $(;)?]) => {
        Route {
            op: Op::$op,
            method: http::Method::$method,
            path: $path,
            summary: $summary,
            auth: $auth,
            request: $request,
            responses: &[$(($status, $what, $body)),*],
        }
    };
}

/// Every route the admin API serves.
pub const ROUTES: &[Route] = &[
    route!(Live, GET, "/live", "Liveness probe (no token): the process answers", auth = false, request = None,
        [200 => "alive", Body::Text("text/plain")]),
    route!(Ready, GET, "/ready", "Readiness probe (no token): listeners bound, discovery and the first health round done, not draining", auth = false, request = None,
        [200 => "ready", Body::Text("text/plain"); 503 => "not ready: what it waits for, or draining", Body::Text("text/plain")]),
    route!(About, GET, "/", "The process: version, uptime, pid, load shedding", auth = true, request = None,
        [200 => "the process", Body::Json(json::<About>)]),
    route!(Metrics, GET, "/metrics", "Prometheus metrics", auth = true, request = None,
        [200 => "OpenMetrics text", Body::Text("application/openmetrics-text")]),
    route!(Config, GET, "/config", "The config text in force, secrets redacted", auth = true, request = None,
        [200 => "TOML", Body::Text("application/toml")]),
    route!(OpenApi, GET, "/openapi.json", "This document", auth = true, request = None,
        [200 => "OpenAPI 3.1", Body::Text("application/json")]),
    route!(Listeners, GET, "/listeners", "Every listener", auth = true, request = None,
        [200 => "the listeners", Body::Json(list::<Listener>)]),
    route!(Listener, GET, "/listeners/{name}", "One listener", auth = true, request = None,
        [200 => "the listener", Body::Json(json::<Listener>); 404 => "no such listener", ERROR]),
    route!(AddListener, POST, "/listeners", "Add a listener to the config in force (applied like a reload)", auth = true, request = Some(Body::Json(json::<NewListener>)),
        [201 => "added", Body::Json(json::<crate::server::ReloadSummary>); 400 => "the listener or the config it makes is wrong; nothing changed", ERROR; 409 => "a listener has that name", ERROR]),
    route!(RemoveListener, DELETE, "/listeners/{name}", "Remove a listener (its connections drain)", auth = true, request = None,
        [200 => "removed", Body::Json(json::<crate::server::ReloadSummary>); 400 => "nothing changed", ERROR; 404 => "no such listener", ERROR]),
    route!(Pools, GET, "/pools", "Every pool", auth = true, request = None,
        [200 => "the pools", Body::Json(list::<PoolSummary>)]),
    route!(Pool, GET, "/pools/{name}", "A pool and its backends", auth = true, request = None,
        [200 => "the pool", Body::Json(json::<Pool>); 404 => "no such pool", ERROR]),
    route!(Backend, GET, "/pools/{name}/backends/{backend}", "One backend, by address (or slot)", auth = true, request = None,
        [200 => "the backend", Body::Json(json::<Backend>); 404 => "no such pool or backend", ERROR]),
    route!(AddBackend, POST, "/pools/{name}/backends", "Add a backend (until the next reload or discovery answer)", auth = true, request = Some(Body::Json(json::<NewBackend>)),
        [201 => "added", Body::Json(json::<BackendChanged>); 400 => "not host:port, or a bad number", ERROR; 404 => "no such pool", ERROR; 409 => "the pool has it already", ERROR]),
    route!(RemoveBackend, DELETE, "/pools/{name}/backends/{backend}", "Remove a backend (work in flight finishes)", auth = true, request = None,
        [200 => "removed", Body::Json(json::<BackendChanged>); 404 => "no such pool or backend", ERROR]),
    route!(Disable, POST, "/pools/{name}/backends/{backend}/disable", "Take a backend out of rotation by hand", auth = true, request = None,
        [200 => "disabled", Body::Json(json::<BackendChanged>); 404 => "no such pool or backend", ERROR]),
    route!(Enable, POST, "/pools/{name}/backends/{backend}/enable", "Put a backend back into rotation", auth = true, request = None,
        [200 => "enabled", Body::Json(json::<BackendChanged>); 404 => "no such pool or backend", ERROR]),
    route!(Weight, POST, "/pools/{name}/backends/{backend}/weight", "Change a backend's weight", auth = true, request = Some(Body::Json(json::<NewWeight>)),
        [200 => "changed", Body::Json(json::<BackendChanged>); 400 => "not {\"weight\": N}", ERROR; 404 => "no such pool or backend", ERROR]),
    route!(Plugins, GET, "/plugins", "Every plugin instance", auth = true, request = None,
        [200 => "the plugin instances", Body::Json(list::<Plugin>)]),
    route!(Plugin, GET, "/plugins/{name}", "One plugin instance", auth = true, request = None,
        [200 => "the plugin instance", Body::Json(json::<Plugin>); 404 => "no such plugin instance", ERROR]),
    route!(PushPlugin, PUT, "/plugins/{name}", "Swap in a new component (query: rollout, max_failure_rate, promote_after)", auth = true, request = Some(Body::Bytes("application/wasm")),
        [200 => "swapped", Body::Json(json::<Swapped>); 400 => "init failed or a bad query; the old one serves", ERROR; 404 => "no such plugin instance", ERROR; 413 => "too large", ERROR; 422 => "not a component, wrong world or cannot link; the old one serves", ERROR]),
    route!(Reload, POST, "/reload", "Re-read the config file, or apply the TOML in the body", auth = true, request = Some(Body::Text("application/toml")),
        [200 => "applied", Body::Json(json::<crate::server::ReloadSummary>); 400 => "refused, with the error's file, line and key; the old config serves", ERROR]),
    route!(Upgrade, POST, "/upgrade", "Hand the sockets to a new process of the installed binary", auth = true, request = None,
        [200 => "the new process serves", Body::Json(json::<Upgraded>); 500 => "the new process could not take over; this one goes on", ERROR]),
    route!(LogLevel, GET, "/log-level", "The application log's filter", auth = true, request = None,
        [200 => "the filter", Body::Json(json::<LogLevel>); 404 => "an embedded server has no log of its own", ERROR]),
    route!(SetLogLevel, PUT, "/log-level", "Change the application log's filter (text, or {\"level\": ...})", auth = true, request = Some(Body::Json(json::<LogLevel>)),
        [200 => "changed", Body::Json(json::<LogLevel>); 400 => "not a filter", ERROR]),
];

/// Match `path` against the routes: the routes whose pattern it fits (one
/// per method) and the parameters it gives them.
pub fn lookup(path: &str) -> Vec<(&'static Route, Vec<String>)> {
    let path = path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).filter(|s| !s.is_empty()).collect();
    ROUTES
        .iter()
        .filter_map(|r| {
            let pattern: Vec<&str> = r.path.split('/').skip(1).filter(|s| !s.is_empty()).collect();
            if pattern.len() != segments.len() {
                return None;
            }
            let mut params = Vec::new();
            for (p, s) in pattern.iter().zip(&segments) {
                if p.starts_with('{') {
                    params.push(percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned());
                } else if p != s {
                    return None;
                }
            }
            Some((r, params))
        })
        .collect()
}

fn content(body: Body, components: &mut Schemas) -> (&'static str, utoipa::openapi::Content) {
    match body {
        Body::Json(schema) => ("application/json", ContentBuilder::new().schema(Some(schema(components))).build()),
        Body::Text(kind) => {
            (kind, ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::String))).build())
        }
        Body::Bytes(kind) => {
            (
                kind,
                ContentBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String).format(Some(
                        utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Binary),
                    ))))
                    .build(),
            )
        }
    }
}

fn method_of(m: &http::Method) -> HttpMethod {
    match *m {
        http::Method::POST => HttpMethod::Post,
        http::Method::PUT => HttpMethod::Put,
        http::Method::DELETE => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

/// The OpenAPI document of [`ROUTES`].
pub fn openapi() -> OpenApi {
    let mut components = Vec::new();
    let mut paths = Paths::new();
    for r in ROUTES {
        let mut op = OperationBuilder::new().summary(Some(r.summary)).operation_id(Some(format!("{:?}", r.op)));
        for segment in r.path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            let what = match name {
                "backend" => "the backend's address (`host:port`, percent-encoded where needed) or its slot",
                _ => "its name in the config",
            };
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .description(Some(what))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        if let Some(body) = r.request {
            let (kind, c) = content(body, &mut components);
            op = op
                .request_body(Some(RequestBodyBuilder::new().content(kind, c).required(Some(Required::True)).build()));
        }
        let mut responses = r.responses.to_vec();
        if r.auth {
            responses.push((401, "a bearer token is required", ERROR));
            op = op.security(SecurityRequirement::new::<_, _, &str>("bearer", []));
        }
        for (status, what, body) in responses {
            let (kind, c) = content(body, &mut components);
            op = op.response(status.to_string(), ResponseBuilder::new().description(what).content(kind, c).build());
        }
        paths.add_path_operation(r.path, vec![method_of(&r.method)], op.build());
    }
    let security = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
    let components = ComponentsBuilder::new().schemas_from_iter(components).security_scheme("bearer", security).build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("weir admin API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some("JSON over HTTP/1.1 on the [admin] listener. docs/admin-api.md says more.")),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_one_route_and_paths_find_them() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method.to_string(), r.path)), "{} {} twice", r.method, r.path);
        }
        let ops: std::collections::BTreeSet<String> = ROUTES.iter().map(|r| format!("{:?}", r.op)).collect();
        assert_eq!(ops.len(), ROUTES.len(), "an operation with two routes");
        let found = lookup("/pools/web/backends/%5B%3A%3A1%5D%3A80/weight");
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].0.op, found[0].1.clone()), (Op::Weight, vec!["web".to_string(), "[::1]:80".to_string()]));
        let methods: Vec<String> =
            lookup("/pools/web/backends/10.0.0.1:80").iter().map(|(r, _)| r.method.to_string()).collect();
        assert_eq!(methods, ["GET", "DELETE"]);
        assert!(lookup("/nothing").is_empty());
        assert_eq!(lookup("/")[0].0.op, Op::About);
    }

    #[test]
    fn docs_openapi_json_is_the_document_the_code_builds() {
        let want = openapi().to_pretty_json().unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        if std::fs::read_to_string(path).unwrap_or_default() != want {
            if std::env::var_os("WEIR_WRITE_OPENAPI").is_some() {
                std::fs::write(path, want).unwrap();
            } else {
                panic!(
                    "docs/openapi.json is not what the code builds: write it with \
                     `WEIR_WRITE_OPENAPI=1 cargo test -p weir docs_openapi_json` (or `weir openapi`)"
                );
            }
        }
    }

    #[test]
    fn the_document_names_every_route_and_resolves_every_schema() {
        let doc = serde_json::to_value(openapi()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
            assert!(op.is_object(), "{} {} missing", r.method, r.path);
        }
        // Every $ref points at a schema the document holds.
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(doc["components"]["schemas"][name].is_object(), "{name} is referenced but not defined");
        }
    }
}
