//! Config hot reload, as an operator would do it: 20 reloads alternating
//! route tables under HTTP load and backend lists under TCP load with no
//! failed request or connection; listeners opened and closed by a reload;
//! an invalid config refused with its location while the old one stays in
//! force, through `POST /reload` and through SIGHUP to a real process.

use anyhow::Result;
use bytes::Bytes;
use http::{Request, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_tests::web::*;
use weir_tests::*;

const TOKEN: &str = "reload-token";

async fn post_reload(admin: SocketAddr, config: &str) -> Result<(StatusCode, serde_json::Value)> {
    let req = Request::post(format!("http://{admin}/reload"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(body(Bytes::from(config.to_string())))?;
    let got = send(&client_h1(), req).await?;
    Ok((got.status, serde_json::from_slice(&got.body)?))
}

/// Two pools, and a router sending host `x` to `to`.
fn routed(a: &HttpBackend, b: &HttpBackend, to: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n\
         [plugins.routes]\nsource = \"builtin:host-path\"\nconfig = {{ routes = [{{ host = \"x\", pool = \"{to}\" }}] }}\n\n\
         [pools.a]\nbackends = [\"{}\"]\n\n[pools.b]\nbackends = [\"{}\"]\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"a\"\nrouter = \"routes\"\n",
        a.addr, b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_of_the_route_table_under_http_load_fail_no_request() -> Result<()> {
    let (a, b) = (HttpBackend::start("a").await?, HttpBackend::start("b").await?);
    let weir = start_weir(&routed(&a, &b, "a")).await?;
    let (addr, admin) = (weir.listener_addr("web").unwrap(), weir.admin_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
        load.push(tokio::spawn(async move {
            let client = client_h1();
            let deadline = Instant::now() + 4 * STEP;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match send(&client, get(addr, "x", "/")).await {
                    Ok(got) if got.status == StatusCode::OK => ok.fetch_add(1, Ordering::SeqCst),
                    _ => bad.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    eventually("load running", || ok.load(Ordering::SeqCst) > 300).await?;
    let client = client_h1();
    let mut times = Vec::new();
    for i in 0..20 {
        let to = if i % 2 == 0 { "b" } else { "a" };
        let started = Instant::now();
        let (status, summary) = post_reload(admin, &routed(&a, &b, to)).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, StatusCode::OK, "{summary}");
        // The next request follows the new table (keep-alive connection or not).
        assert_eq!(send(&client, get(addr, "x", "/")).await?.header("x-backend"), to, "reload {i}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await?;
    }
    let (ok, bad) = (ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst));
    times.sort_by(f64::total_cmp);
    println!(
        "{ok} requests answered 200 during 20 reloads, {bad} failed; reload p50 {:.1} ms, max {:.1} ms",
        times[10], times[19]
    );
    assert_eq!(bad, 0);
    assert!(a.requests() > 100 && b.requests() > 100, "both tables served: a {} b {}", a.requests(), b.requests());
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_of_the_backends_under_tcp_load_fail_no_connection() -> Result<()> {
    let (a, b, c) = (EchoBackend::start("a").await?, EchoBackend::start("b").await?, EchoBackend::start("c").await?);
    let text = |backends: &[&EchoBackend]| {
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[pools.p]\nbackends = {}\n\n\
             [listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
            addresses(backends)
        )
    };
    let weir = start_weir(&text(&[&a, &b])).await?;
    let (addr, admin) = (weir.listener_addr("l").unwrap(), weir.admin_addr().unwrap());
    let b_stats = weir.pool("p").unwrap().members().backends[1].stats.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for i in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let payload = format!("client {i}");
            let deadline = Instant::now() + 4 * STEP;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match exchange(addr, payload.as_bytes()).await {
                    Ok((_, echoed)) if echoed == payload.as_bytes() => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    eventually("load running", || ok.load(Ordering::SeqCst) > 300).await?;
    for i in 0..20 {
        let backends: &[&EchoBackend] = if i % 2 == 0 { &[&b, &c] } else { &[&a, &b] };
        let (status, summary) = post_reload(admin, &text(backends)).await?;
        assert_eq!(status, StatusCode::OK, "{summary}");
        let now: Vec<String> = weir.pool("p").unwrap().members().backends.iter().map(|m| m.address.clone()).collect();
        assert_eq!(now, backends.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await?;
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!("{ok} connections echoed during 20 reloads, {failed} failed");
    assert_eq!(failed, 0);
    // b stayed in every version: its counters carried over every reload.
    let now = weir.pool("p").unwrap().members();
    let b_now = now.backends.iter().find(|m| m.address == b.addr.to_string()).unwrap();
    assert!(Arc::ptr_eq(&b_now.stats, &b_stats), "b's counters were replaced");
    assert!(b_stats.total() > 100);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_opens_and_closes_listeners_and_refuses_bad_configs() -> Result<()> {
    let a = EchoBackend::start("a").await?;
    let base = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[pools.p]\nbackends = {}\n\n\
         [listeners.one]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        addresses(&[&a])
    );
    let weir = start_weir(&base).await?;
    let (one, admin) = (weir.listener_addr("one").unwrap(), weir.admin_addr().unwrap());
    // Keep `one`'s address (port 0 would pick a new one) and add `two`.
    let with_two = format!(
        "{}\n[listeners.two]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        base.replace("[listeners.one]\nbind = \"127.0.0.1:0\"", &format!("[listeners.one]\nbind = \"{one}\""))
    );
    let (status, summary) = post_reload(admin, &with_two).await?;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["listeners_added"], serde_json::json!(["two"]));
    assert_eq!(summary["listeners_removed"], serde_json::json!([]));
    let two = weir.listener_addr("two").unwrap();
    assert_eq!(exchange(two, b"hi").await?, ("a".to_string(), b"hi".to_vec()));
    assert_eq!(exchange(one, b"hi").await?.0, "a");

    // A config with a mistake changes nothing, and says where it is.
    let broken = with_two.replace("pool = \"p\"\n", "pool = \"nope\"\n");
    let (status, answer) = post_reload(admin, &broken).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("POST /reload:10:8: listeners.one.pool: no pool named `nope`"), "{message}");
    assert_eq!(exchange(two, b"still").await?.1, b"still");
    let bad_plugin = format!("{with_two}\n[plugins.x]\nsource = \"builtin:no-such-plugin\"\n");
    let (status, answer) = post_reload(admin, &bad_plugin).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no bundled plugin `no-such-plugin`"), "{answer}");

    // Dropping `two` closes it; `one` keeps serving.
    let (status, summary) =
        post_reload(admin, &with_two.replace("\n[listeners.two]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n", "")).await?;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["listeners_removed"], serde_json::json!(["two"]));
    eventually_async_refused(two).await?;
    assert_eq!(exchange(one, b"hi").await?.0, "a");
    weir.shutdown().await;
    Ok(())
}

async fn eventually_async_refused(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("{addr} still accepts connections")
}

#[test]
fn sighup_reloads_the_file_and_a_bad_file_changes_nothing() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (a, b) = rt.block_on(async { anyhow::Ok((EchoBackend::start("a").await?, EchoBackend::start("b").await?)) })?;
    let text = |backend: &EchoBackend| {
        format!("[pools.p]\nbackends = [\"{}\"]\n\n[listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n", backend.addr)
    };
    let weir = WeirProcess::spawn(std::path::Path::new(env!("CARGO_BIN_EXE_weir-under-test")), "sighup", &text(&a))?;
    let addr = weir.addr;
    let echo = |payload: &'static [u8]| rt.block_on(exchange(addr, payload));
    assert_eq!(echo(b"1")?.0, "a");

    // A typo: logged with file, line and key; the old config stays.
    std::fs::write(weir.dir.join("weir.toml"), text(&b).replace("backends", "backend"))?;
    weir.signal("HUP")?;
    let deadline = Instant::now() + STEP;
    while !weir.logged(&["config not applied", "weir.toml:2:1", "backend"]) {
        anyhow::ensure!(Instant::now() < deadline, "no error logged: {:?}", weir.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(echo(b"2")?.0, "a");

    // Fixed: the next SIGHUP applies it, on the same listening socket.
    std::fs::write(weir.dir.join("weir.toml"), text(&b).replace("127.0.0.1:0", &addr.to_string()))?;
    weir.signal("HUP")?;
    let deadline = Instant::now() + STEP;
    while echo(b"3")?.0 != "b" {
        anyhow::ensure!(Instant::now() < deadline, "reload not applied: {:?}", weir.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(weir.logged(&["config reloaded"]));
    drop(weir);
    drop((a, b));
    Ok(())
}

#[test]
fn access_log_lines_carry_the_configured_fields_in_plain_and_json() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let a = rt.block_on(HttpBackend::start("a"))?;
    let text = format!(
        "[pools.p]\nbackends = [\"{}\"]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n\
         access_log = [\"method\", \"path\", \"route\", \"pool\", \"backend\", \"status\", \"bytes_out\", \"request_id\"]\n",
        a.addr
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_weir-under-test"));
    for (format, options) in [("plain", &[][..]), ("json", &["--log-format", "json"][..])] {
        let weir = WeirProcess::spawn_with(bin, &format!("access-{format}"), &text, options)?;
        let addr = weir.addr;
        rt.block_on(async {
            let client = client_h1();
            let mut req = get(addr, "x", "/generate/100");
            req.headers_mut().insert("x-request-id", "req-42".parse()?);
            assert_eq!(send(&client, req).await?.body.len(), 100);
            anyhow::Ok(())
        })?;
        let want = format!(
            "method=GET path=/generate/100 route=default pool=p backend={} status=200 bytes_out=100 request_id=req-42",
            a.addr
        );
        // Plain: the logfmt line; JSON: an object with the same fields, typed.
        let seen = |l: &String| match format {
            "plain" => l.contains(&want),
            _ => l.contains("\"target\":\"weir::access\"") && l.contains("/generate/100"),
        };
        let deadline = Instant::now() + STEP;
        while !weir.log.lock().unwrap().iter().any(seen) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{format}: no access line {want:?} in {:?}",
                weir.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        if format == "json" {
            let log = weir.log.lock().unwrap();
            let line = log.iter().find(|l| seen(l)).unwrap();
            let v: serde_json::Value = serde_json::from_str(line)?;
            let backend = a.addr.to_string();
            let want = serde_json::json!({
                "method": "GET", "path": "/generate/100", "route": "default", "pool": "p", "backend": backend,
                "status": 200, "bytes_out": 100, "request_id": "req-42", "level": "INFO", "target": "weir::access",
            });
            for (key, value) in want.as_object().unwrap() {
                assert_eq!(&v[key], value, "{key} in {line}");
            }
            assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        }
    }
    Ok(())
}

#[test]
fn watch_config_reloads_when_the_file_changes() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (a, b) = rt.block_on(async { anyhow::Ok((EchoBackend::start("a").await?, EchoBackend::start("b").await?)) })?;
    let text = |backend: &EchoBackend, bind: &str| {
        format!(
            "[runtime]\nwatch_config = true\n\n[pools.p]\nbackends = [\"{}\"]\n\n[listeners.l]\nbind = \"{bind}\"\npool = \"p\"\n",
            backend.addr
        )
    };
    let weir = WeirProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_weir-under-test")),
        "watch",
        &text(&a, "127.0.0.1:0"),
    )?;
    let addr = weir.addr;
    assert_eq!(rt.block_on(exchange(addr, b"1"))?.0, "a");
    std::fs::write(weir.dir.join("weir.toml"), text(&b, &addr.to_string()))?;
    let deadline = Instant::now() + STEP;
    while rt.block_on(exchange(addr, b"2"))?.0 != "b" {
        anyhow::ensure!(Instant::now() < deadline, "change not picked up: {:?}", weir.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(weir.logged(&["config file changed: reloaded"]));
    Ok(())
}
