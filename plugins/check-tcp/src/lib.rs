//! Bundled health checker `check-tcp`: a backend is healthy when a TCP
//! connection to its address opens (gobetween's `ping`).
//!
//! ```toml
//! [plugins.tcp-up]
//! source = "builtin:check-tcp"
//! config = { timeout_ms = 1000 }
//! ```

use serde::Deserialize;
use std::time::Duration;
use weir_sdk::health::*;

/// The instance config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Connect timeout; 0 (the default) means as long as the call may run.
    #[serde(default)]
    pub timeout_ms: u32,
}

/// Parse the JSON config.
pub fn settings(config: &Config) -> Result<Settings, Error> {
    Ok(config.parse()?)
}

struct CheckTcp {
    timeout: Duration,
}

impl HealthChecker for CheckTcp {
    fn init(config: Config) -> Result<Self, Error> {
        let s = settings(&config)?;
        Ok(Self { timeout: Duration::from_millis(s.timeout_ms as u64) })
    }

    fn check(&mut self, target: &Backend) -> Result<Health, Error> {
        match io::tcp_probe(&target.address, &[], 0, self.timeout) {
            Ok(_) => Ok(Health::Healthy),
            Err(e) => unhealthy_from(e),
        }
    }
}

weir_sdk::export_health_checker!(CheckTcp);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::from_json(json.into())
    }

    #[test]
    fn defaults_and_timeout() {
        assert_eq!(settings(&config("")).unwrap().timeout_ms, 0);
        assert_eq!(settings(&config(r#"{"timeout_ms": 250}"#)).unwrap().timeout_ms, 250);
    }

    #[test]
    fn bad_config_names_the_key() {
        let Err(Error::InvalidConfig(m)) = settings(&config(r#"{"timeout": 1}"#)) else { panic!() };
        assert!(m.contains("unknown field `timeout`"), "{m}");
        let Err(Error::InvalidConfig(m)) = settings(&config(r#"{"timeout_ms": "1s"}"#)) else { panic!() };
        assert!(m.contains("invalid type"), "{m}");
    }
}
