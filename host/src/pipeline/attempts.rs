//! The balance phase with its retries: one attempt after another, each on a
//! backend the pool's balancer picks among the healthy ones not tried yet.

use super::settle;
use crate::plugin::bindings::types;
use crate::plugin::HttpPick;
use crate::upstream::{Backend, Balancer, Members, Pool};
use std::sync::Arc;

/// The attempts of one connection, session or request on a pool. It works
/// on the member list of its start to the end, so a discovery swap never
/// changes a slot under it.
pub struct Attempts<'a> {
    pool: &'a Arc<Pool>,
    members: Arc<Members>,
    conn: &'a types::Connection,
    hash_key: Option<&'a str>,
    tried: Vec<u32>,
}

impl<'a> Attempts<'a> {
    /// Attempts of `conn` on `pool`, with the balancer's hash key.
    pub fn new(pool: &'a Arc<Pool>, conn: &'a types::Connection, hash_key: Option<&'a str>) -> Self {
        Self { pool, members: pool.members(), conn, hash_key, tried: Vec::new() }
    }

    /// The backend of the next attempt: none when the pool's `max_tries`
    /// are used up or no backend is left (healthy and not tried yet); an
    /// error when the balancer failed and fails closed. A failed balancer
    /// call that fails open (the default) uses the host's round-robin.
    pub fn next(&mut self, http: Option<&mut HttpPick>) -> Result<Option<Arc<Backend>>, String> {
        let pool = self.pool;
        if self.tried.len() >= pool.settings.max_tries as usize {
            return Ok(None);
        }
        let eligible = pool.eligible(&self.members, &self.tried);
        if eligible.is_empty() {
            return Ok(None);
        }
        let picked = match &pool.balancer {
            Balancer::NativeRoundRobin => None,
            Balancer::Plugin(plugin) => {
                let answer = plugin.pick(&self.members, eligible.clone(), self.conn, self.hash_key, http);
                settle(plugin, answer).map_err(|e| {
                    tracing::debug!(pool = %pool.name, "balancer failed: {e}");
                    e.to_string()
                })?
            }
        };
        let slot = picked.or_else(|| pool.fallback_pick(&eligible)).ok_or("no backend")?;
        Ok(Some(self.members.backends[slot as usize].clone()))
    }

    /// The attempt on `backend` failed: it counts for passive health, and
    /// the backend is not picked again.
    pub fn failed(&mut self, backend: &Arc<Backend>) {
        backend.stats.record_connect_failure();
        self.pool.report_failure(backend);
        self.exclude(backend);
    }

    /// Pick another backend than `backend` from now on (its failure was
    /// counted already).
    pub fn exclude(&mut self, backend: &Backend) {
        self.tried.push(backend.slot);
    }

    /// Whether an attempt may follow the current one.
    pub fn another_allowed(&self) -> bool {
        self.tried.len() + 1 < self.pool.settings.max_tries as usize
    }

    /// Attempts that failed so far.
    pub fn failures(&self) -> usize {
        self.tried.len()
    }
}

/// The balance phase of a connection or UDP session: run `attempt` on the
/// picked backend within the pool's `connect_timeout`; after a failure
/// (counted for passive health) try another backend, up to `max_tries`.
/// Returns the attempt's result and its backend, or none when no attempt
/// succeeded (or the balancer failed closed).
pub async fn connect<T, F, Fut>(
    pool: &Arc<Pool>,
    conn: &types::Connection,
    hash_key: Option<&str>,
    mut attempt: F,
) -> Option<(T, Arc<Backend>)>
where
    F: FnMut(Arc<Backend>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let mut attempts = Attempts::new(pool, conn, hash_key);
    while let Some(backend) = attempts.next(None).ok()? {
        match tokio::time::timeout(pool.settings.connect_timeout, attempt(backend.clone())).await {
            Ok(Ok(done)) => return Some((done, backend)),
            Ok(Err(e)) => tracing::debug!(pool = %pool.name, backend = %backend.address, "attempt failed: {e}"),
            Err(_) => tracing::debug!(pool = %pool.name, backend = %backend.address, "attempt timed out"),
        }
        attempts.failed(&backend);
    }
    tracing::warn!(pool = %pool.name, tried = attempts.failures(), "no backend reachable");
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::bindings::connection_record;
    use crate::upstream::{BackendSpec, PoolSettings};
    use std::collections::BTreeSet;

    fn pool(backends: usize, settings: PoolSettings) -> Arc<Pool> {
        let specs = (0..backends)
            .map(|i| BackendSpec { address: format!("127.0.0.1:{}", 1000 + i), weight: 1, priority: 0, tags: vec![] })
            .collect();
        Pool::new("p", specs, Balancer::NativeRoundRobin, settings, None)
    }

    fn conn() -> types::Connection {
        let addr = "127.0.0.1:9".parse().unwrap();
        connection_record(addr, addr, 0, types::Protocol::Tcp)
    }

    #[tokio::test]
    async fn each_attempt_gets_another_backend_up_to_max_tries() {
        let pool = pool(5, PoolSettings { max_tries: 3, max_fails: 0, ..PoolSettings::default() });
        let conn = conn();
        let mut attempts = Attempts::new(&pool, &conn, None);
        let mut seen = BTreeSet::new();
        while let Some(backend) = attempts.next(None).unwrap() {
            assert!(seen.insert(backend.slot), "slot {} tried twice", backend.slot);
            attempts.failed(&backend);
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(attempts.failures(), 3);
        assert!(!attempts.another_allowed());
    }

    #[tokio::test]
    async fn attempts_stop_when_every_backend_was_tried() {
        let pool = pool(2, PoolSettings { max_tries: 5, max_fails: 0, ..PoolSettings::default() });
        let conn = conn();
        let mut attempts = Attempts::new(&pool, &conn, None);
        let first = attempts.next(None).unwrap().unwrap();
        assert!(attempts.another_allowed());
        attempts.exclude(&first);
        let second = attempts.next(None).unwrap().unwrap();
        assert_ne!(first.slot, second.slot);
        attempts.exclude(&second);
        assert!(attempts.next(None).unwrap().is_none());
    }

    #[tokio::test]
    async fn failed_attempts_count_for_passive_health() {
        let pool = pool(2, PoolSettings { max_tries: 2, max_fails: 2, ..PoolSettings::default() });
        let conn = conn();
        let first = pool.members().backends[0].clone();
        Attempts::new(&pool, &conn, None).failed(&first);
        assert!(first.is_healthy(), "one failure of two allowed");
        Attempts::new(&pool, &conn, None).failed(&first);
        assert!(!first.is_healthy(), "two failures in a row with max_fails = 2 eject it");
        for _ in 0..4 {
            assert_eq!(Attempts::new(&pool, &conn, None).next(None).unwrap().unwrap().slot, 1);
        }
    }

    #[tokio::test]
    async fn connect_retries_elsewhere_and_says_which_backend_answered() {
        let pool = pool(3, PoolSettings { max_tries: 3, max_fails: 0, ..PoolSettings::default() });
        let conn = conn();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let attempt = |backend: Arc<Backend>| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                if n < 2 {
                    Err(std::io::Error::other("refused"))
                } else {
                    Ok(backend.address.clone())
                }
            }
        };
        let (answer, backend) = connect(&pool, &conn, None, attempt).await.unwrap();
        assert_eq!(answer, backend.address);
        assert_eq!(calls.into_inner(), 3);
        let none = connect(&pool, &conn, None, |_| async { Err::<(), _>(std::io::Error::other("down")) }).await;
        assert!(none.is_none());
    }
}
