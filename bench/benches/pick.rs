//! Cost of one balance decision through the Wasm boundary, at 8, 64 and
//! 1 024 backends, next to the host's native round-robin doing the same job.
//!
//! `cargo bench -p weir-bench --bench pick`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::sync::Arc;
use weir::config::Fallback;
use weir::l4::wit_socket_address;
use weir::plugin::bindings::types;
use weir::plugin::{bundled, Limits, PluginSpec, Runtime, World};
use weir::upstream::{BackendSpec, Pool, PoolSettings};

fn pool(runtime: &Arc<Runtime>, plugin: &str, n: usize) -> Arc<Pool> {
    let spec = PluginSpec {
        name: format!("builtin:{plugin}"),
        source: format!("builtin:{plugin}"),
        world: World::Balancer,
        config_json: "{}".into(),
        limits: Limits::default(),
        fallback: Fallback::FailOpen,
    };
    let balancer = runtime.load(spec, bundled(plugin).expect("bundled plugin")).expect("load");
    let backends = (0..n)
        .map(|i| BackendSpec {
            address: format!("10.0.{}.{}:80", i / 250, i % 250),
            weight: 1,
            priority: 0,
            tags: vec![],
        })
        .collect();
    let settings = PoolSettings {
        connect_timeout: std::time::Duration::from_secs(1),
        max_tries: 1,
        max_fails: 0,
        fail_timeout: std::time::Duration::from_secs(1),
        response_timeout: std::time::Duration::from_secs(1),
        hash_key: None,
        retry_on: Vec::new(),
        retry_budget: 0.0,
        panic: false,
    };
    Arc::new(Pool::new("bench", backends, balancer, settings))
}

fn connection() -> types::Connection {
    types::Connection {
        client: wit_socket_address("127.0.0.1:40000".parse().unwrap()),
        local: wit_socket_address("127.0.0.1:80".parse().unwrap()),
        listener: 0,
        protocol: types::Protocol::Tcp,
        sni: None,
    }
}

fn bench_pick(c: &mut Criterion) {
    let runtime = Runtime::new(None).expect("runtime");
    let conn = connection();
    let mut group = c.benchmark_group("pick");
    for n in [8usize, 64, 1024] {
        let p = pool(&runtime, "round-robin", n);
        group.bench_with_input(BenchmarkId::new("round-robin/wasm", n), &n, |b, _| {
            b.iter(|| p.balancer.pick(&p, p.eligible(&[]), &conn, None).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("round-robin/native", n), &n, |b, _| {
            b.iter(|| p.fallback_pick(&p.eligible(&[])).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
