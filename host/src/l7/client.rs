//! The proxy's side towards a pool's backends.
//!
//! HTTP/1.1 backends (the usual case) use weir's own keep-alive connections
//! (`h1`): an idle list per backend, and each connection driven by the task
//! of the request that holds it, from the send to the last byte of the
//! response body. Nothing is spawned per request or per connection, and a
//! request wakes no other task: the client's connection, the backend's and
//! the plugins' calls all run in one task, as one event loop would run them.
//! HTTP/2 backends multiplex many requests on one connection, which needs a
//! task of its own to drive it: hyper-util's pooled client does that.

use super::body::{BoxError, ProxyBody};
use super::h1::{self, Conn, RequestError};
use crate::tls::BackendStream;
use crate::upstream::Backend;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// How a pool's requests reach its backends.
#[derive(Clone)]
pub struct Upstream {
    kind: Kind,
    /// `http`, or `https` when backends are reached over TLS.
    scheme: Scheme,
}

#[derive(Clone)]
enum Kind {
    Http1(Arc<Http1>),
    /// One client per worker loop: a connection's driver task runs on the
    /// loop of the request that opened it.
    Http2(Arc<[hyper_util::client::legacy::Client<Connector, ProxyBody>]>),
}

/// Why a request got no response from a backend.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (nothing was sent): another backend may
    /// take the request, which comes back when the upstream still has it.
    Connect(String, Option<Box<Request<ProxyBody>>>),
    /// No response head within the pool's `response_timeout`.
    Timeout,
    /// The backend failed the request after it was sent.
    Failed(String),
}

/// Settings of a pool's upstream side.
pub struct UpstreamSettings<'a> {
    /// Backends speak HTTP/2 (h2c, or h2 over TLS).
    pub http2: bool,
    /// Idle connections kept per backend.
    pub keepalive: usize,
    /// How long an idle connection is kept.
    pub keepalive_timeout: Duration,
    /// Time to connect (and finish the TLS handshake).
    pub connect_timeout: Duration,
    /// Reach backends over TLS.
    pub tls: Option<&'a crate::tls::BackendTls>,
}

impl Upstream {
    /// The upstream side of a pool; with `tls`, backends are reached over
    /// TLS (ALPN `h2` when the pool speaks HTTP/2, else `http/1.1`).
    pub fn new(s: UpstreamSettings<'_>) -> Upstream {
        let scheme = if s.tls.is_some() { Scheme::HTTPS } else { Scheme::HTTP };
        if !s.http2 {
            let http1 = Arc::new(Http1 {
                tls: s.tls.cloned(),
                connect_timeout: s.connect_timeout,
                idle: (0..crate::workers::count()).map(|_| Mutex::default()).collect(),
                keepalive: s.keepalive,
                keepalive_timeout: s.keepalive_timeout,
            });
            http1.sweep_in_background();
            return Upstream { kind: Kind::Http1(http1), scheme };
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(s.connect_timeout));
        connector.enforce_http(false);
        let config = match s.tls {
            Some(t) => (*t.config).clone(),
            None => crate::tls::plain_pool_config(),
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http();
        let builder = match s.tls.and_then(|t| t.sni.clone()) {
            Some(name) => builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name)),
            None => builder,
        };
        let connector = builder.enable_http2().wrap_connector(connector);
        let clients = (0..crate::workers::count()).map(|_| {
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .pool_idle_timeout(s.keepalive_timeout)
                .pool_max_idle_per_host(s.keepalive)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_only(true)
                .build(connector.clone())
        });
        Upstream { kind: Kind::Http2(clients.collect()), scheme }
    }

    /// Whether backends speak HTTP/2 (h2c, or h2 over TLS).
    pub fn http2(&self) -> bool {
        matches!(self.kind, Kind::Http2(_))
    }

    /// Send `req` to `backend`, as `path`; the response head must come
    /// within `timeout` (connecting included).
    /// (A function returning an `async` block rather than an `async fn`:
    /// an `async fn` keeps its by-value parameters twice, the argument and
    /// the body's binding, and the request's future is moved whole when a
    /// stream's task is spawned and ends; see `HttpService::handle`.)
    #[allow(clippy::manual_async_fn)] // an `async fn` would keep its by-value parameters twice
    pub fn send<'a>(
        &'a self,
        backend: &'a Backend,
        mut req: Request<ProxyBody>,
        path: PathAndQuery,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + 'a {
        async move {
            let Some(authority) = backend.authority.clone() else {
                return Err(SendError::Connect("no address".into(), Some(Box::new(req))));
            };
            match &self.kind {
                Kind::Http1(http1) => {
                    // Origin form: the connection already names the backend.
                    *req.uri_mut() = Uri::from(path);
                    tokio::time::timeout(timeout, http1.send(authority, req)).await.unwrap_or(Err(SendError::Timeout))
                }
                Kind::Http2(clients) => {
                    let client = &clients[crate::workers::index() % clients.len()];
                    let mut uri = http::uri::Parts::default();
                    uri.scheme = Some(self.scheme.clone());
                    uri.authority = Some(authority);
                    uri.path_and_query = Some(path);
                    *req.uri_mut() = Uri::from_parts(uri).map_err(|e| SendError::Connect(e.to_string(), None))?;
                    match tokio::time::timeout(timeout, client.request(req)).await {
                        Ok(Ok(resp)) => Ok(resp.map(|body| UpstreamBody { inner: Inner::Http2(body) })),
                        Ok(Err(e)) if e.is_connect() => Err(SendError::Connect(format!("{e:#}"), None)),
                        Ok(Err(e)) => Err(SendError::Failed(format!("{e:#}"))),
                        Err(_) => Err(SendError::Timeout),
                    }
                }
            }
        }
    }
}

