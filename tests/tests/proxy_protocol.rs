//! The PROXY protocol end to end with a real HAProxy on loopback: HAProxy
//! `send-proxy` / `send-proxy-v2` in front of weir (the client's address,
//! not HAProxy's, reaches plugins, headers, hashing and the access log),
//! weir's `send_proxy` to an HAProxy `accept-proxy` frontend, and the
//! connections weir refuses. Clients bind 127.0.0.2 and up, so their
//! address differs from HAProxy's 127.0.0.1.

use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_tests::web::*;
use weir_tests::*;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// HAProxy TCP frontends (named after `tag`) on `fronts`' ports, each
/// passing to `weir` with its server option (`send-proxy` or `send-proxy-v2`).
fn send_sections(tag: &str, fronts: &[(u16, &str)], weir: SocketAddr) -> String {
    fronts
        .iter()
        .enumerate()
        .map(|(i, (port, option))| {
            format!(
                "frontend fe-{tag}{i}\n  mode tcp\n  bind 127.0.0.1:{port}\n  default_backend be-{tag}{i}\n\n\
                 backend be-{tag}{i}\n  mode tcp\n  server weir {weir} {option}\n\n"
            )
        })
        .collect()
}

/// Write `bytes`, half-close, read until the other side closes.
async fn talk(stream: TcpStream, bytes: &[u8]) -> Result<Vec<u8>> {
    converse(stream, bytes, true).await
}

/// An HTTP/1.1 exchange: write `request` (with `connection: close`) and read
/// until the server closes.
async fn ask(stream: TcpStream, request: &[u8]) -> Result<String> {
    Ok(String::from_utf8_lossy(&converse(stream, request, false).await?).into_owned())
}

async fn converse(mut stream: TcpStream, bytes: &[u8], half_close: bool) -> Result<Vec<u8>> {
    tokio::time::timeout(STEP, async {
        stream.write_all(bytes).await?;
        if half_close {
            stream.shutdown().await?;
        }
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await?;
        anyhow::Ok(got)
    })
    .await?
}

