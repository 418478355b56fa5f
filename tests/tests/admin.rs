//! The admin API and hot swap, as an operator would use them: plugins
//! swapped 50 times under steady load with no failed request or connection,
//! broken components refused with the reason while the old one serves,
//! pool and plugin views that match the traffic sent, backends taken out of
//! rotation by hand, and the bearer token enforced.

use anyhow::Result;
use bytes::Bytes;
use http::{Request, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_tests::web::*;
use weir_tests::*;

const TOKEN: &str = "s3cret-token";

fn admin_request(
    method: &str,
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
    payload: Bytes,
) -> Request<TestBody> {
    let mut req = Request::builder().method(method).uri(format!("http://{admin}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.body(body(payload)).unwrap()
}

async fn admin_json(
    method: &str,
    admin: SocketAddr,
    path: &str,
    payload: Bytes,
) -> Result<(StatusCode, serde_json::Value)> {
    let got = send(&client_h1(), admin_request(method, admin, path, Some(TOKEN), payload)).await?;
    Ok((got.status, serde_json::from_slice(&got.body)?))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Swap `plugin` 50 times, alternating two bundled balancers; returns each
/// swap's time (PUT sent to PUT answered, after which the next pick runs on
/// the new generation).
async fn swap_50_times(admin: SocketAddr, plugin: &str) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for i in 0..50 {
        let name = if i % 2 == 0 { "random" } else { "round-robin" };
        let bytes = Bytes::from_static(weir::plugin::bundled(name).unwrap());
        let started = Instant::now();
        let (status, answer) = admin_json("PUT", admin, &format!("/plugins/{plugin}"), bytes).await?;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["generation"], i + 2);
        times.push(started.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_http_load_fail_no_request() -> Result<()> {
    let backends = [HttpBackend::start("a").await?, HttpBackend::start("b").await?, HttpBackend::start("c").await?];
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[plugins.lb]\nsource = \"builtin:round-robin\"\n\n\
         [pools.p]\nbalancer = \"lb\"\nbackends = [{}]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        list.join(", ")
    );
    let weir = start_weir(&text).await?;
    let (addr, admin) = (weir.listener_addr("web").unwrap(), weir.admin_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, ok, bad, errors) = (stop.clone(), ok.clone(), bad.clone(), errors.clone());
        load.push(tokio::spawn(async move {
            let client = client_h1();
            let deadline = Instant::now() + 4 * STEP;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match send(&client, get(addr, "x", "/")).await {
                    Ok(got) if got.status == StatusCode::OK => ok.fetch_add(1, Ordering::SeqCst),
                    Ok(_) => bad.fetch_add(1, Ordering::SeqCst),
                    Err(_) => errors.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    eventually("load running", || ok.load(Ordering::SeqCst) > 500).await?;
    let times = swap_50_times(admin, "lb").await?;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await?;
    }
    let (ok, bad, errors) = (ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst), errors.load(Ordering::SeqCst));
    println!(
        "{ok} requests answered 200 during 50 swaps; {bad} other statuses, {errors} errors; swap p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );
    assert_eq!((bad, errors), (0, 0));
    let plugin = weir.plugin("lb").unwrap();
    assert_eq!(plugin.generation().number, 51);
    assert_eq!(plugin.stats().recycled(), 0);
    // Every backend served: the new generations really balanced.
    assert!(
        backends.iter().all(|b| b.requests() > 100),
        "{:?}",
        backends.iter().map(|b| b.requests()).collect::<Vec<_>>()
    );
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_tcp_load_fail_no_connection() -> Result<()> {
    let (a, b) = (EchoBackend::start("a").await?, EchoBackend::start("b").await?);
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[plugins.lb]\nsource = \"builtin:round-robin\"\n\n\
         [pools.p]\nbalancer = \"lb\"\nbackends = {}\n\n[listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        addresses(&[&a, &b])
    );
    let weir = start_weir(&text).await?;
    let (addr, admin) = (weir.listener_addr("l").unwrap(), weir.admin_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for i in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let payload = format!("connection from client {i}");
            let deadline = Instant::now() + 4 * STEP;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match exchange(addr, payload.as_bytes()).await {
                    Ok((_, echoed)) if echoed == payload.as_bytes() => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    eventually("load running", || ok.load(Ordering::SeqCst) > 500).await?;
    let times = swap_50_times(admin, "lb").await?;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await?;
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!("{ok} connections echoed during 50 swaps, {failed} failed; swap p50 {:.1} ms", percentile(&times, 0.5));
    assert_eq!(failed, 0);
    assert_eq!(weir.plugin("lb").unwrap().generation().number, 51);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_components_are_refused_and_the_old_one_serves() -> Result<()> {
    let a = HttpBackend::start("a").await?;
    // round-robin ignores its config; the test plugin traps in init with it.
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[plugins.lb]\nsource = \"builtin:round-robin\"\nconfig = {{ mode = \"init-trap\" }}\n\n\
         [pools.p]\nbalancer = \"lb\"\nbackends = [\"{}\"]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        a.addr
    );
    let weir = start_weir(&text).await?;
    let (addr, admin) = (weir.listener_addr("web").unwrap(), weir.admin_addr().unwrap());
    let before = weir.plugin("lb").unwrap().generation();
    let cases: [(&str, Bytes, StatusCode, &str); 4] = [
        ("not Wasm", Bytes::from_static(b"#!/bin/sh\necho hi\n"), StatusCode::UNPROCESSABLE_ENTITY, "not WebAssembly"),
        ("core module", Bytes::from_static(b"\0asm\x01\0\0\0"), StatusCode::UNPROCESSABLE_ENTITY, "core Wasm module"),
        (
            "wrong world",
            Bytes::from_static(weir::plugin::bundled("ip-access").unwrap()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "must export weir:plugin/balance",
        ),
        (
            "trap in init",
            Bytes::from(std::fs::read(component("weir-test-misbehave"))?),
            StatusCode::BAD_REQUEST,
            "init failed",
        ),
    ];
    for (what, bytes, status, reason) in cases {
        let (got, answer) = admin_json("PUT", admin, "/plugins/lb", bytes).await?;
        let message = answer["error"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{what}: {message}");
        assert!(message.contains(reason) && message.contains("old plugin keeps serving"), "{what}: {message}");
        let got = send(&client_h1(), get(addr, "x", "/")).await?;
        assert_eq!(got.status, StatusCode::OK, "{what}: still serving");
    }
    let after = weir.plugin("lb").unwrap().generation();
    assert_eq!((after.number, after.hash), (before.number, before.hash));
    let (status, _) = admin_json("PUT", admin, "/plugins/nope", Bytes::new()).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_plugin_views_match_the_traffic_and_backends_can_be_disabled() -> Result<()> {
    let (a, b) = (HttpBackend::start("a").await?, HttpBackend::start("b").await?);
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[pools.p]\nbackends = [\"{}\", \"{}\"]\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        a.addr, b.addr
    );
    let weir = start_weir(&text).await?;
    let (addr, admin) = (weir.listener_addr("web").unwrap(), weir.admin_addr().unwrap());
    let client = client_h1();
    for _ in 0..10 {
        send(&client, get(addr, "x", "/generate/100")).await?;
    }
    let (status, pool) = admin_json("GET", admin, "/pools/p", Bytes::new()).await?;
    assert_eq!(status, StatusCode::OK);
    let totals: Vec<u64> = pool["backends"].as_array().unwrap().iter().map(|b| b["total"].as_u64().unwrap()).collect();
    assert_eq!(totals, vec![5, 5]);
    assert_eq!(pool["backends"][0]["responses"]["2xx"], 5);
    // Body bytes from the backend: 5 responses of 100 bytes each.
    assert_eq!(pool["backends"][0]["rx_bytes"], 500);
    let (_, plugins) = admin_json("GET", admin, "/plugins", Bytes::new()).await?;
    let rr = plugins.as_array().unwrap().iter().find(|p| p["name"] == "builtin:round-robin").unwrap();
    assert_eq!(
        (rr["calls"].as_u64(), rr["world"].as_str(), rr["generation"].as_u64()),
        (Some(10), Some("balancer"), Some(1))
    );
    let (_, listeners) = admin_json("GET", admin, "/listeners", Bytes::new()).await?;
    assert_eq!(listeners[0]["address"], addr.to_string());

    // Out of rotation by hand: b gets nothing until enabled again.
    let (status, _) = admin_json("POST", admin, "/pools/p/backends/1/disable", Bytes::new()).await?;
    assert_eq!(status, StatusCode::OK);
    let before = b.requests();
    for _ in 0..10 {
        assert_eq!(send(&client, get(addr, "x", "/")).await?.header("x-backend"), "a");
    }
    assert_eq!(b.requests(), before);
    admin_json("POST", admin, "/pools/p/backends/1/enable", Bytes::new()).await?;
    for _ in 0..10 {
        send(&client, get(addr, "x", "/")).await?;
    }
    assert_eq!(b.requests(), before + 5);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_enforced_and_required_beyond_loopback() -> Result<()> {
    let a = HttpBackend::start("a").await?;
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[pools.p]\nbackends = [\"{}\"]\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        a.addr
    );
    let weir = start_weir(&text).await?;
    let admin = weir.admin_addr().unwrap();
    let client = client_h1();
    for token in [None, Some("wrong"), Some("s3cret-tokeN")] {
        let got = send(&client, admin_request("GET", admin, "/pools", token, Bytes::new())).await?;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{token:?}");
        let got =
            send(&client, admin_request("PUT", admin, "/plugins/builtin:round-robin", token, Bytes::new())).await?;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    let got = send(&client, admin_request("GET", admin, "/", Some(TOKEN), Bytes::new())).await?;
    assert_eq!(got.status, StatusCode::OK);
    weir.shutdown().await;

    // Beyond loopback without a token, weir does not start (checked before
    // anything is bound).
    let open = text.replace(&format!("bind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\""), "bind = \"0.0.0.0:0\"");
    let e = config(&open).expect_err("refused").to_string();
    assert!(e.contains("admin.token: required when the admin API listens beyond loopback"), "{e}");
    Ok(())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_swaps_leak_no_generation() -> Result<()> {
    let a = HttpBackend::start("a").await?;
    let text = format!(
        "[plugins.lb]\nsource = \"builtin:round-robin\"\n\n[pools.p]\nbalancer = \"lb\"\nbackends = [\"{}\"]\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        a.addr
    );
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let plugin = weir.plugin("lb").unwrap().clone();
    let client = client_h1();
    let mut rss = Vec::new();
    for i in 0..1_000 {
        let name = if i % 2 == 0 { "random" } else { "round-robin" };
        let p = plugin.clone();
        tokio::task::spawn_blocking(move || p.swap(weir::plugin::bundled(name).unwrap(), name)).await??;
        // Each generation serves a request, so each made a Wasm instance.
        assert_eq!(send(&client, get(addr, "x", "/")).await?.status, StatusCode::OK);
        if i % 200 == 199 {
            rss.push(rss_kib());
        }
    }
    println!("RSS after 200, 400, ... 1 000 swaps: {rss:?} KiB");
    assert_eq!(plugin.generation().number, 1_001);
    assert_eq!(plugin.stats().instances_created.load(Ordering::Relaxed), 1_001);
    // Growth between 200 and 1 000 swaps stays small: old generations are freed.
    let growth = rss[rss.len() - 1].saturating_sub(rss[0]);
    assert!(growth < 16 * 1024, "RSS grew {growth} KiB over 800 swaps: {rss:?}");
    weir.shutdown().await;
    Ok(())
}

/// A scrape of `/metrics`, parsed.
async fn scrape(admin: SocketAddr) -> Result<prometheus_parse::Scrape> {
    let got = send(&client_h1(), admin_request("GET", admin, "/metrics", Some(TOKEN), Bytes::new())).await?;
    anyhow::ensure!(got.status == StatusCode::OK, "GET /metrics: {}", got.status);
    let text = String::from_utf8(got.body.to_vec())?;
    Ok(prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?)
}

/// The value of the sample `name` with `labels` (among others).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(
        |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_match_the_traffic() -> Result<()> {
    let (a, b) = (HttpBackend::start("a").await?, HttpBackend::failing("b", 503).await?);
    let echo = EchoBackend::start("e").await?;
    let pki = weir_tests::pki::Pki::new("metrics")?;
    let cert = pki.server_until("site", &["site.test"], 2030)?;
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[pools.p]\nbackends = [\"{}\", \"{}\"]\nmax_fails = 0\n\
         fail_on = [503]\n\n[pools.tcp]\nbackends = [\"{}\"]\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n\n\
         [listeners.raw]\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"tcp\"\n\n\
         [listeners.secure]\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\npool = \"p\"\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n",
        a.addr,
        b.addr,
        echo.addr,
        cert.cert.display(),
        cert.key.display()
    );
    let weir = start_weir(&text).await?;
    let (addr, admin) = (weir.listener_addr("web").unwrap(), weir.admin_addr().unwrap());
    let client = client_h1();
    // 20 bodies of 1 000 bytes (b streams them with 200 too), then 10
    // plain requests, which b answers 503: round-robin splits both evenly.
    // Every request on a connection of its own, so weir counts 30 of them.
    let closing = |path: &str| {
        let mut req = get(addr, "x", path);
        req.headers_mut().insert("connection", http::HeaderValue::from_static("close"));
        req
    };
    for _ in 0..20 {
        send(&client, closing("/generate/1000")).await?;
    }
    for _ in 0..10 {
        send(&client, closing("/")).await?;
    }
    // 3 TCP connections through `raw` to the echo backend.
    let raw = weir.listener_addr("raw").unwrap();
    for _ in 0..3 {
        assert_eq!(exchange(raw, b"ping").await?, ("e".to_string(), b"ping".to_vec()));
    }
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let e_addr = echo.addr.to_string();
    fn at<'a>(pool: &'a str, backend: &'a str) -> [(&'a str, &'a str); 2] {
        [("pool", pool), ("backend", backend)]
    }
    // A request or connection ends in weir a little after its client has
    // the last byte: scrape until nothing is in flight, then read that scrape.
    let deadline = Instant::now() + STEP;
    let first = loop {
        let now = scrape(admin).await?;
        let idle = sample(&now, "weir_backend_active_requests", &at("p", &a_addr)) == Some(0.0)
            && sample(&now, "weir_backend_active_requests", &at("p", &b_addr)) == Some(0.0)
            && sample(&now, "weir_backend_active_connections", &at("tcp", &e_addr)) == Some(0.0);
        if idle {
            break now;
        }
        anyhow::ensure!(Instant::now() < deadline, "work still in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let value = |name: &str, labels: &[(&str, &str)]| sample(&first, name, labels);
    // HTTP requests and TCP connections are counted apart.
    assert_eq!(value("weir_backend_requests_total", &at("p", &a_addr)), Some(15.0));
    assert_eq!(value("weir_backend_requests_total", &at("p", &b_addr)), Some(15.0));
    assert_eq!(value("weir_backend_connections_total", &at("p", &a_addr)), Some(0.0));
    assert_eq!(value("weir_backend_connections_total", &at("tcp", &e_addr)), Some(3.0));
    assert_eq!(value("weir_backend_requests_total", &at("tcp", &e_addr)), Some(0.0));
    assert_eq!(value("weir_backend_sent_bytes_total", &at("tcp", &e_addr)), Some(12.0));
    assert_eq!(value("weir_backend_received_bytes_total", &at("p", &a_addr)), Some(10_000.0));
    assert_eq!(value("weir_backend_up", &at("p", &a_addr)), Some(1.0));
    // b's 5 answers of 503 are failed responses (fail_on), not failed connects.
    assert_eq!(value("weir_backend_failed_responses_total", &at("p", &b_addr)), Some(5.0));
    assert_eq!(value("weir_backend_connect_failures_total", &at("p", &b_addr)), Some(0.0));
    assert!(value("weir_backend_latency_seconds", &at("p", &a_addr)).is_some_and(|s| s > 0.0 && s < 5.0));
    fn class<'a>(backend: &'a str, class: &'a str) -> [(&'a str, &'a str); 3] {
        [("pool", "p"), ("backend", backend), ("class", class)]
    }
    assert_eq!(value("weir_backend_http_responses_total", &class(&a_addr, "2xx")), Some(15.0));
    assert_eq!(value("weir_backend_http_responses_total", &class(&b_addr, "5xx")), Some(5.0));
    assert_eq!(value("weir_backend_http_responses_total", &class(&b_addr, "2xx")), Some(10.0));
    let rr = [("plugin", "builtin:round-robin"), ("world", "balancer")];
    assert_eq!(value("weir_plugin_calls_total", &rr), Some(33.0));
    assert_eq!(value("weir_plugin_generation", &rr), Some(1.0));
    assert_eq!(value("weir_plugin_traps_total", &rr), Some(0.0));
    // Listener counters: 30 connections, 25 2xx and 5 5xx responses.
    let web = [("listener", "web")];
    assert_eq!(value("weir_listener_connections_total", &web), Some(30.0));
    assert_eq!(value("weir_listener_connections_total", &[("listener", "raw")]), Some(3.0));
    let web_class = |class| [("listener", "web"), ("class", class)];
    assert_eq!(value("weir_listener_http_responses_total", &web_class("2xx")), Some(25.0));
    assert_eq!(value("weir_listener_http_responses_total", &web_class("5xx")), Some(5.0));
    let histogram_count = |name: &str, labels: &[(&str, &str)]| {
        first.samples.iter().find_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h)
                if s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) =>
            {
                h.iter().map(|b| b.count).fold(0.0, f64::max).into()
            }
            _ => None,
        })
    };
    assert_eq!(histogram_count("weir_listener_http_response_head_seconds", &web), Some(30.0));
    // One balancer call in eight is timed: calls 0, 8, 16, 24 and 32.
    assert_eq!(histogram_count("weir_plugin_call_seconds", &rr), Some(5.0));
    // The certificate `secure` serves expires on 2030-01-01.
    let site = [("listener", "secure"), ("name", "site.test")];
    assert_eq!(value("weir_tls_certificate_expiry_timestamp_seconds", &site), Some(1_893_456_000.0));
    // The process: memory, descriptors, threads, a start time about now.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    assert!(value("process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6));
    assert!(value("process_open_fds", &[]).is_some_and(|n| n >= 5.0));
    assert!(value("process_max_fds", &[]).is_some_and(|n| n >= value("process_open_fds", &[]).unwrap()));
    assert!(value("process_threads", &[]).is_some_and(|n| n >= 2.0));
    assert!(value("process_cpu_seconds_total", &[]).is_some_and(|s| s > 0.0));
    assert!(value("process_start_time_seconds", &[]).is_some_and(|t| t <= now + 1.0 && t > now - 3600.0));
    // Config reloads: none yet; then one refused and one applied.
    let applied = [("result", "applied")];
    assert_eq!(value("weir_config_reloads_total", &applied), Some(0.0));
    assert_eq!(value("weir_config_last_reload_successful", &[]), Some(1.0));
    let started_at = value("weir_config_last_reload_success_timestamp_seconds", &[]).unwrap();
    assert!((now - started_at).abs() < 600.0, "{started_at} vs {now}");
    let source = |text: &str| weir::config::Source { origin: "test".into(), text: text.into() };
    assert!(weir.reload(source("[pools.p]\nbackends = 3\n")).await.is_err());
    let after_refusal = scrape(admin).await?;
    assert_eq!(sample(&after_refusal, "weir_config_reloads_total", &[("result", "refused")]), Some(1.0));
    assert_eq!(sample(&after_refusal, "weir_config_last_reload_successful", &[]), Some(0.0));
    weir.reload(source(&text)).await.map_err(anyhow::Error::msg)?;
    let after = scrape(admin).await?;
    assert_eq!(sample(&after, "weir_config_reloads_total", &applied), Some(1.0));
    assert_eq!(sample(&after, "weir_config_last_reload_successful", &[]), Some(1.0));
    weir.shutdown().await;
    Ok(())
}

/// Metrics a plugin opens itself (`host.open-metric`, `weir_sdk::Metric`)
/// are on `/metrics` with the plugin's name: rate-limit counts each refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_a_plugin_keeps_are_exported_with_its_name() -> Result<()> {
    let a = HttpBackend::start("a").await?;
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[plugins.limit]\nsource = \"builtin:rate-limit\"\n\
         config = {{ rate = 1, burst = 3, by = \"header:x-key\" }}\n\n[pools.p]\nbackends = [\"{}\"]\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\naccess = [\"limit\"]\n",
        a.addr
    );
    let weir = start_weir(&text).await?;
    let (addr, admin) = (weir.listener_addr("web").unwrap(), weir.admin_addr().unwrap());
    let client = client_h1();
    let limited_now = || async {
        let got = send(&client_h1(), admin_request("GET", admin, "/metrics", Some(TOKEN), Bytes::new())).await?;
        let text = String::from_utf8(got.body.to_vec())?;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
        anyhow::Ok(scrape.samples.into_iter().find_map(|s| {
            let ours = s.metric == "weir_plugin_custom_total"
                && s.labels.get("plugin") == Some("limit")
                && s.labels.get("name") == Some("limited");
            match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) if ours => Some(v),
                _ => None,
            }
        }))
    };
    // Opened at init: exported at zero before any refusal.
    assert_eq!(limited_now().await?, Some(0.0));
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..12 {
        let mut req = get(addr, "x", "/");
        req.headers_mut().insert("x-key", http::HeaderValue::from_static("k"));
        match send(&client, req).await?.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => anyhow::bail!("unexpected {other}"),
        }
    }
    println!("rate-limit: {ok} allowed, {refused} refused; metric {:?}", limited_now().await?);
    assert!(refused >= 7, "{ok} allowed, {refused} refused");
    assert_eq!(limited_now().await?, Some(refused as f64));
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_created_and_deleted_and_weights_changed_at_runtime() -> Result<()> {
    let (a, b) = (EchoBackend::start("a").await?, EchoBackend::start("b").await?);
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[pools.p]\nbalancer = \"builtin:weighted-round-robin\"\nbackends = {}\n\n\
         [listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        addresses(&[&a, &b])
    );
    let weir = start_weir(&text).await?;
    let (l, admin) = (weir.listener_addr("l").unwrap(), weir.admin_addr().unwrap());
    let create = r#"{"name": "extra", "bind": "127.0.0.1:0", "pool": "p", "idle_timeout": "30s"}"#;
    let (status, summary) = admin_json("POST", admin, "/listeners", Bytes::from(create)).await?;
    assert_eq!(status, StatusCode::CREATED, "{summary}");
    assert_eq!(summary["listeners_added"], serde_json::json!(["extra"]));
    let (_, extra) = admin_json("GET", admin, "/listeners/extra", Bytes::new()).await?;
    let extra: SocketAddr = extra["address"].as_str().unwrap().parse()?;
    assert_eq!(exchange(extra, b"x").await?.1, b"x");
    let (status, _) = admin_json("POST", admin, "/listeners", Bytes::from(create)).await?;
    assert_eq!(status, StatusCode::CONFLICT);
    let got = send(&client_h1(), admin_request("GET", admin, "/config", Some(TOKEN), Bytes::new())).await?;
    let config = String::from_utf8(got.body.to_vec())?;
    assert!(config.contains("[listeners.extra]") && config.contains("idle_timeout = \"30s\""), "{config}");
    // `l` is kept through the reload the edit made: same socket.
    assert_eq!(weir.listener_addr("l"), Some(l));
    assert_eq!(exchange(l, b"y").await?.1, b"y");

    let (status, summary) = admin_json("DELETE", admin, "/listeners/extra", Bytes::new()).await?;
    assert_eq!(status, StatusCode::OK, "{summary}");
    let deadline = Instant::now() + STEP;
    while tokio::net::TcpStream::connect(extra).await.is_ok() {
        anyhow::ensure!(Instant::now() < deadline, "extra still open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Weight 1:1 -> 3:1 for b; the smooth schedule follows at once.
    let pool = weir.pool("p").unwrap();
    let slot_b = pool.members().backends.iter().find(|m| m.address == b.addr.to_string()).unwrap().slot;
    let (status, answer) =
        admin_json("POST", admin, &format!("/pools/p/backends/{slot_b}/weight"), Bytes::from("{\"weight\": 3}"))
            .await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for _ in 0..40 {
        *seen.entry(exchange(l, b"w").await?.0).or_default() += 1;
    }
    assert_eq!((seen["a"], seen["b"]), (10, 30), "{seen:?}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_promoted_when_healthy_and_rolled_back_when_it_fails() -> Result<()> {
    let (a, b) = (HttpBackend::start("a").await?, HttpBackend::start("b").await?);
    // round-robin ignores its config; the test plugin traps on every call with it.
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[plugins.lb]\nsource = \"builtin:round-robin\"\nconfig = {{ mode = \"trap\" }}\n\n\
         [pools.p]\nbalancer = \"lb\"\nbackends = [\"{}\", \"{}\"]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        a.addr, b.addr
    );
    let weir = start_weir(&text).await?;
    let (addr, admin) = (weir.listener_addr("web").unwrap(), weir.admin_addr().unwrap());
    let plugin = weir.plugin("lb").unwrap();
    let client = client_h1();

    // A trapping canary on half the calls: rolled back after 20 of them;
    // its calls fell back to the host's round-robin, so no request failed.
    let misbehave = Bytes::from(std::fs::read(component("weir-test-misbehave"))?);
    let (status, answer) =
        admin_json("PUT", admin, "/plugins/lb?rollout=50&max_failure_rate=0.2&promote_after=1000", misbehave).await?;
    assert_eq!((status, answer["rollout"].as_u64()), (StatusCode::OK, Some(50)), "{answer}");
    assert_eq!(plugin.rollout().map(|r| r.generation), Some(2));
    for _ in 0..100 {
        assert_eq!(send(&client, get(addr, "x", "/")).await?.status, StatusCode::OK);
    }
    assert!(plugin.rollout().is_none(), "rolled back");
    assert_eq!(plugin.generation().number, 1);
    assert_eq!(plugin.stats().traps.load(Ordering::Relaxed), 20, "exactly the canary's 20 judged calls trapped");
    let traps_then = plugin.stats().traps.load(Ordering::Relaxed);
    for _ in 0..20 {
        send(&client, get(addr, "x", "/")).await?;
    }
    assert_eq!(plugin.stats().traps.load(Ordering::Relaxed), traps_then, "the old generation serves alone");

    // A healthy canary on a fifth of the calls: promoted after 50 of them.
    let random = Bytes::from_static(weir::plugin::bundled("random").unwrap());
    let (status, answer) = admin_json("PUT", admin, "/plugins/lb?rollout=20&promote_after=50", random).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, view) = admin_json("GET", admin, "/plugins/lb", Bytes::new()).await?;
    assert_eq!(view["rollout"]["percent"], 20);
    for _ in 0..300 {
        assert_eq!(send(&client, get(addr, "x", "/")).await?.status, StatusCode::OK);
    }
    assert!(plugin.rollout().is_none(), "promoted");
    assert_eq!(plugin.generation().number, 3);
    let (status, _) = admin_json("PUT", admin, "/plugins/lb?rollout=0", Bytes::new()).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_can_come_from_a_file_and_get_config_never_shows_a_secret() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("weir-admin-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("admin-token");
    std::fs::write(&file, "token-from-file\n")?;
    let a = EchoBackend::start("a").await?;
    let listeners =
        format!("[pools.p]\nbackends = [\"{}\"]\n\n[listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n", a.addr);
    // From a file: the token works, and `GET /config` shows only where it is.
    let text =
        format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken = {{ secret_file = \"{}\" }}\n\n{listeners}", file.display());
    let weir = start_weir(&text).await?;
    let admin = weir.admin_addr().unwrap();
    let denied = send(&client_h1(), admin_request("GET", admin, "/config", None, Bytes::new())).await?;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    let got = send(&client_h1(), admin_request("GET", admin, "/config", Some("token-from-file"), Bytes::new())).await?;
    assert_eq!(got.status, StatusCode::OK);
    let shown = String::from_utf8(got.body.to_vec())?;
    assert!(shown.contains("secret_file") && !shown.contains("token-from-file"), "{shown}");
    weir.shutdown().await;
    // Inline: it works, and `GET /config` redacts it.
    let weir = start_weir(&format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n{listeners}")).await?;
    let admin = weir.admin_addr().unwrap();
    let got = send(&client_h1(), admin_request("GET", admin, "/config", Some(TOKEN), Bytes::new())).await?;
    let shown = String::from_utf8(got.body.to_vec())?;
    assert!(shown.contains("token = \"<redacted>\"") && !shown.contains(TOKEN), "{shown}");
    weir.shutdown().await;
    // A reference to nothing is a located error.
    let missing =
        format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken = {{ secret_env = \"WEIR_TEST_UNSET_TOKEN\" }}\n\n{listeners}");
    let e = weir::config::Loaded::parse(weir::config::Source { origin: "t.toml".into(), text: missing }).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("t.toml:3:9: admin.token: the environment variable `WEIR_TEST_UNSET_TOKEN` is not set"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Every route of the admin API, called with good and bad input: each
/// answer's status is one the OpenAPI document (`GET /openapi.json`, built
/// from the code's route table and types) lists for that route, and each
/// JSON body validates against the schema it gives. Every route the
/// document names is called but `POST /upgrade`, which would start a new
/// process (`cli::an_upgrade_hands_the_sockets_...` runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_the_openapi_document_says() -> Result<()> {
    let (a, b) = (HttpBackend::start("a").await?, HttpBackend::start("b").await?);
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[plugins.lb]\nsource = \"builtin:round-robin\"\n\n\
         [pools.p]\nbackends = [\"{}\", \"{}\"]\nbalancer = \"lb\"\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n\n\
         [listeners.dns]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\npool = \"p\"\n",
        a.addr, b.addr
    );
    let weir = start_weir(&text).await?;
    let (addr, admin) = (weir.listener_addr("web").unwrap(), weir.admin_addr().unwrap());
    for _ in 0..4 {
        send(&client_h1(), get(addr, "x", "/")).await?;
    }
    let got = send(&client_h1(), admin_request("GET", admin, "/openapi.json", Some(TOKEN), Bytes::new())).await?;
    assert_eq!(got.status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&got.body)?;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut called = std::collections::BTreeSet::new();
    // (method, documented path, path called, body, token): the answer's
    // status must be `want`.
    let a_addr = a.addr.to_string();
    let component = Bytes::from_static(weir::plugin::bundled("random").unwrap());
    let calls: Vec<(&str, &str, String, Bytes, bool, u16)> = vec![
        ("GET", "/live", "/live".into(), Bytes::new(), false, 200),
        ("GET", "/ready", "/ready".into(), Bytes::new(), false, 200),
        ("GET", "/", "/".into(), Bytes::new(), true, 200),
        ("GET", "/", "/".into(), Bytes::new(), false, 401),
        ("GET", "/metrics", "/metrics".into(), Bytes::new(), true, 200),
        ("GET", "/config", "/config".into(), Bytes::new(), true, 200),
        ("GET", "/openapi.json", "/openapi.json".into(), Bytes::new(), true, 200),
        ("GET", "/listeners", "/listeners".into(), Bytes::new(), true, 200),
        ("GET", "/listeners/{name}", "/listeners/web".into(), Bytes::new(), true, 200),
        ("GET", "/listeners/{name}", "/listeners/dns".into(), Bytes::new(), true, 200),
        ("GET", "/listeners/{name}", "/listeners/nope".into(), Bytes::new(), true, 404),
        (
            "POST",
            "/listeners",
            "/listeners".into(),
            Bytes::from(r#"{"name": "extra", "bind": "127.0.0.1:0", "pool": "p", "protocol": "http"}"#),
            true,
            201,
        ),
        ("POST", "/listeners", "/listeners".into(), Bytes::from(r#"{"name": "extra"}"#), true, 409),
        ("POST", "/listeners", "/listeners".into(), Bytes::from(r#"{"name": "x2", "bind": "1"}"#), true, 400),
        ("DELETE", "/listeners/{name}", "/listeners/extra".into(), Bytes::new(), true, 200),
        ("DELETE", "/listeners/{name}", "/listeners/extra".into(), Bytes::new(), true, 404),
        ("GET", "/pools", "/pools".into(), Bytes::new(), true, 200),
        ("GET", "/pools/{name}", "/pools/p".into(), Bytes::new(), true, 200),
        ("GET", "/pools/{name}", "/pools/nope".into(), Bytes::new(), true, 404),
        ("GET", "/pools/{name}/backends/{backend}", format!("/pools/p/backends/{a_addr}"), Bytes::new(), true, 200),
        ("GET", "/pools/{name}/backends/{backend}", "/pools/p/backends/1".into(), Bytes::new(), true, 200),
        ("GET", "/pools/{name}/backends/{backend}", "/pools/p/backends/10.9.9.9:1".into(), Bytes::new(), true, 404),
        (
            "POST",
            "/pools/{name}/backends",
            "/pools/p/backends".into(),
            Bytes::from(r#"{"address": "127.0.0.1:1", "weight": 2, "tags": ["new"]}"#),
            true,
            201,
        ),
        (
            "POST",
            "/pools/{name}/backends",
            "/pools/p/backends".into(),
            Bytes::from(r#"{"address": "127.0.0.1:1"}"#),
            true,
            409,
        ),
        (
            "POST",
            "/pools/{name}/backends",
            "/pools/p/backends".into(),
            Bytes::from(r#"{"address": "nope"}"#),
            true,
            400,
        ),
        (
            "POST",
            "/pools/{name}/backends",
            "/pools/q/backends".into(),
            Bytes::from(r#"{"address": "127.0.0.1:2"}"#),
            true,
            404,
        ),
        (
            "POST",
            "/pools/{name}/backends/{backend}/weight",
            "/pools/p/backends/127.0.0.1:1/weight".into(),
            Bytes::from(r#"{"weight": 5}"#),
            true,
            200,
        ),
        (
            "POST",
            "/pools/{name}/backends/{backend}/weight",
            "/pools/p/backends/127.0.0.1:1/weight".into(),
            Bytes::from(r#"{"weight": -1}"#),
            true,
            400,
        ),
        (
            "POST",
            "/pools/{name}/backends/{backend}/disable",
            "/pools/p/backends/127.0.0.1%3A1/disable".into(),
            Bytes::new(),
            true,
            200,
        ),
        (
            "POST",
            "/pools/{name}/backends/{backend}/enable",
            "/pools/p/backends/127.0.0.1:1/enable".into(),
            Bytes::new(),
            true,
            200,
        ),
        (
            "POST",
            "/pools/{name}/backends/{backend}/enable",
            "/pools/p/backends/9/enable".into(),
            Bytes::new(),
            true,
            404,
        ),
        ("DELETE", "/pools/{name}/backends/{backend}", "/pools/p/backends/127.0.0.1:1".into(), Bytes::new(), true, 200),
        ("DELETE", "/pools/{name}/backends/{backend}", "/pools/p/backends/127.0.0.1:1".into(), Bytes::new(), true, 404),
        ("GET", "/plugins", "/plugins".into(), Bytes::new(), true, 200),
        ("GET", "/plugins/{name}", "/plugins/lb".into(), Bytes::new(), true, 200),
        ("GET", "/plugins/{name}", "/plugins/nope".into(), Bytes::new(), true, 404),
        ("PUT", "/plugins/{name}", "/plugins/lb".into(), component.clone(), true, 200),
        ("PUT", "/plugins/{name}", "/plugins/lb?rollout=10".into(), component, true, 200),
        ("PUT", "/plugins/{name}", "/plugins/lb".into(), Bytes::from_static(b"not wasm"), true, 422),
        ("PUT", "/plugins/{name}", "/plugins/lb?rollout=500".into(), Bytes::from_static(b"x"), true, 400),
        ("POST", "/reload", "/reload".into(), Bytes::from(text.clone()), true, 200),
        ("POST", "/reload", "/reload".into(), Bytes::from("[pools.p]\nbackends = 3\n"), true, 400),
        ("GET", "/log-level", "/log-level".into(), Bytes::new(), true, 404),
        ("PUT", "/log-level", "/log-level".into(), Bytes::from("debug"), true, 400),
    ];
    for (method, documented, path, payload, token, want) in calls {
        let got = send(&client_h1(), admin_request(method, admin, &path, token.then_some(TOKEN), payload)).await?;
        let what = format!("{method} {path}");
        assert_eq!(got.status.as_u16(), want, "{what}: {}", String::from_utf8_lossy(&got.body));
        let op = &doc["paths"][documented][method.to_lowercase()];
        let answer = &op["responses"][want.to_string()];
        assert!(answer.is_object(), "{what}: status {want} is not in the document: {op}");
        let kind = got.header("content-type").split(';').next().unwrap_or_default().to_string();
        let content = answer["content"].as_object().expect("content");
        let (documented_kind, schema) = content.iter().next().expect("one media type");
        assert!(kind.starts_with(documented_kind.as_str()), "{what}: {kind} is not {documented_kind}");
        if kind == "application/json" {
            let body: serde_json::Value = serde_json::from_slice(&got.body)?;
            let mut root = serde_json::json!({ "allOf": [schema["schema"]], "components": doc["components"] });
            if documented == "/openapi.json" {
                root = serde_json::json!({"type": "object", "required": ["openapi", "paths", "components"]});
            }
            let validator = jsonschema::validator_for(&root).map_err(|e| anyhow::anyhow!("{what}: schema: {e}"))?;
            let errors: Vec<String> =
                validator.iter_errors(&body).map(|e| format!("{e} at {}", e.instance_path())).collect();
            assert!(errors.is_empty(), "{what}: the body does not fit the document:\n{errors:#?}\n{body:#}");
        }
        called.insert((method.to_lowercase(), documented.to_string()));
    }
    // Every documented route was called, but the upgrade.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("methods").keys() {
            if (method.as_str(), path.as_str()) != ("post", "/upgrade") {
                assert!(called.contains(&(method.clone(), path.clone())), "{method} {path} was not called");
            }
        }
    }
    weir.shutdown().await;
    Ok(())
}

/// Backends named by address: one added at runtime takes its share of the
/// round-robin at once, a weight set by address moves the split, and one
/// removed gets nothing more, while the others' slots shift under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_are_added_weighted_and_removed_by_address_and_traffic_follows() -> Result<()> {
    let (a, b, c) = (EchoBackend::start("a").await?, EchoBackend::start("b").await?, EchoBackend::start("c").await?);
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[pools.p]\nbalancer = \"builtin:weighted-round-robin\"\n\
         backends = {}\n\n[listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        addresses(&[&a, &b])
    );
    let weir = start_weir(&text).await?;
    let (l, admin) = (weir.listener_addr("l").unwrap(), weir.admin_addr().unwrap());
    let split = |n: usize| async move {
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..n {
            *seen.entry(exchange(l, b"x").await?.0).or_default() += 1;
        }
        anyhow::Ok(seen)
    };
    let add = format!(r#"{{"address": "{}", "weight": 2, "tags": ["new"]}}"#, c.addr);
    let (status, added) = admin_json("POST", admin, "/pools/p/backends", Bytes::from(add)).await?;
    assert_eq!((status, added["slot"].as_u64()), (StatusCode::CREATED, Some(2)), "{added}");
    let (_, shown) = admin_json("GET", admin, &format!("/pools/p/backends/{}", c.addr), Bytes::new()).await?;
    assert_eq!((shown["weight"].as_u64(), &shown["tags"]), (Some(2), &serde_json::json!(["new"])), "{shown}");
    // Weights 1:1:2 over 40 connections.
    let seen = split(40).await?;
    assert_eq!((seen["a"], seen["b"], seen["c"]), (10, 10, 20), "{seen:?}");
    // `a` leaves: `b` moves to slot 0, `c` to 1, and the names still hold.
    let (status, removed) = admin_json("DELETE", admin, &format!("/pools/p/backends/{}", a.addr), Bytes::new()).await?;
    assert_eq!((status, &removed["removed"]), (StatusCode::OK, &serde_json::json!(true)), "{removed}");
    let weight = Bytes::from("{\"weight\": 3}");
    let (status, _) = admin_json("POST", admin, &format!("/pools/p/backends/{}/weight", b.addr), weight).await?;
    assert_eq!(status, StatusCode::OK);
    let seen = split(50).await?;
    assert_eq!((seen.get("a"), seen["b"], seen["c"]), (None, 30, 20), "{seen:?}");
    let (_, pool) = admin_json("GET", admin, "/pools/p", Bytes::new()).await?;
    let slots: Vec<(String, u64)> = pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["address"].as_str().unwrap().to_string(), b["slot"].as_u64().unwrap()))
        .collect();
    assert_eq!(slots, [(b.addr.to_string(), 0), (c.addr.to_string(), 1)]);
    // A reload from the config puts the configured list back.
    weir.reload(weir::config::Source { origin: "test".into(), text: text.clone() })
        .await
        .map_err(anyhow::Error::msg)?;
    let seen = split(20).await?;
    assert_eq!((seen["a"], seen["b"], seen.get("c")), (10, 10, None), "{seen:?}");
    weir.shutdown().await;
    Ok(())
}

/// `GET /ready` answers 503 until each pool's first round of health checks
/// is done (here a check that cannot finish before its 4 s timeout), then
/// 200; `/live` answers at once; neither needs the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_health_round_and_live_answers_at_once() -> Result<()> {
    // A backend that accepts and never answers: the HTTP check runs to its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_addr = silent.local_addr()?;
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[pools.p]\nbackends = [\"{silent_addr}\"]\n\
         health = {{ plugin = \"builtin:check-http\", interval = \"30s\", timeout = \"4s\" }}\n\n\
         [listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n"
    );
    let weir = start_weir(&text).await?;
    let admin = weir.admin_addr().unwrap();
    let probe = |path: &'static str| async move {
        let got = send(&client_h1(), admin_request("GET", admin, path, None, Bytes::new())).await?;
        anyhow::Ok((got.status, String::from_utf8_lossy(&got.body).to_string()))
    };
    let started = Instant::now();
    assert_eq!(probe("/live").await?, (StatusCode::OK, "ok\n".to_string()));
    let (status, body) = probe("/ready").await?;
    assert!(started.elapsed() < Duration::from_secs(4), "the first probe came too late to see the wait");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("first health-check round of pools p"), "{body}");
    let deadline = Instant::now() + STEP;
    loop {
        let (status, body) = probe("/ready").await?;
        if status == StatusCode::OK {
            assert_eq!(body, "ready: 1 listeners\n");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(3), "ready before the check could end");
    weir.shutdown().await;
    held.abort();
    Ok(())
}
