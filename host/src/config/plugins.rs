//! `[runtime]` and `[plugins.NAME]`: process-wide settings and plugin
//! instances (source, config, limits, fallback, I/O grants).

use super::{ByteSize, Duration};
use serde::Deserialize;
use toml::Spanned;

/// Whether a phase that fails lets the work through with a native default or refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Use the native default (allow; native round-robin).
    FailOpen,
    /// Refuse the connection or request.
    FailClosed,
}

/// `[runtime]`: process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeTable {
    /// Worker threads (default: one per core).
    pub workers: Option<usize>,
    /// How long in-flight connections may finish after SIGINT/SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
    /// Where compiled plugins are cached (default: the user's cache directory).
    pub plugin_cache: Option<String>,
    /// Reload when the config file changes (checked every second).
    #[serde(default)]
    pub watch_config: bool,
    /// TCP, TLS and HTTP connections open at once across listeners; more
    /// wait in their listeners' backlogs (none: no cap).
    pub max_connections: Option<Spanned<u64>>,
    /// Refuse new work while an event loop is behind by more than this.
    pub shed_loop_lag: Option<Spanned<Duration>>,
    /// Refuse new work while plugin calls average more than this (over
    /// each 100 ms).
    pub shed_plugin_time: Option<Spanned<Duration>>,
    /// Refuse new work while the resident memory is over this.
    pub shed_memory: Option<Spanned<ByteSize>>,
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

impl Default for RuntimeTable {
    fn default() -> Self {
        Self {
            workers: None,
            shutdown_grace: default_shutdown_grace(),
            plugin_cache: None,
            watch_config: false,
            max_connections: None,
            shed_loop_lag: None,
            shed_plugin_time: None,
            shed_memory: None,
        }
    }
}

/// `[plugins.NAME]`: a plugin instance, a component plus its config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginTable {
    /// `builtin:<name>` or a path to a component file (relative to the config file).
    pub source: Spanned<String>,
    /// The plugin's own config, handed to its `init` as JSON.
    #[serde(default)]
    pub config: Option<Spanned<toml::Table>>,
    /// Time one call may run before it is interrupted (wall-clock, counted in
    /// 10 ms epochs, so time the thread is descheduled counts too).
    #[serde(default = "default_call_timeout")]
    pub timeout: Duration,
    /// Time making an instance (instantiation plus the plugin's `init`) may
    /// run; instances are made at load and after one is dropped.
    #[serde(default = "default_init_timeout")]
    pub init_timeout: Duration,
    /// Linear memory one instance may grow to.
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
    /// What a connection gets when the plugin fails (default depends on the phase).
    pub fallback: Option<Fallback>,
    /// What the plugin's `io` imports may reach (health checks and discovery).
    #[serde(default)]
    pub grants: GrantsTable,
}

/// `[plugins.NAME.grants]`: the I/O a background plugin may do. Nothing is
/// granted by default; a health checker may always reach the backend it checks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsTable {
    /// URL prefixes `http-request` may fetch (`http://host:port/path/`).
    #[serde(default)]
    pub http: Vec<Spanned<String>>,
    /// `host:port` addresses `tcp-probe` may connect to.
    #[serde(default)]
    pub tcp: Vec<String>,
    /// `host:port` addresses `udp-probe` may send to.
    #[serde(default)]
    pub udp: Vec<String>,
    /// The DNS server (`ip:port`) the `dns-lookup-*` imports ask.
    pub dns: Option<Spanned<String>>,
    /// Files, or directories whose files, `read-file` may read (relative to the config file).
    #[serde(default)]
    pub files: Vec<String>,
    /// Programs `exec` may run, as absolute paths.
    #[serde(default)]
    pub exec: Vec<String>,
}

fn default_call_timeout() -> Duration {
    Duration::from_millis(100)
}

fn default_init_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_memory_limit() -> ByteSize {
    ByteSize(32 << 20)
}
