//! UDP listeners end to end, real peers on 127.0.0.1: DNS through weir to
//! two real dnsmasq servers balanced round-robin with one request and one
//! response per session; per-client sessions that stick to one backend and
//! expire when idle; the session cap; access denial before any backend;
//! datagrams up to the largest UDP payload; sessions balanced by the pool's
//! hash key as TCP connections are; a reload keeping a UDP listener
//! and its sessions, and one closing it.

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use http::Request;
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use weir::Server;
use weir_tests::dns::Dnsmasq;
use weir_tests::web::{body, client_h1, send};
use weir_tests::*;

/// The largest UDP payload IPv4 can carry (65 535 minus the IP and UDP headers).
const MAX_IPV4_PAYLOAD: usize = 65_507;

/// How long a test waits to be sure a datagram gets no answer.
const SILENCE: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------

/// A UDP backend answering every datagram with its name, a newline and the
/// datagram (cut to the largest IPv4 payload), and remembering which source
/// addresses (weir's per-session sockets) it heard from.
struct UdpEcho {
    name: String,
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    sources: Arc<Mutex<HashSet<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl UdpEcho {
    async fn start(name: &str) -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let (received, sources) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(HashSet::new())));
        let (r, s, tag) = (received.clone(), sources.clone(), format!("{name}\n"));
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                r.fetch_add(1, Ordering::SeqCst);
                s.lock().unwrap().insert(from);
                let mut reply = tag.as_bytes().to_vec();
                reply.extend_from_slice(&buf[..n]);
                reply.truncate(MAX_IPV4_PAYLOAD);
                let _ = socket.send_to(&reply, from).await;
            }
        });
        Ok(Self { name: name.into(), addr, received, sources, task })
    }

    /// Datagrams received so far.
    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Distinct weir sockets (sessions) heard from so far.
    fn sessions(&self) -> usize {
        self.sources.lock().unwrap().len()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Send `payload` from `client` to `to` and wait for one reply: the
/// backend's name and the echoed bytes.
async fn ask(client: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Result<(String, Vec<u8>)> {
    client.send_to(payload, to).await?;
    let mut buf = vec![0u8; 65_536];
    let (n, from) = tokio::time::timeout(STEP, client.recv_from(&mut buf)).await.context("no reply")??;
    ensure!(from == to, "reply from {from}, not from weir at {to}");
    let Some(newline) = buf[..n].iter().position(|&b| b == b'\n') else { bail!("no backend name in a {n}-byte reply") };
    Ok((String::from_utf8(buf[..newline].to_vec())?, buf[newline + 1..n].to_vec()))
}

/// Send `payload` and check that nothing comes back for a while.
async fn unanswered(client: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Result<()> {
    client.send_to(payload, to).await?;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(SILENCE, client.recv_from(&mut buf)).await {
        Err(_) => Ok(()),
        Ok(got) => bail!("expected no reply, got {got:?}"),
    }
}

async fn client() -> Result<UdpSocket> {
    Ok(UdpSocket::bind("127.0.0.1:0").await?)
}

/// A DNS query for the A record of `name`, recursion desired.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The first A record of a DNS answer to the query `id`.
fn first_a_record(answer: &[u8], id: u16) -> Result<Ipv4Addr> {
    ensure!(answer.len() >= 12, "short DNS message ({} bytes)", answer.len());
    ensure!(answer[..2] == id.to_be_bytes(), "answer to another query");
    ensure!(answer[3] & 0x0f == 0, "rcode {}", answer[3] & 0x0f);
    let (questions, answers) = (u16::from_be_bytes([answer[4], answer[5]]), u16::from_be_bytes([answer[6], answer[7]]));
    let mut at = 12;
    // A name: labels up to a zero byte, or ending in a compression pointer.
    let skip_name = |mut at: usize| -> Result<usize> {
        loop {
            let len = *answer.get(at).context("name past the end")? as usize;
            if len == 0 {
                return Ok(at + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Ok(at + 2);
            }
            at += 1 + len;
        }
    };
    for _ in 0..questions {
        at = skip_name(at)? + 4;
    }
    for _ in 0..answers {
        at = skip_name(at)?;
        let field = |i: usize| -> Result<u16> {
            Ok(u16::from_be_bytes([*answer.get(at + i).context("short")?, *answer.get(at + i + 1).context("short")?]))
        };
        let (rtype, len) = (field(0)?, field(8)? as usize);
        let data = answer.get(at + 10..at + 10 + len).context("record past the end")?;
        if rtype == 1 && len == 4 {
            return Ok(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    bail!("no A record among {answers} answers")
}

// ---------------------------------------------------------------------------
// weir
// ---------------------------------------------------------------------------

/// A round-robin pool `p` and a UDP listener `l` with `extra` listener keys,
/// plus an admin API.
fn udp_config(backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [pools.p]\nbalancer = \"builtin:round-robin\"\nbackends = [{}]\n\n\
         [listeners.l]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\npool = \"p\"\n{extra}",
        list.join(", ")
    )
}

/// `GET` an admin path: the status and the body.
async fn admin_get(weir: &Server, path: &str) -> Result<(u16, Bytes)> {
    let admin = weir.admin_addr().context("no admin API")?;
    let got = send(&client_h1(), Request::get(format!("http://{admin}{path}")).body(body(Bytes::new()))?).await?;
    Ok((got.status.as_u16(), got.body))
}

/// The listener as `GET /listeners/l` shows it.
async fn listener_json(weir: &Server) -> Result<serde_json::Value> {
    let (status, text) = admin_get(weir, "/listeners/l").await?;
    ensure!(status == 200, "GET /listeners/l: {status}");
    Ok(serde_json::from_slice(&text)?)
}

fn listener_stats(weir: &Server) -> Arc<weir::listener::ListenerStats> {
    weir.core().snapshot().listeners["l"].stats.clone()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_through_weir_alternates_between_two_dnsmasq_servers() -> Result<()> {
    // The same name answers differently on each server (answers only:
    // nothing is sent to these addresses).
    let dnsmasq = |name: &'static str, ip: &'static str| async move {
        let log = std::env::temp_dir().join(format!("weir-udp-dnsmasq-{name}-{}.log", std::process::id()));
        let records = ["--local=/test/".to_string(), format!("--host-record=svc.test,{ip}")];
        Dnsmasq::start(free_port()?, log, &records).await
    };
    let (one, two) = (dnsmasq("one", "10.0.0.1").await?, dnsmasq("two", "10.0.0.2").await?);
    let extra = "udp_max_requests = 1\nudp_max_responses = 1\n";
    let weir = start_weir(&udp_config(&[one.addr(), two.addr()], extra)).await?;
    let addr = weir.listener_addr("l").unwrap();
    let mut seen: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut order = Vec::new();
    for i in 0..10u16 {
        let socket = client().await?;
        let id = 0x1000 + i;
        socket.send_to(&dns_query(id, "svc.test"), addr).await?;
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(STEP, socket.recv_from(&mut buf)).await.context("no DNS answer")??;
        let ip = first_a_record(&buf[..n], id)?;
        *seen.entry(ip).or_default() += 1;
        order.push(ip);
    }
    println!("answers in order: {order:?}; per server: {seen:?}");
    assert!(order.windows(2).all(|w| w[0] != w[1]), "answers do not alternate: {order:?}");
    assert_eq!(seen, HashMap::from([(Ipv4Addr::new(10, 0, 0, 1), 5), (Ipv4Addr::new(10, 0, 0, 2), 5)]));
    // One session per query, each ended by its one response.
    let stats = listener_stats(&weir);
    eventually("sessions to end after their response", || stats.active() == 0).await?;
    assert_eq!(stats.total(), 10);
    let members = weir.pool("p").unwrap().members();
    for b in &members.backends {
        println!("{}: sessions {}, tx {} B, rx {} B", b.address, b.stats.total(), b.stats.tx(), b.stats.rx());
        assert_eq!(b.stats.total(), 5);
        assert_eq!(b.stats.active(), 0);
        assert_eq!(b.stats.tx(), 5 * dns_query(0, "svc.test").len() as u64);
        assert!(b.stats.rx() > b.stats.tx(), "answers are longer than the queries");
    }
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sticks_to_its_backend_and_expires_when_idle() -> Result<()> {
    let (a, b) = (UdpEcho::start("a").await?, UdpEcho::start("b").await?);
    let weir = start_weir(&udp_config(&[a.addr, b.addr], "udp_idle_timeout = \"400ms\"\n")).await?;
    let addr = weir.listener_addr("l").unwrap();
    let pool = weir.pool("p").unwrap();
    let stats = listener_stats(&weir);
    let socket = client().await?;
    let mut names = Vec::new();
    let mut sent = 0u64;
    for i in 0..6 {
        let payload = format!("datagram {i}");
        let (name, echoed) = ask(&socket, addr, payload.as_bytes()).await?;
        assert_eq!(echoed, payload.as_bytes());
        names.push(name);
        sent += payload.len() as u64;
    }
    let last_reply = Instant::now();
    println!("one client, six datagrams: {names:?}");
    assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
    let first = if names[0] == a.name { &a } else { &b };
    assert_eq!((first.received(), first.sessions()), (6, 1), "all six through one backend socket");
    let members = pool.members();
    let backend = members.backends.iter().find(|m| m.address == first.addr.to_string()).unwrap();
    assert_eq!((backend.stats.active(), backend.stats.total()), (1, 1));
    assert_eq!(backend.stats.tx(), sent);
    assert_eq!(backend.stats.rx(), sent + 6 * (first.name.len() as u64 + 1));
    let shown = listener_json(&weir).await?;
    assert_eq!(shown["protocol"], "udp");
    assert_eq!(shown["active_connections"], 1);

    // Idle for longer than the timeout: the session ends.
    eventually("the session to expire", || backend.stats.active() == 0 && stats.active() == 0).await?;
    let expired_after = last_reply.elapsed();
    println!("session expired {expired_after:?} after the last reply (udp_idle_timeout 400ms)");
    assert!(expired_after >= Duration::from_millis(350), "expired too early: {expired_after:?}");

    // The next datagram makes a new session, balanced anew (round-robin: the other backend).
    let (name, _) = ask(&socket, addr, b"again").await?;
    let second = if name == a.name { &a } else { &b };
    println!("after expiry: {name}");
    assert_ne!(name, first.name, "a new session is balanced again");
    assert_eq!(second.sessions(), 1);
    assert_eq!(stats.total(), 2);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_opens_a_new_session_and_max_responses_ends_one() -> Result<()> {
    let (a, b) = (UdpEcho::start("a").await?, UdpEcho::start("b").await?);
    let extra = "udp_max_requests = 2\nudp_max_responses = 2\nudp_idle_timeout = \"10s\"\n";
    let weir = start_weir(&udp_config(&[a.addr, b.addr], extra)).await?;
    let addr = weir.listener_addr("l").unwrap();
    let stats = listener_stats(&weir);
    let socket = client().await?;
    let mut names = Vec::new();
    for i in 0..4 {
        names.push(ask(&socket, addr, format!("d{i}").as_bytes()).await?.0);
    }
    println!("one client, four datagrams, two per session: {names:?}");
    assert_eq!(names[0], names[1]);
    assert_eq!(names[2], names[3]);
    assert_ne!(names[0], names[2]);
    assert_eq!((a.sessions(), b.sessions()), (1, 1));
    // Both sessions ended with their second response, long before the idle timeout.
    eventually("sessions to end at max_responses", || stats.active() == 0).await?;
    assert_eq!(stats.total(), 2);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_drops_datagrams_of_new_clients_only() -> Result<()> {
    let a = UdpEcho::start("a").await?;
    let weir = start_weir(&udp_config(&[a.addr], "udp_max_sessions = 2\nudp_idle_timeout = \"10s\"\n")).await?;
    let addr = weir.listener_addr("l").unwrap();
    let (c1, c2, c3) = (client().await?, client().await?, client().await?);
    ask(&c1, addr, b"one").await?;
    ask(&c2, addr, b"two").await?;
    unanswered(&c3, addr, b"three").await?;
    unanswered(&c3, addr, b"three again").await?;
    // Clients with a session go on.
    assert_eq!(ask(&c1, addr, b"one more").await?.1, b"one more");
    let shown = listener_json(&weir).await?;
    println!("listener: {shown}");
    assert_eq!(shown["active_connections"], 2);
    assert_eq!(shown["connections"], 2);
    assert_eq!(shown["dropped_datagrams"], 2);
    assert_eq!(a.received(), 3);
    let (status, metrics) = admin_get(&weir, "/metrics").await?;
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics.to_vec())?;
    let line = |name: &str| metrics.lines().find(|l| l.starts_with(name)).map(str::to_string);
    println!("{:?} {:?}", line("weir_listener_dropped_datagrams_total"), line("weir_listener_active_connections"));
    assert!(metrics.contains("weir_listener_dropped_datagrams_total{listener=\"l\"} 2"), "{metrics}");
    assert!(metrics.contains("weir_listener_active_connections{listener=\"l\"} 2"), "{metrics}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denial_drops_datagrams_before_any_backend() -> Result<()> {
    let a = UdpEcho::start("a").await?;
    let text = udp_config(&[a.addr], "access = [\"acl\"]\n")
        + "\n[plugins.acl]\nsource = \"builtin:ip-access\"\nconfig = { default = \"allow\", rules = [\"deny 127.0.0.2/32\"] }\n";
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("l").unwrap();
    let calls = || weir.plugin("acl").unwrap().stats().calls.load(Ordering::Relaxed);
    // An allowed client: access is asked once for its session, not per datagram.
    let allowed = client().await?;
    for i in 0..10 {
        assert_eq!(ask(&allowed, addr, format!("allowed {i}").as_bytes()).await?.0, "a");
    }
    assert_eq!(calls(), 1, "one access call for a session of 10 datagrams");
    // A denied client: nothing reaches a backend.
    let denied = UdpSocket::bind("127.0.0.2:0").await?;
    for i in 0..5 {
        unanswered(&denied, addr, format!("denied {i}").as_bytes()).await?;
    }
    let stats = listener_stats(&weir);
    eventually("every denied datagram counted", || stats.dropped() == 5).await?;
    let denied_calls = calls() - 1;
    println!("allowed: 10 echoed, 1 access call; denied: dropped {}, access calls {denied_calls}", stats.dropped());
    assert_eq!(a.received(), 10);
    assert!((1..=5).contains(&denied_calls), "one access call per session attempt: {denied_calls}");
    let members = weir.pool("p").unwrap().members();
    assert_eq!(members.backends[0].stats.total(), 1, "one session reached the backend");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_up_to_the_largest_payload_pass_both_ways() -> Result<()> {
    let a = UdpEcho::start("a").await?;
    let weir = start_weir(&udp_config(&[a.addr], "")).await?;
    let addr = weir.listener_addr("l").unwrap();
    let socket = client().await?;
    for size in [0usize, 1, 1500, 9000, MAX_IPV4_PAYLOAD] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ (i >> 8) as u8).collect();
        let (name, echoed) = ask(&socket, addr, &payload).await?;
        assert_eq!(name, "a");
        // The echo's reply is cut to the largest payload: its name goes first.
        let keep = size.min(MAX_IPV4_PAYLOAD - 2);
        assert_eq!(echoed.len(), keep, "size {size}");
        assert!(echoed == payload[..keep], "echo of {size} bytes differs");
    }
    let stats = &weir.pool("p").unwrap().members().backends[0].stats;
    println!("tx {} B, rx {} B", stats.tx(), stats.rx());
    assert_eq!(stats.tx(), (1 + 1500 + 9000 + MAX_IPV4_PAYLOAD) as u64);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_a_udp_listener_and_its_sessions_and_closing_it_ends_them() -> Result<()> {
    let (a, b) = (UdpEcho::start("a").await?, UdpEcho::start("b").await?);
    let weir = start_weir(&udp_config(&[a.addr], "udp_idle_timeout = \"10s\"\n")).await?;
    let addr = weir.listener_addr("l").unwrap();
    let early = client().await?;
    assert_eq!(ask(&early, addr, b"before").await?.0, "a");

    // Same address written out, a second backend.
    let text = udp_config(&[a.addr, b.addr], "udp_idle_timeout = \"10s\"\n").replacen(
        "bind = \"127.0.0.1:0\"\nprotocol",
        &format!("bind = \"{addr}\"\nprotocol"),
        1,
    );
    let summary =
        weir.reload(weir::config::Source { origin: "reload.toml".into(), text }).await.map_err(anyhow::Error::msg)?;
    println!("reload: {summary:?}");
    assert!(summary.listeners_added.is_empty() && summary.listeners_removed.is_empty(), "{summary:?}");
    assert_eq!(weir.listener_addr("l"), Some(addr));
    // The session opened before the reload goes on, through the same backend socket.
    assert_eq!(ask(&early, addr, b"after").await?.0, "a");
    assert_eq!((a.received(), a.sessions()), (2, 1));
    // New clients get new sessions under the new routes: both backends serve.
    let mut names = HashSet::new();
    for _ in 0..4 {
        names.insert(ask(&client().await?, addr, b"new").await?.0);
    }
    println!("new sessions after the reload went to {names:?}");
    assert_eq!(names, HashSet::from(["a".to_string(), "b".to_string()]));
    let stats = listener_stats(&weir);
    assert_eq!(stats.total(), 5, "the listener's counters are kept");
    assert_eq!(stats.active(), 5);

    // A config without the listener closes it, and its sessions end.
    let text = "[pools.p]\nbackends = []\n".to_string();
    let summary =
        weir.reload(weir::config::Source { origin: "closed.toml".into(), text }).await.map_err(anyhow::Error::msg)?;
    assert_eq!(summary.listeners_removed, vec!["l".to_string()]);
    eventually("sessions to end with their listener", || stats.active() == 0).await?;
    unanswered(&early, addr, b"closed").await?;
    assert_eq!(a.received() + b.received(), 6, "nothing reached a backend after the close");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_port_unreachable_is_ejected() -> Result<()> {
    let a = UdpEcho::start("a").await?;
    // A port with nothing bound: the kernel answers ICMP port unreachable.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let text = udp_config(&[dead, a.addr], "udp_idle_timeout = \"10s\"\n").replace(
        "balancer = \"builtin:round-robin\"\n",
        "balancer = \"builtin:round-robin\"\nfail_timeout = \"10s\"\n",
    );
    let weir = start_weir(&text).await?;
    let addr = weir.listener_addr("l").unwrap();
    let socket = client().await?;
    // Round-robin sends the first session to the dead backend.
    unanswered(&socket, addr, b"to nobody").await?;
    let members = weir.pool("p").unwrap().members();
    let gone = members.backends.iter().find(|b| b.address == dead.to_string()).unwrap();
    eventually("the refusal to count as a failure", || gone.stats.failures() == 1 && !gone.is_healthy()).await?;
    let stats = listener_stats(&weir);
    eventually("the refused session to end", || stats.active() == 0).await?;
    // The next datagram opens a new session, on the backend still in rotation.
    let (name, echoed) = ask(&socket, addr, b"again").await?;
    println!("after the refusal: {name}; dead backend failures {}", gone.stats.failures());
    assert_eq!((name.as_str(), echoed.as_slice()), ("a", &b"again"[..]));
    assert_eq!(stats.total(), 2);
    weir.shutdown().await;
    Ok(())
}

/// A TCP backend on `port` (the port of a UDP echo) that greets every
/// connection with its name and a newline, so that one pool's addresses
/// serve TCP and UDP alike.
async fn tcp_greeter(name: &str, port: u16) -> Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let greeting = format!("{name}\n");
    Ok(tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(greeting.as_bytes()).await;
        }
    }))
}

/// UDP echo backends whose ports are free for TCP too (a few tries, as a
/// port free for UDP may be taken for TCP), each with its TCP greeter.
async fn dual_backends(names: &[&str]) -> Result<(Vec<UdpEcho>, Vec<JoinHandle<()>>)> {
    let (mut echoes, mut greeters) = (Vec::new(), Vec::new());
    for name in names {
        for attempt in 0.. {
            let echo = UdpEcho::start(name).await?;
            match tcp_greeter(name, echo.addr.port()).await {
                Ok(greeter) => {
                    echoes.push(echo);
                    greeters.push(greeter);
                    break;
                }
                Err(e) if attempt < 20 => drop((e, echo)),
                Err(e) => return Err(e),
            }
        }
    }
    Ok((echoes, greeters))
}

/// A UDP session is balanced with the pool's hash key, as a TCP connection
/// is: with `hash_key = "client-ip"` on a consistent-hash pool, every client
/// address reaches the same backend over UDP as over TCP (the balancer
/// hashes the key, which differs from the client hash it uses without one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_are_balanced_by_the_pools_hash_key_like_tcp() -> Result<()> {
    let (echoes, greeters) = dual_backends(&["a", "b", "c"]).await?;
    let list: Vec<String> = echoes.iter().map(|e| format!("\"{}\"", e.addr)).collect();
    let weir = start_weir(&format!(
        "[pools.p]\nbalancer = \"builtin:consistent-hash\"\nhash_key = \"client-ip\"\nbackends = [{}]\n\n\
         [listeners.udp]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\npool = \"p\"\n\n\
         [listeners.tcp]\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"p\"\n",
        list.join(", ")
    ))
    .await?;
    let (udp, tcp) = (weir.listener_addr("udp").unwrap(), weir.listener_addr("tcp").unwrap());
    let mut seen = HashMap::new();
    for host in 2..=13u8 {
        let ip = Ipv4Addr::new(127, 0, 0, host);
        let socket = UdpSocket::bind((ip, 0)).await?;
        let (over_udp, _) = ask(&socket, udp, b"which").await?;
        let stream = tokio::net::TcpSocket::new_v4()?;
        stream.bind((ip, 0).into())?;
        let mut stream = tokio::time::timeout(STEP, stream.connect(tcp)).await??;
        let mut greeting = Vec::new();
        tokio::time::timeout(STEP, tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut greeting)).await??;
        let over_tcp = String::from_utf8(greeting)?.trim_end().to_string();
        assert_eq!(over_udp, over_tcp, "client {ip}: UDP went to {over_udp}, TCP to {over_tcp}");
        *seen.entry(over_udp).or_insert(0) += 1;
    }
    println!("12 client addresses over UDP and TCP, same backend each: {seen:?}");
    assert!(seen.len() >= 2, "the key spreads clients over the backends: {seen:?}");
    weir.shutdown().await;
    for g in greeters {
        g.abort();
    }
    Ok(())
}
