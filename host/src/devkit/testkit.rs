//! `weir plugin test FILE --cases cases.toml`: run a plugin component on
//! synthetic pools, connections and requests, without a proxy, and compare
//! its decisions with the expected ones.
//!
//! ```toml
//! config = { offset = 1 }                 # the instance config
//! backends = [                            # balancers: the pool
//!   { address = "10.0.0.1:80" },
//!   { address = "10.0.0.2:80", weight = 2, tags = ["eu"] },
//! ]
//!
//! [[case]]
//! name = "round the pool"
//! expect = ["10.0.0.2:80", "10.0.0.1:80"]  # balancer: one pick per entry
//! active = [0, 3]                          # in-flight per backend
//! down = ["10.0.0.3:80"]                   # not eligible
//!
//! [[case]]
//! name = "api goes to the api pool"       # router: expect a pool or "no-match"
//! path = "/api/users"
//! headers = { x-region = "eu" }
//! expect = "api"
//!
//! [[case]]
//! name = "blocked"                         # access filter: "allow" or "deny"
//! client = "10.66.0.1"
//! expect = "deny"
//!
//! [[case]]
//! name = "answers"                         # health checker: "healthy" or "unhealthy"
//! respond = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
//! expect = "healthy"                       # (target: a loopback peer the kit opens)
//!
//! [[case]]
//! name = "the registry's list"             # discovery adapter: the addresses
//! expect = ["10.0.0.1:80", "10.0.0.2:80"]
//! ```
//!
//! Each case runs on a fresh pool, so the pick sequence starts at 0. The
//! instance runs under weir's limits; `timeout`, `memory_limit` and `grants`
//! at the top set them as `[plugins.NAME]` does.

use crate::plugin::bindings::types;
use crate::plugin::{Grants, Limits, PluginSpec, RouteDecision, Runtime, Verdict, World};
use crate::upstream::{BackendSpec, Pool, PoolSettings};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A cases file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cases {
    /// The instance config handed to `init`.
    #[serde(default)]
    pub config: toml::Table,
    /// Balancers: the pool's backends.
    #[serde(default)]
    pub backends: Vec<crate::config::BackendTable>,
    /// Balancers: the pool's `hash_key` (`client-ip`, `path`,
    /// `header:NAME`, `cookie:NAME`): each case's key comes from its
    /// client, path, headers or cookies as a listener derives it, unless
    /// the case gives `hash_key` itself.
    pub hash_key: Option<String>,
    /// A call's time limit (health checks and discovery: each call's; default 2 s there).
    pub timeout: Option<crate::config::Duration>,
    /// Linear memory an instance may grow to.
    pub memory_limit: Option<crate::config::ByteSize>,
    /// What the plugin's `io` imports may reach (health checks and discovery).
    #[serde(default)]
    pub grants: crate::config::GrantsTable,
    /// The cases.
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

impl Cases {
    /// A cases file's text; errors name `origin` and the line.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))
    }
}

/// One case: inputs and the expected decision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows.
    pub name: String,
    /// The client address (`ip` or `ip:port`).
    #[serde(default = "default_client")]
    pub client: String,
    /// Balancers: in-flight requests per backend, in `backends` order.
    #[serde(default)]
    pub active: Vec<u32>,
    /// Balancers: recent latency per backend in microseconds (what
    /// `eligible-latency-us` reports), in `backends` order.
    #[serde(default)]
    pub latency_us: Vec<u32>,
    /// Balancers: recent rx+tx bytes per second per backend (what
    /// `eligible-bytes-per-sec` reports), in `backends` order.
    #[serde(default)]
    pub bytes_per_sec: Vec<u64>,
    /// Balancers: backends that are down.
    #[serde(default)]
    pub down: Vec<String>,
    /// Balancers: the request's cookies (`pool-view.request-cookie`); with
    /// any, the pick is an HTTP request's.
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    /// The connection's protocol: `tcp`, `tls`, `udp`, `http` or `https`.
    /// Balancers default to `tcp` (`http` with `cookies`), routers and access
    /// filters to `http`.
    pub protocol: Option<String>,
    /// Balancers: the hash key handed to `pick`.
    pub hash_key: Option<String>,
    /// HTTP method.
    #[serde(default = "default_method")]
    pub method: String,
    /// HTTP path (and query).
    #[serde(default = "default_path")]
    pub path: String,
    /// HTTP `Host`.
    pub host: Option<String>,
    /// HTTP headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Balancer: the picked addresses, one pick each; router: a pool name
    /// or `"no-match"`; access filter: `"allow"` or `"deny"`; health
    /// checker: `"healthy"` or `"unhealthy"`; discovery adapter: the
    /// discovered addresses in order.
    pub expect: toml::Value,
    /// Access filter: the status of a denial.
    pub expect_status: Option<u16>,
    /// Health checker: the backend checked, `host:port`; by default a
    /// loopback TCP peer the kit opens for the case.
    pub target: Option<String>,
    /// Health checker: what the kit's peer writes on each connection, after
    /// reading what the check sent (e.g. an HTTP response).
    pub respond: Option<String>,
}

