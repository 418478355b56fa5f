//! The L7 HTTP proxy end to end: hyper backends and real clients (hyper
//! HTTP/1.1 and h2c, curl when installed) through weir on 127.0.0.1.

use anyhow::Result;
use bytes::Bytes;
use http::{Request, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use weir_tests::web::*;
use weir_tests::*;

fn http_config(pools: &[(&str, &[&HttpBackend])], extra_listener: &str, extra: &str) -> String {
    let mut text = String::new();
    for (name, backends) in pools {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
        text += &format!("[pools.{name}]\nbackends = [{}]\nfail_timeout = \"300ms\"\n\n", list.join(", "));
    }
    text + &format!(
        "[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"{}\"\n{extra_listener}\n{extra}",
        pools[0].0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_balanced_with_proxy_headers_and_keepalive() -> Result<()> {
    let (a, b) = (HttpBackend::start("a").await?, HttpBackend::start("b").await?);
    let weir = start_weir(&http_config(&[("p", &[&a, &b])], "via = true\nforwarded = true", "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    let mut seen = HashMap::<String, usize>::new();
    for i in 0..100 {
        let mut req = get(addr, "shop.test", &format!("/item/{i}?q=1"));
        req.headers_mut().insert("connection", "keep-alive, x-secret".parse()?);
        req.headers_mut().insert("x-secret", "hop".parse()?);
        let got = send(&client, req).await?;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("x-seen-path"), format!("/item/{i}?q=1"));
        assert_eq!(got.header("x-seen-host"), "shop.test", "Host preserved");
        assert_eq!(got.header("x-seen-x-forwarded-for"), "127.0.0.1");
        assert_eq!(got.header("x-seen-x-forwarded-host"), "shop.test");
        assert_eq!(got.header("x-seen-x-forwarded-proto"), "http");
        assert_eq!(got.header("x-seen-via"), "1.1 weir");
        assert_eq!(got.header("x-seen-forwarded"), "for=127.0.0.1;proto=http;host=\"shop.test\"");
        assert_eq!(got.header("x-seen-x-secret"), "", "header named in Connection removed");
        assert_eq!(got.header("x-drop-me"), "", "hop-by-hop removed from the response");
        assert_eq!(got.header("x-request-id").len(), 16, "request id added");
        assert_eq!(got.header("x-request-id"), got.header("x-seen-x-request-id"));
        *seen.entry(got.header("x-backend").to_string()).or_default() += 1;
    }
    assert_eq!(seen, HashMap::from([("a".into(), 50), ("b".into(), 50)]));
    // The host recorded each backend's outcomes.
    for b in &weir.pool("p").unwrap().members().backends {
        assert_eq!((b.stats.responses(2), b.stats.responses(5), b.stats.total()), (50, 0, 50));
        assert!(b.stats.latency_us() > 0);
    }
    // 100 sequential requests over keep-alive on both sides: a handful of
    // backend connections, not one per request.
    assert!(a.connections() <= 2 && b.connections() <= 2, "a {} b {}", a.connections(), b.connections());
    weir.shutdown().await;
    Ok(())
}

/// A raw HTTP/1.1 backend on 127.0.0.1 that answers every request head with
/// `200 ok`, closing the connection silently (no `Connection: close`) after
/// `per_connection` answers, or keeping it open. Counts the connections that
/// ended, whichever side ended them.
async fn raw_backend(
    per_connection: Option<usize>,
) -> Result<(std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>, tokio::task::JoinHandle<()>)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let closed = Arc::new(AtomicU64::new(0));
    let server = tokio::spawn({
        let closed = closed.clone();
        async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let closed = closed.clone();
                tokio::spawn(async move {
                    let (mut buf, mut head, mut answered) = ([0u8; 4096], Vec::new(), 0);
                    'conn: while per_connection.is_none_or(|n| answered < n) {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                            answered += 1;
                            if per_connection.is_some_and(|n| answered >= n) {
                                break 'conn;
                            }
                        }
                    }
                    drop(s);
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
    });
    Ok((addr, closed, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_reused_after_bodyless_responses() -> Result<()> {
    // HEAD answers and 204s have no body to read to its end: their
    // connections go back to the idle list all the same.
    let a = HttpBackend::start("a").await?;
    let weir = start_weir(&http_config(&[("p", &[&a])], "", "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    for i in 0..50 {
        let req = Request::head(format!("http://{addr}/h/{i}")).header("host", "x").body(body(Bytes::new()))?;
        let got = send(&client, req).await?;
        assert_eq!((got.status, got.header("x-seen-path")), (StatusCode::OK, format!("/h/{i}").as_str()));
    }
    a.set_status(204);
    for i in 0..50 {
        let got = send(&client, get(addr, "x", &format!("/n/{i}"))).await?;
        assert_eq!((got.status, got.body.len()), (StatusCode::NO_CONTENT, 0));
    }
    assert_eq!(a.requests(), 100);
    assert!(a.connections() <= 2, "100 bodyless answers took {} backend connections", a.connections());
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_backend_connections_the_backend_closed_are_not_used() -> Result<()> {
    use std::sync::atomic::Ordering;
    // A backend that answers one request per connection and then closes it
    // without saying so (no `Connection: close`), as a server whose
    // keep-alive timeout is shorter than weir's does.
    let (backend_addr, closed, server) = raw_backend(Some(1)).await?;
    let config = format!(
        "[pools.p]\nbackends = [\"{backend_addr}\"]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n"
    );
    let weir = start_weir(&config).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    for i in 0..20u64 {
        let got = send(&client, get(addr, "x", &format!("/{i}"))).await?;
        assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"ok"[..]), "request {i}");
        // The next request goes out only once the backend has closed the
        // connection this one came back on.
        eventually("the backend to close", || closed.load(Ordering::SeqCst) > i).await?;
    }
    weir.shutdown().await;
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_backend_connections_are_closed_after_keepalive_timeout() -> Result<()> {
    use std::sync::atomic::Ordering;
    // A keep-alive backend that counts the connections weir closes.
    let (backend_addr, closed, server) = raw_backend(None).await?;
    let config = format!(
        "[pools.p]\nbackends = [\"{backend_addr}\"]\nkeepalive_timeout = \"2s\"\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n"
    );
    let weir = start_weir(&config).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    for i in 0..3 {
        let got = send(&client, get(addr, "x", &format!("/{i}"))).await?;
        assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    // Kept between requests (one connection, none closed yet), closed once
    // idle for longer than keepalive_timeout.
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    eventually("weir to close its idle backend connection", || closed.load(Ordering::SeqCst) == 1).await?;
    weir.shutdown().await;
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_is_answered() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // `nc -N`, `curl --data @- < file | ...`-style clients: the request, then
    // the write side shut, then the answer read to the end.
    let a = HttpBackend::start("a").await?;
    let weir = start_weir(&http_config(&[("p", &[&a])], "", "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    for body in ["", "hello"] {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let method = if body.is_empty() { "GET" } else { "POST" };
        let head = format!("{method} /half HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(head.as_bytes()).await?;
        s.shutdown().await?;
        let mut got = Vec::new();
        tokio::time::timeout(STEP, s.read_to_end(&mut got)).await??;
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 200"), "{method}: {got:?}");
        assert!(got.to_ascii_lowercase().contains("x-seen-path: /half"), "{got}");
    }
    assert_eq!(a.requests(), 2);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_intact() -> Result<()> {
    let a = HttpBackend::start("a").await?;
    let weir = start_weir(&http_config(&[("p", &[&a])], "", "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    for size in [0usize, 1, 1 << 20, 8 << 20] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let req = Request::post(format!("http://{addr}/upload")).body(body(payload.clone()))?;
        let got = send(&client, req).await?;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("x-seen-method"), "POST");
        assert!(got.body == payload, "{size} bytes echoed intact (got {})", got.body.len());
    }
    // Chunked upload (no content-length) from a streaming body.
    let stream = streaming(vec![b"abc".to_vec(), vec![b'x'; 100_000], b"end".to_vec()]);
    let got = send(&client, Request::put(format!("http://{addr}/chunked")).body(stream)?).await?;
    assert_eq!(got.header("x-seen-transfer-encoding"), "chunked");
    assert_eq!(got.body.len(), 100_006);
    assert!(got.body.starts_with(b"abc") && got.body.ends_with(b"end"));
    weir.shutdown().await;
    Ok(())
}

/// A body sent in several frames with no length known up front.
fn streaming(parts: Vec<Vec<u8>>) -> TestBody {
    use http_body_util::BodyExt;
    let frames = parts.into_iter().map(|p| Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from(p))));
    http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_to_http1_backend_and_h2c_to_h2c() -> Result<()> {
    let a = HttpBackend::start("a").await?;
    let text = http_config(&[("h1", &[&a]), ("h2", &[&a])], "", "");
    let text = text.replace("[pools.h2]\n", "[pools.h2]\nhttp2 = true\n");
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let got = send(&client_h2(), get(addr, "h2.test", "/over-h2")).await?;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("x-seen-version"), "HTTP/1.1", "client spoke h2c, backend got HTTP/1.1");
    assert_eq!(got.header("x-seen-host"), "h2.test");
    weir.shutdown().await;

    let text = http_config(&[("h2", &[&a])], "", "").replace("[pools.h2]\n", "[pools.h2]\nhttp2 = true\n");
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let got = send(&client_h2(), get(addr, "h2.test", "/h2-all-the-way")).await?;
    assert_eq!(got.header("x-seen-version"), "HTTP/2.0");
    let payload = vec![7u8; 300_000];
    let got = send(&client_h2(), Request::post(format!("http://{addr}/up")).body(body(payload.clone()))?).await?;
    assert!(got.body == payload);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_the_right_status_and_a_request_id() -> Result<()> {
    let a = HttpBackend::start("a").await?;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let text = format!(
        "[pools.dead]\nbackends = [\"{dead}\"]\n\n[pools.none]\n\n{}",
        http_config(&[("p", &[&a])], "", "").replace("pool = \"p\"", "pool = \"dead\"")
    );
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let got = send(&client_h1(), get(addr, "x", "/")).await?;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    let id = got.header("x-request-id").to_string();
    assert!(String::from_utf8_lossy(&got.body).contains(&format!("request-id: {id}")), "{:?}", got.body);
    // The dead backend is now out of rotation: no healthy backend.
    let got = send(&client_h1(), get(addr, "x", "/")).await?;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    weir.shutdown().await;

    // A backend slower than response_timeout: 504.
    let slow = http_config(&[("p", &[&a])], "", "").replace("[pools.p]\n", "[pools.p]\nresponse_timeout = \"200ms\"\n");
    let weir = start_weir(&slow).await?;
    let addr = weir.listener_addr("web").unwrap();
    let started = std::time::Instant::now();
    let got = send(&client_h1(), get(addr, "x", "/sleep/2000")).await?;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));
    assert_eq!(send(&client_h1(), get(addr, "x", "/fast")).await?.status, StatusCode::OK);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_routes_like_bfe() -> Result<()> {
    let names = ["apex", "wild", "wild-eu", "shop", "api", "v2", "admin", "login", "static", "fallback", "default"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(HttpBackend::start(n).await?);
    }
    let pools: Vec<(&str, Vec<&HttpBackend>)> = backends.iter().map(|b| (b.name.as_str(), vec![b])).collect();
    let pools: Vec<(&str, &[&HttpBackend])> = pools.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    let mut text = http_config(&pools, "router = \"routes\"", "");
    text = text.replace("pool = \"apex\"", "pool = \"default\"");
    text += r#"
[plugins.routes]
source = "builtin:host-path"
config.default = "fallback"
config.routes = [
  { host = "example.com", path = "/", pool = "apex" },
  { host = "*.example.com", path = "/", pool = "wild" },
  { host = "*.eu.example.com", path = "/", pool = "wild-eu" },
  { host = "shop.eu.example.com", path = "/", pool = "shop" },
  { host = "api.test", path = "/", pool = "api" },
  { host = "api.test", path = "/v2/", pool = "v2" },
  { host = "api.test", path = "/v2/admin/", pool = "admin" },
  { host = "api.test", path = "=/v2/admin/login", pool = "login" },
  { host = "*", path = "/static/", pool = "static" },
]
"#;
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    let cases = [
        ("example.com", "/", "apex"),
        ("www.example.com", "/", "wild"),
        ("a.b.example.com", "/x", "wild"),
        ("x.eu.example.com", "/", "wild-eu"),
        ("shop.eu.example.com:8080", "/cart", "shop"),
        ("api.test", "/v1/users", "api"),
        ("api.test", "/v2/users", "v2"),
        ("api.test", "/v2/admin/users", "admin"),
        ("api.test", "/v2/admin/login", "login"),
        ("api.test", "/v2/admin/login/", "admin"),
        ("cdn.other", "/static/app.js", "static"),
        ("cdn.other", "/", "fallback"),
    ];
    for (host, path, want) in cases {
        let got = send(&client, get(addr, host, path)).await?;
        assert_eq!(got.header("x-backend"), want, "{host}{path}");
    }
    // HTTP/2 requests carry the host in :authority (curl resolves api.test to weir).
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2-prior-knowledge", "-o", "/dev/null"])
        .args([
            "-w",
            "%{http_version} %header{x-backend}",
            "--connect-to",
            &format!("api.test:80:{addr}"),
            "http://api.test/v2/x",
        ])
        .output()
        .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 v2", "{}", String::from_utf8_lossy(&out.stderr));
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_weir() -> Result<()> {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not installed; skipped");
        return Ok(());
    }
    let a = HttpBackend::start("a").await?;
    let weir = start_weir(&http_config(&[("p", &[&a])], "", "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-", "-d", "hello curl", &format!("http://{addr}/from-curl")])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-backend: a"), "{text}");
    assert!(text.ends_with("hello curl"), "{text}");
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(format!("http://{addr}/h2"))
        .output()
        .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_retry_on_configured_statuses() -> Result<()> {
    let bad = HttpBackend::failing("bad", 503).await?;
    let good = HttpBackend::start("good").await?;
    // Passive ejection off, so that round-robin keeps offering `bad`.
    let text = http_config(&[("p", &[&bad, &good])], "", "")
        .replace("fail_timeout = \"300ms\"\n", "max_fails = 0\nretry_on = [502, 503]\nretry_budget = 1.0\n");
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    for _ in 0..40 {
        let got = send(&client, get(addr, "x", "/")).await?;
        assert_eq!((got.status, got.header("x-backend")), (StatusCode::OK, "good"));
    }
    // Each request tried `bad` first (the retry's pick advances round-robin too).
    assert_eq!(bad.requests(), 40);
    assert_eq!(weir.pool("p").unwrap().retries.retries(), 40);
    // A request with a body is never replayed: its 503 reaches the client.
    let mut statuses = HashMap::<u16, usize>::new();
    for _ in 0..10 {
        let got = send(&client, Request::post(format!("http://{addr}/x")).body(body("payload"))?).await?;
        *statuses.entry(got.status.as_u16()).or_default() += 1;
    }
    assert_eq!(statuses, HashMap::from([(200, 5), (503, 5)]));
    weir.shutdown().await;

    // With the default passive health, one retried 503 takes `bad` out of rotation.
    let text = http_config(&[("p", &[&bad, &good])], "", "").replace("[pools.p]\n", "[pools.p]\nretry_on = [503]\n");
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let before = bad.requests();
    for _ in 0..20 {
        assert_eq!(send(&client, get(addr, "x", "/")).await?.status, StatusCode::OK);
    }
    assert_eq!(bad.requests() - before, 1);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_trailers_pass_through() -> Result<()> {
    use http_body_util::BodyExt;
    let a = HttpBackend::start("a").await?;
    let text = http_config(&[("p", &[&a])], "", "").replace("[pools.p]\n", "[pools.p]\nhttp2 = true\n");
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse()?);
    let frames = vec![
        Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b"message"))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let req = Request::post(format!("http://{addr}/rpc"))
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed())?;
    let resp = tokio::time::timeout(STEP, client_h2().request(req)).await??;
    assert_eq!(resp.headers()["x-seen-te"], "trailers");
    let collected = tokio::time::timeout(STEP, resp.into_body().collect()).await??;
    let got_trailers = collected.trailers().cloned().expect("trailers came back");
    assert_eq!(got_trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "message");
    weir.shutdown().await;
    Ok(())
}

#[test]
fn one_worker_proxies_concurrent_requests_in_exact_turns_and_reloads() -> Result<()> {
    // `workers = 1` runs weir on a single-threaded event loop: concurrent
    // clients, the backends' connections and the plugins all share it.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (a, b) = rt.block_on(async { anyhow::Ok((HttpBackend::start("a").await?, HttpBackend::start("b").await?)) })?;
    let text = |bind: &str, backends: &[&HttpBackend]| {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
        format!(
            "[runtime]\nworkers = 1\n\n[pools.p]\nbalancer = \"builtin:round-robin\"\nbackends = [{}]\n\n\
             [listeners.web]\nbind = \"{bind}\"\nprotocol = \"http\"\npool = \"p\"\n",
            list.join(", ")
        )
    };
    let weir = WeirProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_weir-under-test")),
        "one-worker",
        &text("127.0.0.1:0", &[&a, &b]),
    )?;
    let addr = weir.addr;
    rt.block_on(async {
        // 20 clients at once, 15 requests each: 300 picks in turn.
        let mut clients = Vec::new();
        for c in 0..20 {
            clients.push(tokio::spawn(async move {
                let client = client_h1();
                let mut seen = Vec::new();
                for i in 0..15 {
                    let got = send(&client, get(addr, "x", &format!("/c{c}/{i}"))).await?;
                    anyhow::ensure!(got.status == StatusCode::OK && got.header("x-seen-path") == format!("/c{c}/{i}"));
                    seen.push(got.header("x-backend").to_string());
                }
                anyhow::Ok(seen)
            }));
        }
        let mut counts = HashMap::<String, usize>::new();
        for c in clients {
            for backend in c.await?? {
                *counts.entry(backend).or_default() += 1;
            }
        }
        assert_eq!(counts, HashMap::from([("a".into(), 150), ("b".into(), 150)]));
        anyhow::Ok(())
    })?;
    // A reload on SIGHUP is taken by the same loop.
    std::fs::write(weir.dir.join("weir.toml"), text(&addr.to_string(), &[&b]))?;
    weir.signal("HUP")?;
    rt.block_on(async {
        let client = client_h1();
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let got = send(&client, get(addr, "x", "/after")).await?;
            assert_eq!(got.status, StatusCode::OK);
            if got.header("x-backend") == "b"
                && send(&client, get(addr, "x", "/again")).await?.header("x-backend") == "b"
            {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "reload not applied");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        anyhow::Ok(())
    })?;
    drop(weir);
    Ok(())
}

#[test]
fn worker_loops_take_connections_evenly_and_keep_exact_turns() -> Result<()> {
    // Three worker loops: each new connection goes to the loop with the
    // fewest, and the pool's turns stay exact across the three threads.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (a, b) = rt.block_on(async { anyhow::Ok((HttpBackend::start("a").await?, HttpBackend::start("b").await?)) })?;
    let text = format!(
        "[runtime]\nworkers = 3\n\n[pools.p]\nbalancer = \"builtin:round-robin\"\nbackends = [\"{}\", \"{}\"]\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n",
        a.addr, b.addr
    );
    let weir = WeirProcess::spawn(std::path::Path::new(env!("CARGO_BIN_EXE_weir-under-test")), "worker-loops", &text)?;
    // A thread names itself once it first runs, which on a busy machine
    // may be after weir logged its listener: poll, within a bound.
    let workers = || -> Result<Vec<String>> {
        let mut threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", weir.child.id()))?
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .filter(|name| name.starts_with("weir-worker"))
            .collect();
        threads.sort();
        Ok(threads)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut threads = workers()?;
    while threads.len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        threads = workers()?;
    }
    assert_eq!(threads, ["weir-worker-0", "weir-worker-1", "weir-worker-2"]);
    let admin = weir.logged_address("admin API listening")?;
    let addr = weir.addr;
    let per_worker = |metrics: &str| -> Vec<String> {
        metrics.lines().filter(|l| l.starts_with("weir_worker_active_connections{")).map(str::to_string).collect()
    };
    rt.block_on(async {
        let metrics = || async {
            let got =
                send(&client_h1(), Request::get(format!("http://{admin}/metrics")).body(body(Bytes::new()))?).await?;
            anyhow::Ok(String::from_utf8(got.body.to_vec())?)
        };
        // Nine clients connect one after another and keep their connection.
        let clients: Vec<_> = (0..9).map(|_| client_h1()).collect();
        let mut counts = HashMap::<String, usize>::new();
        for (c, client) in clients.iter().enumerate() {
            let got = send(client, get(addr, "x", &format!("/first/{c}"))).await?;
            assert_eq!(got.status, StatusCode::OK);
            *counts.entry(got.header("x-backend").to_string()).or_default() += 1;
        }
        assert_eq!(
            per_worker(&metrics().await?),
            [0, 1, 2].map(|w| format!("weir_worker_active_connections{{worker=\"{w}\"}} 3.0")),
            "three connections on each loop"
        );
        // Then all nine at once, 21 requests each: 198 picks in turn.
        let mut tasks = Vec::new();
        for (c, client) in clients.iter().enumerate() {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for i in 0..21 {
                    let got = send(&client, get(addr, "x", &format!("/c{c}/{i}"))).await?;
                    anyhow::ensure!(got.status == StatusCode::OK && got.header("x-seen-path") == format!("/c{c}/{i}"));
                    seen.push(got.header("x-backend").to_string());
                }
                anyhow::Ok(seen)
            }));
        }
        for t in tasks {
            for backend in t.await?? {
                *counts.entry(backend).or_default() += 1;
            }
        }
        assert_eq!(counts, HashMap::from([("a".into(), 99), ("b".into(), 99)]));
        // Closed connections leave their loops.
        drop(clients);
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let now = per_worker(&metrics().await?);
            if now.iter().all(|l| l.ends_with(" 0.0")) && now.len() == 3 {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "connections still counted: {now:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    })?;
    drop(weir);
    Ok(())
}

#[test]
fn silent_clients_wait_on_their_loops_and_get_408_at_header_timeout() -> Result<()> {
    // Two worker loops, each with its waiting room: 30 clients connect and
    // say nothing, one hangs up at once, one speaks late but in time.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let a = rt.block_on(HttpBackend::start("a"))?;
    let text = format!(
        "[runtime]\nworkers = 2\n\n[pools.p]\nbackends = [\"{}\"]\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\nheader_timeout = \"1s\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n",
        a.addr
    );
    let weir = WeirProcess::spawn(std::path::Path::new(env!("CARGO_BIN_EXE_weir-under-test")), "silent", &text)?;
    let admin = weir.logged_address("admin API listening")?;
    let addr = weir.addr;
    rt.block_on(async {
        let per_worker = || async {
            let got =
                send(&client_h1(), Request::get(format!("http://{admin}/metrics")).body(body(Bytes::new()))?).await?;
            let text = String::from_utf8(got.body.to_vec())?;
            let counts: Vec<f64> = text
                .lines()
                .filter(|l| l.starts_with("weir_worker_active_connections{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                .collect();
            anyhow::Ok(counts)
        };
        let opened = std::time::Instant::now();
        let mut silent = Vec::new();
        for _ in 0..30 {
            silent.push(tokio::net::TcpStream::connect(addr).await?);
        }
        drop(tokio::net::TcpStream::connect(addr).await?);
        let mut late = tokio::net::TcpStream::connect(addr).await?;
        // The 31 that stay are counted on their loops, evenly.
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let counts = per_worker().await?;
            if counts.len() == 2 && counts.iter().sum::<f64>() == 31.0 {
                assert!(counts.iter().all(|&c| c >= 14.0), "spread over both loops: {counts:?}");
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "waiting connections counted: {counts:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        late.write_all(b"GET /late HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
        let mut got = Vec::new();
        tokio::time::timeout(STEP, late.read_to_end(&mut got)).await??;
        let text = String::from_utf8_lossy(&got).to_lowercase();
        assert!(text.starts_with("http/1.1 200 ok\r\n") && text.contains("x-seen-path: /late"), "{text}");
        for (i, mut s) in silent.into_iter().enumerate() {
            let mut got = Vec::new();
            tokio::time::timeout(STEP, s.read_to_end(&mut got)).await??;
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "silent client {i}: {text:?}");
            let waited = opened.elapsed();
            assert!(waited >= std::time::Duration::from_millis(900), "closed after {waited:?}");
        }
        // Served, timed out or gone: nothing is left on the loops.
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let counts = per_worker().await?;
            if counts == [0.0, 0.0] {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "connections still counted: {counts:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let got = send(&client_h1(), get(addr, "x", "/after")).await?;
        assert_eq!(got.status, StatusCode::OK);
        anyhow::Ok(())
    })?;
    drop(weir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_connections_still_waiting_for_their_first_byte() -> Result<()> {
    use tokio::io::AsyncReadExt;
    let a = HttpBackend::start("a").await?;
    let weir = start_weir(&http_config(&[("p", &[&a])], "header_timeout = \"60s\"", "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let mut silent = tokio::net::TcpStream::connect(addr).await?;
    eventually("the silent connection counted", || weir.core().open_connections() == 1).await?;
    // The stop does not wait for its header_timeout, and says nothing.
    tokio::time::timeout(STEP, weir.shutdown()).await?;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(STEP, silent.read_to_end(&mut rest)).await?.unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer: {:?}", String::from_utf8_lossy(&rest));
    Ok(())
}

#[test]
fn one_gib_each_way_with_bounded_memory() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let backend = rt.block_on(HttpBackend::start("big"))?;
    let text = format!(
        "[pools.p]\nbackends = [\"{}\"]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        backend.addr
    );
    let weir = WeirProcess::spawn(std::path::Path::new(env!("CARGO_BIN_EXE_weir-under-test")), "gib", &text)?;
    let addr = weir.addr;
    const GIB: u64 = 1 << 30;
    rt.block_on(async {
        use http_body_util::BodyExt;
        // Upload 1 GiB, generated as it is sent; the backend counts it.
        let chunk = Bytes::from(vec![b'u'; 256 << 10]);
        let frames = futures::stream::iter(
            (0..GIB / chunk.len() as u64).map(move |_| Ok::<_, hyper::Error>(hyper::body::Frame::data(chunk.clone()))),
        );
        let req =
            Request::post(format!("http://{addr}/discard")).body(http_body_util::StreamBody::new(frames).boxed())?;
        let got = tokio::time::timeout(std::time::Duration::from_secs(120), send(&client_h1(), req)).await??;
        assert_eq!(got.body, GIB.to_string());
        // Download 1 GiB, counted as it arrives.
        let req = get(addr, "x", &format!("/generate/{GIB}"));
        let resp = client_h1().request(req).await?;
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = tokio::time::timeout(STEP, body.frame()).await? {
            n += frame?.into_data().map_or(0, |d| d.len() as u64);
        }
        assert_eq!(n, GIB);
        anyhow::Ok(())
    })?;
    let peak = weir.peak_rss_kib()?;
    eprintln!("weir peak RSS after 1 GiB up and 1 GiB down: {} MiB", peak / 1024);
    assert!(peak < 128 * 1024, "peak RSS {peak} KiB: bodies must stream, not buffer");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_nginx_backends() -> Result<()> {
    let file: Vec<u8> = (0..100 * 1024).map(|i| (i % 253) as u8).collect();
    let locations = "    location = /ok { return 200 \"ok\"; }\n";
    let n1 = Nginx::start("n1", locations, &[("file.bin", &file)]).await?;
    let n2 = Nginx::start("n2", locations, &[("file.bin", &file)]).await?;
    let text = format!(
        "[pools.p]\nbackends = [\"{}\", \"{}\"]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        n1.addr, n2.addr
    );
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..20 {
        let got = send(&client, get(addr, "x", "/ok")).await?;
        assert_eq!((got.status, got.body.as_ref()), (StatusCode::OK, &b"ok"[..]));
        *seen.entry(got.header("x-be").to_string()).or_default() += 1;
        let got = send(&client, get(addr, "x", "/file.bin")).await?;
        assert!(got.body == file, "100 KiB file intact");
        assert_eq!(got.header("content-length"), "102400");
        *seen.entry(got.header("x-be").to_string()).or_default() += 1;
    }
    assert_eq!(seen, HashMap::from([("n1".into(), 20), ("n2".into(), 20)]));
    let got = send(&client, get(addr, "x", "/missing")).await?;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "backend statuses pass through");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_max_connections_per_client_gets_429_and_others_go_on() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = HttpBackend::start("a").await?;
    let weir = start_weir(&http_config(&[("p", &[&a])], "max_connections_per_client = 2", "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    // One request on a raw connection kept open: its status line, the
    // whole response read.
    async fn ask(s: &mut tokio::net::TcpStream) -> Result<String> {
        s.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n").await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let length = head.split("content-length:").nth(1).and_then(|v| v.lines().next());
                let length: usize = length.map_or(Ok(0), |v| v.trim().parse())?;
                if got.len() >= end + 4 + length {
                    return Ok(head.lines().next().unwrap_or_default().to_uppercase());
                }
            }
            let n = tokio::time::timeout(STEP, s.read(&mut buf)).await??;
            anyhow::ensure!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    }
    let mut c1 = tokio::net::TcpStream::connect(addr).await?;
    let mut c2 = tokio::net::TcpStream::connect(addr).await?;
    assert_eq!(ask(&mut c1).await?, "HTTP/1.1 200 OK");
    assert_eq!(ask(&mut c2).await?, "HTTP/1.1 200 OK");
    // The third connection from 127.0.0.1 is answered 429 and closed.
    let mut c3 = tokio::net::TcpStream::connect(addr).await?;
    let mut refused = Vec::new();
    tokio::time::timeout(STEP, c3.read_to_end(&mut refused)).await??;
    assert!(refused.starts_with(b"HTTP/1.1 429 Too Many Requests\r\n"), "{}", String::from_utf8_lossy(&refused));
    let caps = weir.core().snapshot().listeners["web"].caps.clone().unwrap();
    assert_eq!(caps.refused(), 1);
    // The two open connections go on, and once one closes a new one is served.
    assert_eq!(ask(&mut c1).await?, "HTTP/1.1 200 OK");
    drop(c2);
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let mut c4 = tokio::net::TcpStream::connect(addr).await?;
        if ask(&mut c4).await.unwrap_or_default() == "HTTP/1.1 200 OK" {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the closed connection's room never came back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_beyond_max_concurrent_streams_wait_their_turn() -> Result<()> {
    // One stream at a time on the connection: four requests of 300 ms each,
    // sent at once on one HTTP/2 connection, take four turns.
    let a = HttpBackend::start("a").await?;
    let weir = start_weir(&http_config(&[("p", &[&a])], "max_concurrent_streams = 1", "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h2();
    assert_eq!(send(&client, get(addr, "x", "/warm")).await?.status, StatusCode::OK);
    let started = std::time::Instant::now();
    let asks = (0..4).map(|i| send(&client, get(addr, "x", &format!("/sleep/300?{i}"))));
    for got in futures::future::join_all(asks).await {
        assert_eq!(got?.status, StatusCode::OK);
    }
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(1200), "four 300 ms streams overlapped: {took:?}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_backend_answers_the_client_in_http_1_1_on_a_kept_connection() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that answers in HTTP/1.0 and closes after each response.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let backend = listener.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            });
        }
    });
    let text = format!(
        "[pools.p]\nbackends = [\"{backend}\"]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n"
    );
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let mut client = tokio::net::TcpStream::connect(addr).await?;
    for i in 0..2 {
        client.write_all(format!("GET /{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"ok") {
            let n = tokio::time::timeout(STEP, client.read(&mut buf)).await??;
            anyhow::ensure!(n > 0, "closed after request {i}: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "request {i}: {text}");
    }
    weir.shutdown().await;
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_for_header_timeout_is_closed() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = HttpBackend::start("a").await?;
    let weir = start_weir(&http_config(&[("p", &[&a])], "header_timeout = \"700ms\"", "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the response, then wait: weir closes the idle connection.
    let started = loop {
        let n = tokio::time::timeout(STEP, s.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed before the response ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_lowercase();
        let ended =
            text.ends_with("\r\n0\r\n\r\n") || (text.contains("content-length: 0") && text.ends_with("\r\n\r\n"));
        if text.contains("x-seen-path: /x") && ended {
            break std::time::Instant::now();
        }
    };
    let n = tokio::time::timeout(STEP, s.read(&mut buf)).await??;
    assert_eq!(n, 0, "nothing more, then the close");
    let idle = started.elapsed();
    assert!(idle >= std::time::Duration::from_millis(500), "closed after {idle:?}");
    weir.shutdown().await;
    Ok(())
}
