//! The bundled balancers through weir with real backends: distributions,
//! smoothness, load awareness and key affinity.

use anyhow::Result;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use weir_tests::web::*;
use weir_tests::*;

fn config(balancer: &str, backends: &[(&HttpBackend, u32)], pool_extra: &str) -> String {
    let list: Vec<String> =
        backends.iter().map(|(b, w)| format!("{{ address = \"{}\", weight = {w} }}", b.addr)).collect();
    format!(
        "[pools.p]\nbalancer = \"{balancer}\"\nbackends = [{}]\n{pool_extra}\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_is_exact_and_smooth() -> Result<()> {
    let (a, b, c) = (HttpBackend::start("a").await?, HttpBackend::start("b").await?, HttpBackend::start("c").await?);
    let weir = start_weir(&config("builtin:weighted-round-robin", &[(&a, 1), (&b, 2), (&c, 3)], "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    let mut order = Vec::new();
    for _ in 0..6_000 {
        order.push(send(&client, get(addr, "x", "/")).await?.header("x-backend").to_string());
    }
    let mut counts = HashMap::<&str, usize>::new();
    for name in &order {
        *counts.entry(name).or_default() += 1;
    }
    // Sequential requests follow the schedule exactly: 1000, 2000, 3000.
    assert_eq!(counts, HashMap::from([("a", 1000), ("b", 2000), ("c", 3000)]));
    let weight = |n: &str| match n {
        "a" => 1,
        "b" => 2,
        _ => 3,
    };
    let mut run = 1;
    for w in order.windows(2) {
        run = if w[0] == w[1] { run + 1 } else { 1 };
        assert!(run <= weight(&w[1]), "{run} requests in a row to {}", w[1]);
    }
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_round_robin_takes_strict_turns_and_only_it_is_native() -> Result<()> {
    let (a, b, c) = (HttpBackend::start("a").await?, HttpBackend::start("b").await?, HttpBackend::start("c").await?);
    let weir = start_weir(&config("native:round-robin", &[(&a, 1), (&b, 1), (&c, 1)], "")).await?;
    assert_eq!(weir.pool("p").unwrap().balancer.name(), "native:round-robin");
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    let mut order = Vec::new();
    for _ in 0..300 {
        order.push(send(&client, get(addr, "x", "/")).await?.header("x-backend").to_string());
    }
    // Strict turns: every window of three holds each backend once.
    assert!(
        order.chunks(3).all(|w| {
            let mut w = w.to_vec();
            w.sort();
            w == ["a", "b", "c"]
        }),
        "{order:?}"
    );
    weir.shutdown().await;

    let err = start_weir(&config("native:least-connections", &[(&a, 1)], "")).await.err().expect("refused");
    assert!(format!("{err:#}").contains("pools.p.balancer: no native balancer `native:least-connections`"), "{err:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_a_slow_backend() -> Result<()> {
    let (fast1, fast2, slow) =
        (HttpBackend::start("fast1").await?, HttpBackend::start("fast2").await?, HttpBackend::slow("slow", 200).await?);
    let weir = start_weir(&config("builtin:least-connections", &[(&fast1, 1), (&fast2, 1), (&slow, 1)], "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = HashMap::<String, usize>::new();
            while started.elapsed() < Duration::from_secs(2) {
                let got = send(&client, get(addr, "x", "/")).await?;
                *seen.entry(got.header("x-backend").to_string()).or_default() += 1;
            }
            anyhow::Ok(seen)
        }));
    }
    let mut seen = HashMap::<String, usize>::new();
    for t in tasks {
        for (k, v) in t.await?? {
            *seen.entry(k).or_default() += v;
        }
    }
    let (f1, f2, s) = (seen["fast1"], seen["fast2"], seen.get("slow").copied().unwrap_or(0));
    eprintln!(
        "least-connections: fast1 {f1}, fast2 {f2}, slow {s} (fast/slow {:.0}x)",
        (f1 + f2) as f64 / 2.0 / s.max(1) as f64
    );
    assert!(s * 20 < f1.min(f2), "slow backend got {s}, fast ones {f1} and {f2}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_remaps_only_the_lost_backends_keys() -> Result<()> {
    let mut backends = Vec::new();
    for i in 0..10 {
        backends.push(HttpBackend::start(&format!("b{i}")).await?);
    }
    let list: Vec<(&HttpBackend, u32)> = backends.iter().map(|b| (b, 1)).collect();
    let weir = start_weir(&config("builtin:consistent-hash", &list, "hash_key = \"header:x-user\"")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    let keys = 2_000;
    let map = |client: hyper_util::client::legacy::Client<_, TestBody>| async move {
        let mut out = Vec::new();
        for k in 0..keys {
            let mut req = get(addr, "x", "/");
            req.headers_mut().insert("x-user", format!("user-{k}").parse()?);
            out.push(send(&client, req).await?.header("x-backend").to_string());
        }
        anyhow::Ok(out)
    };
    let before = map(client.clone()).await?;
    let pool = &weir.pool("p").unwrap();
    pool.set_up(4, false);
    let during = map(client.clone()).await?;
    pool.set_up(4, true);
    let after = map(client.clone()).await?;
    let moved = before.iter().zip(&during).filter(|(a, b)| a != b).count();
    eprintln!("consistent-hash: {moved} of {keys} keys moved when one of 10 backends left");
    assert!(moved * 100 <= keys * 15, "{moved} of {keys} keys moved");
    assert!(before.iter().zip(&during).all(|(a, b)| a == b || a == "b4"), "only b4's keys moved");
    assert!(!during.contains(&"b4".to_string()));
    assert_eq!(before, after, "bringing it back restores the mapping");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_and_consistent_hash_keep_a_client_on_one_backend_over_l4() -> Result<()> {
    let (a, b, c) = (EchoBackend::start("a").await?, EchoBackend::start("b").await?, EchoBackend::start("c").await?);
    for balancer in ["builtin:ip-hash", "chash"] {
        let text = format!(
            "[plugins.chash]\nsource = \"builtin:consistent-hash\"\nconfig = {{ key = \"client-ip\" }}\n\n\
             [pools.p]\nbalancer = \"{balancer}\"\nbackends = {}\n\n[listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
            addresses(&[&a, &b, &c])
        );
        let weir = start_weir(&text).await?;
        let addr = weir.listener_addr("l").unwrap();
        let mut seen = HashMap::<String, usize>::new();
        for _ in 0..100 {
            *seen.entry(exchange(addr, b"x").await?.0).or_default() += 1;
        }
        assert_eq!(seen.len(), 1, "{balancer}: {seen:?}");
        weir.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_power_of_two_choices_use_every_backend() -> Result<()> {
    let (a, b, c) = (HttpBackend::start("a").await?, HttpBackend::start("b").await?, HttpBackend::start("c").await?);
    for balancer in ["builtin:random", "builtin:power-of-two-choices"] {
        let weir = start_weir(&config(balancer, &[(&a, 1), (&b, 1), (&c, 1)], "")).await?;
        let addr = weir.listener_addr("web").unwrap();
        let client = client_h1();
        let mut seen = HashMap::<String, usize>::new();
        for _ in 0..3_000 {
            *seen.entry(send(&client, get(addr, "x", "/")).await?.header("x-backend").to_string()).or_default() += 1;
        }
        for name in ["a", "b", "c"] {
            let n = seen.get(name).copied().unwrap_or(0);
            assert!((800..1_200).contains(&n), "{balancer}: {seen:?}");
        }
        weir.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_latency_avoids_a_backend_20ms_slower() -> Result<()> {
    let (f1, f2, slow) =
        (HttpBackend::start("f1").await?, HttpBackend::start("f2").await?, HttpBackend::slow("slow", 20).await?);
    let weir = start_weir(&config("builtin:least-latency", &[(&f1, 1), (&f2, 1), (&slow, 1)], "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    for _ in 0..20 {
        send(&client, get(addr, "x", "/")).await?; // warm-up: every backend gets measured
    }
    let before = slow.requests();
    for _ in 0..500 {
        send(&client, get(addr, "x", "/")).await?;
    }
    let got = slow.requests() - before;
    eprintln!("least-latency: slow backend got {got} of 500 requests after warm-up");
    assert!(got * 10 < 500, "slow backend got {got} of 500");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_fails_over_within_one_health_interval_and_back() -> Result<()> {
    let (mut a, mut b, c) =
        (EchoBackend::start("a").await?, EchoBackend::start("b").await?, EchoBackend::start("c").await?);
    // Passive health off (max_fails = 0): only the active checks decide.
    let interval = Duration::from_millis(300);
    let text = format!(
        "[plugins.failover]\nsource = \"builtin:priority\"\n\n[pools.p]\nbalancer = \"failover\"\nmax_fails = 0\n\
         health = {{ plugin = \"builtin:check-tcp\", interval = \"{}ms\", timeout = \"200ms\", rise = 1, fall = 1 }}\n\
         backends = [{{ address = \"{}\", priority = 0 }}, {{ address = \"{}\", priority = 0 }}, {{ address = \"{}\", priority = 1 }}]\n\n\
         [listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        interval.as_millis(),
        a.addr,
        b.addr,
        c.addr
    );
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("l").unwrap();
    let tally = |n: usize| async move {
        let mut seen = HashMap::<String, usize>::new();
        for _ in 0..n {
            *seen.entry(exchange(addr, b"x").await?.0).or_default() += 1;
        }
        anyhow::Ok(seen)
    };
    assert_eq!(tally(20).await?, HashMap::from([("a".into(), 10), ("b".into(), 10)]));
    a.stop().await;
    b.stop().await;
    let pool = &weir.pool("p").unwrap();
    let started = Instant::now();
    eventually("first group down", || {
        !pool.members().backends[0].is_healthy() && !pool.members().backends[1].is_healthy()
    })
    .await?;
    let moved = started.elapsed();
    println!("traffic moved to the second group {moved:?} after the first went down (interval {interval:?})");
    // One interval, plus the scheduling slack of a loaded 2-core machine.
    assert!(moved <= interval + Duration::from_millis(300), "{moved:?}");
    assert_eq!(tally(20).await?, HashMap::from([("c".into(), 20)]), "all traffic on the second group");
    a.restart().await?;
    b.restart().await?;
    let started = Instant::now();
    eventually("first group back in rotation", || {
        pool.members().backends[0].is_healthy() && pool.members().backends[1].is_healthy()
    })
    .await?;
    let back = started.elapsed();
    println!("back on the first group after {back:?}");
    assert!(back <= interval + Duration::from_millis(300), "{back:?}");
    let seen = tally(20).await?;
    assert!(!seen.contains_key("c") && seen.len() == 2, "{seen:?}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_backends_only_in_panic_mode() -> Result<()> {
    let a = HttpBackend::start("a").await?;
    for (panic, want) in [(false, http::StatusCode::SERVICE_UNAVAILABLE), (true, http::StatusCode::OK)] {
        let weir = start_weir(&config("builtin:round-robin", &[(&a, 1)], &format!("panic = {panic}"))).await?;
        weir.pool("p").unwrap().set_up(0, false);
        let got = send(&client_h1(), get(weir.listener_addr("web").unwrap(), "x", "/")).await?;
        assert_eq!(got.status, want, "panic = {panic}");
        weir.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_pins_a_client_and_survives_its_backend_leaving() -> Result<()> {
    let (a, b, c) = (HttpBackend::start("a").await?, HttpBackend::start("b").await?, HttpBackend::start("c").await?);
    let text = config("sticky", &[(&a, 1), (&b, 1), (&c, 1)], "").replace(
        "[pools.p]",
        "[plugins.sticky]\nsource = \"builtin:sticky\"\nconfig = { cookie = \"srv\", inner = \"round-robin\", max_age = 300 }\n\n[pools.p]",
    );
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    // New clients are spread by the inner round-robin and each gets a cookie.
    let mut cookies = HashMap::new();
    for _ in 0..3 {
        let got = send(&client, get(addr, "x", "/")).await?;
        let set = got.header("set-cookie").to_string();
        assert!(set.starts_with("srv=") && set.contains("Max-Age=300"), "{set:?}");
        let value = set.split(';').next().unwrap().to_string();
        cookies.insert(got.header("x-backend").to_string(), value);
    }
    assert_eq!(cookies.len(), 3, "three new clients, three backends: {cookies:?}");
    // A client with a cookie stays on its backend for 100 requests, and is
    // not sent a new cookie.
    for (backend, cookie) in &cookies {
        for _ in 0..100 {
            let mut req = get(addr, "x", "/");
            req.headers_mut().insert("cookie", format!("lang=en; {cookie}").parse()?);
            let got = send(&client, req).await?;
            assert_eq!(got.header("x-backend"), backend);
            assert_eq!(got.header("set-cookie"), "");
        }
    }
    // Its backend out of rotation: balanced elsewhere and given a new cookie.
    let pool = &weir.pool("p").unwrap();
    let slot = pool.members().backends.iter().find(|m| m.address == b.addr.to_string()).unwrap().slot;
    pool.set_up(slot, false);
    let mut req = get(addr, "x", "/");
    req.headers_mut().insert("cookie", cookies["b"].parse()?);
    let got = send(&client, req).await?;
    assert_ne!(got.header("x-backend"), "b");
    assert!(got.header("set-cookie").starts_with("srv="), "a new cookie for the new backend");
    assert_ne!(got.header("set-cookie").split(';').next().unwrap(), cookies["b"]);
    // A forged cookie is simply balanced.
    let mut req = get(addr, "x", "/");
    req.headers_mut().insert("cookie", "srv=zzzz".parse()?);
    assert!(send(&client, req).await?.header("set-cookie").starts_with("srv="));
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_bandwidth_avoids_the_backend_moving_the_most_bytes() -> Result<()> {
    use http_body_util::BodyExt;
    let (a, b) = (HttpBackend::start("a").await?, HttpBackend::start("b").await?);
    let weir = start_weir(&config("builtin:least-bandwidth", &[(&a, 1), (&b, 1)], "")).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    // A long download, read at a bounded pace, keeps one backend busy.
    let resp = tokio::time::timeout(STEP, client.request(get(addr, "x", "/generate/4000000000"))).await??;
    let busy = resp.headers()["x-backend"].to_str()?.to_string();
    let reading = tokio::spawn(async move {
        let mut body = resp.into_body();
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if body.frame().await.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    });
    // The host averages bytes/s every second: wait until it has seen them.
    let pool = &weir.pool("p").unwrap();
    eventually("busy backend's rate measured", || {
        pool.members().backends.iter().any(|m| m.stats.bytes_per_sec() > 1_000_000)
    })
    .await?;
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..50 {
        *seen.entry(send(&client, get(addr, "x", "/")).await?.header("x-backend").to_string()).or_default() += 1;
    }
    let rates: Vec<u64> = pool.members().backends.iter().map(|m| m.stats.bytes_per_sec()).collect();
    println!("busy backend {busy}; bytes/s {rates:?}; small requests {seen:?}");
    assert_eq!(seen.get(&busy), None, "the busy backend got small requests: {seen:?}");
    reading.abort();
    weir.shutdown().await;
    Ok(())
}

#[test]
fn host_client_hash_is_the_sdks_hash64() {
    for addr in ["10.9.8.7", "127.0.0.1", "::1", "2001:db8::42"] {
        let ip: std::net::IpAddr = addr.parse().unwrap();
        let wit = weir::plugin::bindings::socket_address(std::net::SocketAddr::new(ip, 1)).ip;
        let bytes = match ip {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        assert_eq!(weir::plugin::client_hash(&wit), weir_sdk::hash64(&bytes), "{addr}");
    }
}

#[test]
fn sdk_scans_agree_with_the_plain_loop_in_wasm() -> Result<()> {
    use weir::plugin::{Limits, PluginSpec, Runtime, World};
    let spec = PluginSpec {
        name: "scan-check".into(),
        source: "scan-check".into(),
        world: World::Balancer,
        config_json: "{}".into(),
        limits: Limits { init_timeout: Duration::from_secs(60), ..Limits::default() },
        fallback: weir::config::Fallback::FailClosed,
        grants: Default::default(),
    };
    let bytes = std::fs::read(component("weir-test-scan-check"))?;
    // `init` compares every scan (SIMD in Wasm) with the plain loop and
    // refuses its config on the first mismatch.
    Runtime::new(None)?.load(spec, &bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
