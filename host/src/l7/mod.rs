//! The L7 HTTP proxy: HTTP/1.1 and HTTP/2 (h2c) from clients, per request
//! access → route → balance → forward over pooled keep-alive connections,
//! bodies streamed both ways, WebSocket upgrades passed through.

mod body;
mod client;
mod h1;
pub mod headers;
mod waiting;

use crate::access_log::Line;
use crate::pipeline::{self, Admission, Attempts, Refusal};
use crate::plugin::bindings::types;
use crate::plugin::{HeaderEdit, HttpPick, PluginInstance, RouteDecision};
use crate::upstream::{Backend, Pool};
use arc_swap::ArcSwap;
use body::{full, BoxError, Counted, ProxyBody};
pub use client::{SendError, Upstream, UpstreamBody, UpstreamSettings};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A pool as an HTTP listener sees it: the pool and its client.
#[derive(Clone)]
pub struct HttpPool {
    /// The pool.
    pub pool: Arc<Pool>,
    /// How its requests reach its backends.
    pub upstream: Upstream,
}

/// Settings of an HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Time a client has to send a request head.
    pub header_timeout: Duration,
    /// Largest request head accepted.
    pub max_header_size: usize,
    /// Add `X-Forwarded-*`.
    pub x_forwarded: bool,
    /// Add `Forwarded`.
    pub forwarded: bool,
    /// Add `Via`.
    pub via: bool,
    /// The listener terminates TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// HTTP/2 streams open at once per connection.
    pub max_concurrent_streams: u32,
    /// Close an upgraded connection (WebSocket) idle this long.
    pub idle_timeout: Duration,
}

/// What an HTTP listener does with its requests.
pub struct HttpService {
    /// Listener name.
    pub name: Arc<str>,
    /// Listener id as plugins see it (`connection.listener`).
    pub listener_id: u32,
    /// Bound address.
    pub local: SocketAddr,
    /// What to do with requests; a reload swaps it, and each request keeps
    /// the version it started with.
    pub routes: ArcSwap<HttpRoutes>,
    /// Connection and response counters.
    pub stats: Arc<crate::listener::ListenerStats>,
    /// Caps on open connections.
    pub caps: Arc<crate::listener::ConnectionCaps>,
    /// The server's tasks: upgraded connections run on it, so shutdown
    /// drains them with the rest.
    pub tracker: TaskTracker,
    /// ACME HTTP-01 answers, served before any phase runs.
    pub challenges: Arc<crate::acme::Challenges>,
    /// Set when a successor process took over the listening sockets: a stop
    /// then lets each HTTP/1 connection carry one more request, answered
    /// with `connection: close` (see [`serve_http`]).
    pub retiring: Arc<std::sync::atomic::AtomicBool>,
}

