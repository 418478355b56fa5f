//! The bundled L7 plugins end to end: `ab-split`, `cond`, `rate-limit` and
//! `ip-access` on an HTTP listener (asked once per connection), plus
//! WebSocket and malformed requests.

use anyhow::Result;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_tests::web::*;
use weir_tests::*;

/// One backend per pool name, and a config with an HTTP listener whose
/// default pool is the first.
async fn pools(names: &[&str]) -> Result<(Vec<HttpBackend>, String)> {
    let mut backends = Vec::new();
    let mut text = String::new();
    for n in names {
        let b = HttpBackend::start(n).await?;
        text += &format!("[pools.{n}]\nbackends = [\"{}\"]\n\n", b.addr);
        backends.push(b);
    }
    text += &format!("[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"{}\"\n", names[0]);
    Ok((backends, text))
}

fn with_cookie(mut req: Request<TestBody>, cookie: &str) -> Request<TestBody> {
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_split_header_forces_b_cookie_sticks_and_weights_hold() -> Result<()> {
    let (_b, text) = pools(&["a", "b"]).await?;
    let text = text.replace("pool = \"a\"\n", "pool = \"a\"\nrouter = \"ab\"\n")
        + r#"
[plugins.ab]
source = "builtin:ab-split"
config.rules = [{ header = "x-version", value = "B", pool = "b" }]
config.split = [{ pool = "a", weight = 90 }, { pool = "b", weight = 10 }]
config.sticky_cookie = "weir_ab"
"#;
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();

    for _ in 0..50 {
        let mut req = get(addr, "x", "/");
        req.headers_mut().insert("x-version", "B".parse()?);
        assert_eq!(send(&client, req).await?.header("x-backend"), "b");
    }

    // A new client is assigned a side and told so in a cookie...
    let first = send(&client, get(addr, "x", "/")).await?;
    let side = first.header("x-backend").to_string();
    let set_cookie = first.header("set-cookie").to_string();
    assert!(set_cookie.starts_with(&format!("weir_ab={side}; Path=/")), "{set_cookie}");
    // ...and stays there while it sends the cookie back.
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    for _ in 0..100 {
        let got = send(&client, with_cookie(get(addr, "x", "/"), &cookie)).await?;
        assert_eq!(got.header("x-backend"), side);
        assert_eq!(got.header("set-cookie"), "", "no new cookie for a sticky client");
    }

    // 10 000 new clients split 90/10 within 1.5 percentage points.
    let total = 10_000;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = 0usize;
            for _ in 0..total / 8 {
                if send(&client, get(addr, "x", "/")).await?.header("x-backend") == "b" {
                    b += 1;
                }
            }
            anyhow::Ok(b)
        }));
    }
    let mut b = 0;
    for t in tasks {
        b += t.await??;
    }
    let share = b as f64 * 100.0 / total as f64;
    assert!((8.5..=11.5).contains(&share), "pool b got {share:.2}% of {total}");
    eprintln!("ab-split: b got {share:.2}% of {total} requests (configured 10%)");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cond_rule_table_is_evaluated_in_order() -> Result<()> {
    let names = ["default", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10"];
    let (_b, text) = pools(&names).await?;
    let text = text.replace("pool = \"default\"\n", "pool = \"default\"\nrouter = \"rules\"\n")
        + r#"
[plugins.rules]
source = "builtin:cond"
config.rules = [
  { cond = 'req_host_in("api.test") && req_path_prefix_in("/v2/admin/")', pool = "r1" },
  { cond = 'req_host_in("api.test") && req_path_prefix_in("/v2/")', pool = "r2" },
  { cond = 'req_path_in("/login|/logout", true)', pool = "r3" },
  { cond = 'req_method_in("DELETE") && !req_cip_range("10.0.0.0/8")', pool = "r4" },
  { cond = 'req_header_value_in("x-beta", "1|yes", true)', pool = "r5" },
  { cond = 'req_cookie_value_in("tier", "gold")', pool = "r6" },
  { cond = 'req_query_value_in("lang", "fr|de")', pool = "r7" },
  { cond = '(req_host_in("a.test") || req_host_in("b.test")) && req_method_in("POST")', pool = "r8" },
  { cond = 'req_cip_range("127.0.0.1", "127.0.0.1") && req_path_prefix_in("/local/")', pool = "r9" },
  { cond = 'req_host_in("a.test|b.test")', pool = "r10" },
]
"#;
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    let req = |method: &str, host: &str, path: &str, header: Option<(&str, &str)>| {
        let mut r = Request::builder().method(method).uri(format!("http://{addr}{path}")).header("host", host);
        if let Some((k, v)) = header {
            r = r.header(k, v);
        }
        r.body(body(Bytes::new())).unwrap()
    };
    let cases = [
        (req("GET", "api.test", "/v2/admin/users", None), "r1"),
        (req("GET", "api.test", "/v2/users", None), "r2"),
        (req("GET", "api.test", "/LOGIN", None), "r3"),
        (req("DELETE", "x.test", "/thing", None), "r4"),
        (req("GET", "x.test", "/", Some(("x-beta", "YES"))), "r5"),
        (req("GET", "x.test", "/", Some(("cookie", "a=1; tier=gold"))), "r6"),
        (req("GET", "x.test", "/page?lang=de", None), "r7"),
        (req("POST", "b.test", "/form", None), "r8"),
        (req("GET", "x.test", "/local/x", None), "r9"),
        (req("GET", "a.test", "/", None), "r10"),
        (req("GET", "x.test", "/", Some(("cookie", "tier=silver"))), "default"),
        (req("GET", "api.test", "/v1/", None), "default"),
    ];
    for (request, want) in cases {
        let what = format!("{} {} {:?}", request.method(), request.uri(), request.headers());
        assert_eq!(send(&client, request).await?.header("x-backend"), want, "{what}");
    }
    weir.shutdown().await;

    // A rule that does not parse is refused at load, naming rule and column.
    let bad = text.replace(r#"req_query_value_in("lang", "fr|de")"#, r#"req_query_value_in("lang" "fr")"#);
    let err = match start_weir(&bad).await {
        Ok(_) => panic!("bad rule accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("plugins.rules.config: init failed: invalid config: rules[6]: column 27: expected `,` or `)`"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_across_worker_threads() -> Result<()> {
    let (_b, text) = pools(&["p"]).await?;
    let text = text.replace("pool = \"p\"\n", "pool = \"p\"\naccess = [\"limit\"]\n")
        + "\n[plugins.limit]\nsource = \"builtin:rate-limit\"\nconfig = { rate = 100, burst = 10 }\n";
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    let started = Instant::now();
    let window = Duration::from_secs(2);
    let mut tasks = Vec::new();
    // 8 clients in parallel, far above 100 requests a second.
    for _ in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut limited, mut retry_after_ok) = (0u64, 0u64, true);
            while started.elapsed() < window {
                let got = send(&client, get(addr, "x", "/")).await?;
                match got.status {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => {
                        limited += 1;
                        retry_after_ok &= got.header("retry-after") == "1";
                    }
                    s => anyhow::bail!("unexpected {s}"),
                }
            }
            anyhow::Ok((ok, limited, retry_after_ok))
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l, r) = t.await??;
        assert!(r, "429 carries Retry-After: 1");
        ok += o;
        limited += l;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = 10.0 + 100.0 * elapsed;
    let error = (ok as f64 - expected).abs() / expected;
    eprintln!(
        "rate-limit: {ok} allowed, {limited} limited in {elapsed:.2}s (expected {expected:.0}, off by {:.1}%)",
        error * 100.0
    );
    assert!(limited > ok, "the load was above the limit ({ok} ok, {limited} limited)");
    assert!(error <= 0.05, "{ok} allowed vs {expected:.0} expected");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_access_answers_403_on_http() -> Result<()> {
    let (b, text) = pools(&["p"]).await?;
    let text = text.replace("pool = \"p\"\n", "pool = \"p\"\naccess = [\"acl\"]\n")
        + "\n[plugins.acl]\nsource = \"builtin:ip-access\"\nconfig = { default = \"allow\", rules = [\"deny 127.0.0.0/8\"], status = 403 }\n";
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let got = send(&client_h1(), get(addr, "x", "/")).await?;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&got.body).contains("denied by ip-access"), "{:?}", got.body);
    assert_eq!(b[0].requests(), 0);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_settled_per_connection_spares_or_answers_its_requests() -> Result<()> {
    let (b, text) = pools(&["p"]).await?;
    // ip-access answers `allow-connection` or `deny` at check-connection;
    // rate-limit by header answers plain `allow` there and is asked per request.
    let text = text.replace("pool = \"p\"\n", "pool = \"p\"\naccess = [\"acl\", \"limit\"]\n")
        + "\n[plugins.acl]\nsource = \"builtin:ip-access\"\nconfig = { default = \"deny\", rules = [\"allow 127.0.0.1\"] }\n"
        + "\n[plugins.limit]\nsource = \"builtin:rate-limit\"\nconfig = { rate = 100000, by = \"header:x-user\" }\n";
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let calls = |name: &str| weir.plugin(name).unwrap().stats().calls.load(std::sync::atomic::Ordering::Relaxed);

    // 20 requests over one explicit keep-alive connection from an allowed
    // address (a pooled client may open a second connection when a response
    // races the next request, so the connection is held by hand).
    let (acl0, limit0) = (calls("acl"), calls("limit"));
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await?);
    let (mut conn, driver) = hyper::client::conn::http1::handshake::<_, TestBody>(io).await?;
    let driver = tokio::spawn(driver);
    for _ in 0..20 {
        conn.ready().await?;
        let resp = tokio::time::timeout(STEP, conn.send_request(get(addr, "x", "/"))).await??;
        assert_eq!(resp.status(), StatusCode::OK);
        http_body_util::BodyExt::collect(resp.into_body()).await?;
    }
    drop(conn);
    let _ = tokio::time::timeout(STEP, driver).await;
    assert_eq!(b[0].requests(), 20);
    let (acl, limit) = (calls("acl"), calls("limit"));
    assert_eq!(acl - acl0, 1, "ip-access is asked once per connection, not per request");
    assert_eq!(limit - limit0, 21, "rate-limit: check-connection per connection, then every request");

    // Three pipelined requests on one connection from a denied address:
    // each gets the denial, with no further call and nothing forwarded.
    let mut s = connect_from("127.0.0.2", addr).await?;
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    let mut got = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut got)).await??;
    let got = String::from_utf8_lossy(&got);
    assert_eq!(got.matches("HTTP/1.1 403 Forbidden").count(), 3, "{got}");
    assert_eq!(got.matches("127.0.0.2 denied by ip-access").count(), 3, "{got}");
    assert_eq!(calls("acl"), acl + 1);
    assert_eq!(calls("limit"), limit, "a denied connection asks no later filter");
    assert_eq!(b[0].requests(), 20);
    weir.shutdown().await;
    Ok(())
}

