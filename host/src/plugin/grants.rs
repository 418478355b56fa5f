//! What a plugin instance's `io` imports may reach: the grants of its
//! config, and the scope of the call under way (its deadline, the backend a
//! health check judges). Data only: `io.rs` enforces it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

/// What a plugin instance may reach, from `grants` in its config.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// URL prefixes for `http-request`.
    pub http: Vec<String>,
    /// `host:port` targets for `tcp-probe`.
    pub tcp: Vec<String>,
    /// `host:port` targets for `udp-probe`.
    pub udp: Vec<String>,
    /// The DNS server for `dns-lookup-*`.
    pub dns: Option<SocketAddr>,
    /// Files, or directories whose files, `read-file` may read.
    pub files: Vec<PathBuf>,
    /// Programs `exec` may run (exact paths).
    pub exec: Vec<PathBuf>,
}

impl Grants {
    /// The `grants` table of a plugin instance; relative file paths are
    /// taken from `base_dir` (the config file's directory).
    pub fn from_config(g: &crate::config::GrantsTable, base_dir: &std::path::Path) -> Self {
        Self {
            http: g.http.iter().map(|u| u.get_ref().clone()).collect(),
            tcp: g.tcp.clone(),
            udp: g.udp.clone(),
            dns: g.dns.as_ref().and_then(|d| d.get_ref().parse().ok()),
            files: g.files.iter().map(|f| base_dir.join(f)).collect(),
            exec: g.exec.iter().map(Into::into).collect(),
        }
    }
}

/// The I/O context of one call: what the call may reach besides the
/// grants, and when it must be done.
#[derive(Debug, Clone)]
pub struct CallScope {
    /// The backend a health check is judging, which it may always reach.
    pub target: Option<String>,
    /// The PROXY protocol version the target's pool speaks to it: every
    /// connection to the target then starts with a `LOCAL` header, so that a
    /// backend that requires PROXY can be checked.
    pub proxy: Option<crate::proxy_protocol::Version>,
    /// When the call's time is up.
    pub deadline: Instant,
}
