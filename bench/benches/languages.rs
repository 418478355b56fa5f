//! The same balancer written in Rust, Python (componentize-py), C (clang) and
//! JavaScript (componentize-js): `examples/plugins/*/region-balancer`.
//! Measures one `pick` (8 tagged backends, a region key that matches two of
//! them), loading the plugin from the warm compile cache (deserialize, link,
//! instantiate, `init`), and prints each component's size and cold compile
//! time once. The same for the path router (Python and its Rust twin: one
//! `route-request`) and the key access filter (JavaScript and its Rust twin:
//! one `check-request`).
//!
//! `cargo bench -p weir-bench --bench languages` (needs the toolchains that
//! `scripts/setup --test` installs).

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::config::Fallback;
use weir::plugin::bindings::types;
use weir::plugin::{Limits, PluginSpec, Runtime, World};
use weir::upstream::{BackendSpec, Pool, PoolSettings};

fn spec(source: &Path) -> PluginSpec {
    spec_of(source, World::Balancer, "{}")
}

fn spec_of(source: &Path, world: World, config_json: &str) -> PluginSpec {
    PluginSpec {
        name: format!("{world}"),
        source: source.display().to_string(),
        world,
        config_json: config_json.into(),
        limits: Limits { memory: 128 << 20, timeout: Duration::from_secs(1), ..Limits::default() },
        fallback: Fallback::FailClosed,
        grants: Default::default(),
    }
}

fn pool(runtime: &Arc<Runtime>, source: &Path, bytes: &[u8]) -> Arc<Pool> {
    let balancer = runtime.load(spec(source), bytes).expect("load");
    let regions = ["eu", "us", "ap", "us", "eu", "sa", "af", "oc"];
    let backends = regions
        .iter()
        .enumerate()
        .map(|(i, r)| BackendSpec {
            address: format!("10.0.0.{}:80", i + 1),
            weight: 1,
            priority: 0,
            tags: vec![format!("region={r}")],
        })
        .collect();
    let settings = PoolSettings { max_tries: 1, max_fails: 0, ..PoolSettings::default() };
    Pool::new("bench", backends, balancer, settings, None)
}

fn sources() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("rust", weir_tests::component("weir-example-region-balancer")),
        ("python", weir_tests::lang::python("region-balancer", "balancer").expect("python build")),
        ("js", weir_tests::lang::js("region-balancer", "balancer").expect("js build")),
        ("c", weir_tests::lang::c("region-balancer", "balancer").expect("c build")),
    ]
}

/// A runtime on the bench's compile cache, and the connection every call is for.
fn runtime_and_connection() -> (Arc<Runtime>, types::Connection) {
    let cache = std::env::temp_dir().join("weir-bench-plugin-cache");
    let runtime = Runtime::new(Some(cache)).expect("runtime");
    let conn = weir::plugin::bindings::connection_record(
        "10.9.8.7:40000".parse().unwrap(),
        "127.0.0.1:80".parse().unwrap(),
        0,
        types::Protocol::Http,
    );
    (runtime, conn)
}

fn bench_languages(c: &mut Criterion) {
    let (runtime, conn) = runtime_and_connection();
    for (lang, source) in sources() {
        let bytes = std::fs::read(&source).expect("component");
        describe(lang, &bytes);
        let p = pool(&runtime, &source, &bytes);
        let mut group = c.benchmark_group(format!("region-balancer/{lang}"));
        group.bench_function("pick", |b| {
            b.iter(|| {
                let m = p.members();
                p.balancer.plugin().unwrap().pick(&m, p.eligible(&m, &[]), &conn, Some("eu"), None).unwrap()
            })
        });
        group.sample_size(10);
        group.bench_function("load-cached", |b| b.iter(|| runtime.load(spec(&source), &bytes).expect("load")));
        group.finish();
    }
}

/// Size and cold compile time of a component, printed once.
fn describe(lang: &str, bytes: &[u8]) {
    let cold = Runtime::new(None).expect("runtime");
    let t = Instant::now();
    cold.compile(bytes).expect("compile");
    eprintln!("{lang}: component {:.1} MB, cold compile {:.2} s", bytes.len() as f64 / 1e6, t.elapsed().as_secs_f64());
}

/// The path router (Python and its Rust twin) and the key access filter
/// (JavaScript and its Rust twin): one call each on a request that matches.
fn bench_router_and_access(c: &mut Criterion) {
    let (runtime, conn) = runtime_and_connection();
    let head = |path: &str| {
        let req = http::Request::builder().uri(path).header("x-api-key", "k2").header("x-secret", "s");
        Arc::new(req.body(()).expect("request").into_parts().0)
    };
    let routes = r#"{"routes": [{"prefix": "/api/", "pool": "v1", "request_headers": {"x-routed-by": "path-router"}},
        {"prefix": "/api/v2/", "pool": "v2", "remove_request_headers": ["x-secret"]}, {"prefix": "/static/", "pool": "files"}]}"#;
    let keys = r#"{"deny_clients": ["192.0.2.7"], "keys": ["k1", "k2", "k3"]}"#;
    let cases = [
        ("path-router", "rust", weir_tests::component("weir-example-path-router"), World::Router, routes),
        (
            "path-router",
            "python",
            weir_tests::lang::python("path-router", "router").expect("python build"),
            World::Router,
            routes,
        ),
        ("key-access", "rust", weir_tests::component("weir-example-key-access"), World::AccessFilter, keys),
        (
            "key-access",
            "js",
            weir_tests::lang::js("key-access", "access-filter").expect("js build"),
            World::AccessFilter,
            keys,
        ),
    ];
    for (example, lang, source, world, config) in cases {
        let bytes = std::fs::read(&source).expect("component");
        describe(&format!("{example}/{lang}"), &bytes);
        let instance = runtime.load(spec_of(&source, world, config), &bytes).expect("load");
        let mut group = c.benchmark_group(format!("{example}/{lang}"));
        let req = head("/api/v2/users/7");
        match world {
            World::Router => group.bench_function("route-request", |b| {
                b.iter(|| instance.route_request(&conn, req.clone()).expect("route"))
            }),
            _ => group.bench_function("check-request", |b| {
                b.iter(|| instance.check_request(&conn, req.clone()).expect("verdict"))
            }),
        };
        group.sample_size(10);
        group.bench_function("load-cached", |b| {
            b.iter(|| runtime.load(spec_of(&source, world, config), &bytes).expect("load"))
        });
        group.finish();
    }
}

criterion_group!(benches, bench_languages, bench_router_and_access);
criterion_main!(benches);
