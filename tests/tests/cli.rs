//! The `weir` command line as a user runs it: `check`, `plugins`, `run`.

use anyhow::Result;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_tests::*;

/// The `weir` CLI built from the current code.
fn weir_bin() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_weir-under-test").into()
}

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn weir(args: &[&str], dir: &Path) -> Outcome {
    let out = Command::new(weir_bin())
        .args(args)
        .current_dir(dir)
        .env("WEIR_CACHE_DIR", std::env::temp_dir().join("weir-test-plugin-cache"))
        .stdin(Stdio::null())
        .output()
        .expect("running weir");
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weir-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const GOOD: &str = r#"
[plugins.acl]
source = "builtin:ip-access"
config = { default = "allow" }

[pools.web]
backends = ["127.0.0.1:9"]

[listeners.front]
bind = "127.0.0.1:0"
pool = "web"
access = ["acl"]
"#;

fn check(dir: &Path, text: &str) -> Outcome {
    std::fs::write(dir.join("weir.toml"), text).unwrap();
    weir(&["check", "-c", "weir.toml"], dir)
}

/// The one-line error `weir check` printed.
fn error_line(o: &Outcome) -> String {
    assert!(!o.ok, "expected failure, got success: {}", o.stdout);
    let lines: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{}", o.stderr);
    lines[0].to_string()
}

#[test]
fn check_accepts_a_good_config() {
    let dir = scratch("good");
    let o = check(&dir, GOOD);
    assert!(o.ok, "{}", o.stderr);
    assert!(o.stdout.contains("weir.toml: ok (1 listeners, 1 pools, 2 plugin instances)"), "{}", o.stdout);
}

#[test]
fn check_names_file_line_column_and_key_of_a_typo() {
    let dir = scratch("typo");
    let o = check(&dir, &GOOD.replace("pool = \"web\"", "pool = \"web\"\nidle_timout = \"5s\""));
    let e = error_line(&o);
    assert!(e.starts_with("error: weir.toml:12:1: "), "{e}");
    assert!(e.contains("unknown field `idle_timout`"), "{e}");
}

#[test]
fn check_reports_a_missing_plugin_file() {
    let dir = scratch("missing");
    let o = check(&dir, &GOOD.replace("builtin:ip-access", "plugins/nope.wasm"));
    let e = error_line(&o);
    assert!(e.starts_with("error: weir.toml:3:10: plugins.acl: plugins/nope.wasm: cannot read plugin file"), "{e}");
    assert!(e.contains("No such file"), "{e}");
}

#[test]
fn check_reports_a_plugin_of_the_wrong_world() {
    let dir = scratch("world");
    let balancer = component("weir-example-first");
    std::fs::copy(&balancer, dir.join("first.wasm")).unwrap();
    let o = check(&dir, &GOOD.replace("builtin:ip-access", "first.wasm"));
    let e = error_line(&o);
    assert!(e.starts_with("error: weir.toml:3:10: plugins.acl: first.wasm: exports weir:plugin/balance@0.2.0"), "{e}");
    assert!(e.contains("access-filter plugin must export weir:plugin/access@0.2.0"), "{e}");
}

#[test]
fn check_reports_a_file_that_is_not_wasm_and_a_bad_plugin_config() {
    let dir = scratch("notwasm");
    std::fs::write(dir.join("junk.wasm"), "this is not wasm").unwrap();
    let e = error_line(&check(&dir, &GOOD.replace("builtin:ip-access", "junk.wasm")));
    assert!(e.contains("plugins.acl: junk.wasm: not a loadable Wasm component: not WebAssembly"), "{e}");

    let e = error_line(&check(&dir, &GOOD.replace("default = \"allow\"", "default = \"maybe\"")));
    assert!(e.starts_with("error: weir.toml:4:10: plugins.acl.config: init failed: invalid config: default"), "{e}");
}

#[test]
fn plugins_lists_bundled_plugins_with_their_world() {
    let o = weir(&["plugins"], &std::env::temp_dir());
    assert!(o.ok, "{}", o.stderr);
    let line = |name: &str| o.stdout.lines().find(|l| l.starts_with(&format!("builtin:{name} "))).map(str::to_owned);
    assert!(line("round-robin").unwrap().contains(" balancer "), "{}", o.stdout);
    assert!(line("ip-access").unwrap().contains(" access-filter "), "{}", o.stdout);
}

#[test]
fn run_serves_traffic_and_stops_on_sigterm() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let backend = rt.block_on(EchoBackend::start("cli"))?;
    let mut weir = WeirProcess::spawn(&weir_bin(), "run", &GOOD.replace("127.0.0.1:9", &backend.addr.to_string()))?;
    let (name, echoed) = rt.block_on(exchange(weir.addr, b"through the binary"))?;
    assert_eq!((name.as_str(), echoed.as_slice()), ("cli", &b"through the binary"[..]));

    // SAFETY: signalling our own child process.
    unsafe { libc_kill(weir.child.id() as i32, 15) };
    let started = Instant::now();
    loop {
        if let Some(status) = weir.child.try_wait()? {
            assert!(status.success(), "weir exited with {status}");
            break;
        }
        assert!(started.elapsed() < STEP, "weir did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn status_plugin_push_and_reload_talk_to_a_running_weir() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (a, b) = rt.block_on(async { anyhow::Ok((EchoBackend::start("a").await?, EchoBackend::start("b").await?)) })?;
    let text = |backend: &EchoBackend| {
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"cli-token\"\n\n[plugins.lb]\nsource = \"builtin:round-robin\"\n\n\
             [pools.p]\nbalancer = \"lb\"\nbackends = [\"{}\"]\n\n[listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
            backend.addr
        )
    };
    let proc = WeirProcess::spawn(&weir_bin(), "cli-admin", &text(&a))?;
    let admin = proc.logged_address("admin API listening")?;
    let dir = scratch("admin");
    let target = ["--admin", admin.as_str(), "--token", "cli-token"];
    fn with<'a>(args: &[&'a str], target: &[&'a str]) -> Vec<&'a str> {
        [args, target].concat()
    }

    let out = weir(&with(&["status"], &target), &dir);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains(&a.addr.to_string()) && out.stdout.contains("lb") && out.stdout.contains("gen 1"),
        "{}",
        out.stdout
    );
    // The same as one JSON object, for scripts.
    let out = weir(&with(&["status", "--json"], &target), &dir);
    assert!(out.ok, "{}", out.stderr);
    let status: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(status["about"]["name"], "weir");
    assert_eq!(status["pools"][0]["backends"][0]["address"], a.addr.to_string(), "{status:#}");
    assert!(
        status["plugins"].as_array().unwrap().iter().any(|p| p["name"] == "lb" && p["generation"] == 1),
        "{status:#}"
    );
    assert!(status["listeners"].as_array().is_some_and(|l| !l.is_empty()), "{status:#}");

    // Push a component file: the instance moves to generation 2.
    let file = dir.join("random.wasm");
    std::fs::write(&file, weir::plugin::bundled("random").unwrap())?;
    let out = weir(&with(&["plugin", "push", "lb", file.to_str().unwrap()], &target), &dir);
    assert!(out.ok && out.stdout.contains("lb: generation 2"), "{}{}", out.stdout, out.stderr);
    // A file that is not a component is refused with the reason; exit status 1.
    std::fs::write(dir.join("junk.wasm"), b"junk")?;
    let out = weir(&with(&["plugin", "push", "lb", dir.join("junk.wasm").to_str().unwrap()], &target), &dir);
    assert!(!out.ok && out.stderr.contains("422") && out.stderr.contains("not WebAssembly"), "{}", out.stderr);

    // Reload re-reads the file: traffic moves to b.
    std::fs::write(
        proc.dir.join("weir.toml"),
        text(&b)
            .replacen("127.0.0.1:0", &admin, 1)
            .replace("bind = \"127.0.0.1:0\"\npool", &format!("bind = \"{}\"\npool", proc.addr)),
    )?;
    let out = weir(&with(&["reload"], &target), &dir);
    assert!(out.ok && out.stdout.contains("reloaded"), "{}{}", out.stdout, out.stderr);
    assert_eq!(rt.block_on(exchange(proc.addr, b"x"))?.0, "b");

    // Without the token: refused.
    let out = weir(&["status", "--admin", admin.as_str()], &dir);
    assert!(!out.ok && out.stderr.contains("401"), "{}", out.stderr);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn plugin_check_says_what_a_component_is_and_whether_weir_loads_it() {
    let dir = scratch("plugin-check");
    let rr = dir.join("round-robin.wasm");
    std::fs::write(&rr, weir::plugin::bundled("round-robin").expect("bundled round-robin")).unwrap();
    let acl = dir.join("ip-access.wasm");
    std::fs::write(&acl, weir::plugin::bundled("ip-access").expect("bundled ip-access")).unwrap();

    let out = weir(&["plugin", "check", "round-robin.wasm"], &dir);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("implements: balancer"), "{}", out.stdout);
    assert!(out.stdout.contains("imports: weir:plugin/"), "{}", out.stdout);
    assert!(out.stdout.contains("loads: yes, world balancer"), "{}", out.stdout);

    // The wrong world.
    let out = weir(&["plugin", "check", "round-robin.wasm", "--world", "router"], &dir);
    assert!(!out.ok);
    assert!(out.stdout.contains("refused: it does not implement router (it implements balancer)"), "{}", out.stdout);

    // A config the plugin's init refuses, in TOML or JSON.
    let out = weir(&["plugin", "check", "ip-access.wasm", "--config", "{ default = \"maybe\" }"], &dir);
    assert!(!out.ok);
    assert!(out.stdout.contains("refused:") && out.stdout.contains("default"), "{}", out.stdout);
    let ok = weir(
        &["plugin", "check", "ip-access.wasm", "--config", r#"{"default": "deny", "rules": ["allow 10.0.0.0/8"]}"#],
        &dir,
    );
    assert!(ok.stdout.contains("loads: yes, world access-filter"), "{}", ok.stdout);
    // Secret references resolve as under `weir run`: the plugin gets the value.
    let by_file = ["plugin", "check", "ip-access.wasm", "--config", r#"{ default = { secret_file = "default.txt" } }"#];
    std::fs::write(dir.join("default.txt"), "maybe\n").unwrap();
    let out = weir(&by_file, &dir);
    assert!(!out.ok && out.stdout.contains("refused:") && out.stdout.contains("maybe"), "{}", out.stdout);
    std::fs::write(dir.join("default.txt"), "deny\n").unwrap();
    let out = weir(&by_file, &dir);
    assert!(out.stdout.contains("loads: yes, world access-filter"), "{}{}", out.stdout, out.stderr);
    let unset =
        ["plugin", "check", "ip-access.wasm", "--config", r#"{ default = { secret_env = "WEIR_TEST_UNSET" } }"#];
    let out = weir(&unset, &dir);
    assert!(!out.ok && out.stderr.contains("`WEIR_TEST_UNSET` is not set"), "{}{}", out.stdout, out.stderr);

    // A component importing an interface weir does not provide.
    let foreign = wat::parse_str(
        r#"(component
             (import "acme:missing/thing@1.0.0" (instance (export "ping" (func))))
           )"#,
    )
    .unwrap();
    std::fs::write(dir.join("foreign.wasm"), foreign).unwrap();
    let out = weir(&["plugin", "check", "foreign.wasm"], &dir);
    assert!(!out.ok);
    assert!(out.stdout.contains("imports: acme:missing/thing@1.0.0"), "{}", out.stdout);
    assert!(out.stdout.contains("refused: it imports something weir does not provide"), "{}", out.stdout);
    assert!(out.stdout.contains("acme:missing/thing"), "{}", out.stdout);

    // A core module and a file that is not WebAssembly at all.
    std::fs::write(dir.join("core.wasm"), wat::parse_str("(module)").unwrap()).unwrap();
    let out = weir(&["plugin", "check", "core.wasm"], &dir);
    assert!(!out.ok);
    assert!(out.stdout.contains("a core Wasm module, not a component"), "{}", out.stdout);
    std::fs::write(dir.join("notes.txt"), "just text").unwrap();
    let out = weir(&["plugin", "check", "notes.txt"], &dir);
    assert!(!out.ok);
    assert!(out.stdout.contains("not WebAssembly"), "{}", out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_new_makes_a_project_that_builds_loads_and_balances() -> Result<()> {
    let dir = scratch("plugin-new");
    let out = weir(&["plugin", "new", "--world", "balancer", "--dir", ".", "skip-one"], &dir);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let project = dir.join("skip-one");
    assert!(project.join("weir/wit/balancer.wit").exists() && project.join("weir/sdk/src/lib.rs").exists());
    let again = weir(&["plugin", "new", "--world", "balancer", "--dir", ".", "skip-one"], &dir);
    assert!(!again.ok && again.stderr.contains("exists already"), "{}", again.stderr);
    let bad = weir(&["plugin", "new", "--world", "balancr", "--dir", ".", "x"], &dir);
    assert!(!bad.ok && bad.stderr.contains("invalid value 'balancr' for '--world <WORLD>'"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("[possible values: access-filter, router, balancer, health-checker,"),
        "{}",
        bad.stderr
    );
    let bad = weir(&["plugin", "new", "--world", "router", "--lang", "go", "--dir", ".", "x"], &dir);
    assert!(!bad.ok && bad.stderr.contains("[possible values: rust, python, js]"), "{}", bad.stderr);

    // Build it (reusing the test build's wasm32 standard library).
    let built = weir_building(&["plugin", "build"], &project)?;
    assert!(built.ok, "{}{}", built.stdout, built.stderr);
    let wasm = project.join("target/weir/skip-one.wasm");
    assert!(built.stdout.contains("built") && wasm.exists(), "{}", built.stdout);
    let check = weir(&["plugin", "check", "skip-one/target/weir/skip-one.wasm", "--config", "{ offset = 1 }"], &dir);
    assert!(check.ok && check.stdout.contains("loads: yes, world balancer"), "{}", check.stdout);

    // weir runs it: with offset = 1 the first pick (sequence 0) is the second backend.
    let backends = [EchoBackend::start("a").await?, EchoBackend::start("b").await?, EchoBackend::start("c").await?];
    let config = format!(
        "[plugins.lb]\nsource = {:?}\nconfig = {{ offset = 1 }}\n\n[pools.p]\nbalancer = \"lb\"\nbackends = {}\n\n\
         [listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        wasm.display().to_string(),
        addresses(&backends.iter().collect::<Vec<_>>())
    );
    let weir = start_weir(&config).await?;
    let addr = weir.listener_addr("l").unwrap();
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(exchange(addr, b"x").await?.0);
    }
    assert_eq!(names, ["b", "c", "a", "b", "c", "a"]);
    weir.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn plugin_test_runs_a_component_on_synthetic_cases() {
    let dir = scratch("plugin-test");
    for name in ["round-robin", "least-connections", "ip-access", "host-path"] {
        std::fs::write(dir.join(format!("{name}.wasm")), weir::plugin::bundled(name).unwrap()).unwrap();
    }
    let pool = r#"backends = [{ address = "10.0.0.1:80" }, { address = "10.0.0.2:80" }, { address = "10.0.0.3:80" }]"#;
    std::fs::write(
        dir.join("rr.toml"),
        format!(
            r#"{pool}
[[case]]
name = "in turn"
expect = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.1:80"]
[[case]]
name = "a down backend is skipped"
down = ["10.0.0.2:80"]
expect = ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.1:80"]
"#
        ),
    )
    .unwrap();
    let out = weir(&["plugin", "test", "round-robin.wasm", "--cases", "rr.toml"], &dir);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("balancer: 2 cases, 2 passed, 0 failed"), "{}", out.stdout);

    std::fs::write(
        dir.join("lc.toml"),
        format!("{pool}\n[[case]]\nname = \"fewest\"\nactive = [5, 0, 2]\nexpect = [\"10.0.0.2:80\"]\n[[case]]\nname = \"wrong on purpose\"\nactive = [5, 0, 2]\nexpect = [\"10.0.0.1:80\"]\n"),
    )
    .unwrap();
    let out = weir(&["plugin", "test", "least-connections.wasm", "--cases", "lc.toml"], &dir);
    assert!(!out.ok, "a failing case fails the command");
    assert!(out.stdout.contains("ok    fewest"), "{}", out.stdout);
    assert!(
        out.stdout.contains(r#"FAIL  wrong on purpose: expected ["10.0.0.1:80"], got ["10.0.0.2:80"]"#),
        "{}",
        out.stdout
    );

    std::fs::write(
        dir.join("acl.toml"),
        r#"config = { default = "deny", rules = ["allow 10.0.0.0/8"] }
[[case]]
name = "inside"
client = "10.1.2.3"
expect = "allow"
[[case]]
name = "outside"
client = "192.0.2.9"
expect = "deny"
expect_status = 403
"#,
    )
    .unwrap();
    let out = weir(&["plugin", "test", "ip-access.wasm", "--cases", "acl.toml"], &dir);
    assert!(out.ok && out.stdout.contains("access-filter: 2 cases, 2 passed"), "{}{}", out.stdout, out.stderr);

    std::fs::write(
        dir.join("routes.toml"),
        r#"config = { routes = [{ host = "shop.test", path = "/api/", pool = "api" }] }
[[case]]
name = "api"
host = "shop.test"
path = "/api/items?x=1"
expect = "api"
[[case]]
name = "elsewhere"
host = "other.test"
expect = "no-match"
"#,
    )
    .unwrap();
    let out = weir(&["plugin", "test", "host-path.wasm", "--cases", "routes.toml"], &dir);
    assert!(out.ok && out.stdout.contains("router: 2 cases, 2 passed"), "{}{}", out.stdout, out.stderr);

    // Live numbers and cookies: latency, throughput and a sticky cookie.
    for name in ["least-latency", "least-bandwidth", "sticky", "weighted-round-robin"] {
        std::fs::write(dir.join(format!("{name}.wasm")), weir::plugin::bundled(name).unwrap()).unwrap();
    }
    let cases = [
        ("least-latency", "latency_us = [900, 150, 400]\nexpect = [\"10.0.0.2:80\"]".to_string()),
        ("least-latency", "latency_us = [900, 150, 400]\nactive = [0, 9, 0]\nexpect = [\"10.0.0.3:80\"]".into()),
        ("least-bandwidth", "bytes_per_sec = [5000000, 80000, 20000]\nexpect = [\"10.0.0.3:80\"]".into()),
        (
            "sticky",
            format!(
                "cookies = {{ weir_sticky = \"{:016x}\" }}\nexpect = [\"10.0.0.3:80\", \"10.0.0.3:80\"]",
                weir_sdk::hash64(b"10.0.0.3:80")
            ),
        ),
        ("sticky", "cookies = { weir_sticky = \"forged\" }\nexpect = [\"10.0.0.1:80\", \"10.0.0.2:80\"]".into()),
        // Eligibility from `pick-context.eligible-mask`: the down backend's
        // turns go to the next in the schedule.
        (
            "weighted-round-robin",
            "down = [\"10.0.0.1:80\"]\nexpect = [\"10.0.0.2:80\", \"10.0.0.2:80\", \"10.0.0.3:80\", \"10.0.0.2:80\"]"
                .into(),
        ),
    ];
    for (i, (plugin, case)) in cases.iter().enumerate() {
        std::fs::write(dir.join("live.toml"), format!("{pool}\n[[case]]\nname = \"live {i}\"\n{case}\n")).unwrap();
        let out = weir(&["plugin", "test", &format!("{plugin}.wasm"), "--cases", "live.toml"], &dir);
        assert!(out.ok && out.stdout.contains("1 passed"), "{plugin}: {case}\n{}{}", out.stdout, out.stderr);
    }

    // A field the phase does not read is refused, not ignored.
    std::fs::write(
        dir.join("unread.toml"),
        format!("{pool}\n[[case]]\nname = \"by method\"\nmethod = \"POST\"\nexpect = [\"10.0.0.1:80\"]\n"),
    )
    .unwrap();
    let out = weir(&["plugin", "test", "round-robin.wasm", "--cases", "unread.toml"], &dir);
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("case `by method`: `method` not read by a balancer"), "{}", out.stderr);
    std::fs::write(dir.join("unread.toml"), "[[case]]\nname = \"x\"\nactive = [1]\nexpect = \"api\"\n").unwrap();
    let out = weir(&["plugin", "test", "host-path.wasm", "--cases", "unread.toml"], &dir);
    assert!(!out.ok && out.stderr.contains("`active` not read by a router"), "{}", out.stderr);
    // The pool's hash_key drives the key from the request, as a listener does:
    // the region balancer gets each case's `x-region` header.
    std::fs::copy(component("weir-example-region-balancer"), dir.join("region.wasm")).unwrap();
    std::fs::write(
        dir.join("region.toml"),
        r#"hash_key = "header:x-region"
backends = [{ address = "10.0.0.1:80", tags = ["region=us"] }, { address = "10.0.0.2:80", tags = ["region=eu"] }, { address = "10.0.0.3:80", tags = ["region=eu"] }]
[[case]]
name = "eu, the less loaded"
headers = { x-region = "eu" }
active = [0, 3, 1]
expect = ["10.0.0.3:80"]
[[case]]
name = "us"
headers = { x-region = "us" }
active = [4, 0, 0]
expect = ["10.0.0.1:80"]
[[case]]
name = "no header: every backend"
active = [2, 2, 0]
expect = ["10.0.0.3:80"]
"#,
    )
    .unwrap();
    let out = weir(&["plugin", "test", "region.wasm", "--cases", "region.toml"], &dir);
    assert!(out.ok && out.stdout.contains("balancer: 3 cases, 3 passed"), "{}{}", out.stdout, out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An access log that keeps a request header (`header:x-api-key`) replays
/// an access filter's config change: adding key k2 to the allowed keys
/// changes exactly the requests that carried k2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_replay_sees_the_headers_the_access_log_kept() -> Result<()> {
    use weir_tests::web::{client_h1, get, send, HttpBackend};
    let backend = HttpBackend::start("a").await?;
    let config = format!(
        "[pools.p]\nbackends = [\"{}\"]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n\
         access_log = [\"client\", \"method\", \"host\", \"path\", \"header:x-api-key\", \"status\"]\n",
        backend.addr
    );
    let proc = WeirProcess::spawn_with(&weir_bin(), "replay-headers", &config, &[])?;
    let client = client_h1();
    let keys = [Some("k1"), Some("k2"), None, Some("k2"), Some("k3"), Some("k1")];
    for key in keys {
        let mut req = get(proc.addr, "shop.test", "/");
        if let Some(k) = key {
            req.headers_mut().insert("x-api-key", http::HeaderValue::from_static(k));
        }
        assert_eq!(send(&client, req).await?.status.as_u16(), 200);
    }
    drop(client);
    let deadline = Instant::now() + STEP;
    while proc.log.lock().unwrap().iter().filter(|l| l.contains("weir::access")).count() < keys.len() {
        assert!(Instant::now() < deadline, "no access log lines");
        std::thread::sleep(Duration::from_millis(10));
    }
    let log: Vec<String> = proc.log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("header.x-api-key=k2")), "{log:?}");
    let dir = scratch("replay-headers");
    std::fs::write(dir.join("access.log"), log.join("\n"))?;
    std::fs::copy(component("weir-example-key-access"), dir.join("keys.wasm"))?;
    let out = weir(
        &["plugin", "replay", "keys.wasm", "keys.wasm", "--log", "access.log"]
            .into_iter()
            .chain(["--config", r#"{"keys": ["k1"]}"#, "--new-config", r#"{"keys": ["k1", "k2"]}"#])
            .collect::<Vec<_>>(),
        &dir,
    );
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("access-filter: 6 logged requests replayed, 2 decided differently"), "{}", out.stdout);
    assert_eq!(out.stdout.matches("deny 403 -> allow").count(), 2, "{}", out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_replay_runs_a_real_access_log_through_two_versions() -> Result<()> {
    use weir_tests::web::{client_h1, get, send, HttpBackend};
    let backends = [HttpBackend::start("a").await?, HttpBackend::start("b").await?, HttpBackend::start("c").await?];
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let config = format!(
        "[pools.p]\nbackends = [{}]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\naccess_log = true\n",
        list.join(", ")
    );
    for format in ["plain", "json"] {
        let proc =
            WeirProcess::spawn_with(&weir_bin(), &format!("replay-{format}"), &config, &["--log-format", format])?;
        let client = client_h1();
        for i in 0..6 {
            let got = send(&client, get(proc.addr, "shop.test", &format!("/item/{i}"))).await?;
            assert_eq!(got.status.as_u16(), 200);
        }
        drop(client);
        let deadline = Instant::now() + STEP;
        while proc.log.lock().unwrap().iter().filter(|l| l.contains("weir::access")).count() < 6 {
            assert!(Instant::now() < deadline, "no access log lines");
            std::thread::sleep(Duration::from_millis(10));
        }
        let log: Vec<String> = proc.log.lock().unwrap().clone();
        let dir = scratch(&format!("replay-{format}"));
        std::fs::write(dir.join("access.log"), log.join("\n"))?;
        std::fs::write(dir.join("rr.wasm"), weir::plugin::bundled("round-robin").unwrap())?;
        std::fs::copy(component("weir-example-first"), dir.join("first.wasm"))?;

        // The same component twice: no difference.
        let out = weir(&["plugin", "replay", "rr.wasm", "rr.wasm", "--log", "access.log"], &dir);
        assert!(out.ok, "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("balancer: 6 logged requests replayed, 0 decided differently"), "{}", out.stdout);
        // round-robin (a b c a b c) against `first` (always a): 4 of 6 differ.
        let out = weir(&["plugin", "replay", "rr.wasm", "first.wasm", "--log", "access.log"], &dir);
        assert!(out.stdout.contains("balancer: 6 logged requests replayed, 4 decided differently"), "{}", out.stdout);
        let first = backends[0].addr.to_string();
        let second = backends[1].addr.to_string();
        assert!(out.stdout.contains("GET shop.test/item/1 from 127.0.0.1:"), "{}", out.stdout);
        assert!(out.stdout.contains(&format!("{second} -> {first}")), "{}", out.stdout);
        assert!(!out.stdout.contains("not conclusive"), "neither reads live numbers: {}", out.stdout);
        // A latency-weighted balancer reads what the log does not record:
        // the replay says so instead of reporting agreement.
        std::fs::write(dir.join("latency.wasm"), weir::plugin::bundled("least-latency").unwrap())?;
        let out = weir(&["plugin", "replay", "rr.wasm", "latency.wasm", "--log", "access.log"], &dir);
        assert!(out.ok, "{}{}", out.stdout, out.stderr);
        let verdict = out.stdout.lines().find(|l| l.starts_with("not conclusive")).unwrap_or_default();
        assert!(verdict.contains("latencies (") && verdict.contains("--rollout"), "{}", out.stdout);
        // A balancer reading a request cookie the log does not keep: named.
        std::fs::write(dir.join("sticky.wasm"), weir::plugin::bundled("sticky").unwrap())?;
        let out = weir(&["plugin", "replay", "rr.wasm", "sticky.wasm", "--log", "access.log"], &dir);
        assert!(out.ok, "{}{}", out.stdout, out.stderr);
        let verdict = out.stdout.lines().find(|l| l.contains("the log has no value for")).unwrap_or_default();
        assert!(verdict.starts_with("not conclusive: the balancers read cookie weir_sticky,"), "{}", out.stdout);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// `PATH` with the toolchains the setup installed for the example plugins
/// first, so `weir plugin build` finds them instead of installing its own.
fn path_with_lang_tools() -> Result<std::ffi::OsString> {
    let py = lang::componentize_py();
    let js = lang::componentize_js("key-access")?;
    let dirs = [py.parent(), js.parent()].into_iter().flatten().filter(|d| !d.as_os_str().is_empty());
    let path = std::env::var_os("PATH").unwrap_or_default();
    Ok(std::env::join_paths(dirs.map(Path::to_path_buf).chain(std::env::split_paths(&path)))?)
}

/// `weir` with the build environment: the tests' wasm32 target directory
/// (its standard library is built already) and the language toolchains.
fn weir_building(args: &[&str], dir: &Path) -> Result<Outcome> {
    let out = Command::new(weir_bin())
        .args(args)
        .current_dir(dir)
        .env("WEIR_CACHE_DIR", std::env::temp_dir().join("weir-test-plugin-cache"))
        .env("CARGO_TARGET_DIR", env!("WEIR_TEST_WASM_TARGET"))
        .env("PATH", path_with_lang_tools()?)
        .stdin(Stdio::null())
        .output()?;
    Ok(Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Every world's template in `lang`: made, built, loaded by `weir plugin
/// check` with its README's config, and passing its own `cases.toml`.
fn templates_build_and_pass_their_cases(lang: &str) -> Result<()> {
    let dir = scratch(&format!("templates-{lang}"));
    let worlds = ["balancer", "router", "access-filter", "health-checker", "discovery-adapter"];
    for world in worlds {
        let name = format!("my-{world}");
        let out = weir(&["plugin", "new", "--world", world, "--lang", lang, &name], &dir);
        assert!(out.ok && out.stdout.contains(&format!("a {world} plugin in {lang}")), "{}{}", out.stdout, out.stderr);
        let project = dir.join(&name);
        assert!(project.join(format!("weir/wit/{world}.wit")).exists() && project.join("cases.toml").exists());
        let built = weir_building(&["plugin", "build"], &project)?;
        let wasm = project.join(format!("target/weir/{name}.wasm"));
        assert!(built.ok && wasm.exists(), "{world} in {lang}: {}{}", built.stdout, built.stderr);
        if world == "balancer" {
            // Unchanged sources: the same component (so the same hash, and a
            // compile-cache hit in weir). Rust builds are reproducible; the
            // Python and JavaScript toolchains are not, so weir keeps the
            // component, and a changed source builds anew.
            let first = std::fs::read(&wasm)?;
            let again = weir_building(&["plugin", "build"], &project)?;
            assert!(again.ok, "{}", again.stderr);
            assert!(std::fs::read(&wasm)? == first, "{lang}: an unchanged project built different bytes");
            if lang != "rust" {
                assert!(again.stderr.contains("sources unchanged"), "{}", again.stderr);
                let readme = project.join("README.md");
                std::fs::write(&readme, std::fs::read_to_string(&readme)? + "\n")?;
                let changed = weir_building(&["plugin", "build"], &project)?;
                assert!(changed.ok && !changed.stderr.contains("sources unchanged"), "{}", changed.stderr);
            }
        }

        // Python and JavaScript: the build wrote typed bindings, and the
        // unit tests run natively against them with the host stubbed.
        let unit_tests = |project: &Path| -> Result<Option<(bool, String)>> {
            let mut c = match lang {
                "python" => Command::new("python3"),
                "js" => Command::new("node"),
                _ => return Ok(None),
            };
            match lang {
                "python" => c.args(["-m", "unittest"]),
                _ => c.args(["--import", "./weir/testing/register.js", "--test"]),
            };
            let out = c.current_dir(project).stdin(Stdio::null()).output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            Ok(Some((out.status.success(), text)))
        };
        let typed = match lang {
            "python" => project.join("target/weir/py/wit_world/__init__.py"),
            "js" => project.join(format!("target/weir/types/{world}.d.ts")),
            _ => project.join("Cargo.toml"),
        };
        assert!(typed.exists(), "{world} in {lang}: no {}", typed.display());
        if let Some((ok, text)) = unit_tests(&project)? {
            let ran = if lang == "python" {
                text.contains("\nOK") && !text.contains("Ran 0 tests")
            } else {
                text.contains("# fail 0") && !text.contains("# pass 0")
            };
            assert!(ok && ran, "{world} in {lang}: the unit tests\n{text}");
            if world == "balancer" {
                // They are real: a wrong expectation fails them.
                let file = if lang == "python" {
                    project.join("test_app.py")
                } else {
                    project.join(format!("{name}.test.js"))
                };
                let tests = std::fs::read_to_string(&file)?;
                let broken =
                    tests.replacen("(1, 2, 0, 1)", "(1, 2, 0, 2)", 1).replacen("[1, 2, 0, 1]", "[1, 2, 0, 2]", 1);
                assert_ne!(broken, tests, "the balancer's unit tests changed shape");
                std::fs::write(&file, broken)?;
                let (ok, text) = unit_tests(&project)?.unwrap_or_default();
                assert!(!ok, "{lang}: a wrong expectation passed\n{text}");
                std::fs::write(&file, tests)?;
            }
        }

        let readme = std::fs::read_to_string(project.join("README.md"))?;
        let config = readme.split("--config '").nth(1).and_then(|r| r.split('\'').next()).unwrap();
        let wasm_arg = format!("target/weir/{name}.wasm");
        let check = weir(&["plugin", "check", &wasm_arg, "--config", config], &project);
        assert!(check.ok && check.stdout.contains(&format!("loads: yes, world {world}")), "{}", check.stdout);

        let test = weir(&["plugin", "test", &wasm_arg, "--cases", "cases.toml"], &project);
        assert!(test.ok, "{world} in {lang}: {}{}", test.stdout, test.stderr);
        assert!(
            test.stdout.contains(&format!("{world}: ")) && test.stdout.contains(" passed, 0 failed"),
            "{}",
            test.stdout
        );
        // The cases are real: a wrong expectation fails them.
        let cases = std::fs::read_to_string(project.join("cases.toml"))?;
        let broken = match world {
            "balancer" => cases.replacen("\"10.0.0.2:80\", \"10.0.0.3:80\"", "\"10.0.0.3:80\", \"10.0.0.2:80\"", 1),
            "router" => cases.replacen("expect = \"api\"", "expect = \"other\"", 1),
            "access-filter" => cases.replacen("expect = \"deny\"", "expect = \"allow\"", 1),
            "health-checker" => cases.replacen("expect = \"unhealthy\"", "expect = \"healthy\"", 1),
            _ => cases.replacen("expect = [\"10.0.0.1:80\", ", "expect = [", 1),
        };
        assert_ne!(broken, cases, "{world}: the cases changed shape");
        std::fs::write(project.join("broken.toml"), broken)?;
        let test = weir(&["plugin", "test", &wasm_arg, "--cases", "broken.toml"], &project);
        assert!(!test.ok && test.stdout.contains("1 failed"), "{world} in {lang}: {}", test.stdout);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// An exception a Python or JavaScript plugin does not catch reaches the
/// log whole (Python's traceback with its file, line and message; the
/// JavaScript error and its stack), and `weir plugin check` refuses the
/// component with it.
#[test]
fn python_and_js_exceptions_reach_the_log_with_their_message() -> Result<()> {
    let dir = scratch("exceptions");
    let cases = [
        ("python", "app.py", "        if ctx.eligible_count == 0:", "        raise RuntimeError(\"boom in pick\")\n"),
        ("js", "js-boom.js", "    if (ctx.eligibleCount === 0) {", "    throw new Error(\"boom in pick\");\n"),
    ];
    for (lang, file, at, raise) in cases {
        let name = format!("{lang}-boom");
        let out = weir(&["plugin", "new", "--world", "balancer", "--lang", lang, &name], &dir);
        assert!(out.ok, "{}", out.stderr);
        let project = dir.join(&name);
        let source = std::fs::read_to_string(project.join(file))?;
        assert!(source.contains(at), "{lang}: the template changed shape");
        std::fs::write(project.join(file), source.replacen(at, &format!("{raise}{at}"), 1))?;
        let built = weir_building(&["plugin", "build"], &project)?;
        assert!(built.ok, "{lang}: {}", built.stderr);
        let wasm = format!("target/weir/{name}.wasm");
        let check = weir(&["plugin", "check", &wasm, "--config", "{ offset = 0 }"], &project);
        let text = check.stdout.clone() + &check.stderr;
        assert!(!check.ok && text.contains("refused: one call of its phase failed: Trap"), "{lang}: {text}");
        let logged = text.lines().find(|l| l.contains("WARN") && l.contains("it printed:")).unwrap_or_default();
        match lang {
            "python" => assert!(
                logged.contains("Traceback (most recent call last):")
                    && logged.contains("app.py\", line ")
                    && logged.contains("RuntimeError: boom in pick"),
                "{text}"
            ),
            _ => assert!(logged.contains("Error: boom in pick") && logged.contains("Stack:"), "{text}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn rust_templates_build_and_pass_their_cases() -> Result<()> {
    templates_build_and_pass_their_cases("rust")
}

#[test]
fn python_templates_build_and_pass_their_cases() -> Result<()> {
    templates_build_and_pass_their_cases("python")
}

#[test]
fn js_templates_build_and_pass_their_cases() -> Result<()> {
    templates_build_and_pass_their_cases("js")
}

/// The plugin guide's walkthrough, step by step as a user types it: a Rust
/// balancer scaffolded, unit-tested, built and tested with the test kit,
/// run by `weir run` behind curl, then replaced live by a Python balancer
/// while requests flow, without one failing.
#[test]
fn guide_walkthrough_rust_balancer_then_python_swapped_in_under_traffic() -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = scratch("walkthrough");
    let step = |args: &[&str], at: &Path| -> Result<Outcome> {
        let out = weir_building(args, at)?;
        anyhow::ensure!(out.ok, "weir {}: {}{}", args.join(" "), out.stdout, out.stderr);
        Ok(out)
    };

    // 1. A Rust balancer: scaffold, unit test, build, test kit.
    step(&["plugin", "new", "--world", "balancer", "my-balancer"], &dir)?;
    let rust = dir.join("my-balancer");
    let unit = Command::new("cargo")
        .args(["test", "--quiet"])
        .current_dir(&rust)
        .env("CARGO_TARGET_DIR", env!("WEIR_TEST_WASM_TARGET"))
        .stdin(Stdio::null())
        .output()?;
    let unit_out = String::from_utf8_lossy(&unit.stdout);
    assert!(
        unit.status.success() && unit_out.contains("2 passed"),
        "{unit_out}{}",
        String::from_utf8_lossy(&unit.stderr)
    );
    step(&["plugin", "build"], &rust)?;
    let out = step(&["plugin", "test", "target/weir/my-balancer.wasm", "--cases", "cases.toml"], &rust)?;
    assert!(out.stdout.contains("balancer: 3 cases, 3 passed, 0 failed"), "{}", out.stdout);

    // 2. weir runs it in front of three HTTP backends; curl gets answers.
    let rt = tokio::runtime::Runtime::new()?;
    let backends = rt.block_on(async {
        anyhow::Ok([
            web::HttpBackend::start("a").await?,
            web::HttpBackend::start("b").await?,
            web::HttpBackend::start("c").await?,
        ])
    })?;
    let list = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect::<Vec<_>>().join(", ");
    let config = format!(
        r#"[admin]
bind = "127.0.0.1:0"
token = "walkthrough"

[plugins.my-balancer]
source = "{wasm}"
config = {{ offset = 0 }}
memory_limit = "128MiB"
timeout = "1s"

[pools.web]
balancer = "my-balancer"
backends = [{list}]

[listeners.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "web"
"#,
        wasm = rust.join("target/weir/my-balancer.wasm").display()
    );
    let proc = WeirProcess::spawn(&weir_bin(), "walkthrough", &config)?;
    let (web, admin) = (proc.logged_address("listener=web")?, proc.logged_address("admin API listening")?);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let curl = Command::new("curl")
            .args(["-s", "-D", "-", "--max-time", "5", &format!("http://{web}/")])
            .stdin(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&curl.stdout).to_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        seen.insert(text.split("x-backend: ").nth(1).unwrap_or("").lines().next().unwrap_or("").trim().to_string());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b", "c"], "round the three backends");
    // The balancer reads a request header: `x-pick: 1` is the second backend, every time.
    for _ in 0..3 {
        let curl = Command::new("curl")
            .args(["-s", "-D", "-", "--max-time", "5", "-H", "x-pick: 1", &format!("http://{web}/")])
            .stdin(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&curl.stdout).to_lowercase();
        assert!(text.starts_with("http/1.1 200") && text.contains("x-backend: b\r\n"), "{text}");
    }

    // 3. The same balancer in Python, tested on the same cases.
    step(&["plugin", "new", "--world", "balancer", "--lang", "python", "my-balancer-py"], &dir)?;
    let python = dir.join("my-balancer-py");
    step(&["plugin", "build"], &python)?;
    let unit = Command::new("python3").args(["-m", "unittest"]).current_dir(&python).stdin(Stdio::null()).output()?;
    let unit_err = String::from_utf8_lossy(&unit.stderr);
    assert!(unit.status.success() && unit_err.contains("Ran 2 tests") && unit_err.contains("\nOK"), "{unit_err}");
    let out =
        step(&["plugin", "test", "target/weir/my-balancer-py.wasm", "--cases", "../my-balancer/cases.toml"], &python)?;
    assert!(out.stdout.contains("balancer: 3 cases, 3 passed, 0 failed"), "{}", out.stdout);

    // 4. Traffic flows while the Python build is pushed in.
    let web_addr: std::net::SocketAddr = web.parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, after) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let swapped = Arc::new(AtomicBool::new(false));
    let served_after = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let traffic = {
        let (stop, ok, failed, after, swapped, served_after) =
            (stop.clone(), ok.clone(), failed.clone(), after.clone(), swapped.clone(), served_after.clone());
        rt.spawn(async move {
            let client = web::client_h1();
            let started = Instant::now();
            // Bounded: at most 20 000 requests or 60 s, and 300 after the swap.
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let was_swapped = swapped.load(Ordering::SeqCst);
                match web::send(&client, web::get(web_addr, "walkthrough.test", "/")).await {
                    Ok(got) if got.status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        if was_swapped {
                            *served_after.lock().unwrap().entry(got.header("x-backend").to_string()).or_default() += 1;
                            if after.fetch_add(1, Ordering::SeqCst) + 1 >= 300 {
                                break;
                            }
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let deadline = Instant::now() + STEP;
    while ok.load(Ordering::SeqCst) < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let wasm = python.join("target/weir/my-balancer-py.wasm");
    let target = ["--admin", admin.as_str(), "--token", "walkthrough"];
    let push = [&["plugin", "push", "my-balancer", wasm.to_str().unwrap()][..], &target[..]].concat();
    let out = step(&push, &dir)?;
    assert!(out.stdout.contains("my-balancer: generation 2"), "{}", out.stdout);
    swapped.store(true, Ordering::SeqCst);
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(90), traffic).await })??;
    stop.store(true, Ordering::SeqCst);

    let (ok, failed, after) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst), after.load(Ordering::SeqCst));
    assert_eq!(failed, 0, "{failed} of {} requests failed across the swap", ok + failed);
    assert_eq!(after, 300, "requests served by the Python balancer");
    let served_after = served_after.lock().unwrap().clone();
    assert_eq!(served_after.len(), 3, "the Python balancer goes round all three: {served_after:?}");
    assert!(served_after.values().all(|&n| n == 100), "round-robin, one in three each: {served_after:?}");
    eprintln!("walkthrough: {ok} requests, {failed} failed; after the swap {served_after:?}");
    let status = step(&[&["status"][..], &target[..]].concat(), &dir)?;
    let line =
        status.stdout.lines().find(|l| l.contains("my-balancer") && l.contains(" gen ")).unwrap_or("").to_string();
    assert!(line.contains("gen 2") && line.contains("errors 0 traps 0 timeouts 0"), "{}", status.stdout);
    drop(proc);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn a_supervisor_hears_ready_reloading_and_stopping_and_probes_need_no_token() -> Result<()> {
    use std::os::unix::net::UnixDatagram;
    let dir = std::env::temp_dir().join(format!("weir-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let supervisor = UnixDatagram::bind(&socket_path)?;
    supervisor.set_read_timeout(Some(STEP))?;
    let heard = || -> Result<String> {
        let mut buf = [0u8; 512];
        let n = supervisor.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let config = "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"sekrit\"\n\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n\n\
                  [listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n";
    let proc =
        WeirProcess::spawn_in_env(&weir_bin(), "notify", config, &[], &[("NOTIFY_SOCKET", socket_path.as_os_str())])?;
    // Ready once every listener is bound.
    let ready = heard()?;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=serving 1 listeners"), "{ready:?}");
    // The probes answer without the token; everything else still needs it.
    let admin = proc.logged_address("admin API listening")?;
    let get = |path: &str| -> Result<String> {
        let out =
            Command::new("curl").args(["-s", "-i", "--max-time", "5", &format!("http://{admin}{path}")]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"))
    };
    let live = get("/livez")?;
    assert!(live.starts_with("HTTP/1.1 200") && live.ends_with("\n\nok\n"), "{live:?}");
    let ready = get("/readyz")?;
    assert!(ready.starts_with("HTTP/1.1 200") && ready.ends_with("ready: 1 listeners\n"), "{ready:?}");
    assert!(get("/config")?.starts_with("HTTP/1.1 401"));
    // A SIGHUP reload is announced, then ready again.
    proc.signal("HUP")?;
    let reloading = heard()?;
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading:?}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    assert!(heard()?.lines().any(|l| l == "READY=1"));
    // And the shutdown.
    proc.signal("TERM")?;
    assert!(heard()?.lines().any(|l| l == "STOPPING=1"));
    drop(proc);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// What the load of the upgrade test saw.
#[derive(Default)]
struct Tally {
    ok: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    /// Responses that told a kept-alive client to close.
    told_to_close: std::sync::atomic::AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn count(&self, outcome: Result<bool>, refused: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        match outcome {
            Ok(close) => {
                self.ok.fetch_add(1, Relaxed);
                self.told_to_close.fetch_add(close as u64, Relaxed);
            }
            Err(e) => {
                let counter = if refused { &self.refused } else { &self.failed };
                counter.fetch_add(1, Relaxed);
                self.first_failure.lock().unwrap().get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    fn get(&self) -> (u64, u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.ok.load(Relaxed), self.refused.load(Relaxed), self.failed.load(Relaxed), self.told_to_close.load(Relaxed))
    }
}

/// One HTTP/1.1 GET on `stream`: whether the answer (a 200 from the `web`
/// backend, read whole by its content-length) said `connection: close`.
async fn get_on(stream: &mut tokio::net::TcpStream, path: &str, close: bool) -> Result<bool> {
    let connection = if close { "connection: close\r\n" } else { "" };
    let (head, _) = request_on(stream, path, connection).await?;
    anyhow::ensure!(head.contains("x-backend: web"), "answer: {head}");
    Ok(head.contains("connection: close"))
}

/// One HTTP/1.1 GET with `headers` (lines ending in CRLF) on `stream`: the
/// answer's head (lowercased) and body, a 200 read whole by its
/// content-length.
async fn request_on(stream: &mut tokio::net::TcpStream, path: &str, headers: &str) -> Result<(String, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n{headers}\r\n").as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Duration::from_secs(10);
    let (head, body_at) = loop {
        let n = tokio::time::timeout(deadline, stream.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed after {} bytes of the answer", got.len());
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&got[..end]).to_lowercase(), end + 4);
        }
    };
    anyhow::ensure!(head.starts_with("http/1.1 200"), "answer: {head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse())
        .transpose()?
        .unwrap_or(0);
    while got.len() < body_at + length {
        let n = tokio::time::timeout(deadline, stream.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed in the body");
        got.extend_from_slice(&buf[..n]);
    }
    Ok((head, got[body_at..body_at + length].to_vec()))
}

/// `GET /` of the admin API on a kept-alive `stream`: the pid of the
/// process that answered and whether it said `connection: close`.
async fn admin_pid_on(stream: &mut tokio::net::TcpStream) -> Result<(u32, bool)> {
    let (head, body) = request_on(stream, "/", "authorization: Bearer t\r\n").await?;
    let about: serde_json::Value = serde_json::from_slice(&body)?;
    let pid = about["pid"].as_u64().ok_or_else(|| anyhow::anyhow!("no pid in GET /"))?;
    Ok((pid as u32, head.contains("connection: close")))
}

/// A pid this test started indirectly (a process a weir upgrade started),
/// killed when dropped.
struct Pid(u32);

impl Pid {
    /// Whether it still runs (an exited process left unreaped counts as gone).
    fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
    }
}

impl Drop for Pid {
    fn drop(&mut self) {
        if self.alive() {
            let _ = Command::new("kill").arg("-KILL").arg(self.0.to_string()).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_hands_the_sockets_to_a_new_process_and_no_request_is_refused_or_fails() -> Result<()> {
    use anyhow::Context;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    let web = weir_tests::web::HttpBackend::start("web").await?;
    let echo = EchoBackend::start("echo").await?;
    let config = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"t\"\n\n\
         [pools.web]\nbackends = [\"{}\"]\n\n[pools.echo]\nbackends = [\"{}\"]\n\n\
         [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"web\"\n\n\
         [listeners.tcp]\nbind = \"127.0.0.1:0\"\npool = \"echo\"\n",
        web.addr, echo.addr
    );
    let mut first = WeirProcess::spawn(&weir_bin(), "upgrade", &config)?;
    let admin = first.logged_address("admin API listening")?;
    let http: std::net::SocketAddr = first.logged_address("listener=web")?.parse()?;
    let tcp: std::net::SocketAddr = first.logged_address("listener=tcp")?.parse()?;
    let about = |admin: String| async move {
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-s", "--max-time", "5", "-H", "authorization: Bearer t", &format!("http://{admin}/")])
                .output()
        })
        .await??;
        let about: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        about["pid"].as_u64().map(|p| p as u32).context("no pid in GET /")
    };
    let upgrade = |admin: String| async move {
        let dir = std::env::temp_dir();
        tokio::task::spawn_blocking(move || weir(&["upgrade", "--admin", &admin, "--token", "t"], &dir)).await
    };
    assert_eq!(about(admin.clone()).await?, first.child.id());

    // A new process that cannot start (its config is broken) is stopped,
    // and this one goes on serving.
    std::fs::write(first.dir.join("weir.toml"), "[listeners.web\n")?;
    let failed = upgrade(admin.clone()).await?;
    assert!(!failed.ok, "{}", failed.stdout);
    assert!(failed.stderr.contains("upgrade failed, this process goes on serving"), "{}", failed.stderr);
    assert!(failed.stderr.contains("before taking over"), "{}", failed.stderr);
    std::fs::write(first.dir.join("weir.toml"), &config)?;
    let mut stream = tokio::net::TcpStream::connect(http).await?;
    assert!(!get_on(&mut stream, "/", false).await?);
    assert_eq!(about(admin.clone()).await?, first.child.id());
    // (An idle kept-alive connection would hold a retiring process until
    // its header_timeout.)
    drop(stream);

    // Load: kept-alive and one-shot HTTP clients, and TCP exchanges, all
    // the time, counted; a slow request and a long TCP connection open
    // across the upgrades.
    let stop = Arc::new(AtomicBool::new(false));
    let (http_tally, tcp_tally) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut load = tokio::task::JoinSet::new();
    for keep_alive in [true, true, true, false, false] {
        let (stop, tally) = (stop.clone(), http_tally.clone());
        load.spawn(async move {
            let mut conn: Option<tokio::net::TcpStream> = None;
            for _ in 0..1_000_000 {
                if stop.load(Relaxed) {
                    break;
                }
                let mut stream = match conn.take() {
                    Some(s) => s,
                    None => match tokio::net::TcpStream::connect(http).await {
                        Ok(s) => s,
                        Err(e) => {
                            tally.count(Err(e.into()), true);
                            continue;
                        }
                    },
                };
                let outcome = get_on(&mut stream, "/", !keep_alive).await;
                if matches!(outcome, Ok(false)) && keep_alive {
                    conn = Some(stream);
                }
                tally.count(outcome.map(|close| close && keep_alive), false);
            }
        });
    }
    for _ in 0..2 {
        let (stop, tally) = (stop.clone(), tcp_tally.clone());
        load.spawn(async move {
            for i in 0..1_000_000u32 {
                if stop.load(Relaxed) {
                    break;
                }
                let payload = format!("message {i}");
                let outcome = exchange(tcp, payload.as_bytes()).await.and_then(|(name, echoed)| {
                    anyhow::ensure!(name == "echo" && echoed == payload.as_bytes(), "{name}: {echoed:?}");
                    Ok(false)
                });
                let refused = outcome.as_ref().err().and_then(|e| e.downcast_ref::<std::io::Error>());
                let refused = refused.is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
                tally.count(outcome, refused);
            }
        });
    }
    let slow = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(http).await?;
        get_on(&mut stream, "/sleep/1500", false).await
    });
    let mut long = tokio::net::TcpStream::connect(tcp).await?;
    let mut greeting = [0u8; 5];
    long.read_exact(&mut greeting).await?;
    assert_eq!(&greeting, b"echo\n");
    echo_on(&mut long, b"before").await?;
    let served = |tally: &Tally| tally.get().0;
    let before = (served(&http_tally), served(&tcp_tally));
    eventually_blocking("load before the upgrade", || {
        served(&http_tally) > before.0 + 100 && served(&tcp_tally) > before.1 + 20
    })
    .await?;

    // `weir upgrade`: a second process takes over and serves; the first
    // drains what it has and stops.
    // A listener added through the admin API lives only in this process:
    // the upgrade says it is not carried over, and the new process closes
    // the socket it was handed for it.
    // An admin client between two requests on a kept-alive connection when
    // the upgrade starts: the retiring process still answers its next one.
    let mut admin_client = tokio::net::TcpStream::connect(&admin).await?;
    assert_eq!(admin_pid_on(&mut admin_client).await?, (first.child.id(), false));
    let added = Command::new("curl")
        .args(["-s", "-f", "--max-time", "5", "-H", "authorization: Bearer t"])
        .args(["-d", r#"{"name": "extra", "bind": "127.0.0.1:0", "pool": "echo"}"#])
        .arg(format!("http://{admin}/listeners"))
        .status()?;
    assert!(added.success());
    let done = upgrade(admin.clone()).await?;
    assert!(done.ok, "{}{}", done.stdout, done.stderr);
    let second: u32 = done.stdout.split("process ").nth(1).and_then(|s| s.split(' ').next()).context("pid")?.parse()?;
    let second = Pid(second);
    assert!(done.stdout.contains("warning: not carried over: the config in force is not"), "{}", done.stdout);
    assert_ne!(second.0, first.child.id());
    assert_eq!(admin_pid_on(&mut admin_client).await?, (first.child.id(), true));
    drop(admin_client);
    echo_on(&mut long, b"during").await?;
    let mark = (served(&http_tally), served(&tcp_tally));
    eventually_blocking("load after the first upgrade", || {
        served(&http_tally) > mark.0 + 100 && served(&tcp_tally) > mark.1 + 20
    })
    .await?;
    // The slow request came back whole (with `connection: close` when the
    // first process was retiring by then).
    slow.await??;
    drop(long);
    // The first process exits once its last connection is done.
    let deadline = Instant::now() + Duration::from_secs(8);
    let status = loop {
        if let Some(status) = first.child.try_wait()? {
            break status;
        }
        anyhow::ensure!(Instant::now() < deadline, "the first process did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert_eq!(about(admin.clone()).await?, second.0);
    assert!(first.logged(&["serving on the previous process's sockets", "passed=4", "unused=1"]));

    // SIGUSR2 to the second: a third takes over the same way.
    let status = Command::new("kill").arg("-USR2").arg(second.0.to_string()).status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let third = loop {
        let pid = about(admin.clone()).await?;
        if pid != second.0 && !second.alive() {
            break Pid(pid);
        }
        anyhow::ensure!(Instant::now() < deadline, "no third process took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mark = (served(&http_tally), served(&tcp_tally));
    eventually_blocking("load after the second upgrade", || {
        served(&http_tally) > mark.0 + 100 && served(&tcp_tally) > mark.1 + 20
    })
    .await?;
    stop.store(true, Relaxed);
    while load.join_next().await.transpose()?.is_some() {}

    let (http_ok, http_refused, http_failed, closes) = http_tally.get();
    let (tcp_ok, tcp_refused, tcp_failed, _) = tcp_tally.get();
    let first_failure = |t: &Tally| t.first_failure.lock().unwrap().clone();
    println!(
        "HTTP: {http_ok} ok, {http_refused} refused, {http_failed} failed, {closes} told to close; \
         TCP: {tcp_ok} ok, {tcp_refused} refused, {tcp_failed} failed"
    );
    assert_eq!((http_refused, http_failed), (0, 0), "{:?}", first_failure(&http_tally));
    assert_eq!((tcp_refused, tcp_failed), (0, 0), "{:?}", first_failure(&tcp_tally));
    // Each kept-alive client was told to close by each retiring process.
    assert!(closes >= 6, "{closes}");
    drop(third);
    Ok(())
}

/// Send `text` on an echo connection and read it back.
async fn echo_on(long: &mut tokio::net::TcpStream, text: &[u8]) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    long.write_all(text).await?;
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(Duration::from_secs(5), long.read_exact(&mut back)).await??;
    anyhow::ensure!(back == text, "{back:?}");
    Ok(())
}

/// Poll `cond` every 10 ms (off the async threads' way) for up to 20 s.
async fn eventually_blocking(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[test]
fn completions_man_pages_and_the_config_from_weir_config_or_the_default_path() -> Result<()> {
    let dir = scratch("shell");
    // Completion scripts name the subcommands and their options.
    let bash = weir(&["completions", "bash"], &dir);
    assert!(bash.ok, "{}", bash.stderr);
    assert!(bash.stdout.contains("complete -F") && bash.stdout.contains("upgrade"), "{}", bash.stdout);
    assert!(bash.stdout.contains("--config"), "{}", bash.stdout);
    let fish = weir(&["completions", "fish"], &dir);
    assert!(fish.ok && fish.stdout.contains("complete -c weir"), "{}", fish.stdout);
    let wrong = weir(&["completions", "tcsh"], &dir);
    assert!(!wrong.ok && wrong.stderr.contains("possible values"), "{}", wrong.stderr);
    // Man pages, one per subcommand, that man can render.
    let man = weir(&["man", "--dir", "man"], &dir);
    assert!(man.ok, "{}", man.stderr);
    let page = std::fs::read_to_string(dir.join("man/weir.1"))?;
    assert!(page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH weir"), "{page}");
    assert!(page.contains("upgrade"), "{page}");
    let push = std::fs::read_to_string(dir.join("man/weir-plugin-push.1"))?;
    assert!(push.contains(".TH weir-plugin-push"), "{push}");
    // The config from WEIR_CONFIG when -c is not given.
    std::fs::write(dir.join("from-env.toml"), GOOD)?;
    let out = Command::new(weir_bin())
        .arg("check")
        .current_dir(&dir)
        .env("WEIR_CONFIG", "from-env.toml")
        .env("WEIR_CACHE_DIR", std::env::temp_dir().join("weir-test-plugin-cache"))
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"), "{}", String::from_utf8_lossy(&out.stdout));
    // Neither: the default path, named in the error when it is not there.
    if !Path::new("/etc/weir/weir.toml").exists() {
        let none = weir(&["check"], &dir);
        assert!(!none.ok, "{}", none.stdout);
        assert!(none.stderr.contains("no config at /etc/weir/weir.toml (the default)"), "{}", none.stderr);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Lines in a file (0 when it does not exist).
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|t| t.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// Poll `cond` every 20 ms until it holds or `STEP` passes.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + STEP;
    while !cond() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn the_access_log_file_is_reopened_on_sigusr1_after_a_rename_and_no_line_is_lost() -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let rt = tokio::runtime::Runtime::new()?;
    let backend = rt.block_on(weir_tests::web::HttpBackend::start("a"))?;
    let config = |format: &str, file: &str| {
        format!(
            "[access_log]\nfile = \"{file}\"\nformat = \"{format}\"\n\n[pools.p]\nbackends = [\"{}\"]\n\n\
             [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\naccess_log = true\n",
            backend.addr
        )
    };
    let proc = WeirProcess::spawn(&weir_bin(), "access-file", &config("json", "access.log"))?;
    let (log, rotated) = (proc.dir.join("access.log"), proc.dir.join("access.log.1"));
    let url = format!("http://{}/", proc.addr);
    // Two clients, each sending batches of 20 requests on one kept-alive
    // connection (curl reuses it), until told to stop.
    let (stop, served, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, served, failed, url) = (stop.clone(), served.clone(), failed.clone(), url.clone());
            std::thread::spawn(move || {
                for _ in 0..500 {
                    if stop.load(SeqCst) {
                        break;
                    }
                    let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}\n", "--max-time", "10"];
                    args.extend(std::iter::repeat_n(url.as_str(), 20));
                    let Ok(out) = Command::new("curl").args(&args).output() else { continue };
                    for code in String::from_utf8_lossy(&out.stdout).lines() {
                        if code == "200" { &served } else { &failed }.fetch_add(1, SeqCst);
                    }
                }
            })
        })
        .collect();
    wait_for("lines in the access log", || lines_of(&log).len() >= 40)?;
    // logrotate's way: rename, then tell the process.
    std::fs::rename(&log, &rotated)?;
    proc.signal("USR1")?;
    wait_for("the reopen", || proc.logged(&["SIGUSR1: access log reopened"]))?;
    wait_for("lines in the new file", || lines_of(&log).len() >= 40)?;
    stop.store(true, SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }
    let served = served.load(SeqCst);
    assert_eq!(failed.load(SeqCst), 0);
    // Every request has its line in one of the two files (a line is written
    // as its response ends, so the last ones may trail the client a little).
    let total = || lines_of(&rotated).len() + lines_of(&log).len();
    let _ = wait_for("every line", || total() as u64 >= served);
    let (before, after) = (lines_of(&rotated), lines_of(&log));
    println!("{served} requests: {} lines before the rename, {} after", before.len(), after.len());
    assert_eq!(before.len() + after.len(), served as usize);
    for line in before.iter().chain(&after) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        assert_eq!((v["status"].as_u64(), v["path"].as_str(), v["pool"].as_str()), (Some(200), Some("/"), Some("p")));
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')) && v["duration_ms"].is_f64(), "{line}");
    }
    // The combined format, after a reload.
    std::fs::write(proc.dir.join("weir.toml"), config("combined", "access.log"))?;
    proc.signal("HUP")?;
    wait_for("the reload", || proc.logged(&["SIGHUP: config reloaded"]))?;
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-A", "weir-test/1", "-e", "http://ref.test/", &format!("{url}c?x=1")])
        .output()?;
    assert!(out.status.success());
    wait_for("the combined line", || lines_of(&log).last().is_some_and(|l| !l.starts_with('{')))?;
    let line = lines_of(&log).pop().unwrap_or_default();
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains(" +0000] \"GET /c?x=1 HTTP/1.1\" 200 "), "{line}");
    assert!(line.ends_with(" \"http://ref.test/\" \"weir-test/1\""), "{line}");
    // A file that cannot be opened: the reload is refused, located, and the
    // log goes on where it was.
    std::fs::write(proc.dir.join("weir.toml"), config("json", "no-such-dir/access.log"))?;
    proc.signal("HUP")?;
    wait_for("the refusal", || proc.logged(&["config not applied", "weir.toml:2:", "access_log.file"]))?;
    let out = Command::new("curl").args(["-s", "-o", "/dev/null", &url]).output()?;
    assert!(out.status.success());
    wait_for("one more combined line", || lines_of(&log).iter().filter(|l| !l.starts_with('{')).count() == 2)?;
    Ok(())
}

/// Every example config (and the package's and container's) passes `weir
/// check`; those that need no outside service (no `test: check-only` line)
/// start, with their ports moved to free loopback ports (a port a backend
/// names too moves with it, so chains hold), open every listener, and
/// answer on their HTTP listeners.
#[test]
fn every_example_config_checks_and_the_self_contained_ones_start_and_serve() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("examples"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    anyhow::ensure!(files.len() >= 9, "examples/ holds {} configs", files.len());
    files.extend([root.join("packaging/weir.toml"), root.join("packaging/container.toml")]);
    let mut started = Vec::new();
    for file in &files {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        let out = weir(&["check", "-c", &file.display().to_string()], file.parent().unwrap());
        assert!(out.ok, "weir check {}:\n{}{}", file.display(), out.stdout, out.stderr);
        let text = std::fs::read_to_string(file)?;
        if text.contains("test: check-only") || file.parent() != Some(&root.join("examples")) {
            continue;
        }
        // Each port a listener binds, moved to a free one everywhere it is named.
        let mut moved = text.replace("\"0.0.0.0:", "\"127.0.0.1:");
        let mut listeners = Vec::new();
        let mut section = String::new();
        for line in text.lines() {
            if let Some(s) = line.strip_prefix("[listeners.").and_then(|s| s.strip_suffix(']')) {
                section = s.to_string();
            }
            if let Some(port) = line.strip_prefix("bind = \"").and_then(|b| b.rsplit_once(':')).map(|(_, p)| p) {
                let port = port.trim_end_matches('"');
                let free = free_port()?;
                moved = moved.replace(&format!(":{port}\""), &format!(":{free}\""));
                // Plain HTTP listeners (not those expecting a PROXY header),
                // and TCP ones the example says lead to HTTP.
                let http = text.split(&format!("[listeners.{section}]")).nth(1).is_some_and(|rest| {
                    let table = rest.split("\n[").next().unwrap_or_default();
                    table.contains("protocol = \"http\"") && !table.contains("proxy_protocol = true")
                }) || text.contains(&format!("test: http-through {section}"));
                listeners.push((section.clone(), free, http));
            }
        }
        let proc_dir = std::env::temp_dir().join(format!("weir-proc-example-{name}-{}", std::process::id()));
        std::fs::create_dir_all(proc_dir.join("certs"))?;
        for cert in std::fs::read_dir(root.join("examples/certs"))?.flatten() {
            std::fs::copy(cert.path(), proc_dir.join("certs").join(cert.file_name()))?;
        }
        let proc = WeirProcess::spawn(&weir_bin(), &format!("example-{name}"), &moved)?;
        for (listener, port, http) in &listeners {
            let key = format!("listener={listener}");
            wait_for(&format!("{name}: {listener} listening"), || proc.logged(&["listening", &key]))?;
            if *http {
                // Nothing runs behind it: weir itself answers (502).
                let out = Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
                    .arg(format!("http://127.0.0.1:{port}/"))
                    .output()?;
                let code = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(code.starts_with('5') || code.starts_with('4'), "{name}: {listener} answered {code:?}");
            }
        }
        started.push(format!("{name} ({} listeners)", listeners.len()));
        drop(proc);
    }
    println!("checked {} configs; started {}", files.len(), started.join(", "));
    assert!(started.len() >= 6, "{started:?}");
    Ok(())
}

/// `PUT /log-level` changes the running process's filter: a request to a
/// backend that refuses logs `connect failed` at `debug`, so the line comes
/// only while the level is `debug`. (It is logged before the answer, so
/// once curl has its 502 the line is written or never will be; the lines
/// are read in order, so when a later line is in, an earlier one is too.)
/// A bad filter is refused with the parser's reason.
#[test]
fn the_log_level_changes_at_runtime() -> Result<()> {
    let config = "[admin]\nbind = \"127.0.0.1:0\"\n\n[pools.dead]\nbackends = [\"127.0.0.1:1\"]\nmax_fails = 0\n\n\
                  [listeners.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"dead\"\n";
    let proc = WeirProcess::spawn(&weir_bin(), "log-level", config)?;
    let admin = proc.logged_address("admin API listening")?;
    let web = proc.logged_address("listener=web")?;
    let curl = |args: &[&str]| -> Result<String> {
        let out = Command::new("curl").args(["-s", "--max-time", "10"]).args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let set = |body: &str| curl(&["-X", "PUT", "--data-binary", body, &format!("http://{admin}/log-level")]);
    let failed = || proc.log.lock().unwrap().iter().filter(|l| l.contains("connect failed")).count();
    let request = |marker: &str| -> Result<()> {
        let code = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://{web}/{marker}")])?;
        anyhow::ensure!(code == "502", "{marker}: {code}");
        Ok(())
    };
    assert!(curl(&[&format!("http://{admin}/log-level")])?.contains("\"level\": \"info\""));
    request("at-info")?;
    assert!(set("debug")?.contains("\"level\": \"debug\""));
    request("at-debug")?;
    wait_for("the debug line", || failed() >= 1)?;
    assert!(set("{\"level\": \"info\"}")?.contains("\"level\": \"info\""));
    request("at-info-again")?;
    assert!(set("weir=debug,info")?.contains("\"level\": \"weir=debug,info\""));
    request("at-debug-again")?;
    wait_for("the second debug line", || failed() >= 2)?;
    assert_eq!(failed(), 2, "a debug line was written at info: {:?}", proc.log.lock().unwrap());
    let refused = set("weir=loud")?;
    assert!(refused.contains("\"error\"") && refused.contains("weir=loud"), "{refused}");
    assert!(curl(&[&format!("http://{admin}/log-level")])?.contains("\"level\": \"weir=debug,info\""));
    Ok(())
}

/// A balancer that panics on every call: `weir plugin check` makes one call
/// and refuses it with the panic's message; pushed anyway under traffic,
/// `weir plugin push` warns that its calls fail (traffic goes on through
/// the fallback) and the log names the panic; pushed with `--rollout`, the
/// canary is rolled back by itself.
#[test]
fn a_plugin_that_panics_is_refused_by_check_and_a_push_of_it_is_warned_about() -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let dir = scratch("panics");
    let bad = dir.join("misbehave.wasm");
    std::fs::copy(component("weir-test-misbehave"), &bad)?;
    let bad = bad.display().to_string();

    let out = weir(&["plugin", "check", &bad, "--config", "{ mode = \"trap\" }"], &dir);
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stdout.contains("loads: yes, world balancer"), "{}", out.stdout);
    let refusal = out.stdout.lines().find(|l| l.starts_with("refused: one call of its phase failed")).unwrap_or("");
    assert!(refusal.contains("unreachable") && refusal.contains("panicked at"), "{}", out.stdout);
    assert!(refusal.contains("misbehave: trap"), "{}", out.stdout);
    let rr = dir.join("round-robin.wasm");
    std::fs::write(&rr, weir::plugin::bundled("round-robin").unwrap())?;
    let out = weir(&["plugin", "check", rr.to_str().unwrap()], &dir);
    assert!(out.ok && out.stdout.contains("one call: picked 10.0.0.1:80 of 3 backends"), "{}", out.stdout);

    let rt = tokio::runtime::Runtime::new()?;
    let a = rt.block_on(EchoBackend::start("a"))?;
    let config = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[plugins.lb]\nsource = \"builtin:round-robin\"\nconfig = {{ mode = \"trap\" }}\n\n\
         [pools.p]\nbalancer = \"lb\"\nbackends = [\"{}\"]\n\n[listeners.l]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        a.addr
    );
    let proc = WeirProcess::spawn(&weir_bin(), "panics", &config)?;
    let admin = proc.logged_address("admin API listening")?;
    let (stop, served, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, served, failed, addr) = (stop.clone(), served.clone(), failed.clone(), proc.addr);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            for _ in 0..100_000 {
                if stop.load(SeqCst) {
                    break;
                }
                match rt.block_on(exchange(addr, b"x")) {
                    Ok((name, _)) if name == "a" => served.fetch_add(1, SeqCst),
                    _ => failed.fetch_add(1, SeqCst),
                };
            }
        })
    };
    let push = |extra: &[&str]| {
        let mut args = vec!["plugin", "push", "lb", bad.as_str(), "--admin", admin.as_str(), "--watch", "5s"];
        args.extend_from_slice(extra);
        weir(&args, &dir)
    };
    let out = push(&[]);
    assert!(out.ok && out.stdout.contains("lb: generation 2"), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("warning: lb:") && out.stderr.contains("calls failed since the push"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--rollout"), "{}", out.stderr);
    // The log names the panic with the trap.
    wait_for("the panic in the log", || proc.logged(&["plugin instance recycled", "panicked at", "misbehave: trap"]))?;
    // Put round-robin back, then try the bad one as a canary: rolled back.
    let out = weir(&["plugin", "push", "lb", rr.to_str().unwrap(), "--admin", admin.as_str(), "--watch", "0s"], &dir);
    assert!(out.ok, "{}", out.stderr);
    let out = push(&["--rollout", "50"]);
    assert!(out.stdout.contains("live for 50 % of the calls"), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("warning: lb:") && !out.stderr.contains("push it with --rollout"), "{}", out.stderr);
    wait_for("the rollback", || proc.logged(&["rolled back"]))?;
    stop.store(true, SeqCst);
    client.join().expect("client");
    // The fallback (fail-open round-robin) carried every connection.
    assert_eq!(failed.load(SeqCst), 0);
    assert!(served.load(SeqCst) > 0);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
