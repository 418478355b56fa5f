use weir_sdk::health::*;
use std::time::Duration;

/// The instance config.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Connect timeout in milliseconds (0: as long as the call may run).
    #[serde(default)]
    timeout_ms: u32,
}

struct TYPE {
    timeout: Duration,
}

impl HealthChecker for TYPE {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        Ok(Self { timeout: Duration::from_millis(s.timeout_ms as u64) })
    }

    fn check(&mut self, target: &Backend) -> Result<Health, Error> {
        match io::tcp_probe(&target.address, &[], 0, self.timeout) {
            Ok(_) => Ok(Health::Healthy),
            Err(e) => unhealthy_from(e),
        }
    }
}

weir_sdk::export_health_checker!(TYPE);
