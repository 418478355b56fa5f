//! Active and passive health through weir with real backends: the bundled
//! checkers (tcp, http, probe, exec) take a backend down and bring it back
//! within the bounds their settings promise, passive ejection works while
//! active checks pass, and a backend killed under load costs at most the
//! requests in flight on it.

use anyhow::Result;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::upstream::Pool;
use weir_tests::web::*;
use weir_tests::*;

/// Time from now until `cond` holds (polled every 5 ms, at most `STEP`).
async fn time_until(what: &str, mut cond: impl FnMut() -> bool) -> Result<Duration> {
    let started = Instant::now();
    eventually(what, &mut cond).await?;
    Ok(started.elapsed())
}

fn healthy(pool: &Pool, address: &str) -> bool {
    pool.members().backends.iter().any(|b| b.address == address && b.is_healthy())
}

fn l4_config(backends: &[&EchoBackend], health: &str, extra: &str) -> String {
    format!(
        "{extra}\n[pools.p]\nbackends = {}\nhealth = {health}\n\n[listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        addresses(backends)
    )
}

/// Scheduling slack allowed on top of a bound, for a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_takes_a_dead_backend_out_and_brings_it_back() -> Result<()> {
    let (a, mut b) = (EchoBackend::start("a").await?, EchoBackend::start("b").await?);
    let (interval, timeout, rise, fall) = (200u64, 200u64, 2u32, 2u32);
    let health = format!(
        "{{ plugin = \"builtin:check-tcp\", interval = \"{interval}ms\", timeout = \"{timeout}ms\", rise = {rise}, fall = {fall} }}"
    );
    let weir = start_weir(&l4_config(&[&a, &b], &health, "")).await?;
    let addr = weir.listener_addr("l").unwrap();
    let pool = &weir.pool("p").unwrap();
    let b_addr = b.addr.to_string();

    b.stop().await;
    let down = time_until("b marked down", || !healthy(pool, &b_addr)).await?;
    let bound = Duration::from_millis(interval * fall as u64 + timeout);
    println!("down after {down:?} (bound interval × fall + timeout = {bound:?})");
    assert!(down <= bound + SLACK, "down after {down:?}, bound {bound:?}");

    // No new traffic goes to it: no connect is even attempted.
    let failures = pool.members().backends.iter().find(|m| m.address == b_addr).unwrap().stats.failures();
    for _ in 0..20 {
        assert_eq!(exchange(addr, b"x").await?.0, "a");
    }
    let after = pool.members().backends.iter().find(|m| m.address == b_addr).unwrap().stats.failures();
    assert_eq!(after, failures, "weir tried the down backend");

    b.restart().await?;
    let up = time_until("b back up", || healthy(pool, &b_addr)).await?;
    let bound = Duration::from_millis(interval * rise as u64);
    println!("up after {up:?} (bound interval × rise = {bound:?})");
    assert!(up <= bound + SLACK, "up after {up:?}, bound {bound:?}");
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..10 {
        *seen.entry(exchange(addr, b"x").await?.0).or_default() += 1;
    }
    assert_eq!(seen, HashMap::from([("a".into(), 5), ("b".into(), 5)]));
    let b_health = &pool.members().backends[1].health;
    assert_eq!(b_health.transitions(), 2, "one transition down, one up");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_follows_the_status_and_the_body() -> Result<()> {
    let (a, b) = (HttpBackend::start("a").await?, HttpBackend::start("b").await?);
    let text = format!(
        "[plugins.hc]\nsource = \"builtin:check-http\"\nconfig = {{ path = \"/health\", status = [\"200-299\"], body_contains = \"ok\" }}\n\n\
         [pools.p]\nbackends = [\"{}\", \"{}\"]\nhealth = {{ plugin = \"hc\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }}\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        a.addr, b.addr
    );
    let weir = start_weir(&text).await?;
    let pool = &weir.pool("p").unwrap();
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    // The test backend echoes the request body; a GET has none, so "ok" is
    // never in it: both fail on the body check.
    eventually("both down: body lacks `ok`", || !healthy(pool, &a_addr) && !healthy(pool, &b_addr)).await?;
    let reason = pool.members().backends[0].health.last_failure();
    assert!(reason.contains("ok"), "{reason}");

    // Without the body condition, status alone decides.
    weir.shutdown().await;
    let weir = start_weir(&text.replace(", body_contains = \"ok\"", "")).await?;
    let pool = &weir.pool("p").unwrap();
    let addr = weir.listener_addr("web").unwrap();
    eventually("both up", || healthy(pool, &a_addr) && healthy(pool, &b_addr)).await?;
    b.set_status(503);
    eventually("b down on 503", || !healthy(pool, &b_addr)).await?;
    assert!(healthy(pool, &a_addr));
    let reason = pool.members().backends[1].health.last_failure();
    assert!(reason.contains("503"), "{reason}");
    let client = client_h1();
    for _ in 0..10 {
        let got = send(&client, get(addr, "x", "/")).await?;
        assert_eq!((got.status, got.header("x-backend")), (http::StatusCode::OK, "a"));
    }
    b.set_status(0);
    eventually("b up again on 200", || healthy(pool, &b_addr)).await?;
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_check_flips_on_a_wrong_reply() -> Result<()> {
    // The echo backend greets with its name: the probe expects `good`.
    let mut b = EchoBackend::start("good").await?;
    let a = EchoBackend::start("a").await?;
    let health = "{ plugin = \"probe\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }";
    let plugin = "[plugins.probe]\nsource = \"builtin:check-probe\"\nconfig = { send = \"hello\\n\", expect_regex = \"^(good|a)\\n\" }\n";
    let weir = start_weir(&l4_config(&[&a, &b], health, plugin)).await?;
    let pool = &weir.pool("p").unwrap();
    let b_addr = b.addr.to_string();
    // The right greeting passes (polled: with fall = 1 one probe slowed
    // past its timeout on a loaded machine would flip it for a round).
    let passing = || healthy(pool, &b_addr) && pool.members().backends[1].health.streak() >= 2;
    eventually("two passing probes on the right reply", passing).await?;
    // The same port now answers with another greeting.
    let addr = b.addr;
    b.stop().await;
    let _bad = EchoBackend::start_on("bad", addr).await?;
    // (Probes cut off by the restart fail too; wait for the verdict on `bad`.)
    eventually("down on the wrong reply", || {
        !healthy(pool, &b_addr) && pool.members().backends[1].health.last_failure().contains("reply `bad\\n`")
    })
    .await?;
    let reason = pool.members().backends[1].health.last_failure();
    assert!(reason.contains("does not match"), "{reason}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_check_follows_the_programs_answer() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("weir-exec-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let state = dir.join("state");
    let script = dir.join("check.sh");
    std::fs::write(&state, "1\n")?;
    // The program gets host and port and prints 1 (up) or 0 (down).
    std::fs::write(&script, format!("#!/bin/sh\n[ -n \"$1\" ] && [ -n \"$2\" ] && cat {}\n", state.display()))?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let a = EchoBackend::start("a").await?;
    let plugin = |granted: &str| {
        format!(
            "[plugins.ex]\nsource = \"builtin:check-exec\"\nconfig = {{ program = \"{}\" }}\ngrants = {{ exec = [\"{granted}\"] }}\n",
            script.display()
        )
    };
    let health = "{ plugin = \"ex\", interval = \"100ms\", timeout = \"1s\", rise = 1, fall = 1 }";
    let weir = start_weir(&l4_config(&[&a], health, &plugin(&script.display().to_string()))).await?;
    let pool = &weir.pool("p").unwrap();
    let a_addr = a.addr.to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(healthy(pool, &a_addr), "{}", pool.members().backends[0].health.last_failure());
    std::fs::write(&state, "0\n")?;
    eventually("down when the program says 0", || !healthy(pool, &a_addr)).await?;
    std::fs::write(&state, "1\n")?;
    eventually("up when it says 1 again", || healthy(pool, &a_addr)).await?;
    weir.shutdown().await;

    // A program the config does not grant is never run: the check fails.
    let weir = start_weir(&l4_config(&[&a], health, &plugin("/bin/true"))).await?;
    let pool = &weir.pool("p").unwrap();
    eventually("down: program not granted", || !healthy(pool, &a_addr)).await?;
    let reason = pool.members().backends[0].health.last_failure();
    assert!(reason.contains("denied"), "{reason}");
    weir.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_while_active_checks_pass() -> Result<()> {
    let (good, bad) = (HttpBackend::start("good").await?, HttpBackend::failing("bad", 500).await?);
    let text = format!(
        "[pools.p]\nbackends = [\"{}\", \"{}\"]\nfail_on = [500]\nmax_fails = 3\nfail_timeout = \"500ms\"\n\
         health = {{ plugin = \"builtin:check-tcp\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }}\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        good.addr, bad.addr
    );
    let weir = start_weir(&text).await?;
    let pool = &weir.pool("p").unwrap();
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    for _ in 0..40 {
        send(&client, get(addr, "x", "/")).await?;
    }
    // Three 500s in a row eject it; the TCP check still passes.
    assert_eq!(bad.requests(), 3, "ejected after max_fails failures");
    let bad_backend = pool.members().backends[1].clone();
    assert_eq!(bad_backend.health.ejection(), weir::upstream::Ejection::Backoff);
    assert!(bad_backend.health.checked_up(), "active checks still pass");
    // After the backoff a passing check readmits it.
    let back = time_until("readmitted after the backoff", || bad_backend.is_healthy()).await?;
    println!("readmitted after {back:?} (fail_timeout 500ms, then the next passing check)");
    for _ in 0..10 {
        send(&client, get(addr, "x", "/")).await?;
    }
    assert!(bad.requests() > 3, "back in rotation");
    weir.shutdown().await;
    Ok(())
}

/// An exchange that takes a while: the payload goes out in 4 parts 2 ms
/// apart, then the echo is read to the end. Returns the echoed bytes.
async fn slow_exchange(addr: std::net::SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(STEP, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        for part in payload.chunks(payload.len().div_ceil(4)) {
            stream.write_all(part).await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stream.shutdown().await?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await?;
        // Drop the greeting line (the backend's name).
        let body = got.iter().position(|&c| c == b'\n').map_or(Vec::new(), |i| got[i + 1..].to_vec());
        anyhow::Ok(body)
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_under_load_costs_at_most_its_requests_in_flight() -> Result<()> {
    let (a, mut b, c) =
        (EchoBackend::start("a").await?, EchoBackend::start("b").await?, EchoBackend::start("c").await?);
    let health = "{ plugin = \"builtin:check-tcp\", interval = \"100ms\", timeout = \"300ms\", rise = 1, fall = 1 }";
    let weir = start_weir(&l4_config(&[&a, &b, &c], health, "")).await?;
    let addr = weir.listener_addr("l").unwrap();
    let pool = &weir.pool("p").unwrap();
    let b_addr = b.addr.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, failed_after_ejection) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let ejected = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (stop, ok, failed, late, ejected) =
            (stop.clone(), ok.clone(), failed.clone(), failed_after_ejection.clone(), ejected.clone());
        clients.push(tokio::spawn(async move {
            let payload = format!("client {i} says hello").repeat(50);
            let deadline = Instant::now() + STEP;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let started_after_ejection = ejected.load(Ordering::SeqCst);
                match slow_exchange(addr, payload.as_bytes()).await {
                    Ok(echoed) if echoed == payload.as_bytes() => ok.fetch_add(1, Ordering::SeqCst),
                    _ if started_after_ejection => late.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    eventually("load running", || ok.load(Ordering::SeqCst) >= 1_000).await?;
    let b_stats = pool.members().backends[1].stats.clone();
    let in_flight = b_stats.active();
    b.stop().await;
    let in_flight = in_flight.max(b_stats.active());
    eventually("b ejected by its check", || !healthy(pool, &b_addr)).await?;
    ejected.store(true, Ordering::SeqCst);
    let at_ejection = ok.load(Ordering::SeqCst);
    eventually("more load after the ejection", || ok.load(Ordering::SeqCst) >= at_ejection + 1_000).await?;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await?;
    }
    let (ok, failed, late) =
        (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst), failed_after_ejection.load(Ordering::SeqCst));
    println!("{ok} exchanges completed, {failed} failed when b was killed ({in_flight} in flight on it), {late} after its ejection");
    assert_eq!(late, 0, "no failures once b was out of rotation");
    // Connections open on b when it died are cut; new ones to it between the
    // kill and the ejection fail to connect and are retried elsewhere.
    assert!(failed <= in_flight as u64, "{failed} failed, {in_flight} were in flight on b");
    assert!(in_flight > 0, "the exchanges are slow enough that some were in flight on b");
    weir.shutdown().await;
    Ok(())
}

/// A TLS server with a self-signed certificate for `localhost` that answers
/// every request with `HTTP/1.0 200 OK` and closes.
async fn tls_backend() -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![key.cert.der().clone()], der)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            conns.spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = [0u8; 1024];
                if tls.read(&mut buf).await.is_ok() {
                    let _ = tls.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello").await;
                    let _ = tls.shutdown().await;
                }
            });
            while conns.try_join_next().is_some() {}
        }
    });
    Ok((addr, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_probe_handshakes_and_checks_the_certificate_when_asked() -> Result<()> {
    let (tls_addr, server) = tls_backend().await?;
    let plain = EchoBackend::start("plain").await?;
    // Backends start down: only a passing probe brings one up.
    let text = |verify: bool| {
        format!(
            "[plugins.tls]\nsource = \"builtin:check-probe\"\n\
             config = {{ protocol = \"tls\", server_name = \"localhost\", verify = {verify}, send = \"GET / HTTP/1.0\\\\r\\\\n\\\\r\\\\n\", expect = \" 200 \" }}\n\n\
             [pools.p]\nbackends = [\"{tls_addr}\", \"{}\"]\n\
             health = {{ plugin = \"tls\", interval = \"100ms\", timeout = \"1s\", rise = 1, fall = 1, initial = \"down\" }}\n\n\
             [listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
            plain.addr
        )
    };
    let weir = start_weir(&text(false)).await?;
    let pool = &weir.pool("p").unwrap();
    let (tls_addr_s, plain_addr) = (tls_addr.to_string(), plain.addr.to_string());
    eventually("the TLS backend up", || healthy(pool, &tls_addr_s)).await?;
    // The plain backend cannot handshake: it stays down, with the reason.
    eventually("the plain backend's probe failed", || !pool.members().backends[1].health.last_failure().is_empty())
        .await?;
    assert!(!healthy(pool, &plain_addr));
    let reason = pool.members().backends[1].health.last_failure();
    assert!(reason.contains("TLS"), "{reason}");
    weir.shutdown().await;

    // Verifying, the self-signed certificate is refused.
    let weir = start_weir(&text(true)).await?;
    let pool = &weir.pool("p").unwrap();
    eventually("the TLS probe failed", || !pool.members().backends[0].health.last_failure().is_empty()).await?;
    assert!(!healthy(pool, &tls_addr_s));
    let reason = pool.members().backends[0].health.last_failure();
    assert!(reason.contains("certificate") || reason.contains("UnknownIssuer"), "{reason}");
    weir.shutdown().await;
    server.abort();
    Ok(())
}
