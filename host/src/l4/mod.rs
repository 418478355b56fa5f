//! The L4 TCP proxy: access phase, balance phase with retries on connect
//! failure, then a bidirectional byte copy (zero-copy `splice(2)` on Linux)
//! with half-close and an idle timeout.

mod copy;

use crate::config::Fallback;
use crate::plugin::bindings::types;
use crate::plugin::{PluginInstance, RouteDecision, Verdict};
use crate::proxy_protocol::{self, ProxyAccept};
use crate::upstream::{Backend, Pool};
use arc_swap::ArcSwap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use copy::{proxy, proxy_io, Io};

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

/// The `connection` record of a new connection or session, before TLS
/// fills in its `sni`, `alpn` and `client-identity`.
pub fn connection_record(
    client: SocketAddr,
    local: SocketAddr,
    listener: u32,
    protocol: types::Protocol,
) -> types::Connection {
    types::Connection {
        client: wit_socket_address(client),
        local: wit_socket_address(local),
        listener,
        protocol,
        sni: None,
        alpn: None,
        client_identity: None,
    }
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

/// The client side of a proxied connection once TLS is dealt with.
enum ClientSide {
    /// A socket, with bytes already read from it that the backend must get
    /// first (a passthrough ClientHello).
    Plain(TcpStream, Vec<u8>),
    /// A terminated TLS session.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The backend side of a proxied connection.
enum BackendSide {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl BackendSide {
    fn into_io(self) -> Box<dyn Io> {
        match self {
            BackendSide::Plain(s) => Box::new(s),
            BackendSide::Tls(s) => s,
        }
    }
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
    fn connection(&self, peer: SocketAddr, tls: bool) -> types::Connection {
        let protocol = if tls { types::Protocol::Tls } else { types::Protocol::Tcp };
        connection_record(peer, self.local, self.listener_id, protocol)
    }

    /// Run the route phase: the pool the connection goes to, or why none.
    fn route<'r>(
        &self,
        routes: &'r TcpRoutes,
        conn: &types::Connection,
        alpn: &[String],
    ) -> Result<&'r Arc<Pool>, String> {
        let Some(router) = &routes.router else { return Ok(&routes.pool) };
        match router.route_connection(conn, alpn) {
            Ok(RouteDecision::Forward { pool, .. }) => {
                routes.pools.get(&pool).ok_or_else(|| format!("route names an unknown pool `{pool}`"))
            }
            Ok(RouteDecision::NoMatch) => Ok(&routes.pool),
            Ok(RouteDecision::Respond { status, .. }) => Err(format!("router answered {status}: connection closed")),
            Err(e) if router.fallback() == Fallback::FailOpen => {
                tracing::debug!(listener = %self.name, "router failed open: {e}");
                Ok(&routes.pool)
            }
            Err(e) => Err(format!("router failed: {e}")),
        }
    }

    /// Balance and connect (and, for a TLS pool, handshake; for a pool
    /// with `send_proxy`, write the PROXY header first).
    async fn connect(
        &self,
        pool: &Arc<Pool>,
        conn: &types::Connection,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<(BackendSide, Arc<Backend>)> {
        let hash_key = pool.settings.hash_key.as_ref().and_then(|k| k.of_connection(peer, conn.sni.as_deref()));
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
                None => BackendSide::Plain(stream),
                Some(tls) => BackendSide::Tls(Box::new(tls.connect(&backend.address, stream).await?)),
            };
            backend.stats.record_latency(started.elapsed());
            Ok::<_, std::io::Error>(side)
        };
        let (stream, backend) = pool.try_backends(conn, hash_key.as_deref(), attempt).await?;
        pool.report_success(&backend);
        Some((stream, backend))
    }

    async fn handle(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
        let _open = self.stats.accepted();
        let routes = self.routes.load_full();
        let mut conn = self.connection(peer, !matches!(routes.tls, TlsMode::None));
        let mut entry =
            routes.access_log.clone().map(|f| crate::access_log::Entry::new(f, self.name.clone(), peer.to_string()));
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
        conn.client = wit_socket_address(peer);
        let local = client.local_addr().unwrap_or(self.local);
        let _ = client.set_nodelay(true);
        let mut offered_alpn = Vec::new();
        let client = match &routes.tls {
            TlsMode::None => ClientSide::Plain(client, Vec::new()),
            TlsMode::Terminate(tls) => match tls.accept(client).await {
                Ok((stream, handshake)) => {
                    conn.sni = handshake.sni;
                    conn.alpn = handshake.alpn;
                    conn.client_identity = handshake.client_identity;
                    ClientSide::Tls(Box::new(stream))
                }
                Err(e) => {
                    tracing::debug!(listener = %self.name, %peer, "TLS handshake failed: {e}");
                    if let Some(en) = entry.as_mut() {
                        en.error = format!("TLS handshake: {e}");
                    }
                    return;
                }
            },
            TlsMode::Passthrough(timeout) => match read_client_hello(&mut client, *timeout).await {
                Ok((hello, bytes)) => {
                    conn.sni = hello.sni;
                    // Nothing is settled on passthrough: the record carries
                    // what the client offered, in its order.
                    conn.alpn = (!hello.alpn.is_empty()).then(|| hello.alpn.join(","));
                    offered_alpn = hello.alpn;
                    ClientSide::Plain(client, bytes)
                }
                Err(e) => {
                    tracing::debug!(listener = %self.name, %peer, "no ClientHello: {e}");
                    if let Some(en) = entry.as_mut() {
                        en.error = format!("no ClientHello: {e}");
                    }
                    return;
                }
            },
        };
        if !admit(&self.name, &routes.access, &conn, peer) {
            if let Some(e) = entry.as_mut() {
                e.error = "denied".into();
            }
            return;
        }
        let pool = match self.route(&routes, &conn, &offered_alpn) {
            Ok(pool) => pool,
            Err(why) => {
                tracing::debug!(listener = %self.name, %peer, "{why}");
                if let Some(e) = entry.as_mut() {
                    e.error = why;
                }
                return;
            }
        };
        if let Some(e) = entry.as_mut() {
            e.pool = pool.name.clone();
        }
        let Some((upstream, backend)) = self.connect(pool, &conn, peer, local).await else {
            if let Some(e) = entry.as_mut() {
                e.error = "no backend reachable".into();
            }
            return;
        };
        if let Some(e) = entry.as_mut() {
            e.backend = backend.address.clone();
        }
        let _active = backend.stats.open();
        let result = match (client, upstream) {
            (ClientSide::Plain(client, first), BackendSide::Plain(mut upstream)) => {
                use tokio::io::AsyncWriteExt;
                match upstream.write_all(&first).await {
                    Ok(()) => {
                        backend.stats.add_tx(first.len() as u64);
                        proxy(client, upstream, &backend.stats, routes.idle_timeout).await
                    }
                    Err(e) => Err(e),
                }
            }
            (ClientSide::Plain(client, first), upstream) => {
                let client: Box<dyn Io> = Box::new(Prefixed::new(first, client));
                proxy_io(client, upstream.into_io(), &backend.stats, routes.idle_timeout).await
            }
            (ClientSide::Tls(client), upstream) => {
                proxy_io(client, upstream.into_io(), &backend.stats, routes.idle_timeout).await
            }
        };
        if let Err(err) = result {
            tracing::debug!(listener = %self.name, %peer, "connection ended: {err}");
            if let Some(e) = entry.as_mut() {
                e.error = err.to_string();
            }
        }
    }
}

