//! Service discovery through weir with real peers on loopback: every bundled
//! `discover-*` adapter (file, exec, http-json, plaintext, consul, dns
//! against a real dnsmasq, etcd against a real etcd) fills a pool, and the
//! pool follows when the source changes; backends that stay keep their
//! counters; real traffic reaches discovered backends; failpolicy
//! `setempty` empties a pool on a failed round and `keeplast` keeps it; and
//! I/O outside an instance's grants is denied before any of the data can
//! reach the pool.

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use weir::upstream::Pool;
use weir::Server;
use weir_tests::dns::{Child, Dnsmasq};
use weir_tests::web::{body, client_h1, send};
use weir_tests::*;

/// Discovery interval used by every test.
const INTERVAL: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A scratch directory removed when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("weir-discovery-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Replace a file's contents atomically (write aside, rename), so a
/// discovery round never reads a half-written file.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let aside = path.with_extension("writing");
    std::fs::write(&aside, text)?;
    std::fs::rename(&aside, path)?;
    Ok(())
}

/// One backend as `(address, weight, priority)`.
type Entry = (String, u32, u32);

fn entry(address: impl ToString, weight: u32, priority: u32) -> Entry {
    (address.to_string(), weight, priority)
}

/// The pool's current backends, in slot order.
fn backends(pool: &Pool) -> Vec<Entry> {
    pool.members().backends.iter().map(|b| (b.address.clone(), b.weight, b.priority)).collect()
}

/// The pool's current backends, sorted (for sources without an order).
fn sorted_backends(pool: &Pool) -> Vec<Entry> {
    let mut list = backends(pool);
    list.sort();
    list
}

fn sorted(mut list: Vec<Entry>) -> Vec<Entry> {
    list.sort();
    list
}

/// Call a discovery instance directly (on a blocking thread, as weir does):
/// the backends it found, or the error's message.
async fn discover_now(weir: &Server, plugin: &str) -> Result<std::result::Result<Vec<Entry>, String>> {
    let instance = weir.plugin(plugin).with_context(|| format!("no plugin instance {plugin}"))?.clone();
    let found = tokio::task::spawn_blocking(move || instance.discover(Duration::from_secs(2))).await?;
    Ok(found.map(|list| list.into_iter().map(|d| (d.address, d.weight, d.priority)).collect()).map_err(|e| e.message))
}

