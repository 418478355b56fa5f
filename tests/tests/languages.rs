//! Plugins written in Python (componentize-py), JavaScript (componentize-js)
//! and C (clang, wasi-libc, wasm-tools), built from `examples/plugins/*` by
//! the test itself (`weir_tests::lang`), loaded by weir and carrying real
//! traffic; the region balancers make the same choices as their Rust twin.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir::config::Fallback;
use weir::plugin::bindings::types;
use weir::plugin::{Limits, PluginSpec, World};
use weir::upstream::{BackendSpec, Pool, PoolSettings};

/// Every failed call of a plugin: a failing balancer would be hidden by its
/// fail-open fallback (the host's round-robin).
fn failures(p: &weir::plugin::PluginInstance) -> [u64; 5] {
    use std::sync::atomic::Ordering::Relaxed;
    let s = p.stats();
    [
        s.errors.load(Relaxed),
        s.traps.load(Relaxed),
        s.timeouts.load(Relaxed),
        s.memory_exceeded.load(Relaxed),
        s.bad_answers.load(Relaxed),
    ]
}
use weir_tests::web::*;
use weir_tests::*;

/// Interpreted components need more linear memory than the 32 MiB default,
/// and a first call on a fresh instance of them may take longer than the
/// 100 ms default on this loaded 2-core machine.
const LIMITS: &str = "memory_limit = \"128MiB\"\ntimeout = \"1s\"";

fn python_balancer() -> Result<PathBuf> {
    lang::python("region-balancer", "balancer")
}

fn js_balancer() -> Result<PathBuf> {
    lang::js("region-balancer", "balancer")
}

fn c_balancer() -> Result<PathBuf> {
    lang::c("region-balancer", "balancer")
}

fn rust_balancer() -> PathBuf {
    component("weir-example-region-balancer")
}

/// A pool `p` of tagged backends balanced by the component at `source`, with
/// the `x-region` header as the balancer's hash key, behind listener `web`.
fn region_config(source: &std::path::Path, backends: &[(&HttpBackend, &str)]) -> String {
    let list: Vec<String> =
        backends.iter().map(|(b, tag)| format!("{{ address = \"{}\", tags = [\"{tag}\"] }}", b.addr)).collect();
    format!(
        "[plugins.region]\nsource = \"{}\"\n{LIMITS}\n\n\
         [pools.p]\nbalancer = \"region\"\nhash_key = \"header:x-region\"\nbackends = [{}]\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n",
        source.display(),
        list.join(", ")
    )
}

fn with_region(mut req: http::Request<TestBody>, region: Option<&str>) -> http::Request<TestBody> {
    if let Some(r) = region {
        req.headers_mut().insert("x-region", r.parse().unwrap());
    }
    req
}

async fn counts(
    addr: std::net::SocketAddr,
    region: Option<&str>,
    path: &str,
    n: usize,
) -> Result<BTreeMap<String, usize>> {
    let client = client_h1();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let got = send(&client, with_region(get(addr, "x", path), region)).await?;
        assert_eq!(got.status, 200);
        *seen.entry(got.header("x-backend").to_string()).or_default() += 1;
    }
    Ok(seen)
}

/// Start a slow request (`/sleep/<ms>`) and wait until a backend holds it.
async fn hold(
    addr: std::net::SocketAddr,
    region: &str,
    backends: &[&HttpBackend],
) -> Result<tokio::task::JoinHandle<Result<String>>> {
    let before: u64 = backends.iter().map(|b| b.requests()).sum();
    let region = region.to_string();
    let task = tokio::spawn(async move {
        let got = send(&client_h1(), with_region(get(addr, "x", "/sleep/1500"), Some(&region))).await?;
        Ok(got.header("x-backend").to_string())
    });
    eventually("the slow request to reach a backend", || backends.iter().map(|b| b.requests()).sum::<u64>() > before)
        .await?;
    Ok(task)
}

