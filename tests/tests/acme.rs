//! ACME end to end against a real ACME CA on loopback: Pebble (Let's
//! Encrypt's test server, a Debian package) validates weir's HTTP-01 answer
//! on weir's HTTP listener, resolving the name through pebble-challtestsrv's
//! DNS, and weir then serves the issued certificate on its HTTPS listener,
//! which curl verifies against Pebble's root; when the certificate is due,
//! weir orders a new one and serves it without a restart.

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir_tests::pki::{self, Pki};
use weir_tests::web::HttpBackend;
use weir_tests::*;

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

/// A child process killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(program: &str, args: &[String], env: &[(&str, &str)], log: &Path) -> Result<Child> {
    ensure!(
        Path::new(program).exists(),
        "{program} is missing: install the Debian package pebble (scripts/setup --test does)"
    );
    let out = std::fs::File::create(log)?;
    let child = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    Ok(Child(child))
}

async fn wait_for_port(port: u16, what: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            bail!("{what} never listened on {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn curl(args: &[&str]) -> Result<(bool, String)> {
    let out = tokio::time::timeout(STEP, tokio::process::Command::new("curl").args(args).kill_on_drop(true).output())
        .await
        .context("curl timed out")??;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_obtained_from_pebble_over_http_01_and_served() -> Result<()> {
    let pki = Pki::new("acme")?;
    let dir = pki.dir.clone();
    let pebble_tls = pki.server("pebble", &["localhost"])?;
    let storage: PathBuf = dir.join("acme-storage");
    let backend = HttpBackend::start("site").await?;
    let pebble_port = free_port()?;
    let weir = start_weir(&format!(
        r#"
[acme]
directory = "https://localhost:{pebble_port}/dir"
ca = "{ca}"
storage = "{storage}"
contact = ["mailto:ops@acme.test"]
check_interval = "1s"
# Longer than Pebble's certificates live: every check finds the certificate
# due, so the test sees a renewal without waiting for an expiry.
renew_before = "100y"

[pools.p]
backends = ["{backend}"]

[listeners.http]
bind = "127.0.0.1:0"
protocol = "http"
pool = "p"

[listeners.https]
bind = "127.0.0.1:0"
protocol = "https"
pool = "p"
tls.acme = ["acme.test"]
tls.watch_interval = "100ms"
"#,
        ca = pki.ca_file.display(),
        storage = storage.display(),
        backend = backend.addr,
    ))
    .await?;
    let http = weir.listener_addr("http").context("http listener")?;
    let https = weir.listener_addr("https").context("https listener")?;

    // Pebble resolves acme.test through challtestsrv (A: 127.0.0.1, no AAAA)
    // and validates on weir's HTTP port.
    let (dns_port, mgmt_port, pebble_mgmt) = (free_port()?, free_port()?, free_port()?);
    let _dns = spawn(
        CHALLTESTSRV,
        &[
            "-defaultIPv4=127.0.0.1".into(),
            "-defaultIPv6=".into(),
            format!("-dns01=127.0.0.1:{dns_port}"),
            "-http01=".into(),
            "-https01=".into(),
            "-tlsalpn01=".into(),
            format!("-management=127.0.0.1:{mgmt_port}"),
        ],
        &[],
        &dir.join("challtestsrv.log"),
    )?;
    wait_for_port(mgmt_port, "pebble-challtestsrv").await?;
    let config = dir.join("pebble.json");
    std::fs::write(
        &config,
        serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{pebble_port}"),
            "managementListenAddress": format!("127.0.0.1:{pebble_mgmt}"),
            "certificate": pebble_tls.cert,
            "privateKey": pebble_tls.key,
            "httpPort": http.port(),
            "tlsPort": free_port()?,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )?;
    let pebble_log = dir.join("pebble.log");
    let _pebble = spawn(
        PEBBLE,
        &["-config".into(), config.display().to_string(), "-dnsserver".into(), format!("127.0.0.1:{dns_port}")],
        &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
        &pebble_log,
    )?;
    wait_for_port(pebble_port, "pebble").await?;

    // weir retries its order every second until Pebble answers, then loads
    // the issued certificate from its storage.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let served = loop {
        if let Ok(tls) = pki::connect(https, "acme.test", pki::any_certificate()).await {
            if let Some(certs) = tls.get_ref().1.peer_certificates() {
                break certs[0].as_ref().to_vec();
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no certificate served for acme.test; pebble said:\n{}",
                std::fs::read_to_string(&pebble_log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Renewal: the next check orders a new certificate, stored over the
    // old one and served without a restart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        if let Ok(tls) = pki::connect(https, "acme.test", pki::any_certificate()).await {
            if let Some(certs) = tls.get_ref().1.peer_certificates() {
                if certs[0].as_ref() != served.as_slice() {
                    break certs[0].as_ref().to_vec();
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the certificate for acme.test was not renewed within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("ACME: first certificate {} bytes, renewed one {} bytes, different", served.len(), renewed.len());
    assert!(storage.join("account.json").exists(), "the account is kept for the next order");
    let stored = std::fs::read_to_string(storage.join("acme.test.pem"))?;
    assert!(stored.matches("BEGIN CERTIFICATE").count() >= 2, "the chain is stored, leaf first");
    assert!(!served.is_empty());

    // curl trusting only Pebble's root verifies weir's certificate for acme.test.
    let mgmt = format!("https://localhost:{pebble_mgmt}/roots/0");
    let pin = format!("localhost:{pebble_mgmt}:127.0.0.1");
    let (ok, root) = curl(&["-sS", "--cacert", &pki.ca_file.display().to_string(), "--resolve", &pin, &mgmt]).await?;
    ensure!(ok && root.contains("BEGIN CERTIFICATE"), "no Pebble root: {root}");
    let root_file = dir.join("pebble-root.pem");
    std::fs::write(&root_file, root)?;
    let resolve = format!("acme.test:{}:127.0.0.1", https.port());
    let url = format!("https://acme.test:{}/", https.port());
    let (ok, headers) = curl(&[
        "-sS",
        "--cacert",
        &root_file.display().to_string(),
        "--resolve",
        &resolve,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &url,
    ])
    .await?;
    assert!(ok, "curl did not verify the ACME certificate: {headers}");
    assert!(headers.to_ascii_lowercase().contains("x-backend: site"), "{headers}");

    // The challenge answer is gone once the order is done.
    let client = weir_tests::web::client_h1();
    let got = weir_tests::web::send(&client, weir_tests::web::get(http, "acme.test", "/.well-known/acme-challenge/x"))
        .await?;
    assert_eq!(got.header("x-backend"), "site", "unknown tokens go to the pool like any path");
    drop(client);
    weir.shutdown().await;
    Ok(())
}
