//! The application log: tracing to stderr, plain or JSON, with a filter
//! (`--log-level`, `RUST_LOG`) that `PUT /log-level` changes while weir
//! runs.

use parking_lot::Mutex;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// Changes the filter in force: the process's reload handle, boxed (its
/// type names the formatter, which differs between plain and JSON).
type Setter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<Setter> = OnceLock::new();
/// The filter in force, as written.
static CURRENT: Mutex<String> = Mutex::new(String::new());

/// Install the application log: `level` (else `RUST_LOG`, else `info`),
/// plain text (colour on a terminal) or one JSON object per line.
pub fn init(level: Option<&str>, json: bool) {
    use std::io::IsTerminal;
    let directives = level.map(str::to_string).or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or("info".into());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("log level `{directives}`: {e}; using `info`");
        EnvFilter::new("info")
    });
    *CURRENT.lock() = directives;
    crate::access_log::set_json_logs(json);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        let builder = builder.json().flatten_event(true).with_filter_reloading();
        let handle = builder.reload_handle();
        let _ = SETTER.set(Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())));
        builder.init();
    } else {
        let builder = builder.with_ansi(std::io::stderr().is_terminal()).with_filter_reloading();
        let handle = builder.reload_handle();
        let _ = SETTER.set(Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())));
        builder.init();
    }
}

/// The filter in force (`info`, `weir=debug,info`), when [`init`] ran.
pub fn level() -> Option<String> {
    SETTER.get().map(|_| CURRENT.lock().clone())
}

/// Replace the filter: `directives` as `RUST_LOG` takes them (`debug`,
/// `weir::access=off,info`). An error says what is wrong and changes
/// nothing.
pub fn set_level(directives: &str) -> Result<(), String> {
    let setter = SETTER.get().ok_or("this process did not set up its log (an embedded server)")?;
    let filter = EnvFilter::try_new(directives.trim()).map_err(|e| format!("`{}`: {e}", directives.trim()))?;
    setter(filter)?;
    *CURRENT.lock() = directives.trim().to_string();
    tracing::info!("log level now `{}`", directives.trim());
    Ok(())
}
