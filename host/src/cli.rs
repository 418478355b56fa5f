//! The `weir` command line: parsing and dispatch. `main.rs` calls [`main`].

use crate::config::{Loaded, Source};
use crate::plugin::{Runtime, BUNDLED};
use crate::{Prepared, Server};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "weir", version, about = "A load balancer whose decisions are WebAssembly plugins")]
struct Cli {
    /// Log filter (e.g. `info`, `weir=debug`); `RUST_LOG` is used when unset.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run weir with a config file.
    Run {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Check a config file and load every plugin it names, without binding anything.
    Check {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// List the bundled plugins and the world each implements.
    Plugins,
    /// Start three demo backends and weir in front of them (bundled quick-start config).
    Demo {
        /// Port of the demo listener on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn tokio_runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = workers {
        b.worker_threads(w.max(1));
    }
    Ok(b.enable_all().thread_name("weir-worker").build()?)
}

fn plugin_runtime(loaded: &Loaded) -> Result<std::sync::Arc<Runtime>> {
    let cache = loaded.config.runtime.plugin_cache.as_ref().map(PathBuf::from).or_else(Runtime::default_cache_dir);
    Runtime::new(cache)
}

async fn serve(loaded: Loaded) -> Result<()> {
    let runtime = plugin_runtime(&loaded)?;
    let signal = crate::server::shutdown_signal()?;
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let server = Server::start(loaded, runtime).await?;
    tokio::pin!(signal);
    loop {
        #[cfg(unix)]
        tokio::select! {
            _ = &mut signal => break,
            _ = hangup.recv() => match server.core().reload_file().await {
                Ok(summary) => tracing::info!(?summary, "SIGHUP: config reloaded"),
                Err(e) => tracing::error!("SIGHUP: config not applied, the old one stays: {e}"),
            },
        }
        #[cfg(not(unix))]
        {
            signal.await;
            break;
        }
    }
    tracing::info!("shutting down: no new connections");
    let cut = server.shutdown().await;
    tracing::info!(cut, "stopped");
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let loaded = Loaded::read(&config)?;
            tokio_runtime(loaded.config.runtime.workers)?.block_on(serve(loaded))?;
        }
        Command::Check { config } => {
            let loaded = Loaded::read(&config)?;
            let runtime = plugin_runtime(&loaded)?;
            let (listeners, pools) = (loaded.config.listeners.len(), loaded.config.pools.len());
            let prepared = Prepared::load(loaded, &runtime)?;
            println!(
                "{}: ok ({listeners} listeners, {pools} pools, {} plugin instances)",
                config.display(),
                prepared.plugins.len()
            );
        }
        Command::Plugins => {
            let runtime = Runtime::new(Runtime::default_cache_dir())?;
            for (name, bytes) in BUNDLED {
                let component = runtime.compile(bytes).with_context(|| format!("bundled plugin {name}"))?;
                let worlds: Vec<&str> = runtime.worlds(&component).iter().map(|w| w.name()).collect();
                println!("builtin:{name:<24} {:<16} {:>7} bytes", worlds.join(","), bytes.len());
            }
        }
        Command::Demo { port } => {
            let mut loaded = Loaded::parse(Source {
                origin: "examples/quickstart.toml".into(),
                text: crate::demo::QUICKSTART.into(),
            })?;
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
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Run the command line with the process arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
