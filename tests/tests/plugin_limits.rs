//! Plugins that trap, loop forever or grow memory without bound are
//! contained: the connection gets the configured fallback within the call
//! deadline, the failure is counted, and the proxy keeps serving.

use anyhow::{Context, Result};
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

/// One HTTP/1.1 GET on a kept-alive connection: the status, the
/// `retry-after` value and the body.
async fn get(stream: &mut tokio::net::TcpStream) -> Result<(u16, Option<String>, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
        let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
        let length: usize = header("content-length:").map(|v| v.parse()).transpose()?.unwrap_or(0);
        if got.len() < end + 4 + length {
            continue;
        }
        let status = head.get(9..12).unwrap_or("").parse()?;
        let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]).into_owned();
        return Ok((status, header("retry-after:"), body));
    }
}

/// A load client on a kept-alive connection, made again when weir sheds it
/// at accept.
struct Client {
    addr: String,
    stream: Option<tokio::net::TcpStream>,
}

impl Client {
    /// One GET: its answer, or `None` when the connection was shed at accept
    /// (weir's 503 without a body, written as it closes the connection; or,
    /// when the close outran the request, the reset or close of a connection
    /// that never answered).
    async fn get(&mut self) -> Result<Option<(u16, Option<String>, String)>> {
        let fresh = self.stream.is_none();
        let stream = match &mut self.stream {
            Some(s) => s,
            None => self.stream.insert(tokio::net::TcpStream::connect(&self.addr).await?),
        };
        match get(stream).await {
            Ok((503, Some(retry), body)) if body.is_empty() && retry == "1" => {
                self.stream = None;
                Ok(None)
            }
            Ok(answer) => Ok(Some(answer)),
            Err(e) if fresh && closed_unanswered(&e) => {
                self.stream = None;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// A connection reset, a broken pipe or a close before any byte of an answer.
fn closed_unanswered(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    let io = e.downcast_ref::<std::io::Error>().is_some_and(|e| matches!(e.kind(), ConnectionReset | BrokenPipe));
    io || e.to_string() == "closed after 0 bytes"
}

/// GET `path` of the admin API: its JSON, or its text as a JSON string.
fn admin_get(admin: &str, path: &str) -> Result<serde_json::Value> {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://{admin}{path}")])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// POST a config text to the admin API's `/reload`.
fn reload(admin: &str, config: &str) -> Result<()> {
    let out = std::process::Command::new("curl")
        .args(["-s", "-f", "--max-time", "20", "--data-binary", "@-", &format!("http://{admin}/reload")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(config.as_bytes())?;
            c.wait_with_output()
        })?;
    anyhow::ensure!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_far_beyond_capacity_is_shed_early_and_admitted_requests_stay_fast() -> Result<()> {
    let web = weir_tests::web::HttpBackend::start("web").await?;
    // Every pick spins until its 20 ms deadline and falls back to
    // round-robin: one loop serves about 40 requests a second.
    let config = |shed: &str| {
        format!(
            "[runtime]\nworkers = 1\n{shed}\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
             [plugins.slow]\nsource = \"{path}\"\nconfig = {{ mode = \"spin\" }}\ntimeout = \"20ms\"\n\n\
             [pools.web]\nbalancer = \"slow\"\nbackends = [\"{web}\"]\n\n\
             [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"web\"\n",
            path = component("weir-test-misbehave").display(),
            web = web.addr,
        )
    };
    let weir = WeirProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_weir-under-test")),
        "shed",
        &config("shed_loop_lag = \"50ms\""),
    )?;
    let admin = weir.logged_address("admin API listening")?;
    let addr = weir.logged_address("listener=web")?;

    // 100 clients on kept-alive connections, each sending its next request
    // as soon as the last is answered, for 3 s: about 40 times what the
    // loop can serve.
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let addr = addr.clone();
        clients.spawn(async move {
            let mut client = Client { addr, stream: None };
            let (mut served, mut shed) = (Vec::new(), 0u32);
            while started.elapsed() < Duration::from_secs(3) {
                let sent = Instant::now();
                match client.get().await? {
                    None => shed += 1,
                    Some((200, _, _)) => served.push(sent.elapsed()),
                    Some((503, retry_after, body)) => {
                        anyhow::ensure!(retry_after.as_deref() == Some("1"), "503 without retry-after");
                        anyhow::ensure!(body.contains("overloaded (loop lag)"), "{body}");
                        shed += 1;
                    }
                    Some((other, _, body)) => anyhow::bail!("status {other}: {body}"),
                }
            }
            Ok::<_, anyhow::Error>((served, shed))
        });
    }
    let (mut served, mut shed) = (Vec::new(), 0);
    while let Some(client) = clients.join_next().await {
        let (s, n) = client??;
        served.extend(s);
        shed += n;
    }
    served.sort();
    let p99 = served[served.len() * 99 / 100];
    println!("served {}, shed {shed}, p99 of the served {p99:?}", served.len());
    assert!(served.len() >= 20, "the loop kept serving: {}", served.len());
    assert!(shed > served.len() as u32, "most of the load was shed: {shed}");
    // Unshed, 100 requests queued ahead of each at 20 ms apiece would wait
    // about 2 s.
    assert!(p99 < Duration::from_millis(800), "p99 {p99:?}");
    let rss = weir.peak_rss_kib()?;
    assert!(rss < 256 << 10, "peak RSS {rss} KiB");

    // The count and the gauge say why; with the load gone, requests pass.
    let about = admin_get(&admin, "/")?;
    assert!(about["overload"]["shed"]["loop_lag"].as_u64() >= Some(shed as u64), "{about}");
    let mut passed = false;
    for _ in 0..100 {
        let mut client = Client { addr: addr.clone(), stream: None };
        if client.get().await?.is_some_and(|a| a.0 == 200) {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(passed, "requests pass once the load is gone");
    let metrics = admin_get(&admin, "/metrics")?.as_str().unwrap_or_default().to_string();
    assert!(metrics.contains("weir_shed_total{reason=\"loop_lag\"}"), "{metrics}");
    assert!(metrics.contains("weir_event_loop_lag_seconds"), "{metrics}");

    // A memory ceiling under what the process holds: new connections get a
    // 503 at accept, requests on open ones a 503; lifted by a reload.
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    assert_eq!(get(&mut stream).await?.0, 200);
    reload(&admin, &config("shed_memory = \"1MiB\""))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        let answer = get(&mut stream).await?;
        if answer.0 == 503 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(answer.0, 503, "{answer:?}");
    assert!(answer.2.contains("overloaded (memory)"), "{answer:?}");
    let at_accept = read_all_after(&addr, b"").await?;
    assert!(at_accept.starts_with("HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n"), "{at_accept}");
    reload(&admin, &config(""))?;
    let mut fresh = tokio::net::TcpStream::connect(&addr).await?;
    assert_eq!(get(&mut fresh).await?.0, 200);

    // Plugin calls averaging over their budget: shed for that reason.
    reload(&admin, &config("shed_plugin_time = \"5ms\""))?;
    let mut reason = None;
    for _ in 0..300 {
        let (status, _, body) = get(&mut fresh).await?;
        if status == 503 {
            reason = Some(body);
            break;
        }
    }
    let reason = reason.context("no request was shed for plugin time")?;
    assert!(reason.contains("overloaded (plugin time)"), "{reason}");
    let about = admin_get(&admin, "/")?;
    assert!(about["overload"]["plugin_call_mean_us"].as_f64() > Some(5000.0), "{about}");
    Ok(())
}

/// Connect, send `request`, and read until the server closes.
async fn read_all_after(addr: &str, request: &[u8]) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.write_all(request).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await?;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// A call that panics reports the trap, where it stopped, and the panic's
/// message (the SDK's panic hook sends it to the host before the trap),
/// not wasmtime's bare `error while executing at wasm backtrace:`.
#[test]
fn a_panic_reaches_the_call_error_with_its_message() -> Result<()> {
    let runtime = runtime();
    let bytes = std::fs::read(component("weir-test-misbehave"))?;
    let spec = weir::plugin::PluginSpec {
        name: "panics".into(),
        source: "misbehave".into(),
        world: weir::plugin::World::Balancer,
        config_json: r#"{"mode": "trap"}"#.into(),
        limits: weir::plugin::Limits::default(),
        fallback: weir::config::Fallback::FailOpen,
        grants: weir::plugin::Grants::default(),
    };
    let instance = runtime.load(spec, &bytes)?;
    let err = weir::devkit::testkit::smoke(&instance).unwrap_err();
    assert!(err.starts_with("Trap: wasm `unreachable` instruction executed"), "{err}");
    assert!(err.contains(": the plugin panicked at tests/plugins/misbehave/src/lib.rs:"), "{err}");
    assert!(err.ends_with("misbehave: trap"), "{err}");
    assert_eq!(instance.stats().traps.load(Ordering::Relaxed), 1);
    Ok(())
}
