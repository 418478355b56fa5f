//! The admin REST API: JSON over HTTP/1.1 on its own listener (loopback by
//! default, bearer token whenever one is configured). What runs (version,
//! listeners, pools with their backends' health and numbers, plugins with
//! their generations and call counters), backends added, removed, weighted
//! and taken out of rotation by hand, plugins swapped by uploading a
//! component, reloads, upgrades and the log level. The routes and answer
//! types are in [`api`], which the OpenAPI document is built from.

pub mod api;

use crate::plugin::{LoadError, PluginInstance};
use crate::upstream::Ejection;
use api::Op;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest component accepted by `PUT /plugins/{name}`.
const MAX_UPLOAD: usize = 64 << 20;

use crate::server::{ListenerInfo, Snapshot};

/// What the admin API reads and acts on.
pub struct Control {
    /// The running server.
    pub core: Arc<crate::server::ServerCore>,
    /// When weir started.
    pub started: Instant,
    /// The bearer token, if one is configured.
    pub token: Option<String>,
    /// Metrics, read from the pools and plugins at each scrape.
    pub metrics: prometheus_client::registry::Registry,
}

type Answer = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Serialize) -> Answer {
    let mut text = serde_json::to_vec_pretty(&body).unwrap_or_default();
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .expect("static response parts")
}

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    reply(status, api::ErrorBody { error: message.into() })
}

fn plain(status: StatusCode, text: impl Into<Bytes>) -> Answer {
    typed(status, "text/plain", text)
}

fn typed(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(kind));
    r
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn listener_view(name: &str, l: &ListenerInfo) -> api::Listener {
    let s = &l.stats;
    let caps = l.caps.as_ref();
    api::Listener {
        name: name.to_string(),
        address: l.address.to_string(),
        protocol: l.protocol,
        pool: l.pool.clone(),
        active_connections: s.active(),
        connections: s.total(),
        responses: api::ByClass::of(|c| s.responses(c)),
        response_p50_ms: s.response_time.quantile(0.5).map(|v| v * 1e3),
        response_p99_ms: s.response_time.quantile(0.99).map(|v| v * 1e3),
        // On UDP listeners connections are sessions.
        dropped_datagrams: (l.protocol == "udp").then(|| s.dropped()),
        max_connections: caps.and_then(|c| c.max()),
        max_connections_per_client: caps.and_then(|c| c.max_per_client()),
        refused_connections: caps.map(|c| c.refused()),
        accept_paused: caps.map(|c| c.paused()),
    }
}

fn pool_summary(name: &str, pool: &crate::upstream::Pool) -> api::PoolSummary {
    let members = pool.members();
    api::PoolSummary {
        name: name.to_string(),
        balancer: pool.balancer.name().to_string(),
        backends: members.backends.len(),
        healthy: members.healthy().len(),
    }
}

fn backend_view(b: &crate::upstream::Backend) -> api::Backend {
    let s = &b.stats;
    api::Backend {
        slot: b.slot,
        address: b.address.clone(),
        weight: b.weight,
        priority: b.priority,
        tags: b.tags.clone(),
        healthy: b.is_healthy(),
        checked_up: b.health.checked_up(),
        disabled: b.health.disabled(),
        ejected: b.health.ejection() != Ejection::None,
        last_check_failure: b.health.last_failure(),
        health_transitions: b.health.transitions(),
        active: s.active(),
        active_connections: s.active_connections(),
        active_requests: s.active_requests(),
        total: s.total(),
        connections: s.connections(),
        requests: s.requests(),
        failures: s.failures(),
        connect_failures: s.connect_failures(),
        failed_responses: s.failed_responses(),
        rx_bytes: s.rx(),
        tx_bytes: s.tx(),
        bytes_per_sec: s.bytes_per_sec(),
        latency_us: s.latency_us(),
        responses: api::ByClass::of(|c| s.responses(c)),
    }
}

