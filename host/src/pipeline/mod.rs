//! The phases of a connection, UDP session or HTTP request, written once for
//! every service. The services (`l4` for TCP and TLS, `udp`, `l7` for HTTP)
//! do the I/O and call these, in this order:
//!
//! ```text
//! accept ─► Admission::check ─► route ─► Attempts::next ─► connect / send
//!          (access, per          (route)  (balance)  ▲          │ failed
//!           connection)                              └── Attempts::failed
//! ```
//!
//! HTTP adds [`check_request`] (the access phase per request) between
//! admission and route. Every plugin call's failure goes through
//! [`settle`], the one place the instance's `fallback` is applied; each
//! phase says what failing open means for it (allow, the listener's pool,
//! the host's round-robin).

mod admission;
mod attempts;

pub use admission::{check_request, Admission, Refusal};
pub use attempts::{connect, Attempts};

use crate::config::{Fallback, HashKey};
use crate::plugin::{CallError, PluginInstance, RouteDecision};
use crate::upstream::Pool;
use std::net::SocketAddr;
use std::sync::Arc;

/// The fallback policy of a failed plugin call: `Ok(Some(answer))` when the
/// call answered, `Ok(None)` when it failed and the instance fails open (the
/// caller applies its phase's native default), the error when it fails
/// closed.
pub fn settle<T>(plugin: &PluginInstance, answer: Result<T, CallError>) -> Result<Option<T>, CallError> {
    apply(plugin.fallback(), answer)
}

fn apply<T>(fallback: Fallback, answer: Result<T, CallError>) -> Result<Option<T>, CallError> {
    match answer {
        Ok(answer) => Ok(Some(answer)),
        Err(e) if fallback == Fallback::FailOpen => {
            tracing::debug!(plugin = %e.plugin, "plugin failed open: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What the route phase decided, and how (for the access log's `route`).
pub struct Routed {
    /// The decision; `NoMatch` means the listener's own pool.
    pub decision: RouteDecision,
    /// `default` (no router), `router`, `respond`, `no-match` or
    /// `router-failed-open`.
    pub how: &'static str,
}

/// Run the route phase with `ask`, the router's call for this kind of
/// work (`route-connection` or `route-request`). A failed call applies the
/// router's fallback: the listener's pool when it fails open.
pub fn route(
    router: Option<&Arc<PluginInstance>>,
    ask: impl FnOnce(&PluginInstance) -> Result<RouteDecision, CallError>,
) -> Result<Routed, CallError> {
    let Some(router) = router else { return Ok(Routed { decision: RouteDecision::NoMatch, how: "default" }) };
    let how = |decision: &RouteDecision| match decision {
        RouteDecision::Forward { .. } => "router",
        RouteDecision::Respond { .. } => "respond",
        RouteDecision::NoMatch => "no-match",
    };
    Ok(match settle(router, ask(router.as_ref()))? {
        Some(decision) => Routed { how: how(&decision), decision },
        None => Routed { decision: RouteDecision::NoMatch, how: "router-failed-open" },
    })
}

/// The balancer's hash key of a connection or UDP session: the pool's
/// `hash_key`, when it is one a connection has (`client-ip`, `sni`).
pub fn connection_hash_key(pool: &Pool, peer: SocketAddr, sni: Option<&str>) -> Option<String> {
    match pool.settings.hash_key.as_ref()? {
        HashKey::ClientIp => Some(peer.ip().to_string()),
        HashKey::Sni => sni.map(str::to_owned),
        HashKey::Path | HashKey::Header(_) | HashKey::Cookie(_) => None,
    }
}

/// The balancer's hash key of an HTTP request from the pool's `hash_key`,
/// if the request has one.
pub fn request_hash_key(
    pool: &Pool,
    head: &http::request::Parts,
    peer: SocketAddr,
    sni: Option<&str>,
) -> Option<String> {
    match pool.settings.hash_key.as_ref()? {
        HashKey::ClientIp => Some(peer.ip().to_string()),
        HashKey::Sni => sni.map(str::to_owned),
        HashKey::Path => Some(head.uri.path().to_string()),
        HashKey::Header(name) => head.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned),
        HashKey::Cookie(name) => {
            crate::plugin::state::cookie_value(head.headers.get_all(http::header::COOKIE).iter(), name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::CallErrorKind;
    use crate::upstream::{BackendSpec, Balancer, PoolSettings};

    fn trap() -> Result<u32, CallError> {
        Err(CallError { plugin: "p".into(), kind: CallErrorKind::Trap, message: "unreachable".into() })
    }

    #[test]
    fn a_failed_call_fails_open_to_the_default_or_closed_with_its_error() {
        assert_eq!(apply(Fallback::FailOpen, Ok(7)).unwrap(), Some(7));
        assert_eq!(apply(Fallback::FailClosed, Ok(7)).unwrap(), Some(7));
        assert_eq!(apply(Fallback::FailOpen, trap()).unwrap(), None);
        let closed = apply(Fallback::FailClosed, trap()).unwrap_err();
        assert_eq!(closed.kind, CallErrorKind::Trap);
    }

    #[test]
    fn without_a_router_the_listeners_pool_is_the_default_route() {
        let routed = route(None, |_| unreachable!("no router to ask")).unwrap();
        assert!(matches!(routed.decision, RouteDecision::NoMatch));
        assert_eq!(routed.how, "default");
    }

    #[test]
    fn hash_keys_come_from_what_the_pool_names() {
        let pool = |key: &str| {
            let settings = PoolSettings { hash_key: HashKey::parse(key), ..PoolSettings::default() };
            let spec = BackendSpec { address: "127.0.0.1:1".into(), weight: 1, priority: 0, tags: vec![] };
            Pool::new("p", vec![spec], Balancer::NativeRoundRobin, settings, None)
        };
        let peer: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        let head = http::Request::get("/a/b?q=1")
            .header("x-user", "u7")
            .header("cookie", "a=1; sid=s9")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(connection_hash_key(&pool("client-ip"), peer, None).as_deref(), Some("10.1.2.3"));
        assert_eq!(connection_hash_key(&pool("sni"), peer, Some("a.test")).as_deref(), Some("a.test"));
        assert_eq!(connection_hash_key(&pool("path"), peer, None), None, "a connection has no path");
        assert_eq!(request_hash_key(&pool("path"), &head, peer, None).as_deref(), Some("/a/b"));
        assert_eq!(request_hash_key(&pool("header:x-user"), &head, peer, None).as_deref(), Some("u7"));
        assert_eq!(request_hash_key(&pool("cookie:sid"), &head, peer, None).as_deref(), Some("s9"));
        assert_eq!(request_hash_key(&pool("cookie:none"), &head, peer, None), None);
    }
}
