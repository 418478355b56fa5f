//! What runs now, as one immutable value: the admin API, the metrics and the
//! tests read it, a reload replaces it whole.

use crate::plugin::PluginInstance;
use crate::upstream::Pool;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// What runs now, as the admin API, metrics and tests read it.
pub struct Snapshot {
    /// Plugin instances by name.
    pub plugins: BTreeMap<String, Arc<PluginInstance>>,
    /// Pools by name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// Listeners by name.
    pub listeners: BTreeMap<String, ListenerInfo>,
    /// The config text in force and where it came from.
    pub source: crate::config::Source,
    /// The file SIGHUP and `weir reload` re-read: the one weir started
    /// with (a config given as text has none).
    pub file: Option<std::path::PathBuf>,
}

/// A listener as the admin API and metrics show it.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Bound address.
    pub address: SocketAddr,
    /// `tcp`, `tls`, `http`, `https` or `udp`.
    pub protocol: &'static str,
    /// Its pool.
    pub pool: String,
    /// Its counters.
    pub stats: Arc<crate::listener::ListenerStats>,
    /// Its connection caps (TCP, TLS and HTTP).
    pub caps: Option<Arc<crate::listener::ConnectionCaps>>,
    /// The certificates it terminates TLS with.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

/// What a reload changed (the admin API's answer to a reload or a
/// listener change, so its schema is in the OpenAPI document).
#[derive(Debug, Default, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ReloadSummary {
    /// Listeners opened.
    pub listeners_added: Vec<String>,
    /// Listeners closed (their connections drain).
    pub listeners_removed: Vec<String>,
    /// Plugin instances loaded anew (the others were kept as they were).
    pub plugins_loaded: Vec<String>,
    /// Pools in the new config.
    pub pools: Vec<String>,
}