fn pool_view(name: &str, pool: &crate::upstream::Pool) -> api::Pool {
    let members = pool.members();
    api::Pool {
        name: name.to_string(),
        balancer: pool.balancer.name().to_string(),
        version: members.version,
        retries: pool.retries.retries(),
        backends: members.backends.iter().map(|b| backend_view(b)).collect(),
    }
}

fn plugin_view(name: &str, p: &PluginInstance) -> api::Plugin {
    use std::sync::atomic::Ordering::Relaxed;
    let g = p.generation();
    let s = p.stats();
    api::Plugin {
        name: name.to_string(),
        world: p.world().name(),
        source: g.source,
        hash: g.hash,
        generation: g.number,
        loaded_at: unix_secs(g.loaded_at),
        calls: s.calls.load(Relaxed),
        errors: s.errors.load(Relaxed),
        traps: s.traps.load(Relaxed),
        timeouts: s.timeouts.load(Relaxed),
        memory_exceeded: s.memory_exceeded.load(Relaxed),
        bad_answers: s.bad_answers.load(Relaxed),
        instances_created: s.instances_created.load(Relaxed),
        rollout: p.rollout().map(|r| api::Rollout {
            generation: r.generation,
            percent: r.percent,
            calls: r.calls,
            failures: r.failures,
        }),
        call_p50_us: s.call_time.quantile(0.5).map(|v| v * 1e6),
        call_p99_us: s.call_time.quantile(0.99).map(|v| v * 1e6),
    }
}

/// What load shedding sees now and has refused so far.
fn overload_view(o: &crate::overload::Overload) -> api::Overload {
    let (resident, plugin_mean) = o.last_sample();
    let limits = o.limits();
    api::Overload {
        refusing: o.reasons().iter().map(|r| r.name()).collect(),
        shed: o.shed_counts().iter().map(|(r, n)| (r.name().to_string(), *n)).collect(),
        loop_lag_ms: o.loop_lag().map(|d| d.as_secs_f64() * 1e3),
        plugin_call_mean_us: plugin_mean.as_secs_f64() * 1e6,
        resident_bytes: resident,
        limits: api::OverloadLimits {
            loop_lag_ms: limits.loop_lag.map(|d| d.as_secs_f64() * 1e3),
            plugin_time_us: limits.plugin_time.map(|d| d.as_secs_f64() * 1e6),
            memory_bytes: limits.memory,
        },
    }
}

/// A changed config's answer.
fn reloaded(status: StatusCode, result: Result<crate::server::ReloadSummary, String>, refused: &str) -> Answer {
    match result {
        Ok(summary) => reply(status, summary),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("{refused}: {e}")),
    }
}