fn default_client() -> String {
    "192.0.2.1:40000".into()
}

fn default_method() -> String {
    "GET".into()
}

fn default_path() -> String {
    "/".into()
}

/// What one case came to.
#[derive(Debug)]
pub struct Outcome {
    /// The case's name.
    pub name: String,
    /// `None` when the decision was the expected one, else what differed.
    pub failure: Option<String>,
}

fn client_addr(s: &str) -> Result<SocketAddr> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 40000)))
        .with_context(|| format!("client `{s}` is not an ip or ip:port"))
}

fn connection(case: &Case, default: types::Protocol) -> Result<types::Connection> {
    let protocol = match case.protocol.as_deref() {
        None => default,
        Some("tcp") => types::Protocol::Tcp,
        Some("tls") => types::Protocol::Tls,
        Some("udp") => types::Protocol::Udp,
        Some("http") => types::Protocol::Http,
        Some("https") => types::Protocol::Https,
        Some(other) => bail!("case `{}`: protocol `{other}` is not tcp, tls, udp, http or https", case.name),
    };
    let client = client_addr(&case.client)?;
    Ok(crate::plugin::bindings::connection_record(client, SocketAddr::from(([127, 0, 0, 1], 8080)), 0, protocol))
}

fn request(case: &Case) -> Result<Arc<crate::plugin::state::RequestHead>> {
    let mut req = http::Request::builder().method(case.method.as_str()).uri(case.path.as_str());
    if let Some(host) = &case.host {
        req = req.header(http::header::HOST, host);
    }
    for (k, v) in &case.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if !case.cookies.is_empty() {
        let cookie = case.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        req = req.header(http::header::COOKIE, cookie);
    }
    Ok(Arc::new(req.body(()).with_context(|| format!("case `{}`: not a valid request", case.name))?.into_parts().0))
}

fn run_balancer(instance: &Arc<crate::plugin::PluginInstance>, cases: &Cases, case: &Case) -> Result<Option<String>> {
    let specs = cases.backends.iter().cloned().map(BackendSpec::from).collect();
    let hash_key = cases.hash_key.as_deref().and_then(crate::config::HashKey::parse);
    let settings = PoolSettings { max_tries: 1, hash_key, ..PoolSettings::default() };
    let pool = Pool::new("test", specs, instance.clone(), settings, None);
    // The key a listener would hand `pick`: the case's own, else the pool's
    // `hash_key` taken from the case's request.
    let hash_key = match &case.hash_key {
        Some(k) => Some(k.clone()),
        None => crate::pipeline::request_hash_key(&pool, &*request(case)?, client_addr(&case.client)?, None),
    };
    let members = pool.members();
    let mut guards = Vec::new();
    let backend = |slot: usize, what: &str| {
        members.backends.get(slot).with_context(|| format!("case `{}`: more `{what}` than backends", case.name))
    };
    for (slot, n) in case.active.iter().enumerate() {
        let b = backend(slot, "active")?;
        guards.extend((0..*n).map(|_| b.stats.open_connection()));
    }
    for (slot, &us) in case.latency_us.iter().enumerate() {
        backend(slot, "latency_us")?.stats.set_live_numbers(None, Some(us));
    }
    for (slot, &rate) in case.bytes_per_sec.iter().enumerate() {
        backend(slot, "bytes_per_sec")?.stats.set_live_numbers(Some(rate), None);
    }
    for address in &case.down {
        let slot = members
            .backends
            .iter()
            .position(|b| &b.address == address)
            .with_context(|| format!("case `{}`: `down` names {address}, not a backend", case.name))?;
        pool.set_up(slot as u32, false);
    }
    let expected: Vec<String> = match &case.expect {
        toml::Value::Array(list) => list.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
        toml::Value::String(s) => vec![s.clone()],
        other => bail!("case `{}`: a balancer case expects addresses, not {other}", case.name),
    };
    // A case with headers, a host or cookies is an HTTP request's pick.
    let http = !case.cookies.is_empty() || !case.headers.is_empty() || case.host.is_some();
    let conn = connection(case, if http { types::Protocol::Http } else { types::Protocol::Tcp })?;
    let headers = request(case)?.headers.clone();
    let mut got = Vec::new();
    for _ in &expected {
        let mut pick = http.then(|| crate::plugin::HttpPick { headers: headers.clone(), ..Default::default() });
        got.push(pick_once(&pool, &conn, hash_key.as_deref(), pick.as_mut()));
    }
    drop(guards);
    Ok((got != expected).then(|| format!("expected {expected:?}, got {got:?}")))
}

