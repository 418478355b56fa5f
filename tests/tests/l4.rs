//! The L4 TCP proxy end to end: real backends, real client sockets, weir
//! in-process, everything on 127.0.0.1.

use anyhow::Result;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_tests::*;

fn rr_config(backends: &str) -> String {
    format!(
        r#"
[pools.p]
balancer = "builtin:round-robin"
backends = {backends}
connect_timeout = "1s"
fail_timeout = "300ms"

[listeners.l]
bind = "127.0.0.1:0"
pool = "p"
idle_timeout = "10s"
"#
    )
}

async fn tally(addr: std::net::SocketAddr, n: usize) -> Result<HashMap<String, usize>> {
    let mut seen = HashMap::new();
    for i in 0..n {
        let payload = format!("request {i}");
        let (name, echoed) = exchange(addr, payload.as_bytes()).await?;
        assert_eq!(echoed, payload.as_bytes());
        *seen.entry(name).or_default() += 1;
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_exactly_across_worker_threads() -> Result<()> {
    let (a, b, c) = (EchoBackend::start("a").await?, EchoBackend::start("b").await?, EchoBackend::start("c").await?);
    let weir = start_weir(&rr_config(&addresses(&[&a, &b, &c]))).await?;
    let addr = weir.listener_addr("l").unwrap();
    let seen = tally(addr, 300).await?;
    assert_eq!(seen, HashMap::from([("a".into(), 100), ("b".into(), 100), ("c".into(), 100)]));
    // The round-robin plugin ran (no fallback), and the host counted the connections.
    let rr = weir.plugin("builtin:round-robin").unwrap();
    assert_eq!(rr.stats().calls.load(std::sync::atomic::Ordering::Relaxed), 300);
    assert_eq!(rr.stats().recycled(), 0);
    let pool = &weir.pool("p").unwrap();
    assert!(pool.members().backends.iter().all(|b| b.stats.total() == 100));
    eventually("active connections to drain", || pool.members().backends.iter().all(|b| b.stats.active() == 0)).await?;
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_arrive_intact_both_ways_with_half_close() -> Result<()> {
    let a = EchoBackend::start("a").await?;
    let weir = start_weir(&rr_config(&addresses(&[&a]))).await?;
    let addr = weir.listener_addr("l").unwrap();
    let mut sent = 0u64;
    for size in [1usize, 64 << 10, 16 << 20] {
        // A pattern that catches reordering and truncation, not just length.
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect();
        let (name, echoed) = exchange(addr, &payload).await?;
        assert_eq!(name, "a");
        assert_eq!(echoed.len(), payload.len(), "size {size}");
        assert!(echoed == payload, "echo of {size} bytes differs");
        sent += size as u64;
    }
    let stats = &weir.pool("p").unwrap().members().backends[0].stats;
    eventually("byte counters", || stats.tx() == sent && stats.rx() == sent + 3 * 2).await?;
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_backend_is_skipped_and_rejoins() -> Result<()> {
    let (a, mut b, c) =
        (EchoBackend::start("a").await?, EchoBackend::start("b").await?, EchoBackend::start("c").await?);
    let weir = start_weir(&rr_config(&addresses(&[&a, &b, &c]))).await?;
    let addr = weir.listener_addr("l").unwrap();
    assert_eq!(tally(addr, 30).await?.len(), 3);

    b.stop().await;
    let seen = tally(addr, 60).await?;
    assert_eq!(seen.values().sum::<usize>(), 60, "every connection succeeded");
    assert!(!seen.contains_key("b"), "{seen:?}");
    // One failed connect takes b out of rotation, so a and c share evenly.
    assert!((29..=31).contains(&seen["a"]) && (29..=31).contains(&seen["c"]), "{seen:?}");
    let pool = &weir.pool("p").unwrap();
    assert_eq!(pool.members().backends[1].stats.failures(), 1);
    assert!(!pool.members().backends[1].is_healthy());

    b.restart().await?;
    eventually("b back in rotation after fail_timeout", || pool.members().backends[1].is_healthy()).await?;
    let seen = tally(addr, 30).await?;
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_access_denies_without_touching_a_backend() -> Result<()> {
    let a = EchoBackend::start("a").await?;
    let cfg = |rules: &str| {
        format!(
            r#"
[plugins.acl]
source = "builtin:ip-access"
config = {{ default = "allow", rules = {rules} }}
{}
access = ["acl"]
"#,
            rr_config(&addresses(&[&a]))
        )
    };
    let weir = start_weir(&cfg(r#"["allow 10.0.0.0/8", "deny 127.0.0.0/8"]"#)).await?;
    let got = read_all(weir.listener_addr("l").unwrap()).await?;
    assert!(got.is_empty(), "denied client got {got:?}");
    assert_eq!(a.accepted(), 0, "backend was contacted");
    weir.shutdown().await;

    let weir = start_weir(&cfg(r#"["deny 10.0.0.0/8", "allow 127.0.0.1"]"#)).await?;
    let (name, echoed) = exchange(weir.listener_addr("l").unwrap(), b"hi").await?;
    assert_eq!((name.as_str(), echoed.as_slice()), ("a", &b"hi"[..]));
    assert_eq!(a.accepted(), 1);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_plugin_loaded_by_path_carries_traffic() -> Result<()> {
    let (mut a, b) = (EchoBackend::start("a").await?, EchoBackend::start("b").await?);
    let path = component("weir-example-first");
    let text = rr_config(&addresses(&[&a, &b])).replace("balancer = \"builtin:round-robin\"", "balancer = \"first\"")
        + &format!("\n[plugins.first]\nsource = \"{}\"\n", path.display());
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("l").unwrap();
    assert_eq!(tally(addr, 20).await?, HashMap::from([("a".into(), 20)]));
    a.stop().await;
    assert_eq!(tally(addr, 20).await?, HashMap::from([("b".into(), 20)]));
    assert_eq!(weir.plugin("first").unwrap().source(), path.display().to_string());
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() -> Result<()> {
    let a = EchoBackend::start("a").await?;
    let weir =
        start_weir(&rr_config(&addresses(&[&a])).replace("idle_timeout = \"10s\"", "idle_timeout = \"300ms\"")).await?;
    let mut s = TcpStream::connect(weir.listener_addr("l").unwrap()).await?;
    let started = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut got)).await??;
    let waited = started.elapsed();
    assert_eq!(got, b"a\n");
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(3), "closed after {waited:?}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_drains_in_flight() -> Result<()> {
    let a = EchoBackend::start("a").await?;
    let weir = start_weir(&rr_config(&addresses(&[&a]))).await?;
    let addr = weir.listener_addr("l").unwrap();
    let mut s = TcpStream::connect(addr).await?;
    let mut hello = [0u8; 2];
    s.read_exact(&mut hello).await?;
    eventually("connection tracked", || weir.connections() == 1).await?;

    let draining = tokio::spawn(weir.shutdown());
    // New connections are refused once the listener is closed.
    eventually("listener closed", || std::net::TcpStream::connect(addr).is_err()).await?;
    // The in-flight connection still works, then ends cleanly.
    s.write_all(b"still here").await?;
    s.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut rest)).await??;
    assert_eq!(rest, b"still here");
    let cut = tokio::time::timeout(STEP, draining).await??;
    assert_eq!(cut, 0, "no connection was cut off");
    Ok(())
}

/// Connect and wait for the backend's name line: the connection is served.
async fn served(addr: std::net::SocketAddr) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let mut name = [0u8; 2];
    tokio::time::timeout(STEP, s.read_exact(&mut name)).await??;
    assert_eq!(&name, b"a\n");
    Ok(s)
}

/// Connect; the connection is accepted by the kernel but not served: no
/// byte comes back while it waits in the backlog.
async fn held(addr: std::net::SocketAddr) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let mut byte = [0u8; 1];
    let got = tokio::time::timeout(Duration::from_millis(300), s.read(&mut byte)).await;
    anyhow::ensure!(got.is_err(), "served at once: {got:?}");
    Ok(s)
}

/// Read the backend's name line of a connection that was held.
async fn now_served(s: &mut TcpStream) -> Result<()> {
    let mut name = [0u8; 2];
    tokio::time::timeout(STEP, s.read_exact(&mut name)).await??;
    assert_eq!(&name, b"a\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_wait_in_the_backlog_until_one_closes() -> Result<()> {
    let a = EchoBackend::start("a").await?;
    let config = |own: u64, process: u64| {
        format!(
            "[runtime]\nmax_connections = {process}\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[pools.p]\nbackends = {}\n\n\
             [listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\nmax_connections = {own}\n\n\
             [listeners.m]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
            addresses(&[&a])
        )
    };
    let weir = start_weir(&config(2, 3)).await?;
    let (l, m) = (weir.listener_addr("l").unwrap(), weir.listener_addr("m").unwrap());
    let caps = |name: &str| weir.core().snapshot().listeners[name].caps.clone().unwrap();
    // The listener's own cap: two served, the third waits.
    let c1 = served(l).await?;
    let _c2 = served(l).await?;
    let mut c3 = held(l).await?;
    assert_eq!(caps("l").paused(), 1);
    // The process-wide cap (3) holds a listener with no cap of its own.
    let m1 = served(m).await?;
    let mut m2 = held(m).await?;
    assert_eq!(weir.core().open_connections(), 3);
    assert_eq!(caps("m").paused(), 1);
    // The same numbers in the admin API and on /metrics.
    let admin = weir.admin_addr().unwrap();
    let get = |path: &str| {
        let req = http::Request::get(format!("http://{admin}{path}")).body(weir_tests::web::body(bytes::Bytes::new()));
        async move { weir_tests::web::send(&weir_tests::web::client_h1(), req?).await }
    };
    let shown: serde_json::Value = serde_json::from_slice(&get("/listeners/l").await?.body)?;
    assert_eq!((shown["max_connections"].as_u64(), shown["accept_paused"].as_u64()), (Some(2), Some(1)), "{shown}");
    let metrics = String::from_utf8(get("/metrics").await?.body.to_vec())?;
    for line in ["weir_listener_accept_paused_total{listener=\"m\"} 1", "weir_open_connections 3"] {
        assert!(metrics.lines().any(|l| l.starts_with(line)), "{line} not in:\n{metrics}");
    }
    // A close on `m` lets `m2` in; `l` stays at its own cap.
    drop(m1);
    now_served(&mut m2).await?;
    let mut byte = [0u8; 1];
    assert!(tokio::time::timeout(Duration::from_millis(200), c3.read(&mut byte)).await.is_err());
    // A close on `l` lets `c3` in.
    drop(c1);
    now_served(&mut c3).await?;
    // A reload raising the caps lets a waiting connection in at once.
    let mut c4 = held(l).await?;
    let text = config(3, 10);
    weir.reload(weir::config::Source { origin: "raised.toml".into(), text }).await.map_err(anyhow::Error::msg)?;
    now_served(&mut c4).await?;
    assert_eq!(caps("l").max(), Some(3));
    drop((_c2, c3, c4, m2));
    weir.shutdown().await;
    Ok(())
}
