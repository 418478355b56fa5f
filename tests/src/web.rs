//! HTTP peers for the L7 tests: a hyper backend that tags its answers and
//! echoes what it saw, and clients for HTTP/1.1 and HTTP/2 (h2c).

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Body type of test requests.
pub type TestBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// A body of bytes.
pub fn body(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// How a test backend behaves.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Normal,
    Fail(u16),
    Slow(Duration),
}

/// An HTTP/1.1 + h2c backend. Every response carries `x-backend: NAME`;
/// headers it received come back as `x-seen-<name>`; the body is echoed;
/// `/status/N` answers N; `/sleep/MS` waits first.
pub struct HttpBackend {
    /// Name in `x-backend`.
    pub name: String,
    /// Bound address.
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    forced: Arc<AtomicU16>,
    task: JoinHandle<()>,
}

impl HttpBackend {
    /// Start on a free loopback port.
    pub async fn start(name: &str) -> Result<Self> {
        Self::start_with(name, Mode::Normal).await
    }

    /// Start a backend that answers every request with `status`.
    pub async fn failing(name: &str, status: u16) -> Result<Self> {
        Self::start_with(name, Mode::Fail(status)).await
    }

    /// Start a backend that waits `ms` before every answer.
    pub async fn slow(name: &str, ms: u64) -> Result<Self> {
        Self::start_with(name, Mode::Slow(Duration::from_millis(ms))).await
    }

    /// Start a backend that speaks HTTPS with `tls` (HTTP/1.1 or h2 by ALPN).
    pub async fn start_tls(name: &str, tls: Arc<tokio_rustls::rustls::ServerConfig>) -> Result<Self> {
        Self::start_on(name, Mode::Normal, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(name: &str, mode: Mode) -> Result<Self> {
        Self::start_on(name, mode, None).await
    }

    async fn start_on(name: &str, mode: Mode, tls: Option<tokio_rustls::TlsAcceptor>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (connections, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let forced = Arc::new(AtomicU16::new(0));
        let task = tokio::spawn(serve(
            listener,
            name.to_string(),
            mode,
            connections.clone(),
            requests.clone(),
            forced.clone(),
            tls,
        ));
        Ok(Self { name: name.into(), addr, connections, requests, forced, task })
    }

    /// Answer every request with `status` from now on (0: as started).
    pub fn set_status(&self, status: u16) {
        self.forced.store(status, Ordering::SeqCst);
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests answered.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    mode: Mode,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    forced: Arc<AtomicU16>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        connections.fetch_add(1, Ordering::SeqCst);
        let (name, requests, forced, tls) = (name.clone(), requests.clone(), forced.clone(), tls.clone());
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let forced = forced.load(Ordering::SeqCst);
                let mode = if forced != 0 { Mode::Fail(forced) } else { mode };
                answer(name.clone(), mode, requests.clone(), req)
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                }
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn answer(
    name: String,
    mode: Mode,
    requests: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let mut status = StatusCode::OK;
    match mode {
        Mode::Normal => {}
        Mode::Fail(code) => status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Mode::Slow(wait) => tokio::time::sleep(wait).await,
    }
    if path == "/discard" {
        // Count the body without keeping it.
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            n += frame.ok().and_then(|f| f.into_data().ok()).map_or(0, |d| d.len() as u64);
        }
        return Ok(Response::builder().header("x-backend", &name).body(crate::web::body(n.to_string())).unwrap());
    }
    if let Some(n) = path.strip_prefix("/generate/").and_then(|s| s.parse::<u64>().ok()) {
        // Stream n bytes in 64 KiB frames.
        let chunk = Bytes::from(vec![b'g'; 64 << 10]);
        let frames = futures::stream::unfold(n, move |left| {
            let chunk = chunk.clone();
            async move {
                (left > 0).then(|| {
                    let take = left.min(chunk.len() as u64);
                    (Ok::<_, hyper::Error>(hyper::body::Frame::data(chunk.slice(..take as usize))), left - take)
                })
            }
        });
        let body = http_body_util::StreamBody::new(frames).boxed();
        return Ok(Response::builder().header("x-backend", &name).body(body).unwrap());
    }
    if let Some(ms) = path.strip_prefix("/sleep/").and_then(|s| s.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|s| s.parse().ok()) {
        status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    }
    let mut resp = Response::builder()
        .status(status)
        .header("x-backend", &name)
        .header("x-seen-path", req.uri().path_and_query().map_or("/", |p| p.as_str()))
        .header("x-seen-method", req.method().as_str())
        .header("x-seen-version", format!("{:?}", req.version()))
        .header("connection", "x-drop-me")
        .header("x-drop-me", "hop-by-hop");
    for (k, v) in req.headers() {
        resp = resp.header(format!("x-seen-{k}"), v);
    }
    // Echo the body as it streams in.
    Ok(resp.body(req.into_body().boxed()).unwrap())
}

/// An HTTP/1.1 client with keep-alive.
pub fn client_h1() -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn client_h2() -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// A response with its body read.
pub struct Got {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Got {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// Send a request and read the whole response (bounded by [`crate::STEP`]).
pub async fn send(
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
    req: Request<TestBody>,
) -> Result<Got> {
    tokio::time::timeout(crate::STEP, async {
        let resp = client.request(req).await.context("request")?;
        let (parts, b) = resp.into_parts();
        let body = b.collect().await.context("body")?.to_bytes();
        Ok(Got { status: parts.status, headers: parts.headers, body })
    })
    .await?
}

/// `GET http://addr{path}` with a Host header.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Request<TestBody> {
    Request::get(format!("http://{addr}{path}")).header("host", host).body(body(Bytes::new())).unwrap()
}
