//! A running weir process: the server core, its admin API and metrics, and
//! the watch on its config file.

use crate::config::Loaded;
use crate::handover::Inherited;
use crate::plugin::{PluginInstance, Runtime};
use crate::server::{Prepared, ReloadSummary, ServerCore};
use crate::upstream::Pool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A running weir.
pub struct Server {
    core: Arc<ServerCore>,
    admin: Option<SocketAddr>,
    /// The admin API's accept loop, awaited at shutdown so its answers in
    /// progress are sent.
    admin_task: Option<tokio::task::JoinHandle<()>>,
    grace: Duration,
}

impl Server {
    /// Load plugins, build pools, bind every listener and start serving.
    pub async fn start(loaded: Loaded, runtime: Arc<Runtime>) -> anyhow::Result<Self> {
        Self::start_inheriting(loaded, runtime, &mut Inherited::default()).await
    }

    /// [`Self::start`], opening listeners (and the admin API) whose socket a
    /// previous weir process passed on those sockets instead of binding.
    pub async fn start_inheriting(
        loaded: Loaded,
        runtime: Arc<Runtime>,
        inherited: &mut Inherited,
    ) -> anyhow::Result<Self> {
        let grace = loaded.config.runtime.shutdown_grace.0;
        let watch = loaded.config.runtime.watch_config;
        let admin_config = loaded.config.admin.clone();
        let admin_token = loaded.admin_token.clone();
        let prepared = Prepared::load(loaded, &runtime)?;
        let core = ServerCore::start(&prepared, runtime, inherited).await?;
        let stop = core.stopped();
        let admin = match &admin_config {
            Some(a) => {
                let addr: SocketAddr = a.bind.get_ref().parse()?;
                let listener = match inherited.admin(a.bind.get_ref()) {
                    Some(fd) => adopt(fd),
                    None => crate::server::bind(addr, 128),
                }
                .map_err(|e| prepared.source().error(&a.bind, format!("admin.bind: cannot bind {addr}: {e}")))?;
                core.keep_admin_socket(a.bind.get_ref(), &listener)?;
                let local = listener.local_addr()?;
                let control = Arc::new(crate::admin::Control {
                    core: core.clone(),
                    started: std::time::Instant::now(),
                    token: admin_token,
                    metrics: crate::metrics::registry(core.clone()),
                });
                let task = tokio::spawn(crate::admin::serve(listener, control, stop.clone(), grace));
                tracing::info!(%local, "admin API listening");
                Some((local, task))
            }
            None => None,
        };
        let (admin, admin_task) = admin.unzip();
        if watch {
            // Compare with the text loaded, not with the file's state now,
            // which may already have changed.
            let loaded_text = core.snapshot().source.text.clone();
            tokio::spawn(watch_config(Arc::downgrade(&core), loaded_text, stop.clone()));
        }
        Ok(Self { core, admin, admin_task, grace })
    }

    /// The shared core (reload, snapshot).
    pub fn core(&self) -> &Arc<ServerCore> {
        &self.core
    }

    /// Apply a new config text (see [`ServerCore::reload`]).
    pub async fn reload(&self, source: crate::config::Source) -> Result<ReloadSummary, String> {
        self.core.reload(source).await
    }

    /// The bound address of a listener.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.core.snapshot().listeners.get(name).map(|l| l.address)
    }

    /// The bound address of the admin API, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// A plugin instance by name.
    pub fn plugin(&self, name: &str) -> Option<Arc<PluginInstance>> {
        self.core.snapshot().plugins.get(name).cloned()
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.core.snapshot().pools.get(name).cloned()
    }

    /// Connections being proxied now.
    pub fn connections(&self) -> usize {
        self.core.connections()
    }

    /// Stop accepting, then let in-flight connections finish for up to the
    /// configured grace period. Returns how many were cut off.
    pub async fn shutdown(self) -> usize {
        let cut = self.core.shutdown(self.grace).await;
        if let Some(task) = self.admin_task {
            let _ = task.await;
        }
        cut
    }
}

/// The admin API's listening socket as a previous process passed it.
fn adopt(fd: std::os::fd::OwnedFd) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Reload whenever the config file's text differs from the text last
/// loaded from it (checked every second), for as long as the server runs.
/// Edits made through the admin API do not count as changes of the file.
async fn watch_config(core: std::sync::Weak<ServerCore>, mut last: String, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(core) = core.upgrade() else { return };
        let Some(file) = core.snapshot().file.clone() else {
            tracing::warn!("watch_config: the config did not come from a file; not watching");
            return;
        };
        let Ok(now) = tokio::fs::read_to_string(&file).await else { continue };
        if now != last {
            last = now;
            // A refused config is logged by the reload itself.
            if let Ok(summary) = core.reload_file().await {
                tracing::info!(?summary, "config file changed: reloaded");
            }
        }
    }
}

/// Register for SIGINT and SIGTERM now (so none is missed while starting up);
/// the returned future resolves when one arrives.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
