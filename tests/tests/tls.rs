//! TLS end to end, with real clients (curl, openssl s_client, rustls) and
//! TLS backends on loopback: termination with certificates chosen by SNI,
//! ALPN h2, client certificates, certificate reload, passthrough routed by
//! SNI, and pools that speak TLS to their backends.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::pki::{self, Pki};
use weir_tests::web::*;
use weir_tests::*;

/// Run a command with a bounded wait.
async fn run(program: &str, args: &[&str], stdin: &[u8]) -> Result<Output> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {program}"))?;
    let mut input = child.stdin.take().context("stdin")?;
    input.write_all(stdin).await?;
    drop(input);
    Ok(tokio::time::timeout(STEP, child.wait_with_output()).await.context("command timed out")??)
}

/// `curl` against `https://NAME:PORT/PATH` resolved to weir's address:
/// (exit code, `%{http_version} %{http_code}`, response headers).
async fn curl(
    addr: SocketAddr,
    name: &str,
    path: &str,
    ca: &std::path::Path,
    extra: &[&str],
) -> Result<(i32, String, String)> {
    let resolve = format!("{name}:{}:127.0.0.1", addr.port());
    let url = format!("https://{name}:{}{path}", addr.port());
    let ca = ca.display().to_string();
    let mut args =
        vec!["-sS", "--max-time", "10", "--cacert", &ca, "--resolve", &resolve, "-D", "-", "-o", "/dev/null"];
    args.extend_from_slice(&["-w", "\n%{http_version} %{http_code}"]);
    args.extend_from_slice(extra);
    args.push(&url);
    let out = run("curl", &args, b"").await?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (headers, summary) = text.rsplit_once('\n').unwrap_or(("", ""));
    Ok((out.status.code().unwrap_or(-1), summary.trim().to_string(), headers.to_ascii_lowercase()))
}

fn header<'a>(headers: &'a str, name: &str) -> &'a str {
    headers.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).map(str::trim).unwrap_or("")
}

fn toml_path(p: &std::path::Path) -> String {
    format!("\"{}\"", p.display())
}

/// One pool of `backend` behind a terminating listener `l` of `protocol`
/// with `certs`, plus `extra` listener keys.
fn terminating(backend: SocketAddr, protocol: &str, certs: &[&pki::Issued], extra: &str) -> String {
    let certs: Vec<String> =
        certs.iter().map(|c| format!("{{ cert = {}, key = {} }}", toml_path(&c.cert), toml_path(&c.key))).collect();
    format!(
        "[pools.p]\nbackends = [\"{backend}\"]\n\n[listeners.l]\nbind = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\n\
         pool = \"p\"\ntls.certificates = [{}]\n{extra}\n",
        certs.join(", ")
    )
}