/// One pick from `pool`, as the backend's address (or the error).
fn pick_once(
    pool: &Arc<Pool>,
    conn: &types::Connection,
    hash_key: Option<&str>,
    http: Option<&mut crate::plugin::HttpPick>,
) -> String {
    let members = pool.members();
    pick_over(pool, &members, &members, conn, hash_key, http)
}

/// [`pick_once`] with the balancer seeing the member list through `view`
/// (replay's [`Recording`]).
fn pick_over<V: crate::plugin::MemberView + 'static>(
    pool: &Pool,
    members: &crate::upstream::Members,
    view: &Arc<V>,
    conn: &types::Connection,
    hash_key: Option<&str>,
    http: Option<&mut crate::plugin::HttpPick>,
) -> String {
    let eligible = pool.eligible(members, &[]);
    let Some(plugin) = pool.balancer.plugin() else { return "error: not a balancer plugin".into() };
    match plugin.pick(view, eligible, conn, hash_key, http) {
        Ok(slot) => members.backends[slot as usize].address.clone(),
        Err(e) => format!("error: {e}"),
    }
}

/// A router's decision on a request: a pool, `no-match`, `respond N` or the error.
fn route_decision(instance: &crate::plugin::PluginInstance, case: &Case) -> Result<String> {
    let conn = connection(case, types::Protocol::Http)?;
    Ok(match instance.route_request(&conn, request(case)?) {
        Ok(RouteDecision::Forward { pool, .. }) => pool,
        Ok(RouteDecision::NoMatch) => "no-match".into(),
        Ok(RouteDecision::Respond { status, .. }) => format!("respond {status}"),
        Err(e) => format!("error: {e}"),
    })
}

/// An access filter's verdict on a request as an HTTP listener reaches it
/// (`check-connection`, then `check-request` unless the connection's verdict
/// settled it): `allow`, `deny` (with its status) or the error.
fn access_decision(instance: &crate::plugin::PluginInstance, case: &Case) -> Result<(String, Option<u16>)> {
    let conn = connection(case, types::Protocol::Http)?;
    let verdict = match instance.check_connection(&conn) {
        Ok(Verdict::Allow) => instance.check_request(&conn, request(case)?),
        settled => settled,
    };
    Ok(match verdict {
        Ok(Verdict::Allow | Verdict::AllowConnection) => ("allow".to_string(), None),
        Ok(Verdict::Deny { status, .. }) => ("deny".to_string(), Some(status.unwrap_or(403))),
        Err(e) => (format!("error: {e}"), None),
    })
}

fn run_router(instance: &crate::plugin::PluginInstance, case: &Case) -> Result<Option<String>> {
    let got = route_decision(instance, case)?;
    let expected = case.expect.as_str().unwrap_or_default();
    Ok((got != expected).then(|| format!("expected {expected:?}, got {got:?}")))
}

fn run_access(instance: &crate::plugin::PluginInstance, case: &Case) -> Result<Option<String>> {
    let got = access_decision(instance, case)?;
    let expected = case.expect.as_str().unwrap_or_default();
    if got.0 != expected {
        return Ok(Some(format!("expected {expected:?}, got {:?}", got.0)));
    }
    Ok(match (case.expect_status, got.1) {
        (Some(want), Some(status)) if want != status => Some(format!("expected status {want}, got {status}")),
        _ => None,
    })
}

/// The time a background call (check, discover) may take.
fn background_timeout(cases: &Cases) -> std::time::Duration {
    cases.timeout.map_or(std::time::Duration::from_secs(2), |t| t.0)
}

/// A loopback TCP peer for health-check cases: reads what a check sends,
/// writes `respond`, closes. It stops when dropped.
struct Peer {
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peer {
    fn start(respond: Vec<u8>) -> Result<Self> {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(300)));
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(&respond);
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
        });
        Ok(Self { addr, stop, thread: Some(thread) })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, std::time::Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_health(instance: &crate::plugin::PluginInstance, cases: &Cases, case: &Case) -> Result<Option<String>> {
    let peer = match &case.target {
        Some(_) => None,
        None => Some(Peer::start(case.respond.clone().unwrap_or_default().into_bytes())?),
    };
    let address = match (&case.target, &peer) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => p.addr.to_string(),
        (None, None) => unreachable!("a peer is started when no target is given"),
    };
    let backend = types::Backend { slot: 0, address, weight: 1, priority: 0, tags: Vec::new() };
    let (got, why) = match instance.check(&backend, None, background_timeout(cases)) {
        Ok(Ok(())) => ("healthy".to_string(), String::new()),
        Ok(Err(reason)) => ("unhealthy".to_string(), format!(" ({reason})")),
        Err(e) => (format!("error: {e}"), String::new()),
    };
    let expected = case.expect.as_str().unwrap_or_default();
    Ok((got != expected).then(|| format!("expected {expected:?}, got {got:?}{why}")))
}