/// The part of an HTTP listener a reload may change.
pub struct HttpRoutes {
    /// Pool used when there is no router or it has no match.
    pub default_pool: HttpPool,
    /// Every pool a router may name.
    pub pools: Arc<BTreeMap<String, HttpPool>>,
    /// Access filters, in order.
    pub access: Vec<Arc<PluginInstance>>,
    /// Router.
    pub router: Option<Arc<PluginInstance>>,
    /// Access-log fields, when the log is on.
    pub access_log: Option<Arc<[crate::access_log::Field]>>,
    /// Who must send a PROXY header first, when the listener accepts them.
    pub proxy_accept: Option<Arc<crate::proxy_protocol::ProxyAccept>>,
    /// Listener settings.
    pub settings: HttpSettings,
    /// HTTPS: the listener's certificates.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

/// Per client connection.
struct ClientConn {
    /// Counted open (listener counters, connection caps) for as long as
    /// anything holds it: the connection's task, then its tunnel if it
    /// upgrades.
    _open: OpenConnection,
    record: types::Connection,
    peer: SocketAddr,
    requests: std::sync::atomic::AtomicU64,
    /// Its requests came over HTTP/2.
    http2: std::sync::atomic::AtomicBool,
    /// What `check-connection` settled when the connection opened.
    access: Admission,
    /// The answer to every request when it refused the connection.
    refused: Option<Failure>,
}

/// A client connection's place in its listener's counters and caps.
struct OpenConnection {
    _counted: crate::listener::ConnectionGuard,
    _ticket: crate::listener::Ticket,
}

/// Why a request got an error response; the one place statuses are chosen.
#[derive(Debug, Clone)]
enum Failure {
    Denied(u16, String, Vec<(String, String)>),
    PluginFailed(String),
    UnknownPool(String),
    NoBackend,
    Unreachable,
    BackendError(String),
    Timeout,
    /// Shed before any phase ran (load shedding).
    Overloaded(crate::overload::Reason),
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Denied { reason, status, headers } => Failure::Denied(status.unwrap_or(403), reason, headers),
            Refusal::Failed(e) => Failure::PluginFailed(e),
        }
    }
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::Denied(s, _, _) => StatusCode::from_u16(*s).unwrap_or(StatusCode::FORBIDDEN),
            Failure::PluginFailed(_) | Failure::NoBackend | Failure::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::UnknownPool(_) | Failure::Unreachable | Failure::BackendError(_) => StatusCode::BAD_GATEWAY,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Detail for the log (the response says only [`Failure::reason`]).
    fn detail(&self) -> &str {
        match self {
            Failure::Denied(_, d, _)
            | Failure::PluginFailed(d)
            | Failure::UnknownPool(d)
            | Failure::BackendError(d) => d,
            _ => "",
        }
    }

    fn reason(&self) -> &str {
        match self {
            Failure::Denied(_, r, _) => r,
            Failure::PluginFailed(_) => "a plugin failed",
            Failure::UnknownPool(_) => "route names an unknown pool",
            Failure::NoBackend => "no healthy backend",
            Failure::Unreachable => "no backend reachable",
            Failure::BackendError(_) => "backend error",
            Failure::Timeout => "backend response timed out",
            Failure::Overloaded(why) => why.describe(),
        }
    }

    fn response(&self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let status = self.status();
        let body = format!(
            "{} {}: {}\nrequest-id: {}\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            self.reason(),
            request_id.to_str().unwrap_or("")
        );
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert(headers::REQUEST_ID, request_id.clone());
        if let Failure::Denied(_, _, extra) = self {
            headers::add_all(h, extra);
        }
        if let Failure::Overloaded(_) = self {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A random 16-digit hex request id, formatted without an allocation of its own.
fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u64>();
    let digits: [u8; 16] = std::array::from_fn(|i| HEX[(n >> (60 - 4 * i)) as usize & 0xf]);
    HeaderValue::from_bytes(&digits).expect("hex is a valid header value")
}

impl HttpService {
    fn connection(&self, peer: SocketAddr) -> types::Connection {
        crate::plugin::bindings::connection_record(peer, self.local, self.listener_id, types::Protocol::Http)
    }

    /// A request's future, made for each request (and on HTTP/2 spawned as
    /// a task, moved whole into the task and out of it): the functions on
    /// its path return `async` blocks rather than being `async fn`s, which
    /// would keep each by-value parameter twice (the argument and the
    /// body's binding), and rare paths are boxed.
    #[allow(clippy::manual_async_fn)] // an `async fn` would keep its by-value parameters twice
    fn handle(
        self: Arc<Self>,
        conn: Arc<ClientConn>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> {
        async move {
            conn.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let http2 = req.version() == http::Version::HTTP_2;
            // Written once per connection, not per stream: streams of one
            // connection run side by side.
            if http2 && !conn.http2.load(std::sync::atomic::Ordering::Relaxed) {
                conn.http2.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let mut answer = self.answer(&conn, req).await;
            let upgraded = answer.status() == StatusCode::SWITCHING_PROTOCOLS;
            if !http2 && !upgraded && self.retiring.load(std::sync::atomic::Ordering::Relaxed) {
                // Draining for a successor: this connection ends after this
                // response, and the client knows it before it sends another.
                answer.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(answer)
        }
    }

    /// A request's answer: an ACME challenge's, the backend's, or the
    /// failure's status.
    #[allow(clippy::manual_async_fn)] // an `async fn` would keep its by-value parameters twice
    fn answer<'a>(
        &'a self,
        conn: &'a Arc<ClientConn>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<ProxyBody>> + 'a {
        async move {
            if let Some(answer) = self.challenges.answer(req.uri().path()) {
                let mut resp = Response::new(full(answer));
                resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                return resp;
            }
            let id = req.headers().get(&headers::REQUEST_ID).cloned().unwrap_or_else(request_id);
            let started = Instant::now();
            let routes = self.routes.load_full();
            let mut log = Line::new(routes.access_log.as_ref(), &self.name, conn.peer);
            log.set(|e| {
                e.method = req.method().to_string();
                e.host = req
                    .uri()
                    .host()
                    .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()))
                    .unwrap_or("")
                    .to_string();
                e.path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
                e.request_id = id.to_str().unwrap_or("").to_string();
                e.version = match req.version() {
                    http::Version::HTTP_10 => "HTTP/1.0",
                    http::Version::HTTP_2 => "HTTP/2.0",
                    _ => "HTTP/1.1",
                };
                e.capture_headers(req.headers());
            });
            let answered = self.forward(&routes, conn, req, &id, &mut log).await;
            self.stats.response_time.observe(started.elapsed());
            match answered {
                Ok(resp) => {
                    self.stats.record_status(resp.status().as_u16());
                    resp
                }
                Err(failure) => {
                    self.stats.record_status(failure.status().as_u16());
                    log.set(|e| {
                        e.status = failure.status().as_u16();
                        e.error = failure.reason().to_string();
                    });
                    tracing::debug!(listener = %self.name, peer = %conn.peer, request_id = ?id, status = %failure.status(), "{}: {}", failure.reason(), failure.detail());
                    failure.response(&id)
                }
            }
        }
    }

    /// A request's phases in order: access, route, the request head made
    /// ready for the backend, then balance and send.
    async fn forward(
        &self,
        routes: &HttpRoutes,
        conn: &Arc<ClientConn>,
        req: Request<Incoming>,
        id: &HeaderValue,
        log: &mut Line,
    ) -> Result<Response<ProxyBody>, Failure> {
        // The head is made ready in a block of its own: what the block
        // borrows ends with it, so this future keeps none of it (the
        // parts, the route's answer) while the request is out.
        let (target, request) = {
            if let Some(reason) = self.caps.overload.refusing(crate::workers::index()) {
                self.caps.overload.shed(reason);
                return Err(Failure::Overloaded(reason));
            }
            let (parts, body) = req.into_parts();
            let head = Arc::new(parts);
            if let Some(refused) = &conn.refused {
                return Err(refused.clone());
            }
            pipeline::check_request(&routes.access, &conn.access, &conn.record, &head)?;

            let routed = pipeline::route(routes.router.as_ref(), |r| r.route_request(&conn.record, head.clone()))
                .map_err(|e| Failure::PluginFailed(e.to_string()))?;
            log.set(|e| e.route = routed.how);
            let (target, hash_key, request_edits, response_edits) = match routed.decision {
                RouteDecision::Forward { pool, hash_key, request_headers, response_headers } => (
                    routes.pools.get(&pool).ok_or(Failure::UnknownPool(pool))?,
                    hash_key,
                    request_headers,
                    response_headers,
                ),
                RouteDecision::NoMatch => (&routes.default_pool, None, Vec::new(), Vec::new()),
                RouteDecision::Respond { status, headers, body } => {
                    log.set(|e| e.status = status);
                    return Ok(headers::direct_response(status, headers, body, id));
                }
            };
            log.set(|e| e.pool = target.pool.name.clone());

            let mut parts = Arc::try_unwrap(head).unwrap_or_else(|shared| (*shared).clone_parts());
            let hash_key = hash_key
                .or_else(|| pipeline::request_hash_key(&target.pool, &parts, conn.peer, conn.record.sni.as_deref()));
            let upgrade = headers::prepare_request(&mut parts, conn.peer, &routes.settings, id, &request_edits);
            let on_client_upgrade = upgrade.then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>()).flatten();
            parts.version = if target.upstream.http2() { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
            (target, Outgoing { parts, body, hash_key, on_client_upgrade, response_edits })
        };
        self.send(target, conn, request, id, log).await
    }

    /// Balance and send, retrying on another backend after a failed connect
    /// (a request without a body) or a status in `retry_on` (an idempotent
    /// request without a body, within the pool's retry budget).
    #[allow(clippy::manual_async_fn)] // an `async fn` would keep its by-value parameters twice
    fn send<'a>(
        &'a self,
        target: &'a HttpPool,
        conn: &'a Arc<ClientConn>,
        request: Outgoing,
        id: &'a HeaderValue,
        log: &'a mut Line,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Failure>> + 'a {
        async move {
            // Fields taken one by one: destructuring would give every field a
            // second slot in this future.
            let (hash_key, on_client_upgrade, mut response_edits) =
                (request.hash_key, request.on_client_upgrade, request.response_edits);
            let pool = &target.pool;
            let path = request.parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            // A request without a body can be sent again to another backend.
            let idempotent = matches!(
                request.parts.method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::OPTIONS
                    | http::Method::PUT
                    | http::Method::DELETE
            );
            pool.retries.request();
            let replayable = request.body.is_end_stream();
            let mut body = Some(request.body);
            let mut http_pick = HttpPick::default();
            let mut parts = Some(request.parts);
            let mut attempts = Attempts::new(pool, &conn.record, hash_key.as_deref());
            loop {
                // The balancer reads the head as it will be forwarded: its
                // headers are lent to the pick (moved, not copied) and taken back.
                let lend = |parts: &mut Option<http::request::Parts>, pick: &mut HttpPick| {
                    if let Some(p) = parts {
                        std::mem::swap(&mut p.headers, &mut pick.headers);
                    }
                };
                lend(&mut parts, &mut http_pick);
                let next = attempts.next(Some(&mut http_pick));
                lend(&mut parts, &mut http_pick);
                let Some(backend) = next.map_err(Failure::PluginFailed)? else { break };
                log.set(|e| e.backend = backend.address.clone());
                let outgoing: ProxyBody = match body.take() {
                    Some(b) if !b.is_end_stream() => {
                        Counted::new(b.map_err(BoxError::from), backend.stats.clone(), Direction::ToBackend, None)
                            .boxed_unsync()
                    }
                    _ => body::empty(),
                };
                // The head is copied only where another attempt may need it and
                // the upstream would not give it back: a retry on a status, or
                // HTTP/2 backends (whose failed connects keep the request).
                let keep = replayable
                    && attempts.another_allowed()
                    && (target.upstream.http2() || !pool.settings.retry_on.is_empty());
                let head = if keep { parts.as_ref().map(CloneParts::clone_parts) } else { parts.take() };
                let head = head.ok_or(Failure::Unreachable)?;
                let upstream = Request::from_parts(head, outgoing);
                let active = backend.stats.open_request();
                let started = Instant::now();
                match target.upstream.send(&backend, upstream, path.clone(), pool.settings.response_timeout).await {
                    Ok(resp) => {
                        let head_time = started.elapsed();
                        backend.stats.record_latency(head_time);
                        let status = resp.status().as_u16();
                        log.set(|e| {
                            e.head = Some(head_time);
                            e.status = status;
                        });
                        backend.stats.record_status(status);
                        // A status the pool retries on counts as a failed attempt
                        // for passive health, as in nginx's proxy_next_upstream.
                        let failed = pool.settings.retry_on.contains(&status);
                        if failed || pool.settings.fail_on.contains(&status) {
                            backend.stats.record_failed_response();
                            pool.report_failure(&backend);
                        } else {
                            pool.report_success(&backend);
                        }
                        let retry = failed
                            && idempotent
                            && replayable
                            && attempts.another_allowed()
                            && pool.retries.try_retry(pool.settings.retry_budget);
                        if retry {
                            tracing::debug!(pool = %pool.name, backend = %backend.address, status = %resp.status(), "retrying on another backend");
                            attempts.exclude(&backend);
                            continue;
                        }
                        response_edits
                            .extend(http_pick.response_headers.drain(..).map(|(name, value)| (name, Some(value))));
                        let served = Served { backend, active, log: log.take() };
                        return Ok(self.respond(resp, served, on_client_upgrade, conn, &response_edits, id));
                    }
                    Err(SendError::Connect(e, unsent)) => {
                        tracing::debug!(pool = %pool.name, backend = %backend.address, "connect failed: {e}");
                        if let Some(request) = unsent {
                            parts = Some(request.into_parts().0);
                        }
                        attempts.failed(&backend);
                        if !replayable {
                            return Err(Failure::Unreachable);
                        }
                    }
                    Err(SendError::Failed(e)) => return Err(Failure::BackendError(e)),
                    Err(SendError::Timeout) => return Err(Failure::Timeout),
                }
            }
            Err(if attempts.failures() == 0 { Failure::NoBackend } else { Failure::Unreachable })
        }
    }

    fn respond(
        &self,
        resp: Response<UpstreamBody>,
        served: Served,
        on_client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        conn: &Arc<ClientConn>,
        edits: &[HeaderEdit],
        id: &HeaderValue,
    ) -> Response<ProxyBody> {
        let Served { backend, active, log } = served;
        let (mut parts, mut body) = resp.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // The backend's connection is taken only for a client that asked to upgrade.
            let upgrade = on_client_upgrade.and_then(|client| Some((client, body.take_upgraded()?)));
            if let Some((client, server)) = upgrade {
                // Tracked, so shutdown waits for it; it holds the client's
                // connection open in the listener's counters and caps.
                let idle = self.routes.load().settings.idle_timeout;
                self.tracker.spawn(tunnel(client, server, backend.stats.clone(), active, conn.clone(), idle));
                return Response::from_parts(parts, body::empty());
            }
        }
        // A proxy answers in its own HTTP version (RFC 9110, 6.2): an
        // HTTP/1.0 backend must not turn the client's connection into
        // HTTP/1.0, which would close it after this response.
        if parts.version == http::Version::HTTP_10 {
            parts.version = http::Version::HTTP_11;
        }
        headers::prepare_response(&mut parts, edits, id);
        let body = Counted::new(body, backend.stats.clone(), Direction::FromBackend, Some(active))
            .with_log(log)
            .boxed_unsync();
        Response::from_parts(parts, body)
    }
}

/// A request made ready for its backend, waiting for the balance phase.
struct Outgoing {
    parts: http::request::Parts,
    body: Incoming,
    /// The balancer's hash key: the route's, else the pool's `hash_key`.
    hash_key: Option<String>,
    /// The client's side of an `Upgrade` request.
    on_client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// Header edits of the route for the response.
    response_edits: Vec<HeaderEdit>,
}

/// What a response holds on to while its body streams.
struct Served {
    backend: Arc<Backend>,
    active: crate::upstream::ActiveGuard,
    log: Option<crate::access_log::Entry>,
}

/// Which way a body flows, for byte counting.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Request body, client to backend (tx).
    ToBackend,
    /// Response body, backend to client (rx).
    FromBackend,
}