/// Check that `cond` holds at every poll for `period` (10 ms polls).
async fn holds_for(what: &str, period: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + period;
    while Instant::now() < end {
        ensure!(cond(), "{what} stopped holding");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Wait for `pool` to equal `want` (in slot order), naming the last value seen on timeout.
async fn pool_becomes(what: &str, pool: &Pool, want: &[Entry]) -> Result<()> {
    eventually(what, || backends(pool) == want).await.with_context(|| format!("pool is {:?}", backends(pool)))
}

/// Wait for `pool` to equal `want` in any order.
async fn pool_becomes_set(what: &str, pool: &Pool, want: &[Entry]) -> Result<()> {
    let want = sorted(want.to_vec());
    eventually(what, || sorted_backends(pool) == want).await.with_context(|| format!("pool is {:?}", backends(pool)))
}

/// Standard base64 with padding (etcd's JSON gateway takes keys and values so).
fn b64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n =
            (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A pool section discovering through `plugin` every [`INTERVAL`].
fn pool_section(name: &str, static_backends: &str, plugin: &str, failpolicy: &str) -> String {
    format!(
        "[pools.{name}]\nbackends = {static_backends}\n\
         discovery = {{ plugin = \"{plugin}\", interval = \"{}ms\", timeout = \"1s\", failpolicy = \"{failpolicy}\" }}\n\n",
        INTERVAL.as_millis()
    )
}

/// An L4 listener on a free loopback port sending to `pool`.
fn listener_section(pool: &str) -> String {
    format!("[listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"{pool}\"\n")
}

/// An HTTP server answering every request with the current `content`
/// (changeable while it runs) and recording each request's path and query.
struct ContentServer {
    addr: SocketAddr,
    content: Arc<Mutex<String>>,
    requests: Arc<Mutex<Vec<String>>>,
    /// `x-consul-token` headers received.
    tokens: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl ContentServer {
    async fn start(content: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let content = Arc::new(Mutex::new(content.to_string()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let (c, r, t) = (content.clone(), requests.clone(), tokens.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (c, r, t) = (c.clone(), r.clone(), t.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        r.lock().unwrap().push(req.uri().to_string());
                        if let Some(token) = req.headers().get("x-consul-token").and_then(|v| v.to_str().ok()) {
                            t.lock().unwrap().push(token.to_string());
                        }
                        let text = c.lock().unwrap().clone();
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(text)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, content, requests, tokens, task })
    }

    fn set(&self, content: &str) {
        *self.content.lock().unwrap() = content.to_string();
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ContentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A child process killed (and reaped) when dropped.
const ETCD: &str = "/usr/bin/etcd";

/// A real single-member etcd on loopback ports with a scratch data dir.
struct Etcd {
    endpoint: String,
    _child: Child,
}

impl Etcd {
    async fn start(dir: &Scratch) -> Result<Self> {
        ensure!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: install the Debian package etcd-server (scripts/setup --test does)"
        );
        let (client, peer) = (free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log_path = dir.join("etcd.log");
        let log = std::fs::File::create(&log_path)?;
        let child = std::process::Command::new(ETCD)
            .arg("--name=default")
            .arg(format!("--data-dir={}", dir.join("etcd-data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        let mut child = Child(child);
        let client = client_h1();
        let deadline = Instant::now() + 3 * STEP;
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                bail!("etcd exited with {status}: {}", std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            ensure!(Instant::now() < deadline, "etcd did not become healthy on {endpoint}");
            let req = Request::get(format!("{endpoint}/health")).body(body(Bytes::new()))?;
            if let Ok(got) = tokio::time::timeout(Duration::from_secs(1), send(&client, req)).await {
                if got.is_ok_and(|g| g.status == 200 && String::from_utf8_lossy(&g.body).contains("true")) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { endpoint, _child: child })
    }

    async fn call(&self, api: &str, json: String) -> Result<String> {
        let req = Request::post(format!("{}/v3/kv/{api}", self.endpoint))
            .header("content-type", "application/json")
            .body(body(json))?;
        let got = send(&client_h1(), req).await?;
        let text = String::from_utf8_lossy(&got.body).into_owned();
        ensure!(got.status == 200, "etcd {api}: {} {text}", got.status);
        Ok(text)
    }

    async fn put(&self, key: &str, value: &str) -> Result<()> {
        self.call("put", format!(r#"{{"key": "{}", "value": "{}"}}"#, b64(key.as_bytes()), b64(value.as_bytes())))
            .await
            .map(drop)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let answer = self.call("deleterange", format!(r#"{{"key": "{}"}}"#, b64(key.as_bytes()))).await?;
        ensure!(answer.contains(r#""deleted":"1""#), "etcd deleted nothing: {answer}");
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn base64_matches_the_standard() {
    assert_eq!(b64(b""), "");
    assert_eq!(b64(b"f"), "Zg==");
    assert_eq!(b64(b"fo"), "Zm8=");
    assert_eq!(b64(b"foo"), "Zm9v");
    assert_eq!(b64(b"/s/a"), "L3MvYQ==");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_discovery_follows_the_file_and_traffic_follows_the_pool() -> Result<()> {
    let dir = Scratch::new("file")?;
    let (a, b, c) = (EchoBackend::start("a").await?, EchoBackend::start("b").await?, EchoBackend::start("c").await?);
    let list = dir.join("backends");
    write_atomic(&list, &format!("# web\n{} weight=3\n\n{}\n", a.addr, b.addr))?;
    let text = format!(
        "[plugins.disc]\nsource = \"builtin:discover-file\"\nconfig = {{ path = \"{}\" }}\ngrants = {{ files = [\"{}\"] }}\n\n{}{}",
        list.display(),
        dir.path.display(),
        pool_section("p", "[]", "disc", "keeplast"),
        listener_section("p"),
    );
    let weir = start_weir(&text).await?;
    let pool = weir.pool("p").unwrap().clone();
    let addr = weir.listener_addr("l").unwrap();

    // The first discovery ran before the listener opened.
    assert_eq!(backends(&pool), [entry(a.addr, 3, 0), entry(b.addr, 1, 0)]);

    let mut seen = HashMap::<String, usize>::new();
    for i in 0..4 {
        let payload = format!("ping {i}");
        let (name, echoed) = exchange(addr, payload.as_bytes()).await?;
        assert_eq!(echoed, payload.as_bytes());
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(seen, HashMap::from([("a".to_string(), 2), ("b".to_string(), 2)]));
    let b_stats = pool.members().find(&b.addr.to_string()).unwrap().stats.clone();
    let b_total = b_stats.total();
    assert_eq!(b_total, 2);

    // a leaves, c joins, b stays.
    write_atomic(&list, &format!("{}\n{} weight=2\n", b.addr, c.addr))?;
    pool_becomes("the pool to follow the file", &pool, &[entry(b.addr, 1, 0), entry(c.addr, 2, 0)]).await?;
    {
        let members = pool.members();
        let b_now = members.find(&b.addr.to_string()).unwrap();
        assert!(Arc::ptr_eq(&b_now.stats, &b_stats), "b got new counters when the list changed");
        assert_eq!(b_now.stats.total(), b_total, "b's connection count was reset");
        assert_eq!(members.find(&c.addr.to_string()).unwrap().stats.total(), 0);
    }

    let a_before = a.accepted();
    let mut seen = HashMap::<String, usize>::new();
    for i in 0..4 {
        let payload = format!("pong {i}");
        let (name, echoed) = exchange(addr, payload.as_bytes()).await?;
        assert_eq!(echoed, payload.as_bytes());
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(seen, HashMap::from([("b".to_string(), 2), ("c".to_string(), 2)]));
    assert_eq!(a.accepted(), a_before, "the removed backend still got connections");
    assert_eq!(c.accepted(), 2);
    assert_eq!(b_stats.total(), b_total + 2, "b's counter kept counting from where it was");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_discovery_follows_the_program_and_applies_the_failpolicy() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("exec")?;
    let (list, fail, script) = (dir.join("list"), dir.join("fail"), dir.join("list-backends.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo 'registry unreachable' >&2; exit 3; fi\nexec cat '{}'\n",
            fail.display(),
            list.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    write_atomic(&list, "127.0.0.1:7001\n127.0.0.1:7002 weight=4 priority=1 tags=canary,eu\n")?;
    let plugin = |name: &str| {
        format!(
            "[plugins.{name}]\nsource = \"builtin:discover-exec\"\nconfig = {{ program = \"{0}\" }}\ngrants = {{ exec = [\"{0}\"] }}\n\n",
            script.display()
        )
    };
    let text = format!(
        "{}{}{}{}{}",
        plugin("keep"),
        plugin("empty"),
        pool_section("pk", "[]", "keep", "keeplast"),
        pool_section("pe", "[]", "empty", "setempty"),
        listener_section("pk"),
    );
    let weir = start_weir(&text).await?;
    let (pk, pe) = (weir.pool("pk").unwrap().clone(), weir.pool("pe").unwrap().clone());

    let first = [entry("127.0.0.1:7001", 1, 0), entry("127.0.0.1:7002", 4, 1)];
    assert_eq!(backends(&pk), first);
    assert_eq!(backends(&pe), first);
    assert_eq!(pk.members().find("127.0.0.1:7002").unwrap().tags, ["canary", "eu"]);

    // A new output is a new list.
    write_atomic(&list, "127.0.0.1:7002 weight=5\n127.0.0.1:7003\n")?;
    let second = [entry("127.0.0.1:7002", 5, 0), entry("127.0.0.1:7003", 1, 0)];
    pool_becomes("keeplast pool to follow the output", &pk, &second).await?;
    pool_becomes("setempty pool to follow the output", &pe, &second).await?;

    // The program fails: setempty empties its pool, keeplast keeps the last list.
    std::fs::write(&fail, "")?;
    let failed = discover_now(&weir, "keep").await?.expect_err("a failing program must be an error");
    assert!(failed.contains("exited with status 3") && failed.contains("registry unreachable"), "{failed}");
    pool_becomes("setempty pool to empty on failure", &pe, &[]).await?;
    holds_for("keeplast pool keeping its last list", 3 * INTERVAL, || backends(&pk) == second).await?;
    assert!(backends(&pe).is_empty(), "setempty pool refilled while the program fails");

    // It recovers.
    std::fs::remove_file(&fail)?;
    pool_becomes("setempty pool to refill after recovery", &pe, &second).await?;
    assert_eq!(backends(&pk), second);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_discovery_picks_nested_entries_with_jsonpath() -> Result<()> {
    let doc = |instances: &str| {
        format!(
            r#"{{"data": {{"generation": 7, "services": [
                {{"name": "other", "instances": [{{"ip": "127.0.0.99", "ports": {{"http": 1}}, "state": "up"}}]}},
                {{"name": "web", "instances": [{instances}]}}
            ]}}}}"#
        )
    };
    let v1 = doc(
        r#"{"ip": "127.0.0.21", "ports": {"http": 8081}, "meta": {"weight": 3, "priority": 2}, "zone": "a", "state": "up"},
           {"ip": "127.0.0.22", "ports": {"http": "8082"}, "state": "up"},
           {"ip": "127.0.0.23", "ports": {"http": 8083}, "meta": {"weight": 9}, "state": "down"}"#,
    );
    let server = ContentServer::start(&v1).await?;
    let url = format!("http://{}/registry/v1/instances", server.addr);
    let text = format!(
        "[plugins.disc]\nsource = \"builtin:discover-http-json\"\n\
         config = {{ url = \"{url}\", items = \"$.data.services[?@.name == 'web'].instances[?@.state == 'up']\", \
         host = \"ip\", port = \"ports.http\", weight = \"meta.weight\", priority = \"meta.priority\", tags = \"zone\" }}\n\
         grants = {{ http = [\"http://{}/registry/\"] }}\n\n{}{}",
        server.addr,
        pool_section("p", "[]", "disc", "keeplast"),
        listener_section("p"),
    );
    let weir = start_weir(&text).await?;
    let pool = weir.pool("p").unwrap().clone();
    assert_eq!(backends(&pool), [entry("127.0.0.21:8081", 3, 2), entry("127.0.0.22:8082", 1, 0)]);
    assert_eq!(pool.members().find("127.0.0.21:8081").unwrap().tags, ["a"]);
    assert_eq!(server.requests().first().map(String::as_str), Some("/registry/v1/instances"));

    server.set(&doc(r#"{"ip": "127.0.0.21", "ports": {"http": 8081}, "state": "down"},
           {"ip": "127.0.0.22", "ports": {"http": "8082"}, "state": "up"},
           {"ip": "127.0.0.23", "ports": {"http": 8083}, "meta": {"weight": "9"}, "state": "up"}"#));
    pool_becomes(
        "the pool to follow the JSON",
        &pool,
        &[entry("127.0.0.22:8082", 1, 0), entry("127.0.0.23:8083", 9, 0)],
    )
    .await?;
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_discovery_parses_lines_with_the_default_regex() -> Result<()> {
    let server = ContentServer::start(
        "127.0.0.31:9001 weight=5\n# a comment\n127.0.0.32:9002 priority=2\nnot a backend\n[::1]:9003\n",
    )
    .await?;
    let text = format!(
        "[plugins.disc]\nsource = \"builtin:discover-plaintext\"\nconfig = {{ url = \"http://{0}/backends.txt\" }}\n\
         grants = {{ http = [\"http://{0}/\"] }}\n\n{1}{2}",
        server.addr,
        pool_section("p", "[]", "disc", "keeplast"),
        listener_section("p"),
    );
    let weir = start_weir(&text).await?;
    let pool = weir.pool("p").unwrap().clone();
    assert_eq!(
        backends(&pool),
        [entry("127.0.0.31:9001", 5, 0), entry("127.0.0.32:9002", 1, 2), entry("[::1]:9003", 1, 0)]
    );
    assert_eq!(server.requests().first().map(String::as_str), Some("/backends.txt"));

    server.set("127.0.0.32:9002 weight=2\n127.0.0.33:9003 weight=1 priority=1\n");
    pool_becomes(
        "the pool to follow the text",
        &pool,
        &[entry("127.0.0.32:9002", 2, 0), entry("127.0.0.33:9003", 1, 1)],
    )
    .await?;
    weir.shutdown().await;
    Ok(())
}

/// One entry of Consul's `GET /v1/health/service/<name>` answer, shaped as in
/// Consul's API documentation (Node, Service with TaggedAddresses, Weights
/// and Meta, and the Checks).
fn consul_entry(node: &str, node_addr: &str, id: &str, svc_addr: &str, port: u16, tags: &str, passing: u32) -> String {
    format!(
        r#"{{
    "Node": {{
      "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
      "Node": "{node}",
      "Address": "{node_addr}",
      "Datacenter": "dc1",
      "TaggedAddresses": {{ "lan": "{node_addr}", "wan": "{node_addr}" }},
      "Meta": {{ "instance_type": "t2.medium" }}
    }},
    "Service": {{
      "ID": "{id}",
      "Service": "web",
      "Tags": [{tags}],
      "Address": "{svc_addr}",
      "TaggedAddresses": {{
        "lan": {{ "address": "{node_addr}", "port": {port} }},
        "wan": {{ "address": "{node_addr}", "port": {port} }}
      }},
      "Meta": {{ "version": "4.0" }},
      "Port": {port},
      "Weights": {{ "Passing": {passing}, "Warning": 1 }},
      "Namespace": "default"
    }},
    "Checks": [
      {{
        "Node": "{node}",
        "CheckID": "service:{id}",
        "Name": "Service 'web' check",
        "Status": "passing",
        "Notes": "",
        "Output": "",
        "ServiceID": "{id}",
        "ServiceName": "web",
        "ServiceTags": [{tags}],
        "Namespace": "default"
      }},
      {{
        "Node": "{node}",
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing",
        "Notes": "",
        "Output": "",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Namespace": "default"
      }}
    ]
  }}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_discovery_reads_the_health_api() -> Result<()> {
    // Consul has no Debian package, so its documented response to
    // `GET /v1/health/service/<name>?passing=true` is replayed by a local
    // HTTP server instead of running a real agent.
    let v1 = format!(
        "[{},\n{}]",
        consul_entry("node-1", "127.0.0.51", "web-1", "127.0.0.61", 8001, r#""primary", "v2""#, 10),
        // No Service.Address: the node's address is the backend's host.
        consul_entry("node-2", "127.0.0.52", "web-2", "", 8002, "", 0),
    );
    let server = ContentServer::start(&v1).await?;
    // The ACL token comes from the environment: the config holds only its name.
    std::env::set_var("WEIR_TEST_CONSUL_TOKEN", "acl-from-env");
    let text = format!(
        "[plugins.disc]\nsource = \"builtin:discover-consul\"\n\
         config = {{ endpoint = \"http://{0}\", service = \"web\", token = {{ secret_env = \"WEIR_TEST_CONSUL_TOKEN\" }} }}\n\
         grants = {{ http = [\"http://{0}/v1/health/service/web\"] }}\n\n{1}{2}",
        server.addr,
        pool_section("p", "[]", "disc", "keeplast"),
        listener_section("p"),
    );
    let weir = start_weir(&text).await?;
    let pool = weir.pool("p").unwrap().clone();
    assert_eq!(backends(&pool), [entry("127.0.0.61:8001", 10, 0), entry("127.0.0.52:8002", 1, 0)]);
    assert_eq!(pool.members().find("127.0.0.61:8001").unwrap().tags, ["primary", "v2"]);
    assert_eq!(server.requests().first().map(String::as_str), Some("/v1/health/service/web?passing=true"));
    assert_eq!(server.tokens.lock().unwrap().first().map(String::as_str), Some("acl-from-env"));

    server.set(&format!(
        "[{},\n{}]",
        consul_entry("node-2", "127.0.0.52", "web-2", "", 8002, "", 4),
        consul_entry("node-3", "127.0.0.53", "web-3", "127.0.0.63", 8003, r#""canary""#, 2),
    ));
    pool_becomes(
        "the pool to follow Consul's answer",
        &pool,
        &[entry("127.0.0.52:8002", 4, 0), entry("127.0.0.63:8003", 2, 0)],
    )
    .await?;
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_follows_a_and_srv_records_from_dnsmasq() -> Result<()> {
    let dir = Scratch::new("dns")?;
    let port = free_port()?;
    let records = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut dns = Dnsmasq::start(
        port,
        dir.join("dnsmasq.log"),
        &records(&[
            // dnsmasq answers for `.test` itself: NOERROR without records
            // (AAAA of an IPv4-only name), NXDOMAIN for unknown names.
            "--local=/test/",
            "--host-record=web.test,127.0.0.2",
            "--host-record=web.test,127.0.0.3,::1",
            "--host-record=a.web.test,127.0.0.4",
            "--host-record=b.web.test,127.0.0.5",
            "--srv-host=_http._tcp.web.test,a.web.test,8081,0,5",
            "--srv-host=_http._tcp.web.test,b.web.test,8082,1,0",
        ]),
    )
    .await?;
    let text = format!(
        "[plugins.dns-a]\nsource = \"builtin:discover-dns\"\n\
         config = {{ name = \"web.test\", type = \"A\", port = 8080, weight = 2 }}\ngrants = {{ dns = \"127.0.0.1:{port}\" }}\n\n\
         [plugins.dns-srv]\nsource = \"builtin:discover-dns\"\n\
         config = {{ name = \"_http._tcp.web.test\", type = \"SRV\" }}\ngrants = {{ dns = \"127.0.0.1:{port}\" }}\n\n{}{}{}",
        pool_section("pa", "[]", "dns-a", "keeplast"),
        pool_section("psrv", "[]", "dns-srv", "keeplast"),
        listener_section("pa"),
    );
    let weir = start_weir(&text).await?;
    let (pa, psrv) = (weir.pool("pa").unwrap().clone(), weir.pool("psrv").unwrap().clone());
    // A (and AAAA) records with the config's port and weight.
    pool_becomes_set(
        "A records",
        &pa,
        &[entry("127.0.0.2:8080", 2, 0), entry("127.0.0.3:8080", 2, 0), entry("[::1]:8080", 2, 0)],
    )
    .await?;
    // SRV: port, weight and priority from the records (weight 0 counts as 1).
    pool_becomes_set("SRV records", &psrv, &[entry("127.0.0.4:8081", 5, 0), entry("127.0.0.5:8082", 1, 1)]).await?;

    dns.restart(&records(&[
        "--local=/test/",
        "--host-record=web.test,127.0.0.6",
        "--host-record=c.web.test,127.0.0.7",
        "--srv-host=_http._tcp.web.test,c.web.test,9091,2,7",
    ]))
    .await?;
    pool_becomes_set("new A records", &pa, &[entry("127.0.0.6:8080", 2, 0)]).await?;
    pool_becomes_set("new SRV records", &psrv, &[entry("127.0.0.7:9091", 7, 2)]).await?;
    weir.shutdown().await;
    Ok(())
}

/// A resolver that refuses AAAA questions (dnsmasq without `--local` and
/// without upstreams answers REFUSED for a name that has only an A record)
/// must not stop `family = "ipv4"` discovery, which needs no AAAA record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_ipv4_discovery_survives_a_refused_aaaa_question() -> Result<()> {
    let dir = Scratch::new("dns-refused")?;
    let port = free_port()?;
    let _dns = Dnsmasq::start(port, dir.join("dnsmasq.log"), &["--host-record=web.test,127.0.0.2".to_string()]).await?;
    let text = format!(
        "[plugins.dns-a]\nsource = \"builtin:discover-dns\"\n\
         config = {{ name = \"web.test\", type = \"A\", port = 8080, family = \"ipv4\" }}\ngrants = {{ dns = \"127.0.0.1:{port}\" }}\n\n{}{}",
        pool_section("pa", "[]", "dns-a", "keeplast"),
        listener_section("pa"),
    );
    let weir = start_weir(&text).await?;
    let found = discover_now(&weir, "dns-a").await?;
    assert_eq!(found, Ok(vec![entry("127.0.0.2:8080", 1, 0)]));
    assert_eq!(backends(&weir.pool("pa").unwrap()), [entry("127.0.0.2:8080", 1, 0)]);
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_discovery_follows_puts_and_deletes_within_a_second() -> Result<()> {
    let dir = Scratch::new("etcd")?;
    let etcd = Etcd::start(&dir).await?;
    etcd.put("/services/web/a", "127.0.0.41:8001 weight=2").await?;
    // Just outside the prefix's range: never a backend.
    etcd.put("/services/webx", "127.0.0.49:8009").await?;
    etcd.put("/services/other/z", "127.0.0.48:8008").await?;
    let text = format!(
        "[plugins.disc]\nsource = \"builtin:discover-etcd\"\n\
         config = {{ endpoint = \"{0}\", prefix = \"/services/web/\" }}\n\
         grants = {{ http = [\"{0}/v3/kv/range\"] }}\n\n{1}{2}",
        etcd.endpoint,
        pool_section("p", "[]", "disc", "keeplast"),
        listener_section("p"),
    );
    let weir = start_weir(&text).await?;
    let pool = weir.pool("p").unwrap().clone();
    assert_eq!(backends(&pool), [entry("127.0.0.41:8001", 2, 0)]);

    etcd.put("/services/web/b", r#"{"address": "127.0.0.42:8002", "weight": 3, "priority": 1, "tags": ["canary"]}"#)
        .await?;
    let put_at = Instant::now();
    pool_becomes("the pool to follow a put", &pool, &[entry("127.0.0.41:8001", 2, 0), entry("127.0.0.42:8002", 3, 1)])
        .await?;
    let after_put = put_at.elapsed();
    assert_eq!(pool.members().find("127.0.0.42:8002").unwrap().tags, ["canary"]);

    etcd.delete("/services/web/a").await?;
    let delete_at = Instant::now();
    pool_becomes("the pool to follow a delete", &pool, &[entry("127.0.0.42:8002", 3, 1)]).await?;
    let after_delete = delete_at.elapsed();

    eprintln!("etcd discovery (interval {INTERVAL:?}): put seen after {after_put:?}, delete after {after_delete:?}");
    assert!(after_put < Duration::from_secs(1), "put took {after_put:?}");
    assert!(after_delete < Duration::from_secs(1), "delete took {after_delete:?}");
    weir.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_outside_the_grants_is_denied_and_never_reaches_the_pool() -> Result<()> {
    let dir = Scratch::new("denied")?;
    std::fs::create_dir_all(dir.join("allowed"))?;
    std::fs::create_dir_all(dir.join("secret"))?;
    let secret = dir.join("secret/backends");
    std::fs::write(&secret, "127.0.0.66:6666 weight=9\n")?;
    std::os::unix::fs::symlink(&secret, dir.join("allowed/link"))?;
    let control_list = dir.join("allowed/backends");
    write_atomic(&control_list, "127.0.0.1:7101\n")?;
    let server = ContentServer::start(r#"[{"address": "127.0.0.67:6667", "weight": 9}]"#).await?;

    let allowed = dir.join("allowed");
    let file_plugin = |name: &str, path: &str| {
        format!(
            "[plugins.{name}]\nsource = \"builtin:discover-file\"\nconfig = {{ path = \"{path}\" }}\ngrants = {{ files = [\"{}\"] }}\n\n",
            allowed.display()
        )
    };
    let text = format!(
        "{}{}{}{}\
         [plugins.http-denied]\nsource = \"builtin:discover-http-json\"\n\
         config = {{ url = \"http://{addr}/private/instances\", address = \"address\", weight = \"weight\" }}\n\
         grants = {{ http = [\"http://{addr}/public/\"] }}\n\n\
         [plugins.http-dotdot]\nsource = \"builtin:discover-http-json\"\n\
         config = {{ url = \"http://{addr}/public/%2e%2e/private/instances\", address = \"address\", weight = \"weight\" }}\n\
         grants = {{ http = [\"http://{addr}/public/\"] }}\n\n\
         {}{}{}{}{}{}{}",
        // Outside the granted directory.
        file_plugin("file-denied", &secret.display().to_string()),
        // Escaping the granted directory with `..`.
        file_plugin("file-dotdot", &format!("{}/allowed/../secret/backends", dir.path.display())),
        // Escaping it with a symlink.
        file_plugin("file-link", &format!("{}/allowed/link", dir.path.display())),
        // The control: same grant, a file inside it.
        file_plugin("file-ok", &control_list.display().to_string()),
        pool_section("pf", r#"["127.0.0.1:1"]"#, "file-denied", "keeplast"),
        pool_section("pdot", r#"["127.0.0.1:2"]"#, "file-dotdot", "keeplast"),
        pool_section("plink", r#"["127.0.0.1:3"]"#, "file-link", "keeplast"),
        pool_section("ph", r#"["127.0.0.1:4"]"#, "http-denied", "keeplast"),
        // Escaping the granted URL prefix with a (percent-encoded) `..`.
        pool_section("phdot", r#"["127.0.0.1:5"]"#, "http-dotdot", "keeplast"),
        pool_section("control", "[]", "file-ok", "keeplast"),
        listener_section("pf"),
        addr = server.addr,
    );
    let weir = start_weir(&text).await?;

    for plugin in ["file-denied", "file-dotdot", "file-link", "http-denied", "http-dotdot"] {
        let got = discover_now(&weir, plugin).await?;
        match got {
            Ok(list) => panic!("{plugin}: discovery outside the grants answered {list:?}"),
            Err(message) => assert!(message.contains("denied"), "{plugin}: {message}"),
        }
    }
    let statics = [
        ("pf", "127.0.0.1:1"),
        ("pdot", "127.0.0.1:2"),
        ("plink", "127.0.0.1:3"),
        ("ph", "127.0.0.1:4"),
        ("phdot", "127.0.0.1:5"),
    ];
    let all_static = || statics.iter().all(|(p, a)| backends(&weir.pool(p).unwrap()) == [entry(a, 1, 0)]);
    assert!(all_static(), "a denied discovery changed a pool");

    // The control pool (same grant, a file inside it) follows a change, so
    // discovery rounds do run; the denied pools keep their static backends.
    let control = weir.pool("control").unwrap().clone();
    assert_eq!(backends(&control), [entry("127.0.0.1:7101", 1, 0)]);
    write_atomic(&control_list, "127.0.0.1:7102 weight=2\n")?;
    pool_becomes("the control pool to follow its file", &control, &[entry("127.0.0.1:7102", 2, 0)]).await?;
    holds_for("denied pools keeping their static backends", 3 * INTERVAL, all_static).await?;
    assert!(server.requests().is_empty(), "the denied URL was fetched: {:?}", server.requests());
    weir.shutdown().await;
    Ok(())
}