/// A pool's HTTP/1.1 connections.
struct Http1 {
    tls: Option<crate::tls::BackendTls>,
    connect_timeout: Duration,
    /// Idle connections per worker loop (each registered with its loop's
    /// reactor) and backend, the most recently used last.
    idle: Box<[Mutex<IdleLists>]>,
    keepalive: usize,
    keepalive_timeout: Duration,
}

/// One worker's idle connections per backend.
type IdleLists = FxHashMap<Authority, Vec<Idle>>;

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Http1 {
    #[allow(clippy::manual_async_fn)] // an `async fn` would keep its by-value parameters twice
    fn send(
        self: &Arc<Self>,
        authority: Authority,
        mut req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + '_ {
        async move {
            // Idle connections may turn out closed by the backend as the
            // request goes out: a request of which nothing was written is
            // sent again, at most on a few idle connections and then on a
            // new one.
            for _ in 0..3 {
                let Some(conn) = self.checkout(&authority).await else { break };
                match conn.request(req).await {
                    Ok(resp) => return Ok(self.hold(resp, authority)),
                    Err(RequestError::Unsent(unsent, _)) => req = *unsent,
                    Err(RequestError::Failed(e)) => return Err(SendError::Failed(e)),
                }
            }
            // Boxed: connecting (with a TLS handshake) is most of this
            // future's size and happens once per backend connection, not per
            // request.
            let conn = match Box::pin(self.connect(&authority)).await {
                Ok(conn) => conn,
                Err(e) => return Err(SendError::Connect(e, Some(Box::new(req)))),
            };
            match conn.request(req).await {
                Ok(resp) => Ok(self.hold(resp, authority)),
                Err(RequestError::Unsent(_, e) | RequestError::Failed(e)) => Err(SendError::Failed(e)),
            }
        }
    }

    fn hold(self: &Arc<Self>, resp: Response<h1::Body>, authority: Authority) -> Response<UpstreamBody> {
        let home = self.clone();
        resp.map(|body| UpstreamBody { inner: Inner::Http1 { body, home, authority } })
    }

    /// The most recently used idle connection to `authority` that is still
    /// open; those expired or closed are dropped on the way.
    async fn checkout(&self, authority: &Authority) -> Option<Conn> {
        let now = Instant::now();
        loop {
            let Idle { mut conn, since } = self.idle().lock().get_mut(authority)?.pop()?;
            if now.duration_since(since) >= self.keepalive_timeout {
                continue;
            }
            if std::future::poll_fn(|cx| Poll::Ready(conn.usable(cx))).await {
                return Some(conn);
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Conn, String> {
        let connect = BackendStream::connect(authority.as_str(), self.tls.as_ref());
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(io)) => Ok(Conn::new(io)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {:?}", self.connect_timeout)),
        }
    }

    /// Keep a connection whose response has been read to its end, if the
    /// list has room.
    fn give_back(&self, authority: Authority, conn: Conn) {
        let mut idle = self.idle().lock();
        let list = idle.entry(authority).or_default();
        if list.len() < self.keepalive {
            list.push(Idle { conn, since: Instant::now() });
        }
    }

    /// Drop idle connections that expired or that their backend closed.
    fn sweep(&self) {
        let now = Instant::now();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for idle in &self.idle {
            idle.lock().retain(|_, list| {
                list.retain_mut(|i| now.duration_since(i.since) < self.keepalive_timeout && i.conn.usable(&mut cx));
                !list.is_empty()
            });
        }
    }

    /// The idle lists of the calling thread's worker loop.
    fn idle(&self) -> &Mutex<IdleLists> {
        &self.idle[crate::workers::index() % self.idle.len()]
    }

    /// Sweep now and then while the pool lives (a reload drops it, and its
    /// idle connections with it).
    fn sweep_in_background(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let every = (self.keepalive_timeout / 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
        let pool: Weak<Http1> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { break };
                pool.sweep();
            }
        });
    }
}

/// A backend's response body. On an HTTP/1.1 connection it reads the
/// connection as it is polled and, at its end, gives the connection back to
/// the idle list; dropped before its end, it closes the connection.
pub struct UpstreamBody {
    inner: Inner,
}

enum Inner {
    Http1 { body: h1::Body, home: Arc<Http1>, authority: Authority },
    Http2(Incoming),
}

impl UpstreamBody {
    /// For a `101 Switching Protocols`: the backend's connection, now
    /// carrying the new protocol.
    pub fn take_upgraded(&mut self) -> Option<crate::l4::Prefixed<BackendStream>> {
        match &mut self.inner {
            Inner::Http1 { body, .. } => body.take_upgraded(),
            Inner::Http2(_) => None,
        }
    }
}

/// Give an HTTP/1.1 body's connection back once it has been read to its end.
fn release(body: &mut h1::Body, home: &Http1, authority: &Authority) {
    if let Some(conn) = body.reusable() {
        home.give_back(authority.clone(), conn);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            Inner::Http1 { body, home, authority } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if body.is_end_stream() {
                    release(body, home, authority);
                }
                polled
            }
            Inner::Http2(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Http1 { body, .. } => body.is_end_stream(),
            Inner::Http2(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Http1 { body, .. } => body.size_hint(),
            Inner::Http2(inner) => inner.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing to read (204, 304, HEAD, length 0) is never
        // polled: its connection is as reusable as one read to its end.
        if let Inner::Http1 { body, home, authority } = &mut self.inner {
            if body.is_end_stream() {
                release(body, home, authority);
            }
        }
    }
}
