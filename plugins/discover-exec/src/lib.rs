//! Bundled discovery adapter `discover-exec`: run a program; it prints one
//! backend per line as `host:port [weight=N] [priority=N] [tags=a,b]` (`#`
//! comments and blank lines ignored). A non-zero exit status is an error, so
//! the pool keeps its backends.
//!
//! ```toml
//! [plugins.from-script]
//! source = "builtin:discover-exec"
//! config = { program = "/usr/local/bin/list-backends", args = ["--pool", "web"] }
//! grants = { exec = ["/usr/local/bin/list-backends"] }
//! ```

use serde::Deserialize;
use std::time::Duration;
use weir_sdk::discovery::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    timeout_ms: u32,
}

/// A validated command.
#[derive(Debug)]
pub struct Command {
    program: String,
    args: Vec<String>,
    timeout: Duration,
}

impl Command {
    /// Validate the JSON config.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        if s.program.trim().is_empty() {
            return Err(Error::InvalidConfig("program: must not be empty".into()));
        }
        Ok(Self { program: s.program, args: s.args, timeout: Duration::from_millis(s.timeout_ms as u64) })
    }

    /// The backends in the program's output.
    pub fn parse(&self, status: i32, stdout: &[u8], stderr: &[u8]) -> Result<Vec<Discovered>, Error> {
        if status != 0 {
            let why = String::from_utf8_lossy(stderr);
            let why: String = why.trim().chars().take(200).collect();
            return Err(Error::Other(format!("{} exited with status {status}: {why}", self.program)));
        }
        let text = std::str::from_utf8(stdout)
            .map_err(|e| Error::Other(format!("{} printed non-UTF-8: {e}", self.program)))?;
        parse_backend_lines(text).map_err(|e| Error::Other(format!("{} output: {e}", self.program)))
    }
}

struct DiscoverExec(Command);

impl Discovery for DiscoverExec {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(Command::from_config(&config)?))
    }

    fn discover(&mut self) -> Result<Vec<Discovered>, Error> {
        let c = &self.0;
        let out = io::exec(&c.program, &c.args, c.timeout)?;
        c.parse(out.status, &out.stdout, &out.stderr)
    }
}

weir_sdk::export_discovery!(DiscoverExec);

#[cfg(test)]
mod tests {
    use super::*;

    fn command(json: &str) -> Command {
        Command::from_config(&Config::from_json(json.into())).unwrap()
    }

    #[test]
    fn output_lines() {
        let c = command(r#"{"program": "/bin/list", "args": ["web"], "timeout_ms": 500}"#);
        assert_eq!(c.args, ["web"]);
        assert_eq!(c.timeout, Duration::from_millis(500));
        let got = c.parse(0, b"10.0.0.1:80\n10.0.0.2:80 weight=5 tags=canary\n", b"").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[1].weight, got[1].tags.as_slice()), (5, ["canary".to_string()].as_slice()));
        assert!(c.parse(0, b"", b"").unwrap().is_empty());
    }

    #[test]
    fn failures() {
        let c = command(r#"{"program": "/bin/list"}"#);
        let Err(Error::Other(m)) = c.parse(2, b"10.0.0.1:80\n", b"consul unreachable\n") else { panic!() };
        assert_eq!(m, "/bin/list exited with status 2: consul unreachable");
        let Err(Error::Other(m)) = c.parse(0, b"10.0.0.1\n", b"") else { panic!() };
        assert_eq!(m, "/bin/list output: line 1: `10.0.0.1` is not `host:port`");
    }

    #[test]
    fn bad_configs() {
        let e = |json: &str| match Command::from_config(&Config::from_json(json.into())) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(e("{}").contains("missing field `program`"));
        assert_eq!(e(r#"{"program": ""}"#), "program: must not be empty");
        assert!(e(r#"{"program": "p", "args": [1]}"#).starts_with("args[0]: invalid type"));
    }
}
