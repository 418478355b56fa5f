//! Shared helpers for weir's integration tests: tagged echo backends that can
//! be stopped and restarted, weir started in-process from a config text, a
//! client that sends, half-closes and reads everything back, and the paths of
//! the example and test plugin components.

pub mod dns;
pub mod lang;
pub mod pki;
pub mod web;

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use weir::config::{Loaded, Source};
use weir::plugin::Runtime;
use weir::Server;

/// Every network wait in the tests is bounded by this.
pub const STEP: Duration = Duration::from_secs(10);

/// A component built from `examples/plugins/rust/<name>` or `tests/plugins/<name>`.
pub fn component(package: &str) -> PathBuf {
    let path = PathBuf::from(env!("WEIR_TEST_COMPONENTS")).join(format!("{package}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A backend that writes its name and a newline, then echoes every byte it
/// receives until the client half-closes, then closes its side.
pub struct EchoBackend {
    /// Name sent first on every connection.
    pub name: String,
    /// Bound address.
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl EchoBackend {
    /// Start on a free loopback port.
    pub async fn start(name: &str) -> Result<Self> {
        Self::start_on(name, "127.0.0.1:0".parse()?).await
    }

    /// Start on a given address (to restart a stopped backend on its port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve_echo(listener, name.to_string(), accepted.clone()));
        Ok(Self { name: name.into(), addr, accepted, task: Some(task) })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stop listening (new connections are refused) and end open connections.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Start again on the same port.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        let again = Self::start_on(&self.name, self.addr).await?;
        *self = again;
        Ok(())
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn serve_echo(listener: TcpListener, name: String, accepted: Arc<AtomicU64>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let name = name.clone();
        // Owned by the set: aborting the server task closes these too.
        conns.spawn(async move {
            let (mut r, mut w) = stream.split();
            if w.write_all(format!("{name}\n").as_bytes()).await.is_ok() {
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Connect, send `payload`, half-close, and read until the other side closes.
/// Returns the backend's name and the echoed bytes.
pub async fn exchange(addr: SocketAddr, payload: &[u8]) -> Result<(String, Vec<u8>)> {
    let mut stream = tokio::time::timeout(STEP, TcpStream::connect(addr)).await??;
    let (mut r, mut w) = stream.split();
    let send = async {
        w.write_all(payload).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    };
    let mut got = Vec::with_capacity(payload.len() + 32);
    let recv = r.read_to_end(&mut got);
    let (sent, received) = tokio::time::timeout(STEP, async { tokio::join!(send, recv) }).await?;
    sent?;
    received?;
    let Some(newline) = got.iter().position(|&b| b == b'\n') else {
        bail!("no backend name in reply ({} bytes)", got.len())
    };
    let name = String::from_utf8(got[..newline].to_vec())?;
    Ok((name, got[newline + 1..].to_vec()))
}

/// Connect and return what the server sent before closing (with a deadline).
pub async fn read_all(addr: SocketAddr) -> Result<Vec<u8>> {
    let mut stream = tokio::time::timeout(STEP, TcpStream::connect(addr)).await??;
    let mut got = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut got)).await??;
    Ok(got)
}

/// A plugin runtime with a compile cache shared by the test processes.
pub fn runtime() -> Arc<Runtime> {
    let cache = std::env::temp_dir().join("weir-test-plugin-cache");
    Runtime::new(Some(cache)).expect("plugin runtime")
}

/// Parse a config text (paths relative to the current directory).
pub fn config(text: &str) -> Result<Loaded> {
    Ok(Loaded::parse(Source { origin: "test.toml".into(), text: text.into() })?)
}

/// Start weir in-process on a config text.
pub async fn start_weir(text: &str) -> Result<Server> {
    Server::start(config(text)?, runtime()).await
}

/// Poll `cond` every 10 ms until it holds or `STEP` passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// TOML array of the backends' addresses.
pub fn addresses(backends: &[&EchoBackend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!("[{}]", list.join(", "))
}

/// weir run as a separate process (`weir run -c weir.toml` in a scratch
/// directory), killed when dropped.
pub struct WeirProcess {
    /// The child process.
    pub child: std::process::Child,
    /// Bound address of the first listener the log reported.
    pub addr: SocketAddr,
    /// The scratch directory holding `weir.toml`.
    pub dir: PathBuf,
    /// Every log line so far.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl WeirProcess {
    /// Write `config` and start `bin run` on it; wait for its "listening" log line.
    pub fn spawn(bin: &std::path::Path, name: &str, config: &str) -> Result<Self> {
        Self::spawn_with(bin, name, config, &[])
    }

    /// [`WeirProcess::spawn`] with extra global options (e.g. `--log-format json`).
    pub fn spawn_with(bin: &std::path::Path, name: &str, config: &str, options: &[&str]) -> Result<Self> {
        Self::spawn_in_env(bin, name, config, options, &[])
    }

    /// [`Self::spawn_with`], with these environment variables set for weir.
    pub fn spawn_in_env(
        bin: &std::path::Path,
        name: &str,
        config: &str,
        options: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self> {
        use std::io::{BufRead, BufReader};
        let dir = std::env::temp_dir().join(format!("weir-proc-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("weir.toml"), config)?;
        let mut child = std::process::Command::new(bin)
            .args(["--log-level", "info"])
            .args(options)
            .args(["run", "-c", "weir.toml"])
            .current_dir(&dir)
            .env("WEIR_CACHE_DIR", std::env::temp_dir().join("weir-test-plugin-cache"))
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        // Keep draining the log so weir never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line.clone());
                if !sent {
                    // Plain (`local=ADDR`) or JSON (`"local":"ADDR"`) log lines.
                    let found = match (line.split("local=").nth(1), line.split("\"local\":\"").nth(1)) {
                        (Some(rest), _) => rest.split_whitespace().next(),
                        (None, Some(rest)) => rest.split('"').next(),
                        _ => None,
                    };
                    if let Some(addr) = found {
                        sent = tx.send(addr.parse::<SocketAddr>()).is_ok();
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(STEP) {
            Ok(a) => a?,
            Err(_) => {
                let _ = child.kill();
                bail!("weir did not report a listening address");
            }
        };
        Ok(Self { child, addr, dir, log })
    }

    /// The `local=` address of the first log line containing `what`
    /// (`"admin API listening"`, `"listener=web"`), waiting for it.
    pub fn logged_address(&self, what: &str) -> Result<String> {
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let line = self
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|l| l.contains(what) && l.contains("local="))
                .cloned();
            if let Some(addr) = line.as_deref().and_then(|l| l.split("local=").nth(1)?.split_whitespace().next()) {
                return Ok(addr.to_string());
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "no `{what}` address logged");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Whether a log line so far contains every one of `parts`.
    pub fn logged(&self, parts: &[&str]) -> bool {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|l| parts.iter().all(|p| l.contains(p)))
    }

    /// Send a signal (`HUP`, `TERM`, ...) to the process.
    pub fn signal(&self, name: &str) -> Result<()> {
        let status =
            std::process::Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// Peak resident memory (VmHWM) of the process, in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
        Ok(line.split_whitespace().nth(1).context("VmHWM value")?.parse()?)
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real nginx on a loopback port, started from a generated config and
/// stopped when dropped; an error when nginx is not installed. One process
/// (`master_process off`): killing it leaves no orphaned worker holding the
/// port.
pub struct Nginx {
    child: std::process::Child,
    /// Bound address.
    pub addr: SocketAddr,
    /// Scratch directory (config, logs, `www/` document root).
    pub dir: PathBuf,
}

impl Nginx {
    /// Start nginx serving `www/` plus `location` blocks given in `locations`.
    pub async fn start(name: &str, locations: &str, files: &[(&str, &[u8])]) -> Result<Self> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists());
        let bin = bin.context("nginx is not installed: run scripts/setup --test, which installs it")?;
        let dir = std::env::temp_dir().join(format!("weir-nginx-{name}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("www"))?;
        for (file, content) in files {
            std::fs::write(dir.join("www").join(file), content)?;
        }
        let port = free_port()?;
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
             fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
             default_type application/octet-stream;\n\
             server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n    add_header X-BE {name};\n{locations}\n  }}\n}}\n"
        );
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = std::process::Command::new(bin)
            .args(["-e", &format!("{d}/error.log"), "-c"])
            .arg(dir.join("nginx.conf"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = std::time::Instant::now() + STEP;
        while TcpStream::connect(addr).await.is_err() {
            if std::time::Instant::now() > deadline {
                bail!("nginx did not start: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { child, addr, dir })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port, for TCP and UDP alike, for a peer (HAProxy, nginx,
/// dnsmasq, pebble) that must be told its port ahead. Picked at random below
/// the kernel's ephemeral range and checked free, not taken from `:0`: that
/// gives an ephemeral port, which the outgoing connections of every test
/// running beside this one draw from, so one of them could take it before
/// the peer binds it.
pub fn free_port() -> Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(10_100));
    for attempt in 0u32..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u32(attempt);
        let port = from + (h.finish() % u64::from(to - from)) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port found in {from}..{to}")
}

/// Connect to `addr` from the loopback address `from` (e.g. `127.0.0.2`),
/// so the client's address differs from that of a proxy on 127.0.0.1.
pub async fn connect_from(from: &str, addr: SocketAddr) -> Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse()?, 0))?;
    Ok(tokio::time::timeout(STEP, socket.connect(addr)).await??)
}

/// A real HAProxy started in the foreground (`-db`) from a generated config
/// (a `global`/`defaults` preamble plus the given sections), killed when
/// dropped; an error when haproxy is not installed.
pub struct Haproxy {
    child: std::process::Child,
    /// Scratch directory holding `haproxy.cfg` and its output.
    pub dir: PathBuf,
}

impl Haproxy {
    /// Start HAProxy on `sections` and wait until every address in `ready` accepts.
    pub async fn start(name: &str, sections: &str, ready: &[SocketAddr]) -> Result<Self> {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"].into_iter().find(|p| std::path::Path::new(p).exists());
        let bin = bin.context("haproxy is not installed: run scripts/setup --test, which installs it")?;
        let dir = std::env::temp_dir().join(format!("weir-haproxy-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let conf = format!(
            "global\n  maxconn 256\n\ndefaults\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\n{sections}\n"
        );
        std::fs::write(dir.join("haproxy.cfg"), conf)?;
        let out = std::fs::File::create(dir.join("output.log"))?;
        let child = std::process::Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut haproxy = Self { child, dir };
        let deadline = std::time::Instant::now() + STEP;
        for addr in ready {
            while TcpStream::connect(addr).await.is_err() {
                let exited = haproxy.child.try_wait()?.is_some();
                if exited || std::time::Instant::now() > deadline {
                    bail!("haproxy did not start: {}", haproxy.output());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(haproxy)
    }

    /// What HAProxy printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("output.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