/// The certificate a TLS server at `addr` presents for `name` (an IP
/// address: no SNI).
async fn served_cert(addr: SocketAddr, name: &str) -> Result<Vec<u8>> {
    let tls = pki::connect(addr, name, pki::any_certificate()).await?;
    let certs = tls.get_ref().1.peer_certificates().context("no certificate")?;
    Ok(certs[0].as_ref().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_picks_the_certificate_by_sni_and_proxies_bytes() -> Result<()> {
    let pki = Pki::new("sni")?;
    let a = pki.server("a", &["a.test"])?;
    let b = pki.server("b", &["b.test", "*.b.test"])?;
    let echo = EchoBackend::start("echo").await?;
    let weir = start_weir(&terminating(echo.addr, "tls", &[&a, &b], "")).await?;
    let addr = weir.listener_addr("l").context("listener")?;

    assert_eq!(served_cert(addr, "a.test").await?, a.der.as_ref());
    assert_eq!(served_cert(addr, "b.test").await?, b.der.as_ref());
    assert_eq!(served_cert(addr, "x.b.test").await?, b.der.as_ref(), "wildcard");
    // No SNI (an IP address) and an unknown name get the first certificate.
    assert_eq!(served_cert(addr, "127.0.0.1").await?, a.der.as_ref());
    assert_eq!(served_cert(addr, "other.test").await?, a.der.as_ref());

    // Bytes go through the terminated session both ways, half-close included.
    let mut tls = pki::connect(addr, "b.test", pki.client_config(&[], None)).await?;
    tls.write_all(b"over tls").await?;
    tls.shutdown().await?;
    let mut got = Vec::new();
    tokio::time::timeout(STEP, tls.read_to_end(&mut got)).await??;
    assert_eq!(String::from_utf8_lossy(&got), "echo\nover tls");

    // openssl s_client, a real client, sees b's certificate and verifies it.
    let connect = addr.to_string();
    let ca = pki.ca_file.display().to_string();
    let out =
        run("openssl", &["s_client", "-connect", &connect, "-servername", "b.test", "-CAfile", &ca], b"Q\n").await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CN = b.test") || text.contains("CN=b.test"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    // The default minimum is TLS 1.2: both versions are spoken.
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = run("openssl", &["s_client", "-connect", &connect, "-servername", "a.test", flag], b"Q\n").await?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("Protocol: {version}")) || text.contains(&format!("New, {version}")), "{text}");
    }
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_negotiates_h2_with_curl_and_says_https_upstream() -> Result<()> {
    let pki = Pki::new("h2")?;
    let cert = pki.server("site", &["site.test"])?;
    let backend = HttpBackend::start("web").await?;
    let weir = start_weir(&terminating(backend.addr, "https", &[&cert], "tls.min_version = \"1.3\"")).await?;
    let addr = weir.listener_addr("l").context("listener")?;

    let (code, summary, headers) = curl(addr, "site.test", "/h2", &pki.ca_file, &["--http2"]).await?;
    assert_eq!((code, summary.as_str()), (0, "2 200"), "{headers}");
    assert_eq!(header(&headers, "x-backend"), "web");
    assert_eq!(header(&headers, "x-seen-x-forwarded-proto"), "https");
    let (code, summary, _) = curl(addr, "site.test", "/h1", &pki.ca_file, &["--http1.1"]).await?;
    assert_eq!((code, summary.as_str()), (0, "1.1 200"));
    // min_version = "1.3": a TLS 1.2 client is refused.
    let (code, _, _) = curl(addr, "site.test", "/", &pki.ca_file, &["--tls-max", "1.2"]).await?;
    assert_ne!(code, 0, "TLS 1.2 accepted");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_and_their_identity_routes() -> Result<()> {
    let pki = Pki::new("mtls")?;
    let other = Pki::new("mtls-other")?;
    let cert = pki.server("site", &["site.test"])?;
    let alice = pki.client("alice", "alice", false)?;
    let bob = pki.client("bob", "bob", false)?;
    let expired = pki.client("old", "alice", true)?;
    let stranger = other.client("stranger", "alice", false)?;
    let (admins, users) = (HttpBackend::start("admins").await?, HttpBackend::start("users").await?);
    let weir = start_weir(&format!(
        r#"
[plugins.by-identity]
source = "builtin:cond"
config.rules = [{{ cond = 'ses_tls_client_identity_in("alice")', pool = "admins" }}]

[pools.admins]
backends = ["{}"]

[pools.users]
backends = ["{}"]

[listeners.web]
bind = "127.0.0.1:0"
protocol = "https"
pool = "users"
router = "by-identity"
tls.certificates = [{{ cert = {}, key = {} }}]
tls.client_ca = {}
"#,
        admins.addr,
        users.addr,
        toml_path(&cert.cert),
        toml_path(&cert.key),
        toml_path(&pki.ca_file)
    ))
    .await?;
    let addr = weir.listener_addr("web").context("listener")?;
    let with = |id: &weir_tests::pki::Issued| {
        vec!["--cert".to_string(), id.cert.display().to_string(), "--key".to_string(), id.key.display().to_string()]
    };
    for (who, id, pool) in [("alice", &alice, "admins"), ("bob", &bob, "users")] {
        let args = with(id);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, summary, headers) = curl(addr, "site.test", "/", &pki.ca_file, &args).await?;
        assert_eq!((code, summary.as_str()), (0, "2 200"), "{who}");
        assert_eq!(header(&headers, "x-backend"), pool, "{who}");
    }
    for (why, id) in [("expired", Some(&expired)), ("unknown CA", Some(&stranger)), ("no certificate", None)] {
        let args = id.map(with).unwrap_or_default();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, summary, _) = curl(addr, "site.test", "/", &pki.ca_file, &args).await?;
        assert_ne!(code, 0, "{why}: curl got {summary}");
    }
    assert_eq!(admins.requests() + users.requests(), 2, "refused clients reached no backend");
    weir.shutdown().await;
    Ok(())
}

