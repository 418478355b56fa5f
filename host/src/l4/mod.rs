//! The L4 TCP proxy: access phase, balance phase with retries on connect
//! failure, then a bidirectional byte copy (zero-copy `splice(2)` on Linux)
//! with half-close and an idle timeout.

mod copy;

use crate::access_log::Line;
use crate::pipeline::{self, Admission};
use crate::plugin::bindings::{self, types};
use crate::plugin::{PluginInstance, RouteDecision};
use crate::proxy_protocol::{self, ProxyAccept};
use crate::tls::BackendStream;
use crate::upstream::{Backend, Pool};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use copy::{proxy, proxy_io, Io, Prefixed};

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
    /// Caps on open connections.
    pub caps: Arc<crate::listener::ConnectionCaps>,
}

/// What a TCP-family listener does about TLS.
pub enum TlsMode {
    /// Plain TCP.
    None,
    /// Terminate with these certificates.
    Terminate(Arc<crate::tls::ServerTls>),
    /// Read the ClientHello (within the timeout) for its SNI and ALPN, then
    /// forward it and everything after untouched.
    Passthrough(Duration),
}

/// The part of a TCP listener a reload may change.
pub struct TcpRoutes {
    /// Where connections go (when there is no router or it has no match).
    pub pool: Arc<Pool>,
    /// Every pool a router may name.
    pub pools: Arc<std::collections::BTreeMap<String, Arc<Pool>>>,
    /// Access filters, in order.
    pub access: Vec<Arc<PluginInstance>>,
    /// Router (`route-connection`), for SNI routing.
    pub router: Option<Arc<PluginInstance>>,
    /// TLS termination or passthrough.
    pub tls: TlsMode,
    /// Idle timeout of a proxied connection.
    pub idle_timeout: Duration,
    /// Access-log fields, when the log is on.
    pub access_log: Option<Arc<[crate::access_log::Field]>>,
    /// Who must send a PROXY header first, when the listener accepts them.
    pub proxy_accept: Option<Arc<ProxyAccept>>,
}

/// The client side of a proxied connection once TLS is dealt with.
enum ClientSide {
    /// A socket, with bytes already read from it that the backend must get
    /// first (a passthrough ClientHello).
    Plain(TcpStream, Vec<u8>),
    /// A terminated TLS session.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Read from `client` until the bytes hold a whole ClientHello.
async fn read_client_hello(
    client: &mut TcpStream,
    timeout: Duration,
) -> std::io::Result<(crate::tls::client_hello::ClientHello, Vec<u8>)> {
    use crate::tls::client_hello::{parse, Parsed, MAX_HELLO};
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut buf = Vec::with_capacity(2048);
        loop {
            if client.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a whole ClientHello",
                ));
            }
            match parse(&buf) {
                Parsed::Hello(hello) => return Ok((hello, buf)),
                Parsed::Incomplete => buf.reserve(MAX_HELLO.saturating_sub(buf.len()).min(4096)),
                Parsed::Invalid(why) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why)),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no ClientHello in time"))?
}