fn run_discovery(instance: &crate::plugin::PluginInstance, cases: &Cases, case: &Case) -> Result<Option<String>> {
    let expected: Vec<String> = match &case.expect {
        toml::Value::Array(list) => list.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
        other => bail!("case `{}`: a discovery case expects a list of addresses, not {other}", case.name),
    };
    let got: Vec<String> = match instance.discover(background_timeout(cases)) {
        Ok(list) => list.into_iter().map(|d| d.address).collect(),
        Err(e) => vec![format!("error: {e}")],
    };
    Ok((got != expected).then(|| format!("expected {expected:?}, got {got:?}")))
}

/// Load a component as a plugin instance of the world it implements, under
/// the limits and grants of `cases`.
fn load(
    runtime: &Arc<Runtime>,
    bytes: &[u8],
    source: &str,
    cases: &Cases,
) -> Result<Arc<crate::plugin::PluginInstance>> {
    let mut config = cases.config.clone();
    let base = std::env::current_dir().unwrap_or_default();
    crate::config::resolve_table(&mut config, &base).map_err(|e| anyhow::anyhow!("config.{e}"))?;
    let defaults = Limits::default();
    let limits = Limits {
        timeout: cases.timeout.map_or(defaults.timeout, |t| t.0),
        memory: cases.memory_limit.map_or(defaults.memory, |m| m.0 as usize),
        ..defaults
    };
    let grants = Grants::from_config(&cases.grants, &base);
    let component = runtime.compile(bytes).with_context(|| source.to_string())?;
    let world = *runtime.worlds(&component).first().with_context(|| format!("{source} implements no weir world"))?;
    let spec = PluginSpec {
        name: source.into(),
        source: source.into(),
        world,
        config_json: serde_json::to_string(&config)?,
        limits,
        fallback: crate::config::Fallback::FailClosed,
        grants,
    };
    runtime.load(spec, bytes).with_context(|| source.to_string())
}

/// One call of an instance's phase on made-up input, as `weir plugin check`
/// makes it: a pick from three backends, a route and an access check of
/// `GET http://example.test/`, a health check of a loopback peer that
/// accepts, a discovery round. `Ok` says what it answered (an error value
/// is an answer: a discovery adapter without its grants may give one);
/// `Err` is a call that trapped, ran out of time or memory.
pub fn smoke(instance: &Arc<crate::plugin::PluginInstance>) -> std::result::Result<String, String> {
    use crate::plugin::{CallError, CallErrorKind};
    let settle = |r: std::result::Result<String, CallError>| match r {
        Ok(answer) => Ok(answer),
        Err(e) if matches!(e.kind, CallErrorKind::Error | CallErrorKind::BadAnswer) => {
            Ok(format!("an error: {}", e.message))
        }
        Err(e) => Err(format!("{:?}: {}", e.kind, e.message)),
    };
    let case: Case = toml::from_str("name = \"smoke\"\nexpect = \"\"\nhost = \"example.test\"\n")
        .map_err(|e| format!("the smoke case: {e}"))?;
    let tcp = connection(&case, types::Protocol::Tcp).map_err(|e| e.to_string())?;
    let http = connection(&case, types::Protocol::Http).map_err(|e| e.to_string())?;
    let timeout = std::time::Duration::from_secs(2);
    match instance.world() {
        World::Balancer => {
            let specs = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"].map(|a| BackendSpec {
                address: a.into(),
                weight: 1,
                priority: 0,
                tags: Vec::new(),
            });
            let settings = PoolSettings { max_tries: 1, ..PoolSettings::default() };
            let pool = Pool::new("smoke", specs.to_vec(), instance.clone(), settings, None);
            let members = pool.members();
            let eligible = pool.eligible(&members, &[]);
            settle(
                instance
                    .pick(&members, eligible, &tcp, None, None)
                    .map(|slot| format!("picked {} of 3 backends", members.backends[slot as usize].address)),
            )
        }
        World::Router => {
            let request = request(&case).map_err(|e| e.to_string())?;
            settle(instance.route_request(&http, request).map(|d| match d {
                RouteDecision::Forward { pool, .. } => format!("routed GET http://example.test/ to pool `{pool}`"),
                RouteDecision::NoMatch => "no route for GET http://example.test/".into(),
                RouteDecision::Respond { status, .. } => format!("answered GET http://example.test/ with {status}"),
            }))
        }
        World::AccessFilter => settle(instance.check_connection(&http).map(|v| format!("{v:?} for {}", case.client))),
        World::HealthChecker => {
            let peer = Peer::start(Vec::new()).map_err(|e| e.to_string())?;
            let backend =
                types::Backend { slot: 0, address: peer.addr.to_string(), weight: 1, priority: 0, tags: Vec::new() };
            settle(instance.check(&backend, None, timeout).map(|v| match v {
                Ok(()) => "healthy (a loopback peer that accepts)".to_string(),
                Err(why) => format!("unhealthy (a loopback peer that accepts): {why}"),
            }))
        }
        World::DiscoveryAdapter => {
            settle(instance.discover(timeout).map(|list| format!("discovered {} backends", list.len())))
        }
    }
}