/// The verified identity reaches the access phase too, on an HTTPS and on
/// a TLS (L4) listener: a test filter admits alice and refuses bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_filters_see_the_client_identity_on_https_and_tls() -> Result<()> {
    let pki = Pki::new("mtls-access")?;
    let cert = pki.server("site", &["site.test"])?;
    let (alice, bob) = (pki.client("alice", "alice", false)?, pki.client("bob", "bob", false)?);
    let web = HttpBackend::start("web").await?;
    let echo = EchoBackend::start("echo").await?;
    let tls = format!(
        "tls.certificates = [{{ cert = {}, key = {} }}]\ntls.client_ca = {}\naccess = [\"who\"]\n",
        toml_path(&cert.cert),
        toml_path(&cert.key),
        toml_path(&pki.ca_file)
    );
    let weir = start_weir(&format!(
        "[plugins.who]\nsource = {}\nconfig = {{ allow = [\"alice\"] }}\n\n\
         [pools.web]\nbackends = [\"{}\"]\n\n[pools.echo]\nbackends = [\"{}\"]\n\n\
         [listeners.https]\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\npool = \"web\"\n{tls}\n\
         [listeners.tls]\nbind = \"127.0.0.1:0\"\nprotocol = \"tls\"\npool = \"echo\"\n{tls}",
        toml_path(&component("weir-test-identity-access")),
        web.addr,
        echo.addr,
    ))
    .await?;
    let (https, l4) = (weir.listener_addr("https").context("https")?, weir.listener_addr("tls").context("tls")?);
    for (who, id, status) in [("alice", &alice, " 200"), ("bob", &bob, " 403")] {
        let (cert, key) = (id.cert.display().to_string(), id.key.display().to_string());
        let (code, summary, _) = curl(https, "site.test", "/", &pki.ca_file, &["--cert", &cert, "--key", &key]).await?;
        assert!(code == 0 && summary.ends_with(status), "{who} over HTTPS: curl {code}, {summary}");
    }
    let mut admitted = pki::connect(l4, "site.test", pki.client_config(&[], Some(&alice))).await?;
    let mut greeting = [0u8; 5];
    tokio::time::timeout(STEP, admitted.read_exact(&mut greeting)).await??;
    assert_eq!(&greeting, b"echo\n", "alice over TLS reaches the echo backend");
    let mut refused = pki::connect(l4, "site.test", pki.client_config(&[], Some(&bob))).await?;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(STEP, refused.read_to_end(&mut got)).await?;
    assert!(got.is_empty(), "bob over TLS is closed before any backend: {got:?}");
    let echo_total = weir.pool("echo").unwrap().members().backends[0].stats.total();
    assert_eq!(echo_total, 1, "only alice's connection reached the echo backend");
    assert_eq!(web.requests(), 1, "bob's request reached no backend");
    drop((admitted, refused));
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_without_restart_and_open_connections_stay() -> Result<()> {
    let pki = Pki::new("reload")?;
    let first = pki.server("site", &["site.test"])?;
    let echo = EchoBackend::start("echo").await?;
    let weir = start_weir(&terminating(echo.addr, "tls", &[&first], "tls.watch_interval = \"100ms\"")).await?;
    let addr = weir.listener_addr("l").context("listener")?;
    assert_eq!(served_cert(addr, "site.test").await?, first.der.as_ref());

    // A connection opened on the first certificate.
    let mut open = pki::connect(addr, "site.test", pki.client_config(&[], None)).await?;
    let mut greeting = [0u8; 5];
    tokio::time::timeout(STEP, open.read_exact(&mut greeting)).await??;
    assert_eq!(&greeting, b"echo\n");

    // Same file names, new certificate (a new key and serial).
    let second = pki.server("site", &["site.test"])?;
    assert_ne!(first.der, second.der);
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if served_cert(addr, "site.test").await? == second.der.as_ref() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the new certificate was never served");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The old connection still carries bytes both ways.
    open.write_all(b"still here").await?;
    let mut back = [0u8; 10];
    tokio::time::timeout(STEP, open.read_exact(&mut back)).await??;
    assert_eq!(&back, b"still here");

    // A broken file leaves the last good certificate in place.
    std::fs::write(&second.cert, "not a certificate")?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(served_cert(addr, "site.test").await?, second.der.as_ref());

    // A config reload naming other files serves their certificate on the
    // same socket at once, and the open connection still goes on.
    let third = pki.server("site-moved", &["site.test"])?;
    let text = terminating(echo.addr, "tls", &[&third], "tls.watch_interval = \"100ms\"");
    weir.reload(weir::config::Source { origin: "reload.toml".into(), text }).await.map_err(anyhow::Error::msg)?;
    assert_eq!(weir.listener_addr("l"), Some(addr));
    assert_eq!(served_cert(addr, "site.test").await?, third.der.as_ref());
    open.write_all(b"after load").await?;
    tokio::time::timeout(STEP, open.read_exact(&mut back)).await??;
    assert_eq!(&back, b"after load");
    drop(open);
    weir.shutdown().await;
    Ok(())
}

