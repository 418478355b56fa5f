//! The TOML configuration: parsing with exact error locations
//! ([`Source`], [`ConfigError`]), the schema one file per section
//! (`plugins`, `pools`, `listeners`), and the checks that need no plugin
//! (`check`: references between sections, addresses, durations).
//!
//! Config types are named for the TOML they read (`PoolTable` for a
//! `[pools.NAME]` table), so they never share a name with the runtime types
//! built from them (`upstream::Pool`).

mod check;
mod keys;
mod listeners;
mod plugins;
mod pools;
mod secrets;
mod source;
mod units;

pub use keys::{is_host_port, HashKey, NATIVE_ROUND_ROBIN};
pub use listeners::{
    AccessLog, AccessLogTable, Acme, Admin, CertificateFiles, Listener, ListenerTls, Protocol, TlsVersion,
    DEFAULT_UDP_IDLE_TIMEOUT, DEFAULT_UDP_MAX_SESSIONS,
};
pub use plugins::{Fallback, GrantsTable, PluginTable, RuntimeTable};
pub use pools::{
    BackendEntry, BackendTable, Discovery, FailPolicy, HealthCheck, InitialHealth, PoolTable, PoolTls, Roots,
};
pub use secrets::{redacted, resolve_table, Secret};
pub use source::{ConfigError, Source};
pub use units::{ByteSize, Duration};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// `true`, the default of several switches.
fn yes() -> bool {
    true
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub runtime: RuntimeTable,
    /// The admin API (none: no admin listener).
    pub admin: Option<Admin>,
    /// Automatic certificates from an ACME CA.
    pub acme: Option<Acme>,
    /// Where access-log lines go and their format (which listeners log,
    /// and which fields, is each listener's `access_log`).
    #[serde(default)]
    pub access_log: AccessLogTable,
    /// Named plugin instances.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginTable>,
    /// Named pools.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolTable>,
    /// Named listeners.
    #[serde(default)]
    pub listeners: BTreeMap<String, Listener>,
}

/// A parsed config together with its source, for located errors later.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// Where it came from.
    pub source: Source,
    /// `admin.token`, its reference resolved.
    pub admin_token: Option<String>,
}