impl Control {
    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else { return true };
        let given = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        given.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Answer {
        // `/livez` and `/readyz`: the probes' other names.
        let path = match req.uri().path() {
            "/livez" => "/live",
            "/readyz" => "/ready",
            p => p,
        };
        let found = api::lookup(path);
        let Some((route, params)) = found.iter().find(|(r, _)| r.method == req.method()) else {
            return match found.is_empty() {
                true => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
                false => error(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed on {path}", req.method())),
            };
        };
        // The probes need no token: they say nothing a client could not
        // learn from a connection attempt.
        if route.auth && !self.authorised(&req) {
            let mut r = error(StatusCode::UNAUTHORIZED, "a bearer token is required");
            r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            return r;
        }
        let now = self.core.snapshot();
        let param = |i: usize| params.get(i).map_or("", String::as_str);
        let (name, backend) = (param(0), param(1));
        let not_found = |what: &str| error(StatusCode::NOT_FOUND, format!("no {what} `{name}`"));
        match route.op {
            Op::Live => plain(StatusCode::OK, "ok\n"),
            Op::Ready => match self.core.readiness() {
                Ok(ready) => plain(StatusCode::OK, format!("{ready}\n")),
                Err(not) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {not}\n")),
            },
            Op::About => reply(
                StatusCode::OK,
                api::About {
                    name: "weir",
                    version: env!("CARGO_PKG_VERSION"),
                    uptime_secs: self.started.elapsed().as_secs(),
                    pid: std::process::id(),
                    overload: overload_view(self.core.overload()),
                    wasmtime: "48",
                },
            ),
            Op::Metrics => typed(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                crate::metrics::render(&self.metrics),
            ),
            Op::Config => typed(StatusCode::OK, "application/toml", crate::config::redacted(&now.source.text)),
            Op::OpenApi => {
                typed(StatusCode::OK, "application/json", api::openapi().to_pretty_json().unwrap_or_default())
            }
            Op::Listeners => {
                reply(StatusCode::OK, now.listeners.iter().map(|(n, l)| listener_view(n, l)).collect::<Vec<_>>())
            }
            Op::Listener => match now.listeners.get(name) {
                Some(l) => reply(StatusCode::OK, listener_view(name, l)),
                None => not_found("listener"),
            },
            Op::AddListener => self.add_listener(req, &now).await,
            Op::RemoveListener => self.remove_listener(name, &now).await,
            Op::Pools => reply(StatusCode::OK, now.pools.iter().map(|(n, p)| pool_summary(n, p)).collect::<Vec<_>>()),
            Op::Pool => match now.pools.get(name) {
                Some(p) => reply(StatusCode::OK, pool_view(name, p)),
                None => not_found("pool"),
            },
            Op::Backend => match find_backend(&now, name, backend) {
                Ok((_, b)) => reply(StatusCode::OK, backend_view(&b)),
                Err(e) => error(StatusCode::NOT_FOUND, e),
            },
            Op::AddBackend => self.add_backend(req, &now, name).await,
            Op::RemoveBackend => match find_backend(&now, name, backend) {
                Ok((pool, b)) if pool.remove_backend(&b.address) => reply(
                    StatusCode::OK,
                    api::BackendChanged {
                        address: b.address.clone(),
                        weight: None,
                        disabled: None,
                        slot: None,
                        removed: Some(true),
                    },
                ),
                Ok((_, b)) => error(StatusCode::NOT_FOUND, format!("pool `{name}` has no backend {}", b.address)),
                Err(e) => error(StatusCode::NOT_FOUND, e),
            },
            Op::Disable | Op::Enable => self.set_disabled(&now, name, backend, route.op == Op::Disable),
            Op::Weight => self.set_weight(req, &now, name, backend).await,
            Op::Plugins => {
                reply(StatusCode::OK, now.plugins.iter().map(|(n, p)| plugin_view(n, p)).collect::<Vec<_>>())
            }
            Op::Plugin => match now.plugins.get(name) {
                Some(p) => reply(StatusCode::OK, plugin_view(name, p)),
                None => not_found("plugin instance"),
            },
            Op::PushPlugin => self.push_plugin(req, &now, name).await,
            Op::Reload => self.reload(req).await,
            Op::Upgrade => match crate::upgrade::hand_over(&self.core).await {
                Ok(up) => reply(
                    StatusCode::OK,
                    api::Upgraded { pid: up.pid, previous: std::process::id(), not_carried_over: up.not_carried_over },
                ),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("upgrade failed, this process goes on serving: {e:#}"),
                ),
            },
            Op::LogLevel => match crate::logging::level() {
                Some(level) => reply(StatusCode::OK, api::LogLevel { level }),
                None => error(StatusCode::NOT_FOUND, "this process did not set up its log (an embedded server)"),
            },
            Op::SetLogLevel => self.set_log_level(req).await,
        }
    }