/// A passthrough weir in front of two HTTPS backends with their own
/// certificates, routed by SNI with the bundled host-path router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_by_sni_and_the_client_sees_each_backends_certificate() -> Result<()> {
    let pki = Pki::new("pass")?;
    let (cert_a, cert_b) = (pki.server("a", &["a.test"])?, pki.server("b", &["b.test"])?);
    let a = HttpBackend::start_tls("a", pki::server_config(&cert_a)).await?;
    let b = HttpBackend::start_tls("b", pki::server_config(&cert_b)).await?;
    let weir = start_weir(&format!(
        r#"
[plugins.by-sni]
source = "builtin:host-path"
config.routes = [{{ host = "a.test", pool = "a" }}, {{ host = "b.test", pool = "b" }}]

[pools.a]
backends = ["{}"]

[pools.b]
backends = ["{}"]

[listeners.tls]
bind = "127.0.0.1:0"
protocol = "tls"
pool = "a"
router = "by-sni"
tls.passthrough = true
tls.handshake_timeout = "500ms"
"#,
        a.addr, b.addr
    ))
    .await?;
    let addr = weir.listener_addr("tls").context("listener")?;
    for (name, cert, backend) in [("a.test", &cert_a, "a"), ("b.test", &cert_b, "b")] {
        assert_eq!(served_cert(addr, name).await?, cert.der.as_ref(), "{name}: the backend's own certificate");
        let (code, summary, headers) = curl(addr, name, "/", &pki.ca_file, &["--http2"]).await?;
        assert_eq!((code, summary.as_str()), (0, "2 200"), "{name}: ALPN passed through to the backend");
        assert_eq!(header(&headers, "x-backend"), backend);
    }

    // No SNI (an IP address as the name): the router has no match, so the
    // listener's pool (a) gets it.
    assert_eq!(served_cert(addr, "127.0.0.1").await?, cert_a.der.as_ref(), "no SNI: the default pool");

    // A ClientHello split over two writes is reassembled before routing.
    let mut conn = rustls_client_connection(&pki, "b.test")?;
    let mut hello = Vec::new();
    conn.write_tls(&mut hello)?;
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(&hello[..7]).await?;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    tcp.write_all(&hello[7..]).await?;
    let mut first = [0u8; 1];
    tokio::time::timeout(STEP, tcp.read_exact(&mut first)).await??;
    assert_eq!(first[0], 22, "a TLS handshake record came back from the backend");
    let before = b.connections();
    assert_eq!(before, 3, "b saw the cert check, curl and the split hello");

    // Garbage and a client that says nothing are closed; weir goes on.
    let mut junk = tokio::net::TcpStream::connect(addr).await?;
    junk.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await?;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(STEP, junk.read_to_end(&mut rest)).await?.unwrap_or(0);
    assert_eq!(n, 0, "plain HTTP on a passthrough port is closed without a reply");
    let mut silent = tokio::net::TcpStream::connect(addr).await?;
    let n = tokio::time::timeout(STEP, silent.read_to_end(&mut rest)).await?.unwrap_or(0);
    assert_eq!(n, 0, "closed after the handshake timeout");
    assert_eq!(a.connections() + b.connections(), 3 + before, "neither reached a backend");
    assert_eq!(served_cert(addr, "a.test").await?, cert_a.der.as_ref());
    drop((tcp, junk, silent));
    weir.shutdown().await;
    Ok(())
}

