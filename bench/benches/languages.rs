//! The same balancer written in Rust, Python (componentize-py), C (clang) and
//! JavaScript (componentize-js): `examples/plugins/*/region-balancer`.
//! Measures one `pick` (8 tagged backends, a region key that matches two of
//! them), loading the plugin from the warm compile cache (deserialize, link,
//! instantiate, `init`), and prints each component's size and cold compile
//! time once.
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
    PluginSpec {
        name: "region".into(),
        source: source.display().to_string(),
        world: World::Balancer,
        config_json: "{}".into(),
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
    Arc::new(Pool::new("bench", backends, balancer, settings, None))
}

fn sources() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("rust", weir_tests::component("weir-example-region-balancer")),
        ("python", weir_tests::lang::python("region-balancer", "balancer").expect("python build")),
        ("js", weir_tests::lang::js("region-balancer", "balancer").expect("js build")),
        ("c", weir_tests::lang::c("region-balancer", "balancer").expect("c build")),
    ]
}

fn bench_languages(c: &mut Criterion) {
    let cache = std::env::temp_dir().join("weir-bench-plugin-cache");
    let runtime = Runtime::new(Some(cache)).expect("runtime");
    let conn = weir::l4::connection_record(
        "10.9.8.7:40000".parse().unwrap(),
        "127.0.0.1:80".parse().unwrap(),
        0,
        types::Protocol::Http,
    );
    for (lang, source) in sources() {
        let bytes = std::fs::read(&source).expect("component");
        let cold = Runtime::new(None).expect("runtime");
        let t = Instant::now();
        cold.compile(&bytes).expect("compile");
        eprintln!(
            "{lang}: component {:.1} MB, cold compile {:.2} s",
            bytes.len() as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        let p = pool(&runtime, &source, &bytes);
        let mut group = c.benchmark_group(format!("region-balancer/{lang}"));
        group.bench_function("pick", |b| {
            b.iter(|| {
                let m = p.members();
                p.balancer.plugin().unwrap().pick(&p, &m, p.eligible(&m, &[]), &conn, Some("eu"), None).unwrap()
            })
        });
        group.sample_size(10);
        group.bench_function("load-cached", |b| b.iter(|| runtime.load(spec(&source), &bytes).expect("load")));
        group.finish();
    }
}

criterion_group!(benches, bench_languages);
criterion_main!(benches);