/// An upgraded connection (WebSocket and the like): bytes both ways as on
/// a TCP listener, counted as they move, closed after the listener's
/// `idle_timeout` without a byte either way.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    server: crate::l4::Prefixed<crate::tls::BackendStream>,
    stats: Arc<crate::upstream::BackendStats>,
    _active: crate::upstream::ActiveGuard,
    _conn: Arc<ClientConn>,
    idle: Duration,
) {
    let Ok(client) = client.await else { return };
    let (client, server) = (Box::new(TokioIo::new(client)), Box::new(server));
    if let Err(e) = crate::l4::proxy_io(client, server, &stats, idle).await {
        tracing::debug!("upgraded connection ended: {e}");
    }
}

trait CloneParts {
    fn clone_parts(&self) -> http::request::Parts;
}

impl CloneParts for http::request::Parts {
    /// A copy of the head without its extensions (which are not `Clone`).
    fn clone_parts(&self) -> http::request::Parts {
        let mut req = Request::builder().method(self.method.clone()).uri(self.uri.clone()).version(self.version);
        if let Some(h) = req.headers_mut() {
            *h = self.headers.clone();
        }
        req.body(()).expect("valid parts").into_parts().0
    }
}

/// hyper's executor for HTTP/2, which spawns a task per stream: the task
/// gets the stream's future boxed. A stream's future holds the request's
/// (3.6 KB), and tokio copies a future several times on its way into a
/// task and once more when it ends; boxed, those copies are of a pointer,
/// for one allocation. HTTP/1.1 spawns nothing, so it pays nothing.
#[derive(Clone, Copy)]
struct BoxedTasks;