/// Passthrough routes on the protocols a ClientHello offers (`cond`'s
/// `ses_tls_alpn_in`): a client offering h2 goes to one pool, the others to
/// the listener's pool, as HAProxy's `req.ssl_alpn` routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_by_the_offered_alpn() -> Result<()> {
    let pki = Pki::new("pass-alpn")?;
    let (cert_a, cert_b) = (pki.server("a", &["a.test"])?, pki.server("b", &["b.test"])?);
    let a = HttpBackend::start_tls("a", pki::server_config(&cert_a)).await?;
    let b = HttpBackend::start_tls("b", pki::server_config(&cert_b)).await?;
    let weir = start_weir(&format!(
        r#"
[plugins.by-alpn]
source = "builtin:cond"
config.rules = [{{ cond = 'ses_tls_alpn_in("h2")', pool = "h2" }}]

[pools.h2]
backends = ["{}"]

[pools.other]
backends = ["{}"]

[listeners.tls]
bind = "127.0.0.1:0"
protocol = "tls"
pool = "other"
router = "by-alpn"
tls.passthrough = true
"#,
        a.addr, b.addr
    ))
    .await?;
    let addr = weir.listener_addr("tls").context("listener")?;
    let offering = |alpn: &[&str]| {
        let mut config = (*pki::any_certificate()).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    };
    for (alpn, cert) in
        [(&["h2", "http/1.1"][..], &cert_a), (&["http/1.1"][..], &cert_b), (&[][..], &cert_b), (&["h2"][..], &cert_a)]
    {
        let tls = pki::connect(addr, "any.test", offering(alpn)).await?;
        let served = tls.get_ref().1.peer_certificates().context("no certificate")?[0].as_ref().to_vec();
        assert_eq!(served, cert.der.as_ref(), "offering {alpn:?}");
    }
    assert_eq!((a.connections(), b.connections()), (2, 2));
    weir.shutdown().await;
    Ok(())
}