/// A stream that first yields bytes already read from it.
struct Prefixed {
    first: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl Prefixed {
    fn new(first: Vec<u8>, inner: TcpStream) -> Self {
        Self { first, at: 0, inner }
    }
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at < self.first.len() {
            let n = (self.first.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.first[at..at + n]);
            self.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the access filters' `check-connection` settled for a connection
/// (TCP, TLS, HTTP) or UDP session, asked in order until one refuses.
#[derive(Default)]
pub struct Admission {
    /// Filters that answered `allow-connection`: on HTTP, not asked about
    /// the connection's requests.
    pub cleared: Vec<Arc<PluginInstance>>,
    /// Why the connection is refused, if it is.
    pub refused: Option<Refusal>,
}

/// A refused connection.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// A filter denied it (status and headers are for HTTP).
    Denied { reason: String, status: Option<u16>, headers: Vec<(String, String)> },
    /// A filter's call failed and the filter fails closed.
    Failed(String),
}

impl Admission {
    /// Run the access phase of a connection. A failed call applies the
    /// filter's fallback.
    pub fn check(listener: &str, access: &[Arc<PluginInstance>], conn: &types::Connection, peer: SocketAddr) -> Self {
        let mut settled = Self::default();
        for filter in access {
            match filter.check_connection(conn) {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::AllowConnection) => settled.cleared.push(filter.clone()),
                Ok(Verdict::Deny { reason, status, headers }) => {
                    tracing::debug!(%listener, %peer, plugin = filter.name(), "denied: {reason}");
                    settled.refused = Some(Refusal::Denied { reason, status, headers });
                    break;
                }
                Err(e) => {
                    let open = filter.fallback() == Fallback::FailOpen;
                    tracing::debug!(%listener, %peer, fail_open = open, "access plugin failed: {e}");
                    if !open {
                        settled.refused = Some(Refusal::Failed(e.to_string()));
                        break;
                    }
                }
            }
        }
        settled
    }

    /// Whether `filter` cleared the connection for all its requests.
    pub fn cleared(&self, filter: &Arc<PluginInstance>) -> bool {
        self.cleared.iter().any(|c| Arc::ptr_eq(c, filter))
    }
}

/// Run the access phase of a connection (TCP, TLS) or session (UDP):
/// `true` lets it through.
pub fn admit(listener: &str, access: &[Arc<PluginInstance>], conn: &types::Connection, peer: SocketAddr) -> bool {
    Admission::check(listener, access, conn, peer).refused.is_none()
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