/// The fields of a case that `world`'s calls do not read, as given (a
/// field left at its default is not named).
fn unused_fields(world: World, cases: &Cases, case: &Case) -> Vec<&'static str> {
    let given = [
        ("active", !case.active.is_empty()),
        ("latency_us", !case.latency_us.is_empty()),
        ("bytes_per_sec", !case.bytes_per_sec.is_empty()),
        ("down", !case.down.is_empty()),
        ("cookies", !case.cookies.is_empty()),
        ("hash_key", case.hash_key.is_some()),
        ("method", case.method != default_method()),
        ("path", case.path != default_path()),
        ("host", case.host.is_some()),
        ("headers", !case.headers.is_empty()),
        ("expect_status", case.expect_status.is_some()),
        ("target", case.target.is_some()),
        ("respond", case.respond.is_some()),
        ("client", case.client != default_client()),
        ("protocol", case.protocol.is_some()),
    ];
    // A balancer reads the live numbers, the connection and the request's
    // headers (`host` is one); a pool's hash key may come from the path too.
    const BALANCER: &[&str] = &[
        "active",
        "latency_us",
        "bytes_per_sec",
        "down",
        "cookies",
        "hash_key",
        "client",
        "protocol",
        "headers",
        "host",
    ];
    let keyed_by = cases.hash_key.as_deref().and_then(crate::config::HashKey::parse);
    let by_path = matches!(keyed_by, Some(crate::config::HashKey::Path));
    let read: Vec<&str> = match world {
        World::Balancer => BALANCER.iter().copied().chain(by_path.then_some("path")).collect(),
        World::Router => vec!["method", "path", "host", "headers", "cookies", "client", "protocol"],
        World::AccessFilter => {
            vec!["method", "path", "host", "headers", "cookies", "client", "protocol", "expect_status"]
        }
        World::HealthChecker => vec!["target", "respond"],
        World::DiscoveryAdapter => vec![],
    };
    given.iter().filter(|(field, set)| *set && !read.contains(field)).map(|(field, _)| *field).collect()
}

/// Run every case of `cases` against the component `bytes`.
pub fn run(runtime: &Arc<Runtime>, bytes: &[u8], source: &str, cases: &Cases) -> Result<(World, Vec<Outcome>)> {
    let instance = load(runtime, bytes, source, cases)?;
    let world = instance.world();
    if let Some(key) = &cases.hash_key {
        anyhow::ensure!(world == World::Balancer, "`hash_key` is a balancer pool's; this is a {world}");
        anyhow::ensure!(
            crate::config::HashKey::parse(key).is_some(),
            "`hash_key = \"{key}\"`: expected client-ip, path, sni, header:NAME or cookie:NAME"
        );
    }
    // A field the phase does not read would be ignored silently: refuse it.
    for case in &cases.cases {
        let unused = unused_fields(world, cases, case);
        anyhow::ensure!(
            unused.is_empty(),
            "case `{}`: {} not read by a {world} (a {world} case sets {})",
            case.name,
            unused.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", "),
            match world {
                World::Balancer => "backends' live numbers (active, latency_us, bytes_per_sec, down), cookies, \
                                    hash_key, client and protocol; headers or path when the file's `hash_key` names them",
                World::Router => "the request: method, path, host, headers, cookies, client, protocol",
                World::AccessFilter => {
                    "the request (method, path, host, headers, cookies, client, protocol) and expect_status"
                }
                World::HealthChecker => "target and respond",
                World::DiscoveryAdapter => "only expect",
            }
        );
    }
    let mut outcomes = Vec::new();
    for case in &cases.cases {
        let failure = match world {
            World::Balancer => run_balancer(&instance, cases, case)?,
            World::Router => run_router(&instance, case)?,
            World::AccessFilter => run_access(&instance, case)?,
            World::HealthChecker => run_health(&instance, cases, case)?,
            World::DiscoveryAdapter => run_discovery(&instance, cases, case)?,
        };
        outcomes.push(Outcome { name: case.name.clone(), failure });
    }
    Ok((world, outcomes))
}