/// A real WebSocket echo server on a free loopback port.
async fn ws_echo_server() -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ws_addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
        }
    });
    Ok((ws_addr, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_weir() -> Result<()> {
    let (ws_addr, server) = ws_echo_server().await?;
    let text = format!("[pools.ws]\nbackends = [\"{ws_addr}\"]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"ws\"\n");
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let stream = TcpStream::connect(addr).await?;
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/chat"), stream).await?;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..20 {
        let msg = format!("message {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone())).await?;
        let back = tokio::time::timeout(STEP, ws.next()).await?.unwrap()?;
        assert_eq!(back.into_text()?.as_str(), msg);
    }
    let big = vec![42u8; 1 << 20];
    ws.send(tokio_tungstenite::tungstenite::Message::binary(big.clone())).await?;
    let back = tokio::time::timeout(STEP, ws.next()).await?.unwrap()?;
    assert!(back.into_data() == big);
    ws.close(None).await?;
    drop(ws);
    weir.shutdown().await;
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_count_live_hold_their_connection_and_close_when_idle() -> Result<()> {
    let (ws_addr, server) = ws_echo_server().await?;
    // One connection at a time; a tunnel idle for 1 s is closed.
    let text = format!(
        "[runtime]\nshutdown_grace = \"300ms\"\n\n[pools.ws]\nbackends = [\"{ws_addr}\"]\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"ws\"\n\
         max_connections = 1\nidle_timeout = \"1s\"\n"
    );
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let listener_stats = weir.core().snapshot().listeners["web"].stats.clone();
    let backend = weir.pool("ws").unwrap().members().backends[0].clone();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("ws://{addr}/chat"), TcpStream::connect(addr).await?).await?;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let msg = "x".repeat(10_000);
    ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone())).await?;
    let back = tokio::time::timeout(STEP, ws.next()).await?.unwrap()?;
    assert_eq!(back.into_text()?.as_str(), msg);
    // Counted while the tunnel is open: its bytes, and the connection itself.
    assert!(
        backend.stats.tx() >= 10_000 && backend.stats.rx() >= 10_000,
        "{} {}",
        backend.stats.tx(),
        backend.stats.rx()
    );
    assert_eq!(listener_stats.active(), 1);
    // The tunnel holds the listener's one place: a second client waits.
    let mut second = TcpStream::connect(addr).await?;
    second.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let mut byte = [0u8; 1];
    assert!(tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await.is_err());
    // Idle for `idle_timeout`: closed, and the waiting client gets in.
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(STEP, ws.next()).await?;
    assert!(!matches!(end, Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))), "{end:?}");
    assert!(started.elapsed() >= Duration::from_millis(600), "closed after {:?}", started.elapsed());
    let mut got = Vec::new();
    tokio::time::timeout(STEP, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = second.read(&mut byte).await?;
            anyhow::ensure!(n > 0, "closed");
            got.push(byte[0]);
        }
        anyhow::Ok(())
    })
    .await??;
    assert!(got.starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&got));
    drop(second);
    // A tunnel is a task shutdown waits for (and cuts after the grace).
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/again"), TcpStream::connect(addr).await?).await?;
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi")).await?;
    tokio::time::timeout(STEP, ws.next()).await?.unwrap()?;
    assert_eq!(weir.shutdown().await, 1, "the open tunnel was drained, then cut");
    server.abort();
    Ok(())
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut got = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut got)).await??;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_nothing_is_forwarded() -> Result<()> {
    let (b, text) = pools(&["p"]).await?;
    let text =
        text.replace("pool = \"p\"\n", "pool = \"p\"\nmax_header_size = \"16KiB\"\nheader_timeout = \"300ms\"\n");
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();

    let got = raw(addr, b"THIS IS NOT HTTP\r\n\r\n").await?;
    assert!(got.starts_with("HTTP/1.1 400"), "{got:?}");

    let big = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(64 << 10));
    let got = raw(addr, big.as_bytes()).await?;
    assert!(got.starts_with("HTTP/1.1 431"), "{got:?}");

    // A head that never finishes is cut off after header_timeout.
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await?;
    let mut got = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut got)).await??;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "closed after {took:?}");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");

    // A client that says nothing at all is cut off the same way.
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    let mut got = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut got)).await??;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "closed after {took:?}");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"), "{got:?}");

    assert_eq!(b[0].requests(), 0, "nothing reached the backend");
    // Still serving.
    assert_eq!(send(&client_h1(), get(addr, "x", "/ok")).await?.status, StatusCode::OK);
    weir.shutdown().await;
    Ok(())
}
