//! The L4 TCP proxy: access phase, balance phase with retries on connect
//! failure, then a bidirectional byte copy (zero-copy `splice(2)` on Linux)
//! with half-close and an idle timeout.

mod copy;

use crate::config::Fallback;
use crate::plugin::bindings::types;
use crate::plugin::{PluginInstance, Verdict};
use crate::proxy_protocol::{self, ProxyAccept};
use crate::upstream::{Backend, Pool};
use arc_swap::ArcSwap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use copy::proxy;

/// What a TCP listener does with its connections.
pub struct TcpService {
    /// Listener name.
    pub name: Arc<str>,
    /// Listener id as plugins see it (`connection.listener`).
    pub listener_id: u32,
    /// Bound address.
    pub local: SocketAddr,
    /// What to do with connections; a reload swaps it, and each connection
    /// keeps the version it started with.
    pub routes: ArcSwap<TcpRoutes>,
    /// Connection counters.
    pub stats: Arc<crate::listener::ListenerStats>,
}

/// The part of a TCP listener a reload may change.
pub struct TcpRoutes {
    /// Where connections go.
    pub pool: Arc<Pool>,
    /// Access filters, in order.
    pub access: Vec<Arc<PluginInstance>>,
    /// Idle timeout of a proxied connection.
    pub idle_timeout: Duration,
    /// Access-log fields, when the log is on.
    pub access_log: Option<Arc<[crate::access_log::Field]>>,
    /// Who must send a PROXY header first, when the listener accepts them.
    pub proxy_accept: Option<Arc<ProxyAccept>>,
    /// The PROXY header written to each backend connection, if any.
    pub send_proxy: Option<proxy_protocol::Version>,
}

/// The `socket-address` record of an address.
pub fn wit_socket_address(addr: SocketAddr) -> types::SocketAddress {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            types::IpAddress::Ipv4((a, b, c, d))
        }
        IpAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.segments();
            types::IpAddress::Ipv6((a, b, c, d, e, f, g, h))
        }
    };
    types::SocketAddress { ip, port: addr.port() }
}

impl TcpService {
    fn connection(&self, peer: SocketAddr) -> types::Connection {
        types::Connection {
            client: wit_socket_address(peer),
            local: wit_socket_address(self.local),
            listener: self.listener_id,
            protocol: types::Protocol::Tcp,
            sni: None,
        }
    }

    /// Run the access phase; `true` lets the connection through.
    fn admit(&self, routes: &TcpRoutes, conn: &types::Connection, peer: SocketAddr) -> bool {
        for filter in &routes.access {
            match filter.check_connection(conn) {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Deny { reason, .. }) => {
                    tracing::debug!(listener = %self.name, %peer, plugin = filter.name(), "denied: {reason}");
                    return false;
                }
                Err(e) => {
                    let open = filter.fallback() == Fallback::FailOpen;
                    tracing::debug!(listener = %self.name, %peer, fail_open = open, "access plugin failed: {e}");
                    if !open {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Balance and connect, trying a different backend after each failure.
    async fn connect(&self, routes: &TcpRoutes, conn: &types::Connection) -> Option<(TcpStream, Arc<Backend>)> {
        let pool = &routes.pool;
        let mut tried: Vec<u32> = Vec::new();
        let members = pool.members();
        for _ in 0..pool.settings.max_tries {
            let eligible = pool.eligible(&members, &tried);
            if eligible.is_empty() {
                break;
            }
            let slot = match pool.balancer.pick(pool, &members, eligible.clone(), conn, None, None) {
                Ok(slot) => slot,
                Err(e) => {
                    tracing::debug!(pool = %pool.name, "balancer failed: {e}");
                    match pool.balancer.fallback() {
                        Fallback::FailOpen => pool.fallback_pick(&eligible)?,
                        Fallback::FailClosed => return None,
                    }
                }
            };
            let backend = &members.backends[slot as usize];
            let started = Instant::now();
            match tokio::time::timeout(pool.settings.connect_timeout, TcpStream::connect(backend.address.as_str()))
                .await
            {
                Ok(Ok(stream)) => {
                    backend.stats.record_latency(started.elapsed());
                    pool.report_success(backend);
                    return Some((stream, backend.clone()));
                }
                Ok(Err(e)) => {
                    tracing::debug!(pool = %pool.name, backend = %backend.address, "connect failed: {e}")
                }
                Err(_) => {
                    tracing::debug!(pool = %pool.name, backend = %backend.address, "connect timed out")
                }
            }
            pool.report_failure(backend);
            tried.push(slot);
        }
        tracing::warn!(pool = %pool.name, tried = tried.len(), "no backend reachable; connection closed");
        None
    }

    async fn handle(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
        let _open = self.stats.accepted();
        let routes = self.routes.load_full();
        let mut entry =
            routes.access_log.clone().map(|f| crate::access_log::Entry::new(f, self.name.clone(), peer.to_string()));
        if let Some(e) = entry.as_mut() {
            e.pool = routes.pool.name.clone();
        }
        // From here on, the client is the one a trusted proxy's header names.
        let policy = routes.proxy_accept.as_deref();
        let peer = match proxy_protocol::client_address(&mut client, peer, policy, &self.name).await {
            Ok(client) => client,
            Err(err) => {
                if let Some(e) = entry.as_mut() {
                    e.error = err.to_string();
                }
                return;
            }
        };
        if let Some(e) = entry.as_mut() {
            e.client = peer.to_string();
        }
        let conn = self.connection(peer);
        if !self.admit(&routes, &conn, peer) {
            if let Some(e) = entry.as_mut() {
                e.error = "denied".into();
            }
            return;
        }
        let Some((mut upstream, backend)) = self.connect(&routes, &conn).await else {
            if let Some(e) = entry.as_mut() {
                e.error = "no backend reachable".into();
            }
            return;
        };
        if let Some(version) = routes.send_proxy {
            let local = client.local_addr().unwrap_or(self.local);
            if let Err(err) = proxy_protocol::send_header(&mut upstream, version, peer, local).await {
                tracing::debug!(listener = %self.name, backend = %backend.address, "sending the PROXY header: {err}");
                if let Some(e) = entry.as_mut() {
                    e.error = format!("sending the PROXY header: {err}");
                }
                return;
            }
        }
        if let Some(e) = entry.as_mut() {
            e.backend = backend.address.clone();
        }
        let _active = backend.stats.open();
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        if let Err(err) = proxy(client, upstream, &backend.stats, routes.idle_timeout).await {
            tracing::debug!(listener = %self.name, %peer, "connection ended: {err}");
            if let Some(e) = entry.as_mut() {
                e.error = err.to_string();
            }
        }
    }
}

/// Accept connections until `stop` is cancelled; each runs on `tracker`.
pub async fn serve(listener: TcpListener, service: Arc<TcpService>, stop: CancellationToken, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, peer)) => {
                tracker.spawn(service.clone().handle(client, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %service.name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
