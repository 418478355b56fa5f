//! The `weir` command line: parsing and dispatch. `main.rs` calls [`main`].

use crate::config::{Loaded, Source};
use crate::plugin::{Runtime, BUNDLED};
use crate::{Prepared, Server};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sd_notify::NotifyState;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "weir", version, about = "A load balancer whose decisions are WebAssembly plugins")]
struct Cli {
    /// Log filter (e.g. `info`, `weir=debug`); `RUST_LOG` is used when unset.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format: `plain` or `json` (one object per line).
    #[arg(long, global = true, default_value = "plain")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

/// Where the admin API of a running weir is, for the commands that use it.
#[derive(clap::Args, Clone)]
struct AdminTarget {
    /// Address of the admin API.
    #[arg(long, default_value = "127.0.0.1:9900")]
    admin: String,
    /// Bearer token (or set WEIR_ADMIN_TOKEN).
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run weir with a config file.
    Run {
        /// The TOML config file.
        #[arg(short, long, env = "WEIR_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a config file and load every plugin it names, without binding anything.
    Check {
        /// The TOML config file.
        #[arg(short, long, env = "WEIR_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    /// for `weir`, e.g. `weir completions bash > /etc/bash_completion.d/weir`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (`weir.1` and one per subcommand, as
    /// `weir-run.1`, `weir-plugin-push.1`, ...) into a directory.
    Man {
        /// Where to write them.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Print the admin API's OpenAPI 3.1 document (JSON), as `GET
    /// /openapi.json` serves it.
    Openapi,
    /// List the bundled plugins and the world each implements.
    Plugins,
    /// Show a running weir: version, uptime, listeners, pools and plugins (admin API).
    Status {
        #[command(flatten)]
        target: AdminTarget,
        /// Print one JSON object (`about`, `listeners`, `pools` with their
        /// backends, `plugins`, as the admin API answers) for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Make a running weir re-read its config file (admin API; same as SIGHUP).
    Reload {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Replace a running weir by the binary now installed where it was
    /// started from, without refusing or dropping a connection: the new
    /// process takes over the listening sockets, the old one drains
    /// (admin API; same as SIGUSR2).
    Upgrade {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Work with plugins of a running weir.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Start three demo backends and weir in front of them (bundled quick-start config).
    Demo {
        /// Port of the demo listener on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin project: sources, a unit test, and the weir SDK and
    /// WIT vendored in (its other crates come from crates.io or cargo's cache).
    New {
        /// The project (and component) name.
        name: String,
        /// The phase it serves.
        #[arg(long, value_parser = worlds())]
        world: String,
        /// The language of the template.
        #[arg(long, default_value = "rust", value_parser = clap::builder::PossibleValuesParser::new(crate::devkit::scaffold::LANGUAGES))]
        lang: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run a component on the synthetic cases of a TOML file (pools,
    /// requests, expected decisions), without a proxy.
    Test {
        /// The component file.
        file: PathBuf,
        /// The cases file.
        #[arg(long)]
        cases: PathBuf,
    },
    /// Run the requests of an access log through two versions of a plugin
    /// and report where their decisions differ, before swapping one in.
    Replay {
        /// The version serving now.
        old: PathBuf,
        /// The candidate.
        new: PathBuf,
        /// An access log written by weir (plain or JSON lines).
        #[arg(long)]
        log: PathBuf,
        /// The instance config both are `init`-ed with: JSON or an inline TOML table.
        #[arg(long, default_value = "{}")]
        config: String,
        /// The config of the candidate, when it differs (to replay a config
        /// change: the same component as OLD and NEW).
        #[arg(long)]
        new_config: Option<String>,
    },
    /// Build the plugin project in a directory into a component
    /// (`target/weir/<name>.wasm`), finding or installing a wasm32 toolchain.
    Build {
        /// The project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Inspect a component: the world it implements, its imports, and
    /// whether weir can load it (link and run `init` with a config).
    Check {
        /// The component file.
        file: PathBuf,
        /// The world it must implement (default: the one it exports).
        #[arg(long, value_parser = worlds())]
        world: Option<String>,
        /// The instance config to `init` it with: JSON or an inline TOML table.
        #[arg(long, default_value = "{}")]
        config: String,
    },
    /// Swap a plugin instance's component: it is checked and initialised
    /// before it goes live; a refused one leaves the old one serving.
    Push {
        /// The plugin instance name.
        name: String,
        /// The component file.
        file: PathBuf,
        /// Serve this percentage of the calls with the new generation
        /// first (a canary: promoted after enough calls, rolled back by
        /// itself when they fail).
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=99))]
        rollout: Option<u32>,
        /// Watch the instance's calls this long after the push and warn
        /// when they fail (0: do not watch).
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        watch: std::time::Duration,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// The config of `plugin check --config` as JSON: JSON as given, or an
/// inline TOML table (`{ weights = [1, 2] }` or `weights = [1, 2]`); secret
/// references (`{ secret_env = "NAME" }`) resolved as `weir run` does,
/// files relative to the working directory.
fn config_json(text: &str) -> Result<String> {
    let resolved = |mut table: toml::Table| -> Result<String> {
        let here = std::env::current_dir().unwrap_or_default();
        crate::config::resolve_table(&mut table, &here).map_err(|e| anyhow::anyhow!("--config: {e}"))?;
        Ok(serde_json::to_string(&table)?)
    };
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        anyhow::ensure!(v.is_object(), "--config: JSON must be an object");
        // JSON without nulls is a TOML table too; one with them is passed as is.
        return match serde_json::from_value::<toml::Table>(v.clone()) {
            Ok(table) => resolved(table),
            Err(_) => Ok(v.to_string()),
        };
    }
    let table: toml::Table = toml::from_str(text)
        .or_else(|_| {
            toml::from_str(&format!("v = {text}")).map(|mut t: toml::Table| match t.remove("v") {
                Some(toml::Value::Table(inner)) => inner,
                _ => toml::Table::new(),
            })
        })
        .map_err(|e| anyhow::anyhow!("--config: neither JSON nor a TOML table: {e}"))?;
    resolved(table)
}

/// The names `--world` takes: clap checks them, lists them in `--help` and
/// the error, and completes them.
fn worlds() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(crate::plugin::World::ALL.map(|w| w.name()))
}

/// A world by its name, or an error listing the names.
fn parse_world(name: &str) -> Result<crate::plugin::World> {
    use crate::plugin::World;
    World::ALL.into_iter().find(|w| w.name() == name).ok_or_else(|| {
        let all: Vec<&str> = World::ALL.iter().map(|w| w.name()).collect();
        anyhow::anyhow!("--world: `{name}` is not one of {}", all.join(", "))
    })
}

/// `weir plugin check`: print what a component is and whether weir loads
/// it; `false` when it does not.
fn check_plugin(file: &std::path::Path, world: Option<&str>, config: &str) -> Result<bool> {
    use crate::plugin::{Grants, Limits, PluginSpec, World};
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    println!("file: {} ({} bytes)", file.display(), bytes.len());
    let runtime = Runtime::new(Runtime::default_cache_dir())?;
    let component = match runtime.compile(&bytes) {
        Ok(c) => c,
        Err(e) => {
            println!("refused: {e}");
            return Ok(false);
        }
    };
    let worlds = runtime.worlds(&component);
    let names: Vec<&str> = worlds.iter().map(|w| w.name()).collect();
    println!("implements: {}", if names.is_empty() { "no weir world".to_string() } else { names.join(", ") });
    let exports = runtime.exports(&component);
    println!("exports: {}", if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") });
    let imports = runtime.imports(&component);
    println!("imports: {}", if imports.is_empty() { "nothing".to_string() } else { imports.join(", ") });
    let mut ok = true;
    if let Err(e) = runtime.link_check(&component) {
        println!("refused: it imports something weir does not provide: {e}");
        ok = false;
    }
    let wanted = match world {
        Some(w) => Some(parse_world(w)?),
        None => worlds.first().copied(),
    };
    let Some(wanted) = wanted else {
        let all: Vec<&str> = World::ALL.iter().map(|w| w.name()).collect();
        println!("refused: it exports none of weir's phase interfaces (worlds: {})", all.join(", "));
        return Ok(false);
    };
    if !worlds.contains(&wanted) {
        println!("refused: it does not implement {wanted} (it implements {})", names.join(", "));
        return Ok(false);
    }
    if !ok {
        return Ok(false);
    }
    let spec = PluginSpec {
        name: "check".into(),
        source: file.display().to_string(),
        world: wanted,
        config_json: config_json(config)?,
        limits: Limits::default(),
        fallback: crate::config::Fallback::FailClosed,
        grants: Grants::default(),
    };
    let started = std::time::Instant::now();
    match runtime.load(spec, &bytes) {
        Ok(instance) => {
            println!(
                "loads: yes, world {wanted} ({:.1} ms to link, instantiate and init)",
                started.elapsed().as_secs_f64() * 1e3
            );
            // Loading runs only `init`: one call of the phase shows a plugin
            // that traps on every call.
            match crate::devkit::testkit::smoke(&instance) {
                Ok(answer) => {
                    println!("one call: {answer}");
                    Ok(true)
                }
                Err(trap) => {
                    println!("refused: one call of its phase failed: {trap}");
                    Ok(false)
                }
            }
        }
        Err(e) => {
            println!("refused: {e}");
            Ok(false)
        }
    }
}

/// One admin API call; the JSON answer, or the API's error message.
fn admin_call(target: &AdminTarget, method: &str, path: &str, body: Vec<u8>) -> Result<serde_json::Value> {
    // An upgrade may wait for the new process that long, and then some.
    let timeout = if path == "/upgrade" { crate::upgrade::TIMEOUT * 2 } else { std::time::Duration::from_secs(60) };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(format!("http://{}{path}", target.admin));
    if let Some(t) = &target.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut resp = agent
        .run(req.body(body)?)
        .with_context(|| format!("cannot reach the admin API at {} (is weir running with [admin]?)", target.admin))?;
    let status = resp.status();
    let text = resp.body_mut().read_to_string()?;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if !status.is_success() {
        let message = value["error"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
        anyhow::bail!("{status}: {message}");
    }
    Ok(value)
}

/// What `weir status` shows, as the admin API's JSON.
fn status_json(target: &AdminTarget) -> Result<serde_json::Value> {
    let pools = admin_call(target, "GET", "/pools", Vec::new())?;
    let mut detailed = Vec::new();
    for p in pools.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("");
        detailed.push(admin_call(target, "GET", &format!("/pools/{name}"), Vec::new())?);
    }
    Ok(serde_json::json!({
        "about": admin_call(target, "GET", "/", Vec::new())?,
        "listeners": admin_call(target, "GET", "/listeners", Vec::new())?,
        "pools": detailed,
        "plugins": admin_call(target, "GET", "/plugins", Vec::new())?,
    }))
}

fn print_status(target: &AdminTarget) -> Result<()> {
    let status = status_json(target)?;
    let list = |key: &str| status[key].as_array().cloned().unwrap_or_default();
    let about = &status["about"];
    println!("weir {} up {}s", about["version"].as_str().unwrap_or("?"), about["uptime_secs"]);
    println!("\nlisteners:");
    for l in list("listeners") {
        println!(
            "  {:<16} {:<5} {:<22} -> {}",
            l["name"].as_str().unwrap_or(""),
            l["protocol"].as_str().unwrap_or(""),
            l["address"].as_str().unwrap_or(""),
            l["pool"].as_str().unwrap_or("")
        );
    }
    println!("\npools:");
    for p in list("pools") {
        let backends = p["backends"].as_array().cloned().unwrap_or_default();
        let healthy = backends.iter().filter(|b| b["healthy"] == true).count();
        let name = p["name"].as_str().unwrap_or("");
        println!("  {name:<16} {}  {healthy}/{} healthy", p["balancer"].as_str().unwrap_or(""), backends.len());
        for b in &backends {
            println!(
                "    {:<24} {:<9} active {:<5} total {:<8} rx {:<10} tx {:<10}",
                b["address"].as_str().unwrap_or(""),
                if b["healthy"] == true { "up" } else { "down" },
                b["active"],
                b["total"],
                b["rx_bytes"],
                b["tx_bytes"]
            );
        }
    }
    println!("\nplugins:");
    for p in list("plugins") {
        println!(
            "  {:<28} {:<16} gen {:<3} calls {:<10} errors {} traps {} timeouts {}",
            p["name"].as_str().unwrap_or(""),
            p["world"].as_str().unwrap_or(""),
            p["generation"],
            p["calls"],
            p["errors"],
            p["traps"],
            p["timeouts"]
        );
    }
    Ok(())
}

/// The process's runtime: with one worker, the only event loop; with more,
/// the control plane's, beside one worker loop per worker thread (see
/// `workers`).
fn tokio_runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let n = crate::workers::wanted(workers);
    if n > 1 {
        crate::workers::start(n)?;
    }
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().thread_name("weir-main").build()?)
}

/// Tell a supervisor that speaks the systemd notify protocol (a
/// `Type=notify` unit, or anything that sets `NOTIFY_SOCKET`) where weir
/// is: ready once every listener is bound, reloading around a SIGHUP,
/// stopping at shutdown. Nothing happens without `NOTIFY_SOCKET`.
fn notify_supervisor(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("NOTIFY_SOCKET: {e}");
    }
}

fn plugin_runtime(loaded: &Loaded) -> Result<std::sync::Arc<Runtime>> {
    let cache = loaded.config.runtime.plugin_cache.as_ref().map(PathBuf::from).or_else(Runtime::default_cache_dir);
    Runtime::new(cache)
}

async fn serve(loaded: Loaded) -> Result<()> {
    let runtime = plugin_runtime(&loaded)?;
    let signal = crate::app::shutdown_signal()?;
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    #[cfg(unix)]
    let mut upgrade = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    #[cfg(unix)]
    let mut reopen = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    // Started by `weir upgrade`: take over the previous process's sockets.
    let mut successor = match std::env::var_os(crate::handover::SOCKET_ENV) {
        Some(path) => Some(
            crate::handover::Successor::connect(Path::new(&path)).context("upgrade: reaching the previous process")?,
        ),
        None => None,
    };
    let mut inherited = match &mut successor {
        Some(s) => s.receive().context("upgrade: receiving the listening sockets")?,
        None => Default::default(),
    };
    let passed = inherited.len();
    let server = match Server::start_inheriting(loaded, runtime, &mut inherited).await {
        Ok(server) => server,
        Err(e) => {
            if let Some(s) = successor {
                s.failed(&format!("{e:#}"));
            }
            return Err(e);
        }
    };
    if let Some(s) = successor {
        s.ready().context("upgrade: telling the previous process")?;
        tracing::info!(passed, unused = inherited.len(), "upgrade: serving on the previous process's sockets");
    }
    drop(inherited);
    let listeners = server.core().snapshot().listeners.len();
    notify_supervisor(&[NotifyState::Ready, NotifyState::Status(&format!("serving {listeners} listeners"))]);
    tokio::pin!(signal);
    loop {
        #[cfg(unix)]
        tokio::select! {
            _ = &mut signal => break,
            _ = server.core().retired() => break,
            _ = upgrade.recv() => {
                // It logs how it went; a failed upgrade changes nothing.
                let _ = crate::upgrade::hand_over(server.core()).await;
            }
            _ = reopen.recv() => match crate::access_log::reopen() {
                Some(Ok(path)) => tracing::info!("SIGUSR1: access log reopened: {}", path.display()),
                Some(Err(e)) => tracing::error!("SIGUSR1: access log not reopened, lines go to the old file: {e}"),
                None => tracing::info!("SIGUSR1: the access log goes to stderr, nothing to reopen"),
            },
            _ = hangup.recv() => {
                let mut reloading = vec![NotifyState::Reloading];
                reloading.extend(NotifyState::monotonic_usec_now().ok());
                notify_supervisor(&reloading);
                // A refused config is logged by the reload itself.
                if let Ok(summary) = server.core().reload_file().await {
                    tracing::info!(?summary, "SIGHUP: config reloaded");
                }
                notify_supervisor(&[NotifyState::Ready]);
            }
        }
        #[cfg(not(unix))]
        {
            signal.await;
            break;
        }
    }
    if server.core().is_retiring() {
        tracing::info!("handed over: no new connections here");
    } else {
        notify_supervisor(&[NotifyState::Stopping]);
        tracing::info!("shutting down: no new connections");
    }
    let cut = server.shutdown().await;
    tracing::info!(cut, "stopped");
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            crate::upgrade::remember_how_started();
            let loaded = read_config(&config)?;
            tokio_runtime(loaded.config.runtime.workers)?.block_on(serve(loaded))?;
        }
        Command::Check { config } => check_config(&config)?,
        Command::Completions { shell } => clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "weir",
            &mut std::io::stdout(),
        ),
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)?;
            println!("man pages written to {}", dir.display());
        }
        Command::Openapi => println!("{}", crate::admin::api::openapi().to_pretty_json()?),
        Command::Plugins => list_bundled()?,
        Command::Status { target, json: false } => print_status(&target)?,
        Command::Status { target, json: true } => println!("{:#}", status_json(&target)?),
        Command::Reload { target } => {
            let summary = admin_call(&target, "POST", "/reload", Vec::new())?;
            println!("reloaded: {summary}");
        }
        Command::Upgrade { target } => {
            let done = admin_call(&target, "POST", "/upgrade", Vec::new())?;
            println!("upgraded: process {} serves; process {} drains and stops", done["pid"], done["previous"]);
            for lost in done["not_carried_over"].as_array().into_iter().flatten() {
                println!("warning: not carried over: {}", lost.as_str().unwrap_or_default());
            }
        }
        Command::Plugin { command } => return plugin(command),
        Command::Demo { port } => demo(port)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `weir run` and `weir check` look for the config without `-c` or
/// `WEIR_CONFIG` (where the package installs it).
const DEFAULT_CONFIG: &str = "/etc/weir/weir.toml";

/// Read a config; a default path that is not there says how to name one.
fn read_config(config: &Path) -> Result<Loaded> {
    if config == Path::new(DEFAULT_CONFIG) && !config.exists() {
        anyhow::bail!("no config at {DEFAULT_CONFIG} (the default): name one with -c FILE or WEIR_CONFIG");
    }
    Ok(Loaded::read(config)?)
}

/// `weir check`: parse, validate and load every plugin of a config.
fn check_config(config: &Path) -> Result<()> {
    let loaded = read_config(config)?;
    let runtime = plugin_runtime(&loaded)?;
    let (listeners, pools) = (loaded.config.listeners.len(), loaded.config.pools.len());
    let prepared = Prepared::load(loaded, &runtime)?;
    println!(
        "{}: ok ({listeners} listeners, {pools} pools, {} plugin instances)",
        config.display(),
        prepared.plugins.len()
    );
    Ok(())
}

/// `weir plugins`: the bundled plugins and the world each implements.
fn list_bundled() -> Result<()> {
    let runtime = Runtime::new(Runtime::default_cache_dir())?;
    for (name, bytes) in BUNDLED {
        let component = runtime.compile(bytes).with_context(|| format!("bundled plugin {name}"))?;
        let worlds: Vec<&str> = runtime.worlds(&component).iter().map(|w| w.name()).collect();
        println!("builtin:{name:<24} {:<16} {:>7} bytes", worlds.join(","), bytes.len());
    }
    Ok(())
}

/// `weir plugin ...`: the plugin author's commands.
fn plugin(command: PluginCommand) -> Result<ExitCode> {
    match command {
        PluginCommand::New { name, world, lang, dir } => {
            let world = parse_world(&world)?;
            let files = crate::devkit::scaffold::new_project(&dir, &name, world, &lang)?;
            println!("created {} ({} files): a {world} plugin in {lang}", dir.join(&name).display(), files.len());
            let test = match lang.as_str() {
                "rust" => "cargo test && weir plugin build",
                _ => "weir plugin build",
            };
            println!("next: cd {} && {test} (see its README.md)", dir.join(&name).display());
        }
        PluginCommand::Test { file, cases } => return plugin_test(&file, &cases),
        PluginCommand::Replay { old, new, log, config, new_config } => {
            plugin_replay(&old, &new, &log, &config, new_config.as_deref())?
        }
        PluginCommand::Build { dir } => {
            let built = crate::devkit::scaffold::build_project(&dir)?;
            println!("built {}", built.display());
        }
        PluginCommand::Check { file, world, config } => {
            if !check_plugin(&file, world.as_deref(), &config)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        PluginCommand::Push { name, file, rollout, watch, target } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let path = format!("/plugins/{name}");
            let before = admin_call(&target, "GET", &path, Vec::new())?;
            let query = rollout.map(|p| format!("?rollout={p}")).unwrap_or_default();
            let answer = admin_call(&target, "PUT", &format!("{path}{query}"), bytes)?;
            let share = rollout.map(|p| format!(" for {p} % of the calls")).unwrap_or_default();
            println!(
                "{name}: generation {} (hash {}) live{share} after {:.1} ms",
                answer["generation"],
                answer["hash"].as_str().unwrap_or(""),
                answer["swap_ms"].as_f64().unwrap_or(0.0)
            );
            if !watch.is_zero() {
                watch_calls(&target, &name, &before, watch, rollout.is_some())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// After a push: watch an instance's calls for `watch` and warn when the new
/// generation's first calls fail (a plugin that traps on every call loads
/// fine, and a fail-open phase hides it behind its fallback).
fn watch_calls(
    target: &AdminTarget,
    name: &str,
    before: &serde_json::Value,
    watch: std::time::Duration,
    canary: bool,
) -> Result<()> {
    let count = |v: &serde_json::Value, keys: &[&str]| keys.iter().map(|k| v[*k].as_u64().unwrap_or(0)).sum::<u64>();
    const FAILED: [&str; 4] = ["errors", "traps", "timeouts", "memory_exceeded"];
    let deadline = std::time::Instant::now() + watch;
    let (mut calls, mut failed) = (0, 0);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(250).min(watch));
        let now = admin_call(target, "GET", &format!("/plugins/{name}"), Vec::new())?;
        calls = count(&now, &["calls"]).saturating_sub(count(before, &["calls"]));
        failed = count(&now, &FAILED).saturating_sub(count(before, &FAILED));
        if failed > 0 && calls >= 10 {
            break;
        }
    }
    let secs = watch.as_secs_f64();
    match (calls, failed) {
        (0, _) => println!("{name}: no calls in {secs:.0} s after the push to judge it by"),
        (_, 0) => println!("{name}: {calls} calls since the push, none failed"),
        _ => {
            eprintln!(
                "warning: {name}: {failed} of {calls} calls failed since the push (errors, traps, timeouts, \
                 memory); `weir status` and the log say why"
            );
            if !canary {
                eprintln!(
                    "  push it with --rollout 5 to try it on 5 % of the calls first: it is rolled back by \
                     itself when its calls fail"
                );
            }
        }
    }
    Ok(())
}

/// `weir plugin test`: run a component against a cases file.
fn plugin_test(file: &Path, cases: &Path) -> Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let text = std::fs::read_to_string(cases).with_context(|| format!("reading {}", cases.display()))?;
    let parsed = crate::devkit::testkit::Cases::parse(&text, &cases.display().to_string())?;
    let runtime = Runtime::new(Runtime::default_cache_dir())?;
    let (world, outcomes) = crate::devkit::testkit::run(&runtime, &bytes, &file.display().to_string(), &parsed)?;
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    for o in &outcomes {
        match &o.failure {
            None => println!("ok    {}", o.name),
            Some(why) => println!("FAIL  {}: {why}", o.name),
        }
    }
    println!("{world}: {} cases, {} passed, {failed} failed", outcomes.len(), outcomes.len() - failed);
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `weir plugin replay`: where two versions of a plugin decide a logged
/// request differently.
fn plugin_replay(old: &Path, new: &Path, log: &Path, config: &str, new_config: Option<&str>) -> Result<()> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (a, b) = (read(old)?, read(new)?);
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let table = |c: &str| -> Result<toml::Table> { Ok(serde_json::from_str(&config_json(c)?)?) };
    let config = table(config)?;
    let new_config = new_config.map(table).transpose()?.unwrap_or_else(|| config.clone());
    let runtime = Runtime::new(Runtime::default_cache_dir())?;
    let (old_name, new_name) = (old.display().to_string(), new.display().to_string());
    let replayed =
        crate::devkit::testkit::replay(&runtime, (&a, &old_name, &config), (&b, &new_name, &new_config), &text)?;
    let diffs = &replayed.differences;
    for d in diffs.iter().take(20) {
        println!("{}: {} -> {}", d.request, d.old, d.new);
    }
    if diffs.len() > 20 {
        println!("... and {} more", diffs.len() - 20);
    }
    println!("{}: {} logged requests replayed, {} decided differently", replayed.world, replayed.requests, diffs.len());
    if replayed.world == crate::plugin::World::Balancer {
        println!("note: every replayed backend has weight 1 and priority 0 (an access log records neither)");
    }
    if !replayed.lacking.is_empty() {
        let read: Vec<String> = replayed.lacking.iter().map(|(what, n)| format!("{what} ({n} reads)")).collect();
        println!(
            "not conclusive: the balancers read the backends' {}, which an access log does not record; \
             the replay gave them zeros (and every backend weight 1), so decisions live may differ where these \
             did not. Compare them on live traffic with `weir plugin push --rollout`.",
            read.join(", ")
        );
    }
    if !replayed.missing.is_empty() {
        println!(
            "not conclusive: the balancers read {}, which the log has no value for (it keeps a header when the listener's \
             `access_log` lists `header:NAME`); the replay gave them none, so decisions live may differ.",
            replayed.missing.join(", ")
        );
    }
    Ok(())
}

/// `weir demo`: three local backends and weir in front of them.
fn demo(port: u16) -> Result<()> {
    let mut loaded =
        Loaded::parse(Source { origin: "examples/quickstart.toml".into(), text: crate::demo::QUICKSTART.into() })?;
    let front = loaded.config.listeners.get_mut("front").expect("quick-start listener");
    *front.bind.get_mut() = format!("127.0.0.1:{port}");
    let backends: Vec<std::net::SocketAddr> = loaded.config.pools["demo"]
        .backends
        .get_ref()
        .iter()
        .map(|b| b.get_ref().table().address.parse())
        .collect::<Result<_, _>>()?;
    tokio_runtime(loaded.config.runtime.workers)?.block_on(async move {
        crate::demo::start_backends(&backends).await.context("starting demo backends on 127.0.0.1:9101-9103")?;
        println!("weir demo: 3 backends on 127.0.0.1:9101-9103, weir on 127.0.0.1:{port} (round-robin, loopback only)");
        println!("try:   for i in 1 2 3 4; do curl -s http://127.0.0.1:{port}/; done");
        println!("shows: hello from backend-1, backend-2, backend-3, backend-1 (one per line)");
        println!("Ctrl-C stops.");
        serve(loaded).await
    })
}

/// Run the command line with the process arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(cli.log_level.as_deref(), matches!(cli.log_format, LogFormat::Json));
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