impl<F> hyper::rt::Executor<F> for BoxedTasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        drop(tokio::spawn(Box::pin(fut)));
    }
}

/// Serve HTTP on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, service: Arc<HttpService>, stop: CancellationToken, tracker: TaskTracker) {
    let name = service.name.clone();
    let caps = service.caps.clone();
    let rooms = waiting::Rooms::open(&service, &stop, &tracker);
    crate::workers::hand_off(listener, &name, caps, stop, move |socket, peer, ticket, place| {
        let open = OpenConnection { _counted: service.stats.accepted(), _ticket: ticket };
        rooms.admit(&service, socket, peer, open, place);
        Ok(())
    })
    .await
}

/// Tell a client that never finished its first request head why it is cut off.
fn request_timeout(socket: BorrowedFd<'_>) {
    let _ = rustix::net::send(socket, REQUEST_TIMEOUT, rustix::net::SendFlags::NOSIGNAL);
}

/// Answer of a plain HTTP listener to a client refused at its
/// `max_connections_per_client`.
pub const TOO_MANY_CONNECTIONS: &[u8] =
    b"HTTP/1.1 429 Too Many Requests\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Answer of a plain HTTP listener to a client shed at accept (overloaded).
pub const OVERLOADED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Answer of a plain HTTP listener to a client that sent nothing in time.
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// A connection whose client has started talking (see [`waiting`]).
async fn serve_active(
    service: Arc<HttpService>,
    mut stream: TcpStream,
    peer: SocketAddr,
    open: OpenConnection,
    stop: CancellationToken,
) {
    // From here on, the client is the one a trusted proxy's header names.
    let policy = service.routes.load().proxy_accept.clone();
    let Ok(peer) = crate::proxy_protocol::client_address(&mut stream, peer, policy.as_deref(), &service.name).await
    else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut record = service.connection(peer);
    let tls = service.routes.load().tls.clone();
    match tls {
        None => {
            // The socket's descriptor, to answer 408 after hyper gives up on
            // a request head (hyper itself just closes).
            let fd = stream.as_raw_fd();
            serve_http(service, TokioIo::new(stream), record, peer, open, Some(fd), stop).await
        }
        Some(tls) => match tls.accept(stream).await {
            Ok((stream, handshake)) => {
                record.protocol = types::Protocol::Https;
                record.sni = handshake.sni;
                record.alpn = handshake.alpn;
                record.client_identity = handshake.client_identity;
                serve_http(service, TokioIo::new(stream), record, peer, open, None, stop).await
            }
            Err(e) => tracing::debug!(listener = %service.name, %peer, "TLS handshake failed: {e}"),
        },
    }
}