/// One request of an access log, as far as the log says.
#[derive(Debug, Default)]
pub struct Logged {
    /// Client `ip:port`.
    pub client: String,
    /// Method, host and path.
    pub method: String,
    /// Host.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// The backend that served it.
    pub backend: String,
    /// Request headers the log kept (`header:NAME` fields).
    pub headers: BTreeMap<String, String>,
}

/// One access-log line, as the application log (plain or `--log-format
/// json`) or an `[access_log] file` (`logfmt` or `json`) has it; lines that
/// are not access-log lines give `None`.
pub fn parse_log_line(line: &str) -> Option<Logged> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        // An access-log file's lines have no target.
        if v.get("target").is_some_and(|t| t != "weir::access") {
            return None;
        }
        // A `key=value` message, flattened or nested under `fields`.
        if let Some(message) = v["message"].as_str().or(v["fields"]["message"].as_str()) {
            return parse_pairs(message);
        }
        let text = |key: &str| v[key].as_str().unwrap_or_default().to_string();
        let headers = v.as_object()?.iter().filter_map(|(k, value)| {
            let value = value.as_str().filter(|s| !s.is_empty())?;
            Some((k.strip_prefix("header.")?.to_string(), value.to_string()))
        });
        let logged = Logged {
            client: text("client"),
            method: text("method"),
            host: text("host"),
            path: text("path"),
            backend: text("backend"),
            headers: headers.collect(),
        };
        return (!logged.client.is_empty()).then_some(logged);
    }
    match line.find("weir::access") {
        Some(at) => parse_pairs(line[at..].split_once(' ')?.1),
        None if trimmed.starts_with("time=") => parse_pairs(trimmed),
        None => None,
    }
}

