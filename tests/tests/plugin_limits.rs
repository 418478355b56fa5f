//! Plugins that trap, loop forever or grow memory without bound are
//! contained: the connection gets the configured fallback within the call
//! deadline, the failure is counted, and the proxy keeps serving.

use anyhow::Result;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use weir::plugin::PluginStats;
use weir_tests::*;

fn config(backends: &str, mode: &str, every: u32, fallback: &str) -> String {
    format!(
        r#"
[plugins.bad]
source = "{path}"
config = {{ mode = "{mode}", every = {every} }}
timeout = "50ms"
memory_limit = "8MiB"
fallback = "{fallback}"

[pools.p]
balancer = "bad"
backends = {backends}

[listeners.l]
bind = "127.0.0.1:0"
pool = "p"
"#,
        path = component("weir-test-misbehave").display()
    )
}

fn failures(stats: &PluginStats, mode: &str) -> u64 {
    match mode {
        "trap" => stats.traps.load(Ordering::Relaxed),
        "spin" => stats.timeouts.load(Ordering::Relaxed),
        _ => stats.memory_exceeded.load(Ordering::Relaxed),
    }
}

async fn contained(mode: &str) -> Result<()> {
    let (a, b) = (EchoBackend::start("a").await?, EchoBackend::start("b").await?);
    // Misbehave on calls 0, 3, 6, ...; otherwise pick the last backend ("b").
    let weir = start_weir(&config(&addresses(&[&a, &b]), mode, 3, "fail-open")).await?;
    let addr = weir.listener_addr("l").unwrap();
    let plugin = weir.plugin("bad").unwrap();
    let stats = plugin.stats();

    let mut names = Vec::new();
    for i in 0..9 {
        let started = Instant::now();
        let (name, echoed) = exchange(addr, b"ping").await?;
        let took = started.elapsed();
        assert_eq!(echoed, b"ping", "{mode}: connection {i} was served");
        assert!(took < Duration::from_secs(2), "{mode}: connection {i} took {took:?}");
        names.push(name);
    }
    assert_eq!(failures(stats, mode), 3, "{mode}: every misbehaving call counted");
    assert_eq!(stats.recycled(), 3, "{mode}: nothing else failed");
    // Well-behaved calls were answered by the plugin (always "b"); only the
    // failed ones fell back to the host's native round-robin.
    for (i, name) in names.iter().enumerate() {
        if i % 3 != 0 {
            assert_eq!(name, "b", "{mode}: call {i} answered by the plugin");
        }
    }
    // Each failure recycled its instance; replacements were made.
    assert!(stats.instances_created.load(Ordering::Relaxed) >= 4, "{mode}: instances recycled");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_plugin_is_contained() -> Result<()> {
    contained("trap").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_plugin_is_interrupted_at_its_deadline() -> Result<()> {
    contained("spin").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_stopped_at_its_limit() -> Result<()> {
    contained("hog").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_is_the_configured_timeout() -> Result<()> {
    let a = EchoBackend::start("a").await?;
    let weir = start_weir(&config(&addresses(&[&a]), "spin", 1, "fail-open")).await?;
    let addr = weir.listener_addr("l").unwrap();
    let started = Instant::now();
    exchange(addr, b"x").await?;
    let took = started.elapsed();
    // 50 ms of CPU time, measured in 1 ms epochs, plus connection set-up.
    assert!(took >= Duration::from_millis(45) && took < Duration::from_millis(1000), "took {took:?}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_without_touching_a_backend() -> Result<()> {
    let a = EchoBackend::start("a").await?;
    let weir = start_weir(&config(&addresses(&[&a]), "trap", 1, "fail-closed")).await?;
    let addr = weir.listener_addr("l").unwrap();
    for _ in 0..3 {
        assert!(read_all(addr).await?.is_empty());
    }
    assert_eq!(a.accepted(), 0);
    assert_eq!(weir.plugin("bad").unwrap().stats().traps.load(Ordering::Relaxed), 3);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_in_init_is_refused_at_load() -> Result<()> {
    let a = EchoBackend::start("a").await?;
    let err = match start_weir(&config(&addresses(&[&a]), "init-trap", 1, "fail-open")).await {
        Ok(_) => panic!("a plugin trapping in init was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with("test.toml:2:1: plugins.bad:") || err.contains("plugins.bad"), "{err}");
    assert!(err.contains("init failed"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_running_past_init_timeout_is_refused_at_load() -> Result<()> {
    let a = EchoBackend::start("a").await?;
    let text = config(&addresses(&[&a]), "init-spin", 1, "fail-open")
        .replace("timeout = \"50ms\"", "init_timeout = \"300ms\"");
    let started = std::time::Instant::now();
    let err = match start_weir(&text).await {
        Ok(_) => panic!("a plugin looping in init was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("plugins.bad") && err.contains("init_timeout (300ms)"), "{err}");
    // Interrupted at its own deadline, not the 5 s default.
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "{:?}", started.elapsed());
    Ok(())
}