    async fn add_listener(&self, req: Request<Incoming>, now: &Snapshot) -> Answer {
        let table = match read_json(req).await {
            Ok(Value::Object(t)) => t,
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "expected a JSON object: {\"name\": ..., \"bind\": ..., \"pool\": ...}",
                )
            }
            Err(e) => return e,
        };
        let Some(name) = table.get("name").and_then(Value::as_str).map(str::to_string) else {
            return error(StatusCode::BAD_REQUEST, "`name` is required");
        };
        if now.listeners.contains_key(&name) {
            return error(StatusCode::CONFLICT, format!("listener `{name}` exists"));
        }
        let edit = self
            .core
            .edit(|doc| {
                let listeners = doc.entry("listeners").or_insert(toml_edit::table());
                let listeners = listeners.as_table_mut().ok_or("`listeners` is not a table")?;
                listeners.set_implicit(true);
                let mut t = toml_edit::Table::new();
                for (k, v) in table.iter().filter(|(k, _)| *k != "name") {
                    t.insert(k, toml_edit::Item::Value(toml_value(v)?));
                }
                listeners.insert(&name, toml_edit::Item::Table(t));
                Ok(())
            })
            .await;
        reloaded(StatusCode::CREATED, edit, "not applied")
    }

    async fn remove_listener(&self, name: &str, now: &Snapshot) -> Answer {
        if !now.listeners.contains_key(name) {
            return error(StatusCode::NOT_FOUND, format!("no listener `{name}`"));
        }
        let name = name.to_string();
        let edit = self
            .core
            .edit(|doc| {
                let listeners = doc.get_mut("listeners").and_then(|l| l.as_table_mut()).ok_or("no listeners")?;
                listeners.remove(&name);
                Ok(())
            })
            .await;
        reloaded(StatusCode::OK, edit, "not applied")
    }

    async fn set_weight(&self, req: Request<Incoming>, now: &Snapshot, name: &str, at: &str) -> Answer {
        let (pool, slot) = match find_backend(now, name, at) {
            Ok((pool, b)) => (pool, b.slot),
            Err(e) => return error(StatusCode::NOT_FOUND, e),
        };
        let weight = match read_json(req).await {
            Ok(v) => v["weight"].as_u64(),
            Err(e) => return e,
        };
        let Some(weight) = weight.and_then(|w| u32::try_from(w).ok()) else {
            return error(StatusCode::BAD_REQUEST, "expected {\"weight\": N}");
        };
        match pool.set_weight(slot, weight) {
            Some(address) => reply(
                StatusCode::OK,
                api::BackendChanged { address, weight: Some(weight), disabled: None, slot: None, removed: None },
            ),
            None => error(StatusCode::NOT_FOUND, format!("pool `{name}` has no backend {at}")),
        }
    }

    fn set_disabled(&self, now: &Snapshot, name: &str, at: &str, disabled: bool) -> Answer {
        let (pool, slot) = match find_backend(now, name, at) {
            Ok((pool, b)) => (pool, b.slot),
            Err(e) => return error(StatusCode::NOT_FOUND, e),
        };
        match pool.set_disabled(slot, disabled) {
            Some(address) => reply(
                StatusCode::OK,
                api::BackendChanged { address, weight: None, disabled: Some(disabled), slot: None, removed: None },
            ),
            None => error(StatusCode::NOT_FOUND, format!("pool `{name}` has no backend {at}")),
        }
    }

    /// `POST /pools/{name}/backends` with `{"address": "host:port",
    /// "weight": N, "priority": N, "tags": [...]}`.
    async fn add_backend(&self, req: Request<Incoming>, now: &Snapshot, name: &str) -> Answer {
        let Some(pool) = now.pools.get(name).cloned() else {
            return error(StatusCode::NOT_FOUND, format!("no pool `{name}`"));
        };
        let body = match read_json(req).await {
            Ok(v) => v,
            Err(e) => return e,
        };
        let address = body["address"].as_str().unwrap_or_default().to_string();
        if !crate::config::is_host_port(&address) {
            return error(StatusCode::BAD_REQUEST, "expected {\"address\": \"host:port\", \"weight\": N, ...}");
        }
        let number = |key: &str, default: u32| match &body[key] {
            Value::Null => Ok(default),
            v => v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or(format!("`{key}` is not a whole number")),
        };
        let (weight, priority) = match (number("weight", 1), number("priority", 0)) {
            (Ok(w), Ok(p)) => (w, p),
            (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        };
        let tags = match &body["tags"] {
            Value::Null => Vec::new(),
            Value::Array(t) if t.iter().all(Value::is_string) => {
                t.iter().filter_map(Value::as_str).map(str::to_string).collect()
            }
            _ => return error(StatusCode::BAD_REQUEST, "`tags` is a list of strings"),
        };
        let spec = crate::upstream::BackendSpec { address: address.clone(), weight, priority, tags };
        match pool.add_backend(spec) {
            Ok(()) => {
                let slot = pool.members().backends.iter().find(|b| b.address == address).map(|b| b.slot);
                reply(
                    StatusCode::CREATED,
                    api::BackendChanged { address, weight: Some(weight), disabled: None, slot, removed: None },
                )
            }
            Err(e) => error(StatusCode::CONFLICT, e),
        }
    }

    /// `PUT /log-level` with the filter as text (`debug`,
    /// `weir::access=off,info`) or `{"level": ...}`.
    async fn set_log_level(&self, req: Request<Incoming>) -> Answer {
        let body = match Limited::new(req.into_body(), 4096).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("reading the body: {e}")),
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        let level = match serde_json::from_str::<Value>(&text) {
            Ok(v) => v["level"].as_str().map(str::to_string),
            Err(_) => Some(text),
        };
        let Some(level) = level.filter(|l| !l.trim().is_empty()) else {
            return error(
                StatusCode::BAD_REQUEST,
                "expected a filter (`debug`, `weir=debug,info`) or {\"level\": ...}",
            );
        };
        match crate::logging::set_level(&level) {
            Ok(()) => reply(StatusCode::OK, api::LogLevel { level: level.trim().to_string() }),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        }
    }

    async fn push_plugin(&self, req: Request<Incoming>, now: &Snapshot, name: &str) -> Answer {
        let Some(plugin) = now.plugins.get(name).cloned() else {
            return error(StatusCode::NOT_FOUND, format!("no plugin instance `{name}`"));
        };
        let req_query = req.uri().query().map(str::to_string);
        let body = match Limited::new(req.into_body(), MAX_UPLOAD).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("reading the component: {e}")),
        };
        let rollout = match rollout_of(req_query.as_deref()) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let started = Instant::now();
        let swapped = tokio::task::spawn_blocking(move || plugin.swap_with(&body, "upload", rollout)).await;
        match swapped {
            Ok(Ok(g)) => reply(
                StatusCode::OK,
                api::Swapped {
                    name: name.to_string(),
                    generation: g.number,
                    hash: g.hash,
                    swap_ms: started.elapsed().as_secs_f64() * 1e3,
                    rollout: rollout.map(|r| r.percent),
                },
            ),
            Ok(Err(e)) => {
                let status = match e {
                    LoadError::Compile(_) | LoadError::WrongWorld { .. } | LoadError::Link(_) => {
                        StatusCode::UNPROCESSABLE_ENTITY
                    }
                    _ => StatusCode::BAD_REQUEST,
                };
                error(status, format!("refused, the old plugin keeps serving: {e}"))
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("swap task failed: {e}")),
        }
    }

    async fn reload(&self, req: Request<Incoming>) -> Answer {
        let body = match Limited::new(req.into_body(), MAX_UPLOAD).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("reading the config: {e}")),
        };
        let result = if body.is_empty() {
            self.core.reload_file().await
        } else {
            match String::from_utf8(body.to_vec()) {
                Ok(text) => {
                    let origin = "POST /reload".to_string();
                    self.core.reload(crate::config::Source { origin, text }).await
                }
                Err(_) => Err("the config is not UTF-8".to_string()),
            }
        };
        reloaded(StatusCode::OK, result, "config not applied, the old one stays")
    }
}

