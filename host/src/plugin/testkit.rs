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
//! ```
//!
//! Each case runs on a fresh pool, so the pick sequence starts at 0.

use super::{Grants, Limits, PluginSpec, RouteDecision, Runtime, Verdict, World};
use crate::plugin::bindings::types;
use crate::upstream::{BackendSpec, Pool, PoolSettings};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cases {
    /// The instance config handed to `init`.
    #[serde(default)]
    pub config: toml::Table,
    /// Balancers: the pool's backends.
    #[serde(default)]
    pub backends: Vec<crate::config::BackendTable>,
    /// The cases.
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
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
    /// Balancers: backends that are down.
    #[serde(default)]
    pub down: Vec<String>,
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
    /// or `"no-match"`; access filter: `"allow"` or `"deny"`.
    pub expect: toml::Value,
    /// Access filter: the status of a denial.
    pub expect_status: Option<u16>,
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

fn connection(client: SocketAddr, protocol: types::Protocol) -> types::Connection {
    types::Connection {
        client: crate::l4::wit_socket_address(client),
        local: crate::l4::wit_socket_address(SocketAddr::from(([127, 0, 0, 1], 8080))),
        listener: 0,
        protocol,
        sni: None,
        alpn: None,
        client_identity: None,
    }
}

fn request(case: &Case) -> Result<Arc<super::state::RequestHead>> {
    let mut req = http::Request::builder().method(case.method.as_str()).uri(case.path.as_str());
    if let Some(host) = &case.host {
        req = req.header(http::header::HOST, host);
    }
    for (k, v) in &case.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    Ok(Arc::new(req.body(()).with_context(|| format!("case `{}`: not a valid request", case.name))?.into_parts().0))
}

fn run_balancer(instance: &Arc<super::PluginInstance>, cases: &Cases, case: &Case) -> Result<Option<String>> {
    let specs = cases.backends.iter().cloned().map(BackendSpec::from).collect();
    let settings = PoolSettings { max_tries: 1, ..PoolSettings::default() };
    let pool = Arc::new(Pool::new("test", specs, instance.clone(), settings, None));
    let members = pool.members();
    let mut guards = Vec::new();
    for (slot, n) in case.active.iter().enumerate() {
        let b =
            members.backends.get(slot).with_context(|| format!("case `{}`: more `active` than backends", case.name))?;
        guards.extend((0..*n).map(|_| b.stats.open()));
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
    let conn = connection(client_addr(&case.client)?, types::Protocol::Tcp);
    let mut got = Vec::new();
    for _ in &expected {
        let eligible = pool.eligible(&members, &[]);
        let picked = match pool.balancer.pick(&pool, &members, eligible, &conn, case.hash_key.as_deref(), None) {
            Ok(slot) => members.backends[slot as usize].address.clone(),
            Err(e) => format!("error: {e}"),
        };
        got.push(picked);
    }
    drop(guards);
    Ok((got != expected).then(|| format!("expected {expected:?}, got {got:?}")))
}

fn run_router(instance: &super::PluginInstance, case: &Case) -> Result<Option<String>> {
    let conn = connection(client_addr(&case.client)?, types::Protocol::Http);
    let got = match instance.route_request(&conn, request(case)?) {
        Ok(RouteDecision::Forward { pool, .. }) => pool,
        Ok(RouteDecision::NoMatch) => "no-match".into(),
        Ok(RouteDecision::Respond { status, .. }) => format!("respond {status}"),
        Err(e) => format!("error: {e}"),
    };
    let expected = case.expect.as_str().unwrap_or_default();
    Ok((got != expected).then(|| format!("expected {expected:?}, got {got:?}")))
}

fn run_access(instance: &super::PluginInstance, case: &Case) -> Result<Option<String>> {
    let conn = connection(client_addr(&case.client)?, types::Protocol::Http);
    let got = match instance.check_request(&conn, request(case)?) {
        Ok(Verdict::Allow) => ("allow".to_string(), None),
        Ok(Verdict::Deny { status, .. }) => ("deny".to_string(), Some(status.unwrap_or(403))),
        Err(e) => (format!("error: {e}"), None),
    };
    let expected = case.expect.as_str().unwrap_or_default();
    if got.0 != expected {
        return Ok(Some(format!("expected {expected:?}, got {:?}", got.0)));
    }
    Ok(match (case.expect_status, got.1) {
        (Some(want), Some(status)) if want != status => Some(format!("expected status {want}, got {status}")),
        _ => None,
    })
}

/// Run every case of `cases` against the component `bytes`.
pub fn run(runtime: &Arc<Runtime>, bytes: &[u8], source: &str, cases: &Cases) -> Result<(World, Vec<Outcome>)> {
    let component = runtime.compile(bytes)?;
    let world = *runtime.worlds(&component).first().context("the component implements no weir world")?;
    let spec = PluginSpec {
        name: "test".into(),
        source: source.into(),
        world,
        config_json: serde_json::to_string(&cases.config)?,
        limits: Limits::default(),
        fallback: crate::config::Fallback::FailClosed,
        grants: Grants::default(),
    };
    let instance = runtime.load(spec, bytes)?;
    let mut outcomes = Vec::new();
    for case in &cases.cases {
        let failure = match world {
            World::Balancer => run_balancer(&instance, cases, case)?,
            World::Router => run_router(&instance, case)?,
            World::AccessFilter => run_access(&instance, case)?,
            other => bail!("`weir plugin test` runs balancers, routers and access filters, not a {other}"),
        };
        outcomes.push(Outcome { name: case.name.clone(), failure });
    }
    Ok((world, outcomes))
}