async fn serve_http<I>(
    service: Arc<HttpService>,
    io: I,
    record: types::Connection,
    peer: SocketAddr,
    open: OpenConnection,
    timeout_answer_fd: Option<RawFd>,
    stop: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // The access filters see the connection once (`check-connection`);
    // what they settle there spares or answers its requests.
    let access = Admission::check(&service.name, &service.routes.load().access, &record, peer);
    let refused = access.refused.clone().map(Failure::from);
    let conn = Arc::new(ClientConn {
        _open: open,
        record,
        peer,
        requests: Default::default(),
        http2: Default::default(),
        access,
        refused,
    });
    let first_request_seen = {
        let conn = conn.clone();
        move || conn.requests.load(std::sync::atomic::Ordering::Relaxed) > 0
    };
    // A denial is an HTTP status on every request, not a dropped connection.
    let settings = service.routes.load().settings;
    let mut builder = hyper_util::server::conn::auto::Builder::new(BoxedTasks);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(settings.max_header_size.max(8192))
        .keep_alive(true)
        // A client may shut its write side once the request is sent (`nc -N`):
        // answer it, as nginx does, instead of dropping the request.
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_size as u32)
        .max_concurrent_streams(settings.max_concurrent_streams);
    let svc = service.clone();
    let this = conn.clone();
    let handler = hyper::service::service_fn(move |req| svc.clone().handle(conn.clone(), req));
    let connection = builder.serve_connection_with_upgrades(io, handler);
    tokio::pin!(connection);
    tokio::select! {
        r = connection.as_mut() => {
            if let Err(e) = r {
                let timed_out = e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
                if let (true, false, Some(fd)) = (timed_out, first_request_seen(), timeout_answer_fd) {
                    // SAFETY: `connection` owns the socket and is alive until
                    // this function returns: hyper keeps a connection's I/O
                    // after an error (it gives it up only to an upgrade, which
                    // is no error), so `fd` is still this client's socket.
                    request_timeout(unsafe { BorrowedFd::borrow_raw(fd) });
                }
                tracing::debug!(listener = %service.name, %peer, "connection: {e}");
            }
        }
        _ = stop.cancelled() => {
            // A plain stop closes an idle HTTP/1 connection at once. Draining
            // for a successor, it waits for the next request instead and
            // answers it with `connection: close` (see `handle`), or closes
            // at `header_timeout` when none comes: a client must never see its
            // kept-alive connection close under a request it just sent.
            // HTTP/2 says GOAWAY either way, which tells its clients which
            // streams to send again.
            let retiring = service.retiring.load(std::sync::atomic::Ordering::Relaxed);
            if !retiring || this.http2.load(std::sync::atomic::Ordering::Relaxed) {
                connection.as_mut().graceful_shutdown();
            }
            let _ = connection.await;
        }
    }
}