/// The backend a path names (its segment decoded), by address
/// (`127.0.0.1:8080`, `[::1]:80`) or by slot number, with its pool; else
/// what is not there (a 404).
fn find_backend(
    now: &Snapshot,
    pool: &str,
    at: &str,
) -> Result<(Arc<crate::upstream::Pool>, Arc<crate::upstream::Backend>), String> {
    let Some(p) = now.pools.get(pool) else {
        return Err(format!("no pool `{pool}`"));
    };
    let address = at;
    let members = p.members();
    let found = match address.parse::<u32>() {
        Ok(slot) => members.backends.get(slot as usize),
        Err(_) => members.backends.iter().find(|b| b.address == address),
    };
    match found {
        Some(b) => Ok((p.clone(), b.clone())),
        None => Err(format!("pool `{pool}` has no backend {address}")),
    }
}

/// `rollout=P[&max_failure_rate=R][&promote_after=N]` of a plugin upload.
fn rollout_of(query: Option<&str>) -> Result<Option<crate::plugin::Rollout>, String> {
    let pairs: Vec<(&str, &str)> = query.unwrap_or("").split('&').filter_map(|p| p.split_once('=')).collect();
    let get = |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let Some(percent) = get("rollout") else { return Ok(None) };
    let percent: u32 =
        percent.parse().ok().filter(|p| (1..=99).contains(p)).ok_or("rollout: a percentage from 1 to 99")?;
    let max_failure_rate = match get("max_failure_rate") {
        Some(r) => r.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)).ok_or("max_failure_rate: from 0 to 1")?,
        None => 0.01,
    };
    let promote_after = match get("promote_after") {
        Some(n) => n.parse::<u64>().map_err(|_| "promote_after: a number of calls")?,
        None => 1000,
    };
    Ok(Some(crate::plugin::Rollout { percent, max_failure_rate, promote_after }))
}

