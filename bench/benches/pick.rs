//! Cost of one balance decision through the Wasm boundary for every bundled
//! balancer, at 8, 64 and 1 024 backends, next to the same algorithm run
//! natively (the plugin crates' own logic, fed from the same live numbers).
//!
//! `cargo bench -p weir-bench --bench pick`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use weir::config::Fallback;
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
        grants: Default::default(),
    };
    let balancer = runtime.load(spec, bundled(plugin).expect("bundled plugin")).expect("load");
    let backends = (0..n)
        .map(|i| BackendSpec {
            address: format!("10.0.{}.{}:80", i / 250, i % 250),
            weight: 1 + (i % 3) as u32,
            priority: (i % 2) as u32,
            tags: vec![],
        })
        .collect();
    let settings = PoolSettings {
        connect_timeout: std::time::Duration::from_secs(1),
        max_tries: 1,
        max_fails: 0,
        ..PoolSettings::default()
    };
    Pool::new("bench", backends, balancer, settings, None)
}

fn connection() -> types::Connection {
    weir::plugin::bindings::connection_record(
        "10.9.8.7:40000".parse().unwrap(),
        "127.0.0.1:80".parse().unwrap(),
        0,
        types::Protocol::Tcp,
    )
}

/// The native baseline of each algorithm: what the plugin computes, from the
/// same numbers the host would hand it, without the boundary.
fn native(plugin: &str, pool: &Pool, seq: u64) -> u32 {
    let members = pool.members();
    let eligible = pool.eligible(&members, &[]);
    let n = eligible.len() as u64;
    let stats = || eligible.iter().map(|&s| &members.backends[s as usize]);
    match plugin {
        "round-robin" => eligible[(seq % n) as usize],
        // No cookie on L4: the inner round-robin, plus the cookie it would set.
        "sticky" => {
            let slot = eligible[(seq % n) as usize];
            std::hint::black_box(format!("srv={:016x}; Path=/; HttpOnly", weir_sdk::hash64(&slot.to_le_bytes())));
            slot
        }
        "random" => eligible[rand::random_range(0..n) as usize],
        "weighted-round-robin" => {
            // Built once per pool, as the plugin does in `set-backends`.
            thread_local!(static S: std::cell::RefCell<HashMap<u32, Vec<u32>>> = Default::default());
            S.with_borrow_mut(|cache| {
                let s = cache.entry(pool.id).or_insert_with(|| {
                    weir_plugin_weighted_round_robin::smooth_schedule(
                        &members.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
                    )
                });
                s[(seq % s.len() as u64) as usize]
            })
        }
        "least-connections" => {
            // Weights prepared once per pool, as the plugin does in `set-backends`.
            thread_local!(static W: std::cell::RefCell<HashMap<u32, weir_plugin_least_connections::Weights>> = Default::default());
            let active = members.gather_active(&eligible);
            W.with_borrow_mut(|cache| {
                let w = cache.entry(pool.id).or_insert_with(|| {
                    weir_plugin_least_connections::Weights::new(members.backends.iter().map(|b| b.weight).collect())
                });
                let slots = (w.len() != active.len() && !w.uniform()).then_some(&eligible[..]);
                eligible[w.least_loaded(&active, slots, seq)]
            })
        }
        "power-of-two-choices" => {
            let a = rand::random_range(0..n) as usize;
            let b = (a + 1 + rand::random_range(0..n - 1) as usize) % n as usize;
            let (sa, sb) = (eligible[a], eligible[b]);
            if members.live(sb).active() < members.live(sa).active() {
                sb
            } else {
                sa
            }
        }
        "least-latency" => {
            let lat = members.gather_latency_us(&eligible);
            let active = members.gather_active(&eligible);
            eligible[weir_plugin_least_latency::lowest(&lat, &active, seq)]
        }
        "least-bandwidth" => {
            let rates = members.gather_bytes_per_sec(&eligible);
            eligible[weir_plugin_least_bandwidth::least(&rates, seq)]
        }
        "ip-hash" => {
            let ip: std::net::IpAddr = "10.9.8.7".parse().unwrap();
            eligible[(weir_plugin_ip_hash::ip_hash(ip) % n) as usize]
        }
        "consistent-hash" => {
            thread_local!(static R: std::cell::RefCell<HashMap<u32, weir_plugin_consistent_hash::Ring>> = Default::default());
            R.with_borrow_mut(|cache| {
                let ring = cache.entry(pool.id).or_insert_with(|| {
                    let list: Vec<(String, u32)> =
                        members.backends.iter().map(|b| (b.address.clone(), b.weight)).collect();
                    weir_plugin_consistent_hash::Ring::new(&list, 160)
                });
                ring.lookup(b"10.9.8.7", |_| true).unwrap()
            })
        }
        "priority" => {
            let prios: Vec<u32> = stats().map(|b| b.priority).collect();
            let group = weir_plugin_priority::best_group(&prios);
            eligible[group[(seq % group.len() as u64) as usize]]
        }
        other => panic!("no native baseline for {other}"),
    }
}

const PLUGINS: [&str; 11] = [
    "round-robin",
    "random",
    "weighted-round-robin",
    "least-connections",
    "power-of-two-choices",
    "least-latency",
    "least-bandwidth",
    "ip-hash",
    "consistent-hash",
    "priority",
    "sticky",
];

fn bench_pick(c: &mut Criterion) {
    let runtime = Runtime::new(None).expect("runtime");
    let conn = connection();
    let only = std::env::var("WEIR_BENCH_PLUGIN").ok();
    for plugin in PLUGINS.into_iter().filter(|p| only.as_deref().is_none_or(|o| o == *p)) {
        let mut group = c.benchmark_group(format!("pick/{plugin}"));
        for n in [8usize, 64, 1024] {
            let p = pool(&runtime, plugin, n);
            group.bench_with_input(BenchmarkId::new("wasm", n), &n, |b, _| {
                b.iter(|| {
                    let m = p.members();
                    p.balancer.plugin().unwrap().pick(&m, p.eligible(&m, &[]), &conn, None, None).unwrap()
                })
            });
            let mut seq = 0u64;
            group.bench_with_input(BenchmarkId::new("native", n), &n, |b, _| {
                b.iter(|| {
                    seq += 1;
                    black_box(native(plugin, &p, seq))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