/// The fields of a `key=value` access-log message.
fn parse_pairs(message: &str) -> Option<Logged> {
    let mut logged = Logged::default();
    let mut rest = message;
    while let Some((key, after)) = rest.trim_start().split_once('=') {
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            // A Rust debug-quoted string: find the closing quote.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end?;
            (quoted[..end].replace("\\\"", "\"").replace("\\\\", "\\"), &quoted[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        match key.trim() {
            "client" => logged.client = value,
            "method" => logged.method = value,
            "host" => logged.host = value,
            "path" => logged.path = value,
            "backend" => logged.backend = value,
            k => {
                if let Some(name) = k.strip_prefix("header.").filter(|_| !value.is_empty()) {
                    logged.headers.insert(name.to_string(), value);
                }
            }
        }
        rest = next;
    }
    (!logged.client.is_empty()).then_some(logged)
}

/// Where two plugin versions decided differently on a logged request.
#[derive(Debug)]
pub struct Difference {
    /// The request, as `METHOD host/path from client`.
    pub request: String,
    /// The old version's decision.
    pub old: String,
    /// The new version's decision.
    pub new: String,
}

/// A replay pool's member list, counting the reads of the live numbers an
/// access log does not record (a replayed backend has none in flight, no
/// latency, no throughput): a balancer that reads them decides on zeros,
/// so its agreement in a replay says nothing about its decisions live.
struct Recording {
    members: Arc<crate::upstream::Members>,
    active: std::sync::atomic::AtomicU64,
    latency: std::sync::atomic::AtomicU64,
    throughput: std::sync::atomic::AtomicU64,
}

impl Recording {
    fn new(members: Arc<crate::upstream::Members>) -> Self {
        Self { members, active: Default::default(), latency: Default::default(), throughput: Default::default() }
    }

    fn count(n: &std::sync::atomic::AtomicU64) {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The unrecorded inputs read, with how many reads.
    fn reads(&self) -> Vec<(&'static str, u64)> {
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        [
            ("active counts", load(&self.active)),
            ("latencies", load(&self.latency)),
            ("throughputs", load(&self.throughput)),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

impl crate::plugin::MemberView for Recording {
    fn pool_id(&self) -> u32 {
        self.members.pool_id()
    }
    fn next_sequence(&self) -> u64 {
        self.members.next_sequence()
    }
    fn version(&self) -> u64 {
        crate::plugin::MemberView::version(&*self.members)
    }
    fn backends(&self) -> &[types::Backend] {
        crate::plugin::MemberView::backends(&*self.members)
    }
    fn active(&self, slot: u32) -> Option<u32> {
        Self::count(&self.active);
        crate::plugin::MemberView::active(&*self.members, slot)
    }
    fn gather_active(&self, eligible: &[u32]) -> Vec<u32> {
        Self::count(&self.active);
        crate::plugin::MemberView::gather_active(&*self.members, eligible)
    }
    fn gather_latency_us(&self, eligible: &[u32]) -> Vec<u32> {
        Self::count(&self.latency);
        crate::plugin::MemberView::gather_latency_us(&*self.members, eligible)
    }
    fn gather_bytes_per_sec(&self, eligible: &[u32]) -> Vec<u64> {
        Self::count(&self.throughput);
        crate::plugin::MemberView::gather_bytes_per_sec(&*self.members, eligible)
    }
}

/// What a replay found.
#[derive(Debug)]
pub struct Replayed {
    /// The phase replayed.
    pub world: World,
    /// Requests in the log.
    pub requests: usize,
    /// Where the versions decided differently.
    pub differences: Vec<Difference>,
    /// Balancers: inputs the log does not record that either version read
    /// (the backends' active counts, latencies, throughputs), with the
    /// number of reads. Replayed as zeros: with any, agreement here does
    /// not mean agreement live.
    pub lacking: Vec<(&'static str, u64)>,
    /// Balancers: request headers and cookies either version read that the
    /// log has no value for (`header x-backend`, `cookie session`): read as
    /// absent, which they may not have been live.
    pub missing: Vec<String>,
}

/// Run the requests of an access log through two versions of a plugin and
/// list where their decisions differ. Balancers pick from a pool of the
/// backends the log names, each version from its own pool, request after
/// request; routers and access filters see each request head as logged
/// (with the headers the log kept). Each version is `init`-ed with its own
/// config (the same one, to compare components; two, to compare configs).
pub fn replay(
    runtime: &Arc<Runtime>,
    old: (&[u8], &str, &toml::Table),
    new: (&[u8], &str, &toml::Table),
    log: &str,
) -> Result<Replayed> {
    let with = |config: &toml::Table| Cases { config: config.clone(), ..Cases::default() };
    let a = load(runtime, old.0, old.1, &with(old.2))?;
    let b = load(runtime, new.0, new.1, &with(new.2))?;
    let world = a.world();
    if b.world() != world {
        bail!("{} is a {world} but {} is a {}", old.1, new.1, b.world());
    }
    let entries: Vec<Logged> = log.lines().filter_map(parse_log_line).collect();
    let mut backends: Vec<String> = Vec::new();
    for e in &entries {
        if !e.backend.is_empty() && !backends.contains(&e.backend) {
            backends.push(e.backend.clone());
        }
    }
    let pool_of = |instance: &Arc<crate::plugin::PluginInstance>| {
        let specs = backends
            .iter()
            .map(|address| BackendSpec { address: address.clone(), weight: 1, priority: 0, tags: Vec::new() })
            .collect();
        Pool::new("replay", specs, instance.clone(), PoolSettings::default(), None)
    };
    if world == World::Balancer && backends.is_empty() {
        bail!("the log names no backend to balance over");
    }
    let (pool_a, pool_b) = (pool_of(&a), pool_of(&b));
    let recording = Arc::new(Recording::new(pool_a.members()));
    let recording_b = Arc::new(Recording::new(pool_b.members()));
    // A pick sees the request head as logged (its host and the headers
    // the log kept); what it asks for beyond that is noted as lacking.
    let mut missing: Vec<String> = Vec::new();
    let mut pick = |pool: &Arc<Pool>, view: &Arc<Recording>, conn: &types::Connection, case: &Case| {
        let mut http = crate::plugin::HttpPick {
            headers: request(case)?.headers.clone(),
            missing: Some(Vec::new()),
            ..Default::default()
        };
        let picked = pick_over(pool, &view.members, view, conn, None, Some(&mut http));
        for what in http.missing.unwrap_or_default() {
            if !missing.contains(&what) {
                missing.push(what);
            }
        }
        anyhow::Ok(picked)
    };
    let mut differences = Vec::new();
    for e in &entries {
        let case = Case {
            name: String::new(),
            client: e.client.clone(),
            active: Vec::new(),
            latency_us: Vec::new(),
            bytes_per_sec: Vec::new(),
            down: Vec::new(),
            cookies: BTreeMap::new(),
            protocol: None,
            hash_key: None,
            method: if e.method.is_empty() { "GET".into() } else { e.method.clone() },
            path: if e.path.is_empty() { "/".into() } else { e.path.clone() },
            host: (!e.host.is_empty()).then(|| e.host.clone()),
            headers: e.headers.clone(),
            expect: toml::Value::Boolean(true),
            expect_status: None,
            target: None,
            respond: None,
        };
        let (x, y) = match world {
            World::Balancer => {
                let conn = connection(&case, types::Protocol::Http)?;
                (pick(&pool_a, &recording, &conn, &case)?, pick(&pool_b, &recording_b, &conn, &case)?)
            }
            World::Router => (route_decision(&a, &case)?, route_decision(&b, &case)?),
            World::AccessFilter => {
                let show = |(v, s): (String, Option<u16>)| s.map_or(v.clone(), |s| format!("{v} {s}"));
                (show(access_decision(&a, &case)?), show(access_decision(&b, &case)?))
            }
            other => bail!("`weir plugin replay` runs balancers, routers and access filters, not a {other}"),
        };
        if x != y {
            let request = format!("{} {}{} from {}", case.method, e.host, case.path, case.client);
            differences.push(Difference { request, old: x, new: y });
        }
    }
    let mut lacking = recording.reads();
    for (what, n) in recording_b.reads() {
        match lacking.iter_mut().find(|(w, _)| *w == what) {
            Some((_, m)) => *m += n,
            None => lacking.push((what, n)),
        }
    }
    Ok(Replayed { world, requests: entries.len(), differences, lacking, missing })
}

#[cfg(test)]
mod tests {
    use super::parse_log_line;

    #[test]
    fn access_log_lines_parse_in_both_formats() {
        let plain = "2026-11-23T07:37:54.876187Z  INFO weir::access: client=127.0.0.1:60746 listener=web method=GET \
                     host=shop.test path=\"/a b\" route=default pool=p backend=127.0.0.1:43813 status=200";
        let e = parse_log_line(plain).unwrap();
        assert_eq!((e.client.as_str(), e.path.as_str()), ("127.0.0.1:60746", "/a b"));
        assert_eq!((e.method.as_str(), e.host.as_str(), e.backend.as_str()), ("GET", "shop.test", "127.0.0.1:43813"));
        let json = r#"{"timestamp":"x","level":"INFO","fields":{"message":"client=10.0.0.9:1 path=\"/q\" backend=10.0.0.1:80"},"target":"weir::access"}"#;
        let e = parse_log_line(json).unwrap();
        assert_eq!((e.client.as_str(), e.path.as_str(), e.backend.as_str()), ("10.0.0.9:1", "/q", "10.0.0.1:80"));
        let flat = r#"{"level":"INFO","message":"client=10.0.0.8:2 backend=10.0.0.2:80","target":"weir::access"}"#;
        assert_eq!(parse_log_line(flat).unwrap().backend, "10.0.0.2:80");
        assert!(parse_log_line("2026 INFO weir::server: listening local=127.0.0.1:1").is_none());
        let headed = r#"x INFO weir::access: client=10.0.0.7:3 path=/ header.x-api-key=k2 header.x-region="eu west" header.x-none="""#;
        let e = parse_log_line(headed).unwrap();
        let want: std::collections::BTreeMap<String, String> =
            [("x-api-key", "k2"), ("x-region", "eu west")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        assert_eq!(e.headers, want, "an empty value is a header the request did not have");
        // An access-log file: logfmt, and JSON with typed fields (also on
        // stderr under --log-format json, with its target).
        let file = r#"time=2026-12-07T03:55:36.123456Z client=10.0.0.6:4 path=/f backend=10.0.0.3:80 status=200"#;
        assert_eq!(parse_log_line(file).unwrap().backend, "10.0.0.3:80");
        let typed = r#"{"timestamp":"x","client":"10.0.0.5:5","path":"/j","backend":"10.0.0.4:80","status":200,"header.x-api-key":"k3","header.x-none":""}"#;
        let e = parse_log_line(typed).unwrap();
        assert_eq!((e.client.as_str(), e.path.as_str(), e.backend.as_str()), ("10.0.0.5:5", "/j", "10.0.0.4:80"));
        assert_eq!(e.headers.into_iter().collect::<Vec<_>>(), [("x-api-key".to_string(), "k3".to_string())]);
        let targeted = r#"{"level":"INFO","target":"weir::access","client":"10.0.0.4:6","backend":"10.0.0.5:80"}"#;
        assert_eq!(parse_log_line(targeted).unwrap().backend, "10.0.0.5:80");
        let other = r#"{"level":"INFO","target":"weir::server","client":"10.0.0.4:6"}"#;
        assert!(parse_log_line(other).is_none());
    }
}