/// A small JSON request body, or the error answer.
async fn read_json(req: Request<Incoming>) -> Result<Value, Answer> {
    let body = Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| error(StatusCode::PAYLOAD_TOO_LARGE, format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("not JSON: {e}")))
}

/// A JSON value as a TOML one (strings, numbers, booleans, arrays, tables).
fn toml_value(v: &Value) -> Result<toml_edit::Value, String> {
    Ok(match v {
        Value::String(s) => s.as_str().into(),
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.into(),
            (None, Some(f)) => f.into(),
            _ => return Err(format!("{n} does not fit TOML")),
        },
        Value::Array(items) => {
            let mut a = toml_edit::Array::new();
            for item in items {
                a.push(toml_value(item)?);
            }
            a.into()
        }
        Value::Object(map) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, item) in map {
                t.insert(k, toml_value(item)?);
            }
            t.into()
        }
        Value::Null => return Err("null has no TOML form".into()),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long a retiring process waits for the next request on an admin
/// connection it accepted (see [`serve`]).
const RETIRING_IDLE: Duration = Duration::from_secs(5);

/// Serve the admin API on `listener` until `stop`.
///
/// At a plain stop, idle connections close and requests in progress (a
/// plugin push under way among them) get up to `grace` to be answered.
/// Handing over to a successor, a connection this process accepted is still
/// its to answer, as on the listeners: a client may have sent its request
/// (or be about to) on a connection accepted a moment before the stop, so
/// each connection gets its next request answered, with `connection:
/// close` (the answer to `POST /upgrade` among them), or closes after
/// [`RETIRING_IDLE`] without one.
pub async fn serve(listener: TcpListener, control: Arc<Control>, stop: CancellationToken, grace: Duration) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let control = control.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let core = control.core.clone();
            let service = hyper::service::service_fn(move |req| {
                let control = control.clone();
                async move {
                    let mut answer = control.clone().handle(req).await;
                    if control.core.is_retiring() {
                        answer.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    if core.is_retiring() {
                        let _ = tokio::time::timeout(RETIRING_IDLE.min(grace), connection.as_mut()).await;
                    } else {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(grace, connections.wait()).await;
}
