//! Active health checks: per pool, every `interval`, each backend of the
//! current member list is judged by the pool's health-check plugin on a
//! blocking thread; `rise` passes in a row bring a backend up, `fall`
//! failures take it down. Checks never block traffic.

use crate::plugin::PluginInstance;
use crate::upstream::Pool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Checks of one pool running at once, at most.
const CONCURRENT_CHECKS: usize = 64;

/// How a pool's backends are checked.
#[derive(Debug, Clone, Copy)]
pub struct CheckSettings {
    /// Time between checks of a backend.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Passes in a row that bring a down backend up.
    pub rise: u32,
    /// Failures in a row that take an up backend down.
    pub fall: u32,
}

/// Run one round: check every backend of the current member list once.
pub async fn check_round(pool: &Arc<Pool>, checker: &Arc<PluginInstance>, s: CheckSettings) {
    let members = pool.members();
    let permits = Arc::new(Semaphore::new(CONCURRENT_CHECKS));
    let mut running = JoinSet::new();
    let proxy = pool.settings.send_proxy;
    for backend in members.backends.iter().cloned() {
        let target = members.wit_backends[backend.slot as usize].clone();
        let checker = checker.clone();
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        running.spawn_blocking(move || {
            let verdict = match checker.check(&target, proxy, s.timeout) {
                Ok(v) => v,
                Err(e) => Err(format!("check failed: {:?}: {}", e.kind, e.message)),
            };
            drop(permit);
            (backend, verdict)
        });
    }
    while let Some(done) = running.join_next().await {
        let Ok((backend, verdict)) = done else { continue };
        let reason = verdict.as_ref().err().cloned().unwrap_or_default();
        match pool.record_check(&backend, verdict, s.rise, s.fall) {
            Some(true) => tracing::info!(pool = %pool.name, backend = %backend.address, "health: up"),
            Some(false) => tracing::warn!(pool = %pool.name, backend = %backend.address, %reason, "health: down"),
            None => {}
        }
    }
}

/// Check the pool's backends every `interval` until `stop`; `first_round`
/// runs once the first round is done.
pub fn spawn(
    pool: Arc<Pool>,
    checker: Arc<PluginInstance>,
    s: CheckSettings,
    stop: CancellationToken,
    first_round: Option<Box<dyn FnOnce() + Send>>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(s.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first_round = first_round;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            check_round(&pool, &checker, s).await;
            if let Some(done) = first_round.take() {
                done();
            }
        }
    });
}
