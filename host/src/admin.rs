//! The admin REST API: JSON over HTTP/1.1 on its own listener (loopback by
//! default, bearer token whenever one is configured). What runs (version,
//! listeners, pools with their backends' health and numbers, plugins with
//! their generations and call counters), backends taken out of rotation
//! and back by hand, and plugins swapped by uploading a component.

use crate::plugin::{LoadError, PluginInstance};
use crate::upstream::{Ejection, Pool};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
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

fn reply(status: StatusCode, body: Value) -> Answer {
    let mut text = serde_json::to_vec_pretty(&body).unwrap_or_default();
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .expect("static response parts")
}

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    reply(status, json!({ "error": message.into() }))
}

fn plain(status: StatusCode, text: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(text.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    r
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn listener_detail(name: &str, l: &ListenerInfo) -> Value {
    let s = &l.stats;
    let mut detail = json!({
        "name": name,
        "address": l.address.to_string(),
        "protocol": l.protocol,
        "pool": l.pool,
        "active_connections": s.active(),
        "connections": s.total(),
        "responses": {
            "1xx": s.responses(1), "2xx": s.responses(2), "3xx": s.responses(3),
            "4xx": s.responses(4), "5xx": s.responses(5),
        },
        "response_p50_ms": s.response_time.quantile(0.5).map(|v| v * 1e3),
        "response_p99_ms": s.response_time.quantile(0.99).map(|v| v * 1e3),
    });
    if l.protocol == "udp" {
        // Connections are sessions here.
        detail["dropped_datagrams"] = json!(s.dropped());
    }
    if let Some(caps) = &l.caps {
        detail["max_connections"] = json!(caps.max());
        detail["max_connections_per_client"] = json!(caps.max_per_client());
        detail["refused_connections"] = json!(caps.refused());
        detail["accept_paused"] = json!(caps.paused());
    }
    detail
}

fn pool_summary(name: &str, pool: &Pool) -> Value {
    let members = pool.members();
    json!({
        "name": name,
        "balancer": pool.balancer.name(),
        "backends": members.backends.len(),
        "healthy": members.healthy().len(),
    })
}

fn backend_detail(b: &crate::upstream::Backend) -> Value {
    let s = &b.stats;
    json!({
                "slot": b.slot,
                "address": b.address,
                "weight": b.weight,
                "priority": b.priority,
                "tags": b.tags,
                "healthy": b.is_healthy(),
                "checked_up": b.health.checked_up(),
                "disabled": b.health.disabled(),
                "ejected": b.health.ejection() != Ejection::None,
                "last_check_failure": b.health.last_failure(),
                "health_transitions": b.health.transitions(),
                "active": s.active(),
                "active_connections": s.active_connections(),
                "active_requests": s.active_requests(),
                "total": s.total(),
                "connections": s.connections(),
                "requests": s.requests(),
                "failures": s.failures(),
                "connect_failures": s.connect_failures(),
                "failed_responses": s.failed_responses(),
                "rx_bytes": s.rx(),
                "tx_bytes": s.tx(),
                "bytes_per_sec": s.bytes_per_sec(),
                "latency_us": s.latency_us(),
                "responses": {
                    "1xx": s.responses(1), "2xx": s.responses(2), "3xx": s.responses(3),
                    "4xx": s.responses(4), "5xx": s.responses(5),
                },
    })
}

fn pool_detail(name: &str, pool: &Pool) -> Value {
    let members = pool.members();
    let backends: Vec<Value> = members.backends.iter().map(|b| backend_detail(b)).collect();
    json!({
        "name": name,
        "balancer": pool.balancer.name(),
        "version": members.version,
        "retries": pool.retries.retries(),
        "backends": backends,
    })
}

fn plugin_detail(name: &str, p: &PluginInstance) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let g = p.generation();
    let s = p.stats();
    json!({
        "name": name,
        "world": p.world().name(),
        "source": g.source,
        "hash": g.hash,
        "generation": g.number,
        "loaded_at": unix_secs(g.loaded_at),
        "calls": s.calls.load(Relaxed),
        "errors": s.errors.load(Relaxed),
        "traps": s.traps.load(Relaxed),
        "timeouts": s.timeouts.load(Relaxed),
        "memory_exceeded": s.memory_exceeded.load(Relaxed),
        "bad_answers": s.bad_answers.load(Relaxed),
        "instances_created": s.instances_created.load(Relaxed),
        "rollout": p.rollout().map(|r| json!({
            "generation": r.generation, "percent": r.percent, "calls": r.calls, "failures": r.failures,
        })),
        "call_p50_us": s.call_time.quantile(0.5).map(|v| v * 1e6),
        "call_p99_us": s.call_time.quantile(0.99).map(|v| v * 1e6),
    })
}

impl Control {
    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else { return true };
        let given = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        given.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Answer {
        // Probes for supervisors and orchestrators, without the token (they
        // say nothing a client could not learn from a connection attempt).
        if req.method() == Method::GET {
            match req.uri().path() {
                "/live" | "/livez" => return plain(StatusCode::OK, "ok\n"),
                "/ready" | "/readyz" => {
                    return match self.core.readiness() {
                        Ok(ready) => plain(StatusCode::OK, format!("{ready}\n")),
                        Err(not) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {not}\n")),
                    };
                }
                _ => {}
            }
        }
        if !self.authorised(&req) {
            let mut r = error(StatusCode::UNAUTHORIZED, "a bearer token is required");
            r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            return r;
        }
        let path = req.uri().path().trim_end_matches('/').to_string();
        let now = self.core.snapshot();
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        match (req.method().clone(), parts.as_slice()) {
            (Method::GET, [] | [""]) => reply(
                StatusCode::OK,
                json!({
                    "name": "weir",
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_secs": self.started.elapsed().as_secs(),
                    "pid": std::process::id(),
                    "overload": overload_detail(self.core.overload()),
                    "wasmtime": "48",
                }),
            ),
            (Method::GET, ["metrics"]) => Response::builder()
                .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                .body(Full::new(Bytes::from(crate::metrics::render(&self.metrics))))
                .expect("static response parts"),
            (Method::GET, ["config"]) => Response::builder()
                .header("content-type", "application/toml")
                .body(Full::new(Bytes::from(crate::config::redacted(&now.source.text))))
                .expect("static response parts"),
            (Method::GET, ["listeners"]) => {
                let list: Vec<Value> = now.listeners.iter().map(|(n, l)| listener_detail(n, l)).collect();
                reply(StatusCode::OK, Value::Array(list))
            }
            (Method::GET, ["listeners", name]) => match now.listeners.get(*name) {
                Some(l) => reply(StatusCode::OK, listener_detail(name, l)),
                None => error(StatusCode::NOT_FOUND, format!("no listener `{name}`")),
            },
            (Method::POST, ["listeners"]) => self.add_listener(req, &now).await,
            (Method::DELETE, ["listeners", name]) => self.remove_listener(name, &now).await,
            (Method::POST, ["pools", name, "backends", at, "weight"]) => self.set_weight(req, &now, name, at).await,
            (Method::GET, ["pools", name, "backends", at]) => match find_backend(&now, name, at) {
                Ok((_, b)) => reply(StatusCode::OK, backend_detail(&b)),
                Err(e) => e,
            },
            (Method::POST, ["pools", name, "backends"]) => self.add_backend(req, &now, name).await,
            (Method::DELETE, ["pools", name, "backends", at]) => match find_backend(&now, name, at) {
                Ok((pool, b)) if pool.remove_backend(&b.address) => {
                    reply(StatusCode::OK, json!({"address": b.address, "removed": true}))
                }
                Ok((_, b)) => error(StatusCode::NOT_FOUND, format!("pool `{name}` has no backend {}", b.address)),
                Err(e) => e,
            },
            (Method::GET, ["log-level"]) => match crate::logging::level() {
                Some(level) => reply(StatusCode::OK, json!({ "level": level })),
                None => error(StatusCode::NOT_FOUND, "this process did not set up its log (an embedded server)"),
            },
            (Method::PUT, ["log-level"]) => self.set_log_level(req).await,
            (Method::GET, ["pools"]) => {
                reply(StatusCode::OK, Value::Array(now.pools.iter().map(|(n, p)| pool_summary(n, p)).collect()))
            }
            (Method::GET, ["pools", name]) => match now.pools.get(*name) {
                Some(p) => reply(StatusCode::OK, pool_detail(name, p)),
                None => error(StatusCode::NOT_FOUND, format!("no pool `{name}`")),
            },
            (Method::POST, ["pools", name, "backends", at, action @ ("disable" | "enable")]) => {
                self.set_disabled(&now, name, at, action)
            }
            (Method::GET, ["plugins"]) => {
                reply(StatusCode::OK, Value::Array(now.plugins.iter().map(|(n, p)| plugin_detail(n, p)).collect()))
            }
            (Method::GET, ["plugins", name]) => match now.plugins.get(*name) {
                Some(p) => reply(StatusCode::OK, plugin_detail(name, p)),
                None => error(StatusCode::NOT_FOUND, format!("no plugin instance `{name}`")),
            },
            (Method::PUT, ["plugins", name]) => self.push_plugin(req, &now, name).await,
            (Method::POST, ["reload"]) => self.reload(req).await,
            (Method::POST, ["upgrade"]) => match crate::upgrade::hand_over(&self.core).await {
                Ok(up) => reply(
                    StatusCode::OK,
                    json!({ "pid": up.pid, "previous": std::process::id(), "not_carried_over": up.not_carried_over }),
                ),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("upgrade failed, this process goes on serving: {e:#}"),
                ),
            },
            (
                _,
                ["", ..]
                | ["config"]
                | ["metrics"]
                | ["reload"]
                | ["upgrade"]
                | ["log-level"]
                | ["listeners", ..]
                | ["pools", ..]
                | ["plugins", ..],
            ) => error(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed on {path}", req.method())),
            _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
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
        match edit {
            Ok(summary) => reply(StatusCode::CREATED, serde_json::to_value(summary).unwrap_or_default()),
            Err(e) => error(StatusCode::BAD_REQUEST, format!("not applied: {e}")),
        }
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
        match edit {
            Ok(summary) => reply(StatusCode::OK, serde_json::to_value(summary).unwrap_or_default()),
            Err(e) => error(StatusCode::BAD_REQUEST, format!("not applied: {e}")),
        }
    }

    async fn set_weight(&self, req: Request<Incoming>, now: &Snapshot, name: &str, at: &str) -> Answer {
        let (pool, slot) = match find_backend(now, name, at) {
            Ok((pool, b)) => (pool, b.slot),
            Err(e) => return e,
        };
        let weight = match read_json(req).await {
            Ok(v) => v["weight"].as_u64(),
            Err(e) => return e,
        };
        let Some(weight) = weight.filter(|w| *w <= u32::MAX as u64) else {
            return error(StatusCode::BAD_REQUEST, "expected {\"weight\": N}");
        };
        match pool.set_weight(slot, weight as u32) {
            Some(address) => reply(StatusCode::OK, json!({"address": address, "weight": weight})),
            None => error(StatusCode::NOT_FOUND, format!("pool `{name}` has no slot {slot}")),
        }
    }

    fn set_disabled(&self, now: &Snapshot, name: &str, at: &str, action: &str) -> Answer {
        let (pool, slot) = match find_backend(now, name, at) {
            Ok((pool, b)) => (pool, b.slot),
            Err(e) => return e,
        };
        match pool.set_disabled(slot, action == "disable") {
            Some(address) => reply(StatusCode::OK, json!({"address": address, "disabled": action == "disable"})),
            None => error(StatusCode::NOT_FOUND, format!("pool `{name}` has no slot {slot}")),
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
                reply(StatusCode::CREATED, json!({"address": address, "slot": slot, "weight": weight}))
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
            return error(StatusCode::BAD_REQUEST, "expected a filter (`debug`, `weir=debug,info`) or {\"level\": ...}");
        };
        match crate::logging::set_level(&level) {
            Ok(()) => reply(StatusCode::OK, json!({ "level": level.trim() })),
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
                json!({
                    "name": name,
                    "generation": g.number,
                    "hash": g.hash,
                    "swap_ms": started.elapsed().as_secs_f64() * 1e3,
                    "rollout": rollout.map(|r| r.percent),
                }),
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
        match result {
            Ok(summary) => reply(StatusCode::OK, serde_json::to_value(summary).unwrap_or_default()),
            Err(e) => error(StatusCode::BAD_REQUEST, format!("config not applied, the old one stays: {e}")),
        }
    }
}

/// The backend a path names, by address (`127.0.0.1:8080`, `[::1]:80`,
/// percent-encoded or not) or by slot number, with its pool; else the
/// error answer.
fn find_backend(now: &Snapshot, pool: &str, at: &str) -> Result<(Arc<Pool>, Arc<crate::upstream::Backend>), Answer> {
    let Some(p) = now.pools.get(pool) else {
        return Err(error(StatusCode::NOT_FOUND, format!("no pool `{pool}`")));
    };
    let address = percent_encoding::percent_decode_str(at).decode_utf8_lossy();
    let members = p.members();
    let found = match address.parse::<u32>() {
        Ok(slot) => members.backends.get(slot as usize),
        Err(_) => members.backends.iter().find(|b| b.address == address),
    };
    match found {
        Some(b) => Ok((p.clone(), b.clone())),
        None => Err(error(StatusCode::NOT_FOUND, format!("pool `{pool}` has no backend {address}"))),
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

/// What load shedding sees now and has refused so far.
fn overload_detail(o: &crate::overload::Overload) -> Value {
    let (resident, plugin_mean) = o.last_sample();
    let limits = o.limits();
    json!({
        "refusing": o.reasons().iter().map(|r| r.name()).collect::<Vec<_>>(),
        "shed": o.shed_counts().iter().map(|(r, n)| (r.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "loop_lag_ms": o.loop_lag().map(|d| d.as_secs_f64() * 1e3),
        "plugin_call_mean_us": plugin_mean.as_secs_f64() * 1e6,
        "resident_bytes": resident,
        "limits": {
            "loop_lag_ms": limits.loop_lag.map(|d| d.as_secs_f64() * 1e3),
            "plugin_time_us": limits.plugin_time.map(|d| d.as_secs_f64() * 1e6),
            "memory_bytes": limits.memory,
        },
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serve the admin API on `listener` until `stop`.
///
/// At the stop, idle connections close and requests in progress (the answer
/// to `POST /upgrade` among them, or a plugin push under way) get up to
/// `grace` to be answered.
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
            let service = hyper::service::service_fn(move |req| {
                let control = control.clone();
                async move { Ok::<_, std::convert::Infallible>(control.handle(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(grace, connections.wait()).await;
}