impl TcpService {
    /// The route phase: the pool the connection goes to, or why none.
    fn route<'r>(
        &self,
        routes: &'r TcpRoutes,
        conn: &types::Connection,
        alpn: &[String],
    ) -> Result<&'r Arc<Pool>, String> {
        let routed = pipeline::route(routes.router.as_ref(), |r| r.route_connection(conn, alpn))
            .map_err(|e| format!("router failed: {e}"))?;
        match routed.decision {
            RouteDecision::Forward { pool, .. } => {
                routes.pools.get(&pool).ok_or_else(|| format!("route names an unknown pool `{pool}`"))
            }
            RouteDecision::NoMatch => Ok(&routes.pool),
            RouteDecision::Respond { status, .. } => Err(format!("router answered {status}: connection closed")),
        }
    }

    /// The balance phase, with a connect (and, for a TLS pool, a handshake;
    /// for a pool with `send_proxy`, the PROXY header first) as each attempt.
    async fn connect(
        &self,
        pool: &Arc<Pool>,
        conn: &types::Connection,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<(BackendStream, Arc<Backend>)> {
        let hash_key = pipeline::connection_hash_key(pool, peer, conn.sni.as_deref());
        // Latency is the successful attempt's own: connect (and handshake).
        let attempt = |backend: Arc<Backend>| async move {
            let started = Instant::now();
            let mut stream = TcpStream::connect(backend.address.as_str()).await?;
            let _ = stream.set_nodelay(true);
            // The PROXY header goes first, in the clear, before any TLS.
            if let Some(version) = pool.settings.send_proxy {
                proxy_protocol::send_header(&mut stream, version, peer, local).await?;
            }
            let side = match &pool.settings.tls {
                None => BackendStream::Plain(stream),
                Some(tls) => BackendStream::Tls(Box::new(tls.connect(&backend.address, stream).await?)),
            };
            backend.stats.record_latency(started.elapsed());
            Ok::<_, std::io::Error>(side)
        };
        let (stream, backend) = pipeline::connect(pool, conn, hash_key.as_deref(), attempt).await?;
        pool.report_success(&backend);
        Some((stream, backend))
    }

    /// A connection, counted open (listener counters, connection caps)
    /// until it ends.
    async fn handle(self: Arc<Self>, client: TcpStream, peer: SocketAddr, _ticket: crate::listener::Ticket) {
        let _open = self.stats.accepted();
        let routes = self.routes.load_full();
        let mut log = Line::new(routes.access_log.as_ref(), &self.name, peer);
        if let Err(why) = self.serve(&routes, client, peer, &mut log).await {
            log.error(why);
        }
    }

    /// A connection's phases in order: the PROXY header, TLS, access,
    /// route, balance and connect, then the byte copy both ways.
    async fn serve(
        &self,
        routes: &TcpRoutes,
        mut client: TcpStream,
        peer: SocketAddr,
        log: &mut Line,
    ) -> Result<(), String> {
        // From here on, the client is the one a trusted proxy's header names.
        let policy = routes.proxy_accept.as_deref();
        let peer =
            proxy_protocol::client_address(&mut client, peer, policy, &self.name).await.map_err(|e| e.to_string())?;
        log.set(|e| e.client = peer.to_string());
        // A listener bound to one address accepts on that address alone:
        // `getsockname` only when it is bound to all of them.
        let local =
            if self.local.ip().is_unspecified() { client.local_addr().unwrap_or(self.local) } else { self.local };
        let _ = client.set_nodelay(true);
        let protocol = if matches!(routes.tls, TlsMode::None) { types::Protocol::Tcp } else { types::Protocol::Tls };
        let mut conn = bindings::connection_record(peer, self.local, self.listener_id, protocol);
        let (client, offered_alpn) = self.client_side(routes, client, &mut conn, peer).await?;
        if !Admission::check(&self.name, &routes.access, &conn, peer).admitted() {
            return Err("denied".into());
        }
        let pool = self.route(routes, &conn, &offered_alpn).inspect_err(|why| {
            tracing::debug!(listener = %self.name, %peer, "{why}");
        })?;
        log.set(|e| e.pool = pool.name.clone());
        let (upstream, backend) = self.connect(pool, &conn, peer, local).await.ok_or("no backend reachable")?;
        log.set(|e| e.backend = backend.address.clone());
        self.splice(client, upstream, &backend, routes.idle_timeout).await.map_err(|err| {
            tracing::debug!(listener = %self.name, %peer, "connection ended: {err}");
            err.to_string()
        })
    }

    /// The TLS step: a terminated session, or a passthrough ClientHello read
    /// ahead (with the ALPN list it offers), its names put in `conn`.
    async fn client_side(
        &self,
        routes: &TcpRoutes,
        mut client: TcpStream,
        conn: &mut types::Connection,
        peer: SocketAddr,
    ) -> Result<(ClientSide, Vec<String>), String> {
        match &routes.tls {
            TlsMode::None => Ok((ClientSide::Plain(client, Vec::new()), Vec::new())),
            TlsMode::Terminate(tls) => match tls.accept(client).await {
                Ok((stream, handshake)) => {
                    conn.sni = handshake.sni;
                    conn.alpn = handshake.alpn;
                    conn.client_identity = handshake.client_identity;
                    Ok((ClientSide::Tls(Box::new(stream)), Vec::new()))
                }
                Err(e) => {
                    tracing::debug!(listener = %self.name, %peer, "TLS handshake failed: {e}");
                    Err(format!("TLS handshake: {e}"))
                }
            },
            TlsMode::Passthrough(timeout) => match read_client_hello(&mut client, *timeout).await {
                Ok((hello, bytes)) => {
                    conn.sni = hello.sni;
                    // Nothing is settled on passthrough: the record carries
                    // what the client offered, in its order.
                    conn.alpn = (!hello.alpn.is_empty()).then(|| hello.alpn.join(","));
                    Ok((ClientSide::Plain(client, bytes), hello.alpn))
                }
                Err(e) => {
                    tracing::debug!(listener = %self.name, %peer, "no ClientHello: {e}");
                    Err(format!("no ClientHello: {e}"))
                }
            },
        }
    }

    /// Copy bytes both ways until both sides are done (or idle too long),
    /// after sending the backend what was read ahead.
    async fn splice(
        &self,
        client: ClientSide,
        upstream: BackendStream,
        backend: &Backend,
        idle_timeout: Duration,
    ) -> std::io::Result<()> {
        let _active = backend.stats.open_connection();
        match (client, upstream) {
            (ClientSide::Plain(client, first), BackendStream::Plain(mut upstream)) => {
                use tokio::io::AsyncWriteExt;
                upstream.write_all(&first).await?;
                backend.stats.add_tx(first.len() as u64);
                proxy(client, upstream, &backend.stats, idle_timeout).await
            }
            (ClientSide::Plain(client, first), upstream) => {
                let client: Box<dyn Io> = Box::new(Prefixed::new(first.into(), client));
                proxy_io(client, Box::new(upstream), &backend.stats, idle_timeout).await
            }
            (ClientSide::Tls(client), upstream) => {
                proxy_io(client, Box::new(upstream), &backend.stats, idle_timeout).await
            }
        }
    }
}

/// Accept connections until `stop` is cancelled; each runs on `tracker`.
pub async fn serve(listener: TcpListener, service: Arc<TcpService>, stop: CancellationToken, tracker: TaskTracker) {
    let name = service.name.clone();
    let caps = service.caps.clone();
    let serve = move |client, peer, ticket| service.clone().handle(client, peer, ticket);
    crate::workers::accept(listener, &name, caps, stop, tracker, serve).await
}