fn rustls_client_connection(pki: &Pki, name: &str) -> Result<tokio_rustls::rustls::ClientConnection> {
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(name.to_string())?;
    Ok(tokio_rustls::rustls::ClientConnection::new(pki.client_config(&[], None), name)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_speak_tls_to_backends_verified_against_their_ca() -> Result<()> {
    let pki = Pki::new("upstream")?;
    let cert = pki.server("backend", &["backend.test"])?;
    let backend = HttpBackend::start_tls("secure", pki::server_config(&cert)).await?;
    let ca = toml_path(&pki.ca_file);
    let other = Pki::new("upstream-other")?;
    let other_ca = toml_path(&other.ca_file);
    // The "system" store is what OpenSSL would use: here the test CA, named
    // by SSL_CERT_FILE (this test runs in a process of its own).
    std::env::set_var("SSL_CERT_FILE", &pki.ca_file);
    let weir = start_weir(&format!(
        r#"
[pools.system-roots]
backends = ["{addr}"]
tls = {{ roots = "system", sni = "backend.test" }}

[pools.other-ca]
backends = ["{addr}"]
max_tries = 1
tls = {{ ca = {other_ca}, sni = "backend.test" }}

[pools.verified]
backends = ["{addr}"]
tls = {{ ca = {ca}, sni = "backend.test" }}

[pools.h2]
backends = ["{addr}"]
http2 = true
tls = {{ ca = {ca}, sni = "backend.test" }}

[pools.wrong-name]
backends = ["{addr}"]
max_tries = 1
tls = {{ ca = {ca}, sni = "elsewhere.test" }}

[pools.public-roots]
backends = ["{addr}"]
max_tries = 1
tls = {{ sni = "backend.test" }}

[pools.unverified]
backends = ["{addr}"]
tls = {{ verify = false }}

[plugins.pick]
source = "builtin:host-path"
config.routes = [
  {{ host = "h2", pool = "h2" }},
  {{ host = "wrong", pool = "wrong-name" }},
  {{ host = "public", pool = "public-roots" }},
  {{ host = "unverified", pool = "unverified" }},
  {{ host = "system", pool = "system-roots" }},
  {{ host = "other-ca", pool = "other-ca" }},
]

[listeners.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "verified"
router = "pick"

[listeners.raw]
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "verified"
"#,
        addr = backend.addr
    ))
    .await?;
    let web = weir.listener_addr("web").context("listener")?;
    let client = client_h1();
    let got = send(&client, get(web, "any", "/")).await?;
    assert_eq!((got.status.as_u16(), got.header("x-backend")), (200, "secure"));
    assert_eq!(got.header("x-seen-version"), "HTTP/1.1");
    let got = send(&client, get(web, "h2", "/")).await?;
    assert_eq!((got.status.as_u16(), got.header("x-seen-version")), (200, "HTTP/2.0"), "h2 by ALPN");
    let got = send(&client, get(web, "unverified", "/")).await?;
    assert_eq!(got.status.as_u16(), 200, "verify = false");
    let got = send(&client, get(web, "system", "/")).await?;
    assert_eq!((got.status.as_u16(), got.header("x-backend")), (200, "secure"), "roots = \"system\"");
    for host in ["wrong", "public", "other-ca"] {
        let got = send(&client, get(web, host, "/")).await?;
        assert_eq!(got.status.as_u16(), 502, "{host}: the certificate must not verify");
    }

    // A backend that requires a client certificate gets the pool's.
    let strict = HttpBackend::start_tls("strict", pki::server_config_requiring_clients(&cert, &pki)).await?;
    let weir_id = pki.client("weir", "weir-proxy", false)?;
    let mtls = start_weir(&format!(
        r#"
[pools.with-cert]
backends = ["{addr}"]
tls = {{ ca = {ca}, sni = "backend.test", cert = {cert}, key = {key} }}

[pools.without-cert]
backends = ["{addr}"]
max_tries = 1
tls = {{ ca = {ca}, sni = "backend.test" }}

[plugins.pick]
source = "builtin:host-path"
config.routes = [{{ host = "without", pool = "without-cert" }}]

[listeners.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "with-cert"
router = "pick"
"#,
        addr = strict.addr,
        cert = toml_path(&weir_id.cert),
        key = toml_path(&weir_id.key),
    ))
    .await?;
    let front = mtls.listener_addr("web").context("listener")?;
    let got = send(&client, get(front, "with", "/")).await?;
    assert_eq!((got.status.as_u16(), got.header("x-backend")), (200, "strict"));
    let got = send(&client, get(front, "without", "/")).await?;
    assert_eq!(got.status.as_u16(), 502, "no client certificate, no backend");
    mtls.shutdown().await;

    // L4: plain bytes in, TLS to the backend.
    let raw = weir.listener_addr("raw").context("listener")?;
    let mut tcp = tokio::net::TcpStream::connect(raw).await?;
    tcp.write_all(b"GET /over-tcp HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n").await?;
    let mut reply = Vec::new();
    tokio::time::timeout(STEP, tcp.read_to_end(&mut reply)).await??;
    let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 200"), "{reply}");
    assert!(reply.contains("x-seen-path: /over-tcp"), "{reply}");
    drop((tcp, client));
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_config_errors_name_the_key_and_line() -> Result<()> {
    let echo = EchoBackend::start("echo").await?;
    let base =
        format!("[pools.p]\nbackends = [\"{}\"]\n\n[listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n", echo.addr);
    let cases = [
        ("protocol = \"tls\"\n", "listeners.l.tls: required with protocol = \"tls\""),
        ("protocol = \"tcp\"\ntls.passthrough = true\n", "needs protocol = \"tls\" or \"https\""),
        ("protocol = \"https\"\ntls.passthrough = true\n", "passthrough needs protocol = \"tls\""),
        ("protocol = \"tls\"\ntls.certificates = []\n", "`certificates` is empty"),
        (
            "protocol = \"tls\"\ntls.certificates = [{ cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }]\n",
            "listeners.l.tls.certificates[0].cert: /nonexistent/c.pem",
        ),
    ];
    for (listener, expected) in cases {
        let text = base.clone() + listener;
        let err = match start_weir(&text).await {
            Ok(w) => {
                w.shutdown().await;
                bail!("accepted: {listener}");
            }
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{listener}: {err}");
        assert!(err.contains("test.toml:"), "names the file and line: {err}");
    }
    Ok(())
}
