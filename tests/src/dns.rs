//! A real dnsmasq on loopback for the DNS tests (discovery, UDP).

use crate::STEP;
use anyhow::{bail, ensure, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// A child process killed (and reaped) when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where Debian's dnsmasq-base puts the binary.
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A real dnsmasq answering only the records given on its command line, on
/// 127.0.0.1 and a fixed UDP port; restartable with other records.
pub struct Dnsmasq {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Dnsmasq {
    /// The address it answers on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Start on `port`, logging to `log`, with `records` as extra arguments.
    pub async fn start(port: u16, log: PathBuf, records: &[String]) -> Result<Self> {
        let mut d = Self { port, log, child: None };
        d.restart(records).await?;
        Ok(d)
    }

    /// Stop dnsmasq (if running) and start it again on the same port with `records`.
    pub async fn restart(&mut self, records: &[String]) -> Result<()> {
        ensure!(
            Path::new(DNSMASQ).exists(),
            "{DNSMASQ} is missing: install the Debian package dnsmasq-base (scripts/setup --test does)"
        );
        self.child = None;
        let log = std::fs::File::create(&self.log)?;
        let child = std::process::Command::new(DNSMASQ)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--conf-file=/dev/null",
                "--user=root",
                "--log-facility=-",
            ])
            .arg(format!("--port={}", self.port))
            .args(records)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dnsmasq")?;
        self.child = Some(Child(child));
        self.wait_ready().await
    }

    /// Ask for `web.test` A until an answer with our id comes back.
    async fn wait_ready(&mut self) -> Result<()> {
        let mut query = vec![0x57, 0x31, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["web", "test"] {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let deadline = Instant::now() + STEP;
        let mut buf = [0u8; 512];
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.0.try_wait()) {
                bail!("dnsmasq exited with {status}: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            ensure!(Instant::now() < deadline, "dnsmasq did not answer on port {}", self.port);
            socket.send_to(&query, ("127.0.0.1", self.port)).await?;
            if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await {
                if n >= 2 && buf[..2] == query[..2] {
                    return Ok(());
                }
            }
        }
    }
}