/// What every region balancer must do with real requests: keep a region's
/// requests on its backends (least-loaded among them), spread requests for
/// an unknown region over every backend, least-loaded first.
async fn region_balancer_carries_traffic(source: PathBuf) -> Result<()> {
    let (eu1, eu2, us1) =
        (HttpBackend::start("eu1").await?, HttpBackend::start("eu2").await?, HttpBackend::start("us1").await?);
    let text = region_config(&source, &[(&eu1, "region=eu"), (&eu2, "region=eu"), (&us1, "region=us")]);
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let all = [&eu1, &eu2, &us1];

    // eu requests stay on the eu backends, shared between them.
    let eu = counts(addr, Some("eu"), "/", 200).await?;
    let balancer = weir.pool("p").unwrap().balancer.plugin().unwrap().clone();
    assert_eq!(failures(&balancer), [0; 5], "errors, traps, timeouts, memory, bad answers");
    assert_eq!(eu.keys().collect::<Vec<_>>(), ["eu1", "eu2"], "{eu:?}");
    assert!(eu.values().all(|&n| n >= 80), "eu requests not shared: {eu:?}");
    // us requests all go to the one us backend.
    assert_eq!(counts(addr, Some("us"), "/", 100).await?, BTreeMap::from([("us1".to_string(), 100)]));
    // No backend in that region (or no region at all): spread over all three.
    for region in [Some("mars"), None] {
        let spread = counts(addr, region, "/", 300).await?;
        assert_eq!(spread.len(), 3, "{region:?}: {spread:?}");
        assert!(spread.values().all(|&n| (80..=120).contains(&n)), "{region:?}: {spread:?}");
    }

    // Least-loaded within the region: with a slow eu request in flight,
    // eu requests go to the other eu backend, never to us1.
    let slow = hold(addr, "eu", &all).await?;
    let during = counts(addr, Some("eu"), "/", 20).await?;
    let busy = slow.await??;
    assert!(busy.starts_with("eu"), "{busy}");
    assert_eq!(during.len(), 1, "{during:?}");
    let (other, n) = during.iter().next().unwrap();
    assert!(other.starts_with("eu") && *other != busy && *n == 20, "busy {busy}, during {during:?}");

    // Least-loaded over all: two slow requests for an unknown region take
    // two backends; the next ones all go to the third.
    let slow = [hold(addr, "mars", &all).await?, hold(addr, "mars", &all).await?];
    let during = counts(addr, Some("mars"), "/", 20).await?;
    let mut busy = Vec::new();
    for s in slow {
        busy.push(s.await??);
    }
    busy.sort();
    busy.dedup();
    assert_eq!(busy.len(), 2, "{busy:?}");
    assert_eq!(during.len(), 1, "{during:?}");
    assert!(!busy.contains(during.keys().next().unwrap()), "busy {busy:?}, during {during:?}");

    assert_eq!(
        failures(weir.pool("p").unwrap().balancer.plugin().unwrap()),
        [0; 5],
        "errors, traps, timeouts, memory, bad answers"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_region_balancer_carries_traffic() -> Result<()> {
    region_balancer_carries_traffic(python_balancer()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_region_balancer_carries_traffic() -> Result<()> {
    region_balancer_carries_traffic(js_balancer()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_region_balancer_carries_traffic() -> Result<()> {
    region_balancer_carries_traffic(c_balancer()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_region_balancer_carries_traffic() -> Result<()> {
    region_balancer_carries_traffic(rust_balancer()).await
}

/// The four balancers behind one weir, one pool and listener each over the
/// same backends: the same requests, in the same order, reach the same backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_balancers_agree_on_real_traffic() -> Result<()> {
    let names = ["eu1", "eu2", "us1", "us2", "ap1", "plain"];
    let tags = ["region=eu", "region=eu", "region=us", "region=us", "region=ap", "gpu"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(HttpBackend::start(n).await?);
    }
    let list: Vec<String> =
        backends.iter().zip(tags).map(|(b, t)| format!("{{ address = \"{}\", tags = [\"{t}\"] }}", b.addr)).collect();
    let sources =
        [("rust", rust_balancer()), ("python", python_balancer()?), ("js", js_balancer()?), ("c", c_balancer()?)];
    let mut text = String::new();
    for (lang, source) in &sources {
        text += &format!(
            "[plugins.{lang}]\nsource = \"{}\"\n{LIMITS}\n\n\
             [pools.{lang}]\nbalancer = \"{lang}\"\nhash_key = \"header:x-region\"\nbackends = [{}]\n\n\
             [listeners.{lang}]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"{lang}\"\n\n",
            source.display(),
            list.join(", ")
        );
    }
    let weir = start_weir(&text).await?;
    let client = client_h1();
    let regions = [Some("eu"), Some("us"), Some("mars"), None, Some("eu"), Some("ap"), Some("eu"), Some("us")];
    let mut order: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for i in 0..400 {
        let region = regions[i % regions.len()];
        for (lang, _) in &sources {
            let addr = weir.listener_addr(lang).unwrap();
            let got = send(&client, with_region(get(addr, "x", "/"), region)).await?;
            order.entry(lang).or_default().push(got.header("x-backend").to_string());
        }
    }
    let rust = &order["rust"];
    // The twin's choices are the real thing: every eu request on an eu backend.
    assert!(rust.iter().step_by(regions.len()).all(|b| b.starts_with("eu")), "{rust:?}");
    let used: std::collections::BTreeSet<_> = rust.iter().collect();
    assert_eq!(used.len(), names.len(), "every backend used: {used:?}");
    assert_eq!(&order["python"], rust, "python differs from the Rust twin");
    assert_eq!(&order["js"], rust, "javascript differs from the Rust twin");
    assert_eq!(&order["c"], rust, "c differs from the Rust twin");
    for (lang, _) in &sources {
        assert_eq!(failures(weir.pool(lang).unwrap().balancer.plugin().unwrap()), [0; 5], "{lang}: failed calls");
    }
    Ok(())
}

fn balancer_pool(
    runtime: &Arc<weir::plugin::Runtime>,
    source: &std::path::Path,
    tags: &[&[&str]],
) -> Result<Arc<Pool>> {
    let spec = PluginSpec {
        name: format!("region-{}", source.display()),
        source: source.display().to_string(),
        world: World::Balancer,
        config_json: "{}".into(),
        limits: Limits { memory: 128 << 20, timeout: std::time::Duration::from_secs(1), ..Limits::default() },
        fallback: Fallback::FailClosed,
        grants: Default::default(),
    };
    let bytes = std::fs::read(source).with_context(|| source.display().to_string())?;
    let balancer = runtime.load(spec, &bytes).with_context(|| source.display().to_string())?;
    let backends = tags
        .iter()
        .enumerate()
        .map(|(i, t)| BackendSpec {
            address: format!("10.0.0.{}:80", i + 1),
            weight: 1,
            priority: 0,
            tags: t.iter().map(|s| s.to_string()).collect(),
        })
        .collect();
    let settings = PoolSettings { max_tries: 1, max_fails: 0, ..PoolSettings::default() };
    Ok(Pool::new("p", backends, balancer, settings, None))
}

/// The four balancers called directly, on the same pseudo-random pool
/// states (active counts, backends already tried, region keys): every answer
/// equals the Rust twin's and the twin's logic run natively.
#[test]
fn region_balancers_make_the_same_choices_as_the_rust_twin() -> Result<()> {
    let tags: [&[&str]; 8] = [
        &["region=eu"],
        &["region=eu", "gpu"],
        &["region=us"],
        &["region=us"],
        &["region=ap"],
        &[],
        &["gpu"],
        &["region=eu"],
    ];
    let runtime = runtime();
    let sources =
        [("rust", rust_balancer()), ("python", python_balancer()?), ("js", js_balancer()?), ("c", c_balancer()?)];
    let pools = sources.iter().map(|(_, s)| balancer_pool(&runtime, s, &tags)).collect::<Result<Vec<_>>>()?;
    let conn = weir::plugin::bindings::connection_record(
        "10.9.8.7:40000".parse().unwrap(),
        "127.0.0.1:80".parse().unwrap(),
        0,
        types::Protocol::Http,
    );
    let keys = [Some("eu"), Some("us"), Some("ap"), Some("mars"), None, Some("")];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let (mut in_region, mut fallback, mut sequence) = (0, 0, 0u64);
    for round in 0..3_000u64 {
        let active: Vec<u32> = (0..tags.len()).map(|_| next(4) as u32).collect();
        let tried: Vec<u32> = (0..tags.len() as u32).filter(|_| next(4) == 0).collect();
        let key = keys[next(keys.len() as u64) as usize];
        let mut answers = Vec::new();
        let mut guards = Vec::new();
        for pool in &pools {
            let members = pool.members();
            for (slot, &n) in active.iter().enumerate() {
                for _ in 0..n {
                    guards.push(members.backends[slot].stats.open_connection());
                }
            }
            let eligible = pool.eligible(&members, &tried);
            assert!(eligible.iter().all(|s| !tried.contains(s)), "{eligible:?} {tried:?}");
            if eligible.is_empty() {
                answers.push(None);
                continue;
            }
            answers.push(Some(pool.balancer.plugin().unwrap().pick(&members, eligible, &conn, key, None)?));
        }
        drop(guards);
        let eligible: Vec<u32> = (0..tags.len() as u32).filter(|s| !tried.contains(s)).collect();
        let expected = (!eligible.is_empty()).then(|| {
            let want = key.filter(|k| !k.is_empty()).map(|k| format!("region={k}"));
            let matches = |s: u32| want.as_deref().is_some_and(|w| tags[s as usize].contains(&w));
            if eligible.iter().any(|&s| matches(s)) {
                in_region += 1;
            } else {
                fallback += 1;
            }
            let act: Vec<u32> = eligible.iter().map(|&s| active[s as usize]).collect();
            let choice = weir_example_region_balancer::choose(&eligible, &act, matches, sequence);
            sequence += 1;
            choice
        });
        for ((lang, _), answer) in sources.iter().zip(&answers) {
            assert_eq!(*answer, expected, "{lang}, round {round}: key {key:?} active {active:?} tried {tried:?}");
        }
    }
    println!("3000 rounds: {in_region} picked within the region, {fallback} fell back to all eligible backends");
    assert!(in_region > 1_000 && fallback > 1_000, "{in_region} / {fallback}");
    Ok(())
}

/// The router and access filter in Python and JavaScript, and their Rust
/// twins, run one cases file each through the test kit: the same decision
/// on every synthetic request.
#[test]
fn twins_decide_the_same_on_their_shared_cases() -> Result<()> {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins");
    let runtime = runtime();
    let twins = [
        (
            "python/path-router/cases.toml",
            [lang::python("path-router", "router")?, component("weir-example-path-router")],
        ),
        ("js/key-access/cases.toml", [lang::js("key-access", "access-filter")?, component("weir-example-key-access")]),
    ];
    for (file, sources) in twins {
        let cases = weir::devkit::testkit::Cases::parse(&std::fs::read_to_string(examples.join(file))?, file)?;
        assert!(cases.cases.len() >= 6, "{file}");
        for source in sources {
            let bytes = std::fs::read(&source)?;
            let (world, outcomes) =
                weir::devkit::testkit::run(&runtime, &bytes, &source.display().to_string(), &cases)?;
            let failed: Vec<_> = outcomes.iter().filter_map(|o| o.failure.as_ref().map(|f| (&o.name, f))).collect();
            println!("{file} on {}: {world}, {} cases, {} failed", source.display(), outcomes.len(), failed.len());
            assert!(failed.is_empty(), "{}: {failed:?}", source.display());
            assert_eq!(outcomes.len(), cases.cases.len());
        }
    }
    Ok(())
}

/// The path router's behavioural test, run on the Python example and on
/// its Rust twin.
async fn path_router_routes_by_prefix_and_edits_headers(source: PathBuf) -> Result<()> {
    let (default, v1, v2) =
        (HttpBackend::start("default").await?, HttpBackend::start("v1").await?, HttpBackend::start("v2").await?);
    let text = format!(
        r#"[plugins.paths]
source = "{}"
{LIMITS}
config.routes = [
  {{ prefix = "/api/", pool = "v1", request_headers = {{ "x-routed-by" = "path-router" }} }},
  {{ prefix = "/api/v2/", pool = "v2", remove_request_headers = ["x-secret"], response_headers = {{ "x-pool" = "v2" }} }},
]

[pools.default]
backends = ["{}"]

[pools.v1]
backends = ["{}"]

[pools.v2]
backends = ["{}"]

[listeners.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "default"
router = "paths"
"#,
        source.display(),
        default.addr,
        v1.addr,
        v2.addr
    );
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    let secret = |mut r: http::Request<TestBody>| {
        r.headers_mut().insert("x-secret", "s3".parse().unwrap());
        r
    };
    for i in 0..50 {
        let got = send(&client, secret(get(addr, "x", &format!("/api/users/{i}")))).await?;
        assert_eq!(got.header("x-backend"), "v1");
        assert_eq!(got.header("x-seen-x-routed-by"), "path-router");
        assert_eq!(got.header("x-seen-x-secret"), "s3");
        assert_eq!(got.header("x-pool"), "");
        // The longest prefix wins.
        let got = send(&client, secret(get(addr, "x", &format!("/api/v2/users/{i}")))).await?;
        assert_eq!(got.header("x-backend"), "v2");
        assert_eq!(got.header("x-seen-x-secret"), "", "removed before forwarding");
        assert_eq!(got.header("x-seen-x-routed-by"), "");
        assert_eq!(got.header("x-pool"), "v2");
        assert_eq!(got.header("x-seen-path"), format!("/api/v2/users/{i}"));
        // No prefix: the listener's default pool, untouched.
        let got = send(&client, secret(get(addr, "x", "/other"))).await?;
        assert_eq!(got.header("x-backend"), "default");
        assert_eq!(got.header("x-seen-x-secret"), "s3");
    }
    assert_eq!((default.requests(), v1.requests(), v2.requests()), (50, 50, 50));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_path_router_routes_by_prefix_and_edits_headers() -> Result<()> {
    path_router_routes_by_prefix_and_edits_headers(lang::python("path-router", "router")?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_path_router_routes_by_prefix_and_edits_headers() -> Result<()> {
    path_router_routes_by_prefix_and_edits_headers(component("weir-example-path-router")).await
}

/// The key access filter's behavioural test, run on the JavaScript example
/// and on its Rust twin.
async fn access_filter_refuses_clients_and_unknown_keys(source: PathBuf) -> Result<()> {
    let backend = HttpBackend::start("b").await?;
    let text = format!(
        r#"[plugins.keys]
source = "{}"
{LIMITS}
config.deny_clients = ["127.0.0.2"]
config.keys = ["k1", "k2"]

[pools.p]
backends = ["{}"]

[listeners.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "p"
access = ["keys"]
"#,
        source.display(),
        backend.addr
    );
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("web").unwrap();
    let client = client_h1();
    let keyed = |key: Option<&str>| {
        let mut r = get(addr, "x", "/");
        if let Some(k) = key {
            r.headers_mut().insert("x-api-key", k.parse().unwrap());
        }
        r
    };
    for _ in 0..30 {
        assert_eq!(send(&client, keyed(None)).await?.status, 401);
        assert_eq!(send(&client, keyed(Some("nope"))).await?.status, 403);
        for k in ["k1", "k2"] {
            let got = send(&client, keyed(Some(k))).await?;
            assert_eq!((got.status.as_u16(), got.header("x-backend")), (200, "b"));
        }
    }
    assert_eq!(backend.requests(), 60, "only keyed requests reach the backend");

    // A denied client address gets 403, with a key or not.
    let started = Instant::now();
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind("127.0.0.2:0".parse()?)?;
    let mut stream = tokio::time::timeout(STEP, sock.connect(addr)).await??;
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-api-key: k1\r\nconnection: close\r\n\r\n").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(STEP, stream.read_to_end(&mut got)).await?;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 403") && !got.contains("x-backend"), "{got}");
    assert!(started.elapsed() < STEP);
    assert_eq!(backend.requests(), 60);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_access_filter_refuses_clients_and_unknown_keys() -> Result<()> {
    access_filter_refuses_clients_and_unknown_keys(lang::js("key-access", "access-filter")?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_access_filter_refuses_clients_and_unknown_keys() -> Result<()> {
    access_filter_refuses_clients_and_unknown_keys(component("weir-example-key-access")).await
}