/// An HTTP/1.1 request on its own connection from `from`; the raw response.
async fn http_get_from(from: &str, addr: SocketAddr, path: &str) -> Result<String> {
    let stream = connect_from(from, addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: pp.test\r\nconnection: close\r\n\r\n");
    ask(stream, req.as_bytes()).await
}

/// A header of a raw HTTP/1.1 response.
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body of a raw HTTP/1.1 response.
fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Whether weir closed the connection without a byte after `bytes` (a
/// reset counts: weir may close with the header unread).
async fn refused(stream: TcpStream, bytes: &[u8]) -> Result<bool> {
    let mut stream = stream;
    let _ = stream.write_all(bytes).await;
    let mut got = Vec::new();
    match tokio::time::timeout(STEP, stream.read_to_end(&mut got)).await.context("weir kept the connection open")? {
        Ok(_) => Ok(got.is_empty()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(got.is_empty()),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v1_and_v2_carry_the_client_to_an_http_listener() -> Result<()> {
    let backend = HttpBackend::start("a").await?;
    let weir = start_weir(&format!(
        r#"
[plugins.deny-four]
source = "builtin:ip-access"
config = {{ rules = ["deny 127.0.0.4/32"] }}

[pools.p]
backends = ["{}"]

[listeners.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "p"
access = ["deny-four"]
forwarded = true
proxy_protocol = true
proxy_protocol_from = ["127.0.0.1"]
"#,
        backend.addr
    ))
    .await?;
    let web = weir.listener_addr("web").context("web")?;
    let (v1, v2) = (free_port()?, free_port()?);
    let fronts = [(v1, "send-proxy"), (v2, "send-proxy-v2")];
    let haproxy = Haproxy::start("send-http", &send_sections("web", &fronts, web), &[local(v1), local(v2)]).await?;
    for (port, option) in fronts {
        for from in ["127.0.0.2", "127.0.0.3"] {
            let resp = http_get_from(from, local(port), "/pp").await?;
            assert!(resp.starts_with("HTTP/1.1 200"), "{option} from {from}: {resp}\n{}", haproxy.output());
            let (xff, fwd) = (header(&resp, "x-seen-x-forwarded-for"), header(&resp, "x-seen-forwarded"));
            println!("{option} from {from}: x-forwarded-for: {xff:?}, forwarded: {fwd:?}");
            assert_eq!(xff, Some(from));
            assert_eq!(fwd, Some(format!("for={from};proto=http;host=\"pp.test\"").as_str()));
        }
        // The access plugin sees the client too.
        let resp = http_get_from("127.0.0.4", local(port), "/pp").await?;
        println!("{option} from 127.0.0.4: {}", resp.lines().next().unwrap_or(""));
        assert!(resp.starts_with("HTTP/1.1 403"), "{option}: {resp}");
    }
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v1_and_v2_carry_the_client_to_tcp_access_and_ip_hash() -> Result<()> {
    let (a, b, c) = (EchoBackend::start("a").await?, EchoBackend::start("b").await?, EchoBackend::start("c").await?);
    let weir = start_weir(&format!(
        r#"
[plugins.deny-two]
source = "builtin:ip-access"
config = {{ rules = ["deny 127.0.0.2/32"] }}

[pools.one]
backends = {}

[pools.hashed]
balancer = "builtin:ip-hash"
backends = {}

[listeners.guarded]
bind = "127.0.0.1:0"
pool = "one"
access = ["deny-two"]
proxy_protocol = true
proxy_protocol_from = ["127.0.0.1"]

[listeners.sticky]
bind = "127.0.0.1:0"
pool = "hashed"
proxy_protocol = true
proxy_protocol_from = ["127.0.0.0/30"]
"#,
        addresses(&[&a]),
        addresses(&[&b, &c])
    ))
    .await?;
    let (guarded, sticky) =
        (weir.listener_addr("guarded").context("guarded")?, weir.listener_addr("sticky").context("sticky")?);
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<Result<_>>()?;
    let sections = send_sections("guarded", &[(ports[0], "send-proxy"), (ports[1], "send-proxy-v2")], guarded)
        + &send_sections("sticky", &[(ports[2], "send-proxy"), (ports[3], "send-proxy-v2")], sticky);
    let ready: Vec<SocketAddr> = ports.iter().map(|&p| local(p)).collect();
    let haproxy = Haproxy::start("send-tcp", &sections, &ready).await?;
    for (port, option) in [(ports[0], "send-proxy"), (ports[1], "send-proxy-v2")] {
        let allowed = talk(connect_from("127.0.0.3", local(port)).await?, b"hello").await?;
        println!("{option} from 127.0.0.3: {:?}", String::from_utf8_lossy(&allowed));
        assert_eq!(allowed, b"a\nhello", "{}", haproxy.output());
        let denied = talk(connect_from("127.0.0.2", local(port)).await?, b"hello").await?;
        println!("{option} from 127.0.0.2: {:?}", String::from_utf8_lossy(&denied));
        assert!(denied.is_empty(), "127.0.0.2 is denied by the access plugin");
    }
    // ip-hash: through one HAProxy address, each client keeps its backend,
    // and different clients spread over both.
    let mut chosen: HashMap<String, String> = HashMap::new();
    for round in 0..2 {
        for i in 2..22 {
            let from = format!("127.0.0.{i}");
            let port = ports[2 + (i + round) % 2];
            let got = talk(connect_from(&from, local(port)).await?, b"x").await?;
            let name = String::from_utf8_lossy(&got).lines().next().unwrap_or("").to_string();
            let first = chosen.entry(from.clone()).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "{from} moved between backends");
        }
    }
    let spread: HashSet<&String> = chosen.values().collect();
    println!(
        "ip-hash over 20 client addresses: {:?}",
        chosen.values().fold(HashMap::<&String, u32>::new(), |mut m, n| {
            *m.entry(n).or_default() += 1;
            m
        })
    );
    assert_eq!(spread, HashSet::from([&"b".to_string(), &"c".to_string()]));
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_sends_proxy_v1_and_v2_to_haproxy_accept_proxy() -> Result<()> {
    let (accepting, chain_front) = (free_port()?, free_port()?);
    // HTTP health checks of a backend that requires PROXY: they send a
    // LOCAL header too, or HAProxy would refuse them and the pools go down.
    let weir = start_weir(&format!(
        r#"
[plugins.hc]
source = "builtin:check-http"
config = {{ path = "/", status = ["200"] }}

[pools.v1]
backends = ["127.0.0.1:{accepting}"]
send_proxy = "v1"
health = {{ plugin = "hc", interval = "100ms", timeout = "1s", rise = 1, fall = 1 }}

[pools.v2]
backends = ["127.0.0.1:{accepting}"]
send_proxy = "v2"
health = {{ plugin = "hc", interval = "100ms", timeout = "1s", rise = 1, fall = 1 }}

[listeners.l1]
bind = "127.0.0.1:0"
pool = "v1"

[listeners.l2]
bind = "127.0.0.1:0"
pool = "v2"

[listeners.chain]
bind = "127.0.0.1:0"
pool = "v2"
proxy_protocol = true
proxy_protocol_from = ["127.0.0.1"]
"#
    ))
    .await?;
    let chain = weir.listener_addr("chain").context("chain")?;
    let sections = format!(
        "frontend accepting\n  mode http\n  bind 127.0.0.1:{accepting} accept-proxy\n  \
         http-request return status 200 content-type text/plain lf-string \"%[src]:%[src_port] %[dst]:%[dst_port]\"\n\n"
    ) + &send_sections("chain", &[(chain_front, "send-proxy")], chain);
    let haproxy = Haproxy::start("accept", &sections, &[local(accepting), local(chain_front)]).await?;
    // Checked before HAProxy listened, the backends may be down: checks that
    // pass from now on bring them up and keep them up.
    let checks = || weir.plugin("hc").unwrap().stats().calls.load(std::sync::atomic::Ordering::Relaxed);
    let ran = checks();
    eventually("six more checks", || checks() >= ran + 6).await?;
    for pool in ["v1", "v2"] {
        let backend = weir.pool(pool).unwrap().members().backends[0].clone();
        assert!(backend.is_healthy(), "{pool}: {}\n{}", backend.health.last_failure(), haproxy.output());
    }
    let request = b"GET / HTTP/1.1\r\nhost: pp.test\r\nconnection: close\r\n\r\n";
    for listener in ["l1", "l2"] {
        let addr = weir.listener_addr(listener).context("listener")?;
        let stream = connect_from("127.0.0.2", addr).await?;
        let client = stream.local_addr()?;
        let resp = ask(stream, request).await?;
        println!("{listener}: client {client}, HAProxy saw {:?}", body(&resp));
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}\n{}", haproxy.output());
        assert_eq!(body(&resp), format!("{client} {addr}"));
    }
    // HAProxy → weir (accepts v1) → weir's pool (sends v2) → HAProxy: the
    // client's address survives both hops.
    let stream = connect_from("127.0.0.2", local(chain_front)).await?;
    let client = stream.local_addr()?;
    let resp = ask(stream, request).await?;
    println!("chain: client {client}, HAProxy saw {:?}", body(&resp));
    assert_eq!(body(&resp), format!("{client} {chain}"), "{resp}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_missing_late_and_garbage_headers_are_refused() -> Result<()> {
    let echo = EchoBackend::start("a").await?;
    let web = HttpBackend::start("w").await?;
    let weir = start_weir(&format!(
        r#"
[pools.echo]
backends = {}

[pools.web]
backends = ["{}"]

[listeners.tcp]
bind = "127.0.0.1:0"
pool = "echo"
header_timeout = "300ms"
proxy_protocol = true
proxy_protocol_from = ["127.0.0.1"]

[listeners.http]
bind = "127.0.0.1:0"
protocol = "http"
pool = "web"
header_timeout = "300ms"
proxy_protocol = true
proxy_protocol_from = ["127.0.0.1"]
"#,
        addresses(&[&echo]),
        web.addr
    ))
    .await?;
    let v1 = |src: &str| format!("PROXY TCP4 {src} 127.0.0.1 4000 80\r\n").into_bytes();
    let v2 = {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        h.extend_from_slice(&[192, 0, 2, 10, 127, 0, 0, 1, 0x15, 0xb3, 0, 80]);
        h
    };
    let mut noise = vec![0u8; 200];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let request = b"GET / HTTP/1.1\r\nhost: pp.test\r\nconnection: close\r\n\r\n".to_vec();
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("untrusted peer with a valid header", "127.0.0.2", [v1("192.0.2.9"), request.clone()].concat()),
        ("trusted peer without a header", "127.0.0.1", request.clone()),
        ("v1 with a bad address", "127.0.0.1", b"PROXY TCP4 1.2.3.4 nonsense 1 2\r\n".to_vec()),
        ("v1 without CRLF in 107 bytes", "127.0.0.1", [b"PROXY TCP4 ".to_vec(), vec![b'1'; 120]].concat()),
        ("v2 of an unknown version", "127.0.0.1", b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c".to_vec()),
        ("random bytes", "127.0.0.1", noise),
    ];
    for listener in ["tcp", "http"] {
        let addr = weir.listener_addr(listener).context("listener")?;
        for (what, from, bytes) in &cases {
            let ok = refused(connect_from(from, addr).await?, bytes).await?;
            println!("{listener}: {what}: refused {ok}");
            assert!(ok, "{listener}: {what}: not refused");
        }
        // Cut short, and silent: closed after header_timeout.
        let started = Instant::now();
        assert!(refused(connect_from("127.0.0.1", addr).await?, b"PROXY TCP4 1.2.").await?);
        let waited = started.elapsed();
        println!("{listener}: a partial header is refused after {waited:?}");
        assert!(waited >= Duration::from_millis(250) && waited < STEP, "{waited:?}");
    }
    // Nothing reached a backend, and weir still serves a good header.
    assert_eq!((echo.accepted(), web.connections()), (0, 0));
    let tcp = weir.listener_addr("tcp").context("tcp")?;
    let got = talk(connect_from("127.0.0.1", tcp).await?, &[v2.clone(), b"after".to_vec()].concat()).await?;
    assert_eq!(got, b"a\nafter");
    let http = weir.listener_addr("http").context("http")?;
    let resp = ask(connect_from("127.0.0.1", http).await?, &[v2, request].concat()).await?;
    println!(
        "after the refusals: tcp echoed {:?}; http x-forwarded-for {:?}",
        String::from_utf8_lossy(&got),
        header(&resp, "x-seen-x-forwarded-for")
    );
    assert_eq!(header(&resp, "x-seen-x-forwarded-for"), Some("192.0.2.10"), "{resp}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_proxied_client() -> Result<()> {
    let echo = EchoBackend::start("a").await?;
    let text = format!(
        "[pools.p]\nbackends = {}\n\n[listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1\"]\naccess_log = [\"client\", \"backend\", \"error\"]\n",
        addresses(&[&echo])
    );
    let weir = WeirProcess::spawn(std::path::Path::new(env!("CARGO_BIN_EXE_weir-under-test")), "proxy-log", &text)?;
    let front = free_port()?;
    let _haproxy =
        Haproxy::start("log", &send_sections("log", &[(front, "send-proxy-v2")], weir.addr), &[local(front)]).await?;
    let stream = connect_from("127.0.0.2", local(front)).await?;
    let client = stream.local_addr()?;
    assert_eq!(talk(stream, b"logged").await?, b"a\nlogged");
    let want = format!("client={client} backend={} error=\"\"", echo.addr);
    eventually(&want, || weir.logged(&[&want])).await?;
    // A refused peer is logged with its own address and why.
    let stream = connect_from("127.0.0.3", weir.addr).await?;
    let refused_client = stream.local_addr()?;
    assert!(refused(stream, b"PROXY UNKNOWN\r\n").await?);
    let refusal = format!("client={refused_client} backend=\"\" error=\"peer is not trusted");
    eventually(&refusal, || weir.logged(&[&refusal])).await?;
    let log = weir.log.lock().map_err(|_| anyhow::anyhow!("log lock"))?;
    for line in log.iter().filter(|l| l.contains("weir::access") || l.contains("client=")) {
        println!("{line}");
    }
    Ok(())
}
