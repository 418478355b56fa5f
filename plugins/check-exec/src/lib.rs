//! Bundled health checker `check-exec`: run a program with the backend's
//! host and port; it prints `1` for healthy and `0` for unhealthy
//! (gobetween's `exec`). Anything else is an error of the check.
//!
//! ```toml
//! [plugins.custom-check]
//! source = "builtin:check-exec"
//! config = { program = "/usr/local/bin/check-db", args = ["--host", "{host}", "--port", "{port}"] }
//! grants = { exec = ["/usr/local/bin/check-db"] }
//! ```

use serde::Deserialize;
use std::time::Duration;
use weir_sdk::health::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    program: String,
    #[serde(default = "default_args")]
    args: Vec<String>,
    #[serde(default = "one")]
    healthy_output: String,
    #[serde(default = "zero")]
    unhealthy_output: String,
    #[serde(default)]
    timeout_ms: u32,
}

fn default_args() -> Vec<String> {
    vec!["{host}".into(), "{port}".into()]
}

fn one() -> String {
    "1".into()
}

fn zero() -> String {
    "0".into()
}

/// A validated exec check.
#[derive(Debug)]
pub struct ExecCheck {
    program: String,
    args: Vec<String>,
    healthy_output: String,
    unhealthy_output: String,
    timeout: Duration,
}

impl ExecCheck {
    /// Validate the JSON config.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        if s.program.trim().is_empty() {
            return Err(Error::InvalidConfig("program: must not be empty".into()));
        }
        let (healthy_output, unhealthy_output) = (s.healthy_output.trim(), s.unhealthy_output.trim());
        if healthy_output == unhealthy_output {
            return Err(Error::InvalidConfig(format!(
                "healthy_output, unhealthy_output: both are `{healthy_output}`; they must differ"
            )));
        }
        Ok(Self {
            program: s.program,
            args: s.args,
            healthy_output: healthy_output.into(),
            unhealthy_output: unhealthy_output.into(),
            timeout: Duration::from_millis(s.timeout_ms as u64),
        })
    }

    /// The arguments for a backend at `address`, with `{host}` (an IPv6
    /// address without brackets) and `{port}` substituted.
    pub fn args_for(&self, address: &str) -> Result<Vec<String>, Error> {
        let (host, port) = split_host_port(address)
            .ok_or_else(|| Error::Other(format!("backend address `{address}` is not `host:port`")))?;
        let port = port.to_string();
        Ok(self.args.iter().map(|a| a.replace("{host}", host).replace("{port}", &port)).collect())
    }

    /// Judge the program's output.
    pub fn judge(&self, status: i32, stdout: &[u8], stderr: &[u8]) -> Result<Health, Error> {
        let out = String::from_utf8_lossy(stdout);
        let out = out.trim();
        if out == self.healthy_output {
            Ok(Health::Healthy)
        } else if out == self.unhealthy_output {
            let why = String::from_utf8_lossy(stderr);
            let why = why.trim();
            Ok(unhealthy(if why.is_empty() {
                format!("{} printed `{out}`", self.program)
            } else {
                format!("{} printed `{out}`: {why}", self.program)
            }))
        } else {
            let shown: String = out.chars().take(80).collect();
            Err(Error::Other(format!(
                "{} exited with status {status} and printed `{shown}`, expected `{}` or `{}`",
                self.program, self.healthy_output, self.unhealthy_output
            )))
        }
    }
}

struct CheckExec(ExecCheck);

impl HealthChecker for CheckExec {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(ExecCheck::from_config(&config)?))
    }

    fn check(&mut self, target: &Backend) -> Result<Health, Error> {
        let c = &self.0;
        let out = io::exec(&c.program, &c.args_for(&target.address)?, c.timeout)?;
        c.judge(out.status, &out.stdout, &out.stderr)
    }
}

weir_sdk::export_health_checker!(CheckExec);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> ExecCheck {
        ExecCheck::from_config(&Config::from_json(json.into())).unwrap()
    }

    #[test]
    fn substitutes_host_and_port() {
        let c = check(r#"{"program": "/bin/check"}"#);
        assert_eq!(c.args_for("10.0.0.1:5432").unwrap(), ["10.0.0.1", "5432"]);
        assert_eq!(c.args_for("[::1]:80").unwrap(), ["::1", "80"]);
        let c = check(r#"{"program": "/bin/check", "args": ["--addr={host}:{port}", "-v", "{port}{port}"]}"#);
        assert_eq!(c.args_for("db:1").unwrap(), ["--addr=db:1", "-v", "11"]);
        assert!(c.args_for("db").is_err());
    }

    #[test]
    fn output_decides() {
        let c = check(r#"{"program": "/bin/check"}"#);
        assert!(matches!(c.judge(0, b"1\n", b""), Ok(Health::Healthy)));
        assert!(matches!(c.judge(1, b"  1 ", b""), Ok(Health::Healthy)));
        let Ok(Health::Unhealthy(r)) = c.judge(0, b"0\n", b"replica lag 30s\n") else { panic!() };
        assert_eq!(r, "/bin/check printed `0`: replica lag 30s");
        let Ok(Health::Unhealthy(r)) = c.judge(0, b"0", b"") else { panic!() };
        assert_eq!(r, "/bin/check printed `0`");
        let Err(Error::Other(m)) = c.judge(127, b"", b"not found") else { panic!() };
        assert_eq!(m, "/bin/check exited with status 127 and printed ``, expected `1` or `0`");
        assert!(c.judge(0, b"10", b"").is_err());
    }

    #[test]
    fn custom_outputs() {
        let c = check(r#"{"program": "p", "healthy_output": "OK", "unhealthy_output": "FAIL"}"#);
        assert!(matches!(c.judge(0, b"OK\n", b""), Ok(Health::Healthy)));
        assert!(matches!(c.judge(0, b"FAIL", b""), Ok(Health::Unhealthy(_))));
        assert!(c.judge(0, b"1", b"").is_err());
    }

    #[test]
    fn bad_configs() {
        let e = |json: &str| match ExecCheck::from_config(&Config::from_json(json.into())) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(e("{}").contains("missing field `program`"));
        assert!(e(r#"{"program": " "}"#).starts_with("program: "));
        assert!(e(r#"{"program": "p", "args": "x"}"#).starts_with("args: invalid type"));
        assert!(e(r#"{"program": "p", "healthy_output": "0"}"#).starts_with("healthy_output, unhealthy_output: "));
    }
}
