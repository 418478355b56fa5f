//! Test balancer: on every `every`-th call (counted across instances by a
//! shared counter, starting with the first) it misbehaves as `mode` says —
//! `trap`, `spin` (loop forever) or `hog` (grow memory without bound) — and
//! otherwise picks the last eligible backend, so the tests can tell its
//! answers from the host's fallback. `init-trap` and `init-spin` misbehave
//! in `init` instead.

use serde::Deserialize;
use weir_sdk::balancer::*;

#[derive(Deserialize)]
struct Settings {
    mode: String,
    #[serde(default = "one")]
    every: i64,
}

fn one() -> i64 {
    1
}

struct Misbehave {
    settings: Settings,
    calls: SharedCounter,
}

impl Balancer for Misbehave {
    fn init(config: Config) -> Result<Self, Error> {
        let settings: Settings = config.parse()?;
        if !["trap", "spin", "hog", "init-trap", "init-spin"].contains(&settings.mode.as_str()) {
            return Err(Error::InvalidConfig(format!("unknown mode `{}`", settings.mode)));
        }
        if settings.mode == "init-trap" {
            panic!("trap in init");
        }
        if settings.mode == "init-spin" {
            spin();
        }
        Ok(Self { settings, calls: SharedCounter::new("calls") })
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        if self.calls.fetch_add(1) % self.settings.every.max(1) == 0 {
            match self.settings.mode.as_str() {
                "trap" => panic!("misbehave: trap"),
                "spin" => spin(),
                _ => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                    }
                }
            }
        }
        // Through the pool view, so the host imports are exercised too.
        if pool.connection().listener != 0 && listener_name(pool.connection().listener).is_empty() {
            return Err(Error::Other("listener id without a name".into()));
        }
        Ok(Choice::Slot(pool.eligible(n - 1)))
    }
}

/// Loop forever (until the host interrupts the call).
fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

weir_sdk::export_balancer!(Misbehave);
