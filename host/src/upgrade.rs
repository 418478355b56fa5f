//! Hitless binary upgrade (`weir upgrade`, `POST /upgrade`, `SIGUSR2`): the
//! running process starts the `weir` binary found at the path it was started
//! from (the new one, once installed there) with its own arguments, hands it
//! every listening socket (`handover`), and once the new process says it
//! serves, stops accepting and drains like a shutdown. Connections waiting
//! in a backlog are the new process's to accept; none is refused, and those
//! in progress finish here. If the new process fails to start or to take
//! over, it is stopped and this one goes on as before.

use crate::handover::{self, SOCKET_ENV};
use crate::server::ServerCore;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a new process may take to load its plugins and take over
/// (a new binary may compile every plugin afresh).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The binary and arguments this process was started with.
static STARTED_AS: OnceLock<(PathBuf, Vec<OsString>)> = OnceLock::new();

/// One upgrade at a time.
static UNDER_WAY: AtomicBool = AtomicBool::new(false);

/// Note the binary's path and the arguments now, before an upgrade replaces
/// the file (after which the running binary's own path reads "(deleted)").
pub fn remember_how_started() {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("weir"));
    let _ = STARTED_AS.set((exe, std::env::args_os().skip(1).collect()));
}

/// A new process serves.
pub struct Upgraded {
    /// Its pid.
    pub pid: u32,
    /// What this process runs that the new one, started from the config
    /// file, does not.
    pub not_carried_over: Vec<String>,
}

/// Start the new process and hand it the listening sockets; its pid once
/// it serves. This process then retires ([`ServerCore::retire`]): whoever
/// runs it waits on [`ServerCore::retired`] and shuts it down.
pub async fn hand_over(core: &ServerCore) -> Result<Upgraded> {
    ensure!(!UNDER_WAY.swap(true, Ordering::AcqRel), "an upgrade is already under way");
    let result = start_successor(core).await;
    match &result {
        Ok(pid) => {
            tracing::info!(pid, "upgrade: the new process serves; this one stops accepting and drains");
            // A supervisor (systemd `Type=notify`, `NotifyAccess=all`)
            // follows the new process from now on.
            if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::MainPid(*pid)]) {
                tracing::warn!("NOTIFY_SOCKET: {e}");
            }
            core.retire();
        }
        Err(e) => {
            tracing::error!("upgrade failed, this process goes on serving: {e:#}");
            UNDER_WAY.store(false, Ordering::Release);
        }
    }
    let pid = result?;
    let not_carried_over = not_carried_over(core);
    for lost in &not_carried_over {
        tracing::warn!("upgrade: not carried over: {lost}");
    }
    Ok(Upgraded { pid, not_carried_over })
}

/// Changes made through the admin API, which the new process (started from
/// the config file, like a restart) does not have: uploaded plugin
/// generations, and a config in force that is not the file's text.
fn not_carried_over(core: &ServerCore) -> Vec<String> {
    let now = core.snapshot();
    let mut lost: Vec<String> = now
        .plugins
        .iter()
        .filter(|(_, p)| p.generation().source == "upload")
        .map(|(name, p)| {
            format!(
                "plugin `{name}`: uploaded generation {} (the new process loads its configured source)",
                p.generation().number
            )
        })
        .collect();
    if let Some(file) = &now.file {
        if std::fs::read_to_string(file).ok().as_deref() != Some(now.source.text.as_str()) {
            lost.push(format!(
                "the config in force is not {}'s text (changed through the admin API or the file since): the new process runs the file",
                file.display()
            ));
        }
    }
    lost
}

async fn start_successor(core: &ServerCore) -> Result<u32> {
    let sockets = core.handover_sockets().await.context("listening sockets")?;
    let count = sockets.len();
    let scratch = Scratch::new()?;
    let path = scratch.0.join("handover.sock");
    let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    let (exe, args) = STARTED_AS.get().cloned().ok_or_else(|| anyhow!("not started by `weir run`"))?;
    let mut child = tokio::process::Command::new(&exe)
        .args(&args)
        .env(SOCKET_ENV, &path)
        .stdin(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id().context("the new process has no pid")?;
    tracing::info!(pid, binary = %exe.display(), sockets = count, "upgrade: new process started; handing it the listening sockets");
    let taken = async {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted?.0,
            status = child.wait() => bail!("it exited ({}) before taking over", status?),
        };
        let peer = stream.peer_cred()?.pid();
        ensure!(peer == Some(pid as i32), "a process other than the new one ({peer:?}) came for the sockets");
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let exchange = tokio::task::spawn_blocking(move || {
            handover::send(&stream, &sockets)?;
            handover::answer(&stream)
        });
        tokio::select! {
            answered = exchange => match answered?? {
                Ok(()) => Ok(()),
                Err(why) => bail!("it could not take over: {why}"),
            },
            status = child.wait() => bail!("it exited ({}) before taking over", status?),
        }
    };
    let outcome =
        tokio::time::timeout(TIMEOUT, taken).await.unwrap_or_else(|_| Err(anyhow!("no answer in {TIMEOUT:?}")));
    match outcome {
        Ok(()) => Ok(pid),
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(e.context(format!("new process {pid} ({})", exe.display())))
        }
    }
}

/// A directory only this user can enter, for the handover socket; removed
/// when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir =
            std::env::temp_dir().join(format!("weir-upgrade-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
