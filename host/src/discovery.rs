//! Service discovery: per pool, every `interval`, the pool's discovery
//! plugin lists the backends on a blocking thread and the pool's member
//! list is replaced by what it found (backends that stay keep their
//! counters, health and connections). A failed discovery keeps the last
//! list or empties the pool, as the pool's `failpolicy` says.

use crate::config::FailPolicy;
use crate::plugin::PluginInstance;
use crate::upstream::{BackendSpec, Pool};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a pool's backends are discovered.
#[derive(Debug, Clone, Copy)]
pub struct DiscoverySettings {
    /// Time between discoveries.
    pub interval: Duration,
    /// Time one discovery may take.
    pub timeout: Duration,
    /// What a failure does.
    pub failpolicy: FailPolicy,
}

/// Discover once and apply the result. Returns whether discovery succeeded.
pub async fn discover_once(pool: &Arc<Pool>, plugin: &Arc<PluginInstance>, s: DiscoverySettings) -> bool {
    let call = plugin.clone();
    let found = match tokio::task::spawn_blocking(move || call.discover(s.timeout)).await {
        Ok(r) => r.map_err(|e| format!("{:?}: {}", e.kind, e.message)),
        Err(e) => Err(format!("discovery task failed: {e}")),
    };
    match found {
        Ok(list) => {
            let specs: Vec<BackendSpec> = list
                .into_iter()
                .filter(|d| {
                    let ok = crate::config::is_host_port(&d.address);
                    if !ok {
                        tracing::warn!(pool = %pool.name, address = %d.address, "discovery: ignoring an address that is not host:port");
                    }
                    ok
                })
                .map(|d| BackendSpec { address: d.address, weight: d.weight, priority: d.priority, tags: d.tags })
                .collect();
            let change = pool.set_members(specs);
            if !change.is_empty() {
                tracing::info!(
                    pool = %pool.name,
                    added = ?change.added,
                    removed = ?change.removed,
                    changed = ?change.changed,
                    "discovery: backends changed"
                );
            }
            true
        }
        Err(reason) => {
            match s.failpolicy {
                FailPolicy::Keeplast => {
                    tracing::warn!(pool = %pool.name, %reason, "discovery failed; keeping the last backends")
                }
                FailPolicy::Setempty => {
                    tracing::warn!(pool = %pool.name, %reason, "discovery failed; pool emptied (failpolicy setempty)");
                    pool.set_members(Vec::new());
                }
            }
            false
        }
    }
}

/// Discover every `interval` until `stop`.
pub fn spawn(pool: Arc<Pool>, plugin: Arc<PluginInstance>, s: DiscoverySettings, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(s.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first discovery ran before the listeners opened.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            discover_once(&pool, &plugin, s).await;
        }
    });
}