impl Loaded {
    /// Parse and check a config text.
    pub fn parse(source: Source) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(&source.text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            source.error_at(offset, e.message().trim().replace('\n', " "))
        })?;
        let mut loaded = Self { config, source, admin_token: None };
        loaded.check()?;
        loaded.admin_token = loaded.resolve_admin_token()?;
        Ok(loaded)
    }

    /// Read, parse and check a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(Source::read(path)?)
    }

    /// The directory relative plugin paths are resolved against.
    pub fn base_dir(&self) -> &Path {
        Path::new(&self.source.origin).parent().unwrap_or(Path::new("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        Loaded::parse(Source { origin: "t.toml".into(), text: text.into() })
    }

    const GOOD: &str = r#"
[pools.web]
backends = ["127.0.0.1:1", { address = "127.0.0.1:2", weight = 3 }]

[listeners.front]
bind = "127.0.0.1:0"
pool = "web"
"#;

    #[test]
    fn good_config_parses_with_defaults() {
        let l = parse(GOOD).unwrap();
        let pool = &l.config.pools["web"];
        assert_eq!(pool.balancer.get_ref(), "builtin:round-robin");
        assert_eq!(pool.backends.get_ref()[1].get_ref().table().weight, 3);
        assert_eq!(l.config.listeners["front"].idle_timeout.0, std::time::Duration::from_secs(300));
    }

    #[test]
    fn typo_names_line_column_and_key() {
        let text = GOOD.replace("pool = \"web\"", "pool = \"web\"\nidle_timeot = \"1s\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:1: "), "{e}");
        assert!(e.contains("idle_timeot"), "{e}");
    }

    #[test]
    fn unknown_pool_is_located() {
        let e = parse(&GOOD.replace("pool = \"web\"", "pool = \"wbe\"")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:7:8: listeners.front.pool: no pool named `wbe`"), "{e}");
    }

    #[test]
    fn proxy_protocol_keys_are_checked() {
        let listener = |extra: &str| GOOD.replace("pool = \"web\"", &format!("pool = \"web\"\n{extra}"));
        let l = parse(&listener("proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"::1\"]")).unwrap();
        assert!(*l.config.listeners["front"].proxy_protocol.get_ref());
        let e = parse(&listener("proxy_protocol = true")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:18: listeners.front.proxy_protocol_from: required"), "{e}");
        let e = parse(&listener("proxy_protocol_from = [\"10.0.0.0/8\"]")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:24: listeners.front.proxy_protocol_from: has no effect"), "{e}");
        let e =
            parse(&listener("proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/33\"]")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:9:24: listeners.front.proxy_protocol_from: `10.0.0.0/33`"), "{e}");
        let pool = |v: &str| GOOD.replace("[listeners.front]", &format!("send_proxy = \"{v}\"\n\n[listeners.front]"));
        assert_eq!(
            *parse(&pool("v2")).unwrap().config.pools["web"].send_proxy.as_ref().unwrap().get_ref(),
            crate::proxy_protocol::Version::V2
        );
        let e = parse(&pool("v3")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:5:14: ") && e.contains("v3"), "{e}");
        let http = pool("v1").replace("pool = \"web\"", "pool = \"web\"\nprotocol = \"http\"");
        let e = parse(&http).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:5:14: pools.web.send_proxy: the pool of HTTP listener `front`"), "{e}");
    }

    #[test]
    fn udp_keys_belong_to_udp_listeners() {
        let udp = GOOD.replace("pool = \"web\"", "pool = \"web\"\nprotocol = \"udp\"\nudp_max_requests = 1");
        let l = parse(&udp).unwrap();
        let front = &l.config.listeners["front"];
        assert_eq!(front.protocol, Protocol::Udp);
        assert_eq!(front.udp_max_requests.as_ref().map(|v| *v.get_ref()), Some(1));
        let e =
            parse(&GOOD.replace("pool = \"web\"", "pool = \"web\"\nudp_max_responses = 1")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:21: listeners.front.udp_max_responses: needs protocol = \"udp\""), "{e}");
        let e = parse(&format!("{udp}udp_idle_timeout = \"0s\"\n")).unwrap_err().to_string();
        assert!(e.contains("listeners.front.udp_idle_timeout: must be above zero"), "{e}");
        let e = parse(&format!("{udp}udp_max_sessions = 0\n")).unwrap_err().to_string();
        assert!(e.contains("listeners.front.udp_max_sessions: must be at least 1"), "{e}");
        let e = parse(&format!("{udp}router = \"builtin:host-path\"\n")).unwrap_err().to_string();
        assert!(e.contains("listeners.front.router: not on protocol = \"udp\""), "{e}");
    }

    #[test]
    fn connection_caps_are_checked_where_they_apply() {
        let caps = "max_connections = 100\nmax_connections_per_client = 10";
        let l = parse(&GOOD.replace("pool = \"web\"", &format!("pool = \"web\"\n{caps}"))).unwrap();
        let front = &l.config.listeners["front"];
        assert_eq!(front.max_connections.as_ref().map(|v| *v.get_ref()), Some(100));
        assert_eq!(*front.max_concurrent_streams.get_ref(), 200);
        let e = parse(&format!("{GOOD}max_connections = 0\n")).unwrap_err().to_string();
        assert!(e.contains("listeners.front.max_connections: must be at least 1"), "{e}");
        let udp = GOOD.replace("pool = \"web\"", "pool = \"web\"\nprotocol = \"udp\"");
        let e = parse(&format!("{udp}max_connections_per_client = 2\n")).unwrap_err().to_string();
        assert!(e.contains("listeners.front.max_connections_per_client: not on protocol = \"udp\""), "{e}");
        let e = parse(&format!("{GOOD}max_concurrent_streams = 10\n")).unwrap_err().to_string();
        assert!(e.contains("listeners.front.max_concurrent_streams: needs protocol = \"http\""), "{e}");
        let runtime = GOOD.replace("[listeners.front]", "[runtime]\nmax_connections = 0\n\n[listeners.front]");
        let e = parse(&runtime).unwrap_err().to_string();
        assert!(e.contains("runtime.max_connections: must be at least 1"), "{e}");
        assert!(e.starts_with("t.toml:"), "names the file and line: {e}");
    }

    #[test]
    fn shedding_limits_are_read_and_zero_is_refused_where_written() {
        let runtime =
            |keys: &str| GOOD.replace("[listeners.front]", &format!("[runtime]\n{keys}\n\n[listeners.front]"));
        let l =
            parse(&runtime("shed_loop_lag = \"50ms\"\nshed_plugin_time = \"2ms\"\nshed_memory = \"512MiB\"")).unwrap();
        let r = &l.config.runtime;
        assert_eq!(r.shed_loop_lag.as_ref().map(|d| d.get_ref().0), Some(std::time::Duration::from_millis(50)));
        assert_eq!(r.shed_plugin_time.as_ref().map(|d| d.get_ref().0), Some(std::time::Duration::from_millis(2)));
        assert_eq!(r.shed_memory.as_ref().map(|m| m.get_ref().0), Some(512 << 20));
        for key in ["shed_loop_lag = \"0s\"", "shed_plugin_time = \"0ms\"", "shed_memory = \"0B\""] {
            let e = parse(&runtime(key)).unwrap_err().to_string();
            let name = key.split(' ').next().unwrap();
            assert!(e.contains(&format!("runtime.{name}: must be more than 0")), "{e}");
            assert!(e.starts_with("t.toml:"), "names the file and line: {e}");
        }
    }

    #[test]
    fn http_grants_must_be_http_urls() {
        let plugin = |url: &str| {
            GOOD.replace(
                "[listeners.front]",
                &format!("[plugins.d]\nsource = \"d.wasm\"\ngrants.http = [\"{url}\"]\n\n[listeners.front]"),
            )
        };
        assert!(parse(&plugin("http://127.0.0.1:2379/v3/")).is_ok());
        let e = parse(&plugin("127.0.0.1:2379")).unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml:") && e.contains("plugins.d.grants.http: `127.0.0.1:2379` is not an http"),
            "{e}"
        );
        let e = parse(&plugin("file:///etc")).unwrap_err().to_string();
        assert!(e.contains("plugins.d.grants.http"), "{e}");
    }

    #[test]
    fn bad_durations_and_addresses() {
        let e = parse(&GOOD.replace("bind = \"127.0.0.1:0\"", "bind = \"localhost\"")).unwrap_err().to_string();
        assert!(e.contains("listeners.front.bind"), "{e}");
        let e = parse(&format!("{GOOD}idle_timeout = \"5 parsecs\"\n")).unwrap_err().to_string();
        assert!(e.contains("5 parsecs"), "{e}");
    }
}
