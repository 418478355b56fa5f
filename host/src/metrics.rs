//! Prometheus metrics, encoded on each scrape from the live numbers the
//! host keeps anyway (prometheus-client's text format), named after
//! Prometheus' conventions (base units, `_total` counters) and the
//! listener / pool / backend words of the config: per backend connections
//! and requests apart, failures by kind, bytes, latency, health and
//! responses by status class; per listener its connections, caps and
//! responses; certificates' expiry; config reloads; per plugin instance
//! its calls, generation and compile time; and the `process_*` set.

use crate::plugin::{MetricKind, PluginInstance};
use crate::upstream::Pool;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Reads pools and plugins at scrape time.
struct Live {
    core: Arc<crate::server::ServerCore>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance").field("name", &self.name()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish_non_exhaustive()
    }
}

type Labels<'a> = [(&'static str, &'a str)];

fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl Iterator<Item = (Vec<(&'static str, &'a str)>, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let labels: &Labels = &labels;
        let m = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value as u64).encode(m)?,
            _ => ConstGauge::new(value).encode(m)?,
        }
    }
    Ok(())
}

fn histograms<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Vec<(&'static str, &'a str)>, &'a crate::histogram::Histogram)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        let labels: &Labels = &labels;
        let buckets = h.buckets();
        let count = buckets.iter().map(|(_, c)| c).sum();
        metric.encode_family(&labels)?.encode_histogram::<NoLabelSet>(h.sum_secs(), count, &buckets, None)?;
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = self.core.snapshot();
        let members: Vec<(&str, Arc<crate::upstream::Members>)> =
            now.pools.iter().map(|(n, p)| (n.as_str(), p.members())).collect();
        let backends = || {
            members.iter().flat_map(|(pool, m)| {
                m.backends.iter().map(move |b| (vec![("pool", *pool), ("backend", b.address.as_str())], b))
            })
        };
        type Row<'a> = (Vec<(&'static str, &'a str)>, f64);
        let per_backend = |f: fn(&crate::upstream::Backend) -> f64| backends().map(move |(l, b)| -> Row { (l, f(b)) });
        use MetricType::{Counter, Gauge};
        let workers: Vec<(String, usize)> =
            crate::workers::connections().into_iter().enumerate().map(|(i, n)| (i.to_string(), n)).collect();
        family(
            &mut e,
            "worker_active_connections",
            "TCP and HTTP client connections running on the worker loop (with more than one worker)",
            Gauge,
            workers.iter().map(|(w, n)| -> Row { (vec![("worker", w.as_str())], *n as f64) }),
        )?;
        family(
            &mut e,
            "backend_active_connections",
            "TCP connections and UDP sessions open to the backend",
            Gauge,
            per_backend(|b| b.stats.active_connections() as f64),
        )?;
        family(
            &mut e,
            "backend_active_requests",
            "HTTP requests in progress on the backend",
            Gauge,
            per_backend(|b| b.stats.active_requests() as f64),
        )?;
        family(
            &mut e,
            "backend_connections",
            "TCP connections and UDP sessions opened to the backend",
            Counter,
            per_backend(|b| b.stats.connections() as f64),
        )?;
        family(
            &mut e,
            "backend_requests",
            "HTTP requests sent to the backend",
            Counter,
            per_backend(|b| b.stats.requests() as f64),
        )?;
        family(
            &mut e,
            "backend_connect_failures",
            "Failed connection attempts (connect errors, TLS handshakes, UDP port unreachable)",
            Counter,
            per_backend(|b| b.stats.connect_failures() as f64),
        )?;
        family(
            &mut e,
            "backend_failed_responses",
            "HTTP responses whose status the pool counts as a failure (fail_on, retry_on)",
            Counter,
            per_backend(|b| b.stats.failed_responses() as f64),
        )?;
        family(
            &mut e,
            "backend_received_bytes",
            "Bytes received from the backend (HTTP: response bodies)",
            Counter,
            per_backend(|b| b.stats.rx() as f64),
        )?;
        family(
            &mut e,
            "backend_sent_bytes",
            "Bytes sent to the backend (HTTP: request bodies)",
            Counter,
            per_backend(|b| b.stats.tx() as f64),
        )?;
        family(
            &mut e,
            "backend_bytes_per_second",
            "Recent bytes per second both ways (an average over the last seconds)",
            Gauge,
            per_backend(|b| b.stats.bytes_per_sec() as f64),
        )?;
        family(
            &mut e,
            "backend_latency_seconds",
            "Recent latency: peak-EWMA of connect (TCP, UDP) or response-head (HTTP) time",
            Gauge,
            per_backend(|b| b.stats.latency_us() as f64 / 1e6),
        )?;
        family(
            &mut e,
            "backend_up",
            "1 when the backend may receive new work (healthy, not ejected, not disabled)",
            Gauge,
            per_backend(|b| b.is_healthy() as u8 as f64),
        )?;
        family(
            &mut e,
            "backend_health_transitions",
            "Health changes (active, passive or by hand)",
            Counter,
            per_backend(|b| b.health.transitions() as f64),
        )?;
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let responses = backends().flat_map(|(labels, b)| {
            CLASSES.iter().enumerate().map(move |(i, class)| {
                let mut l = labels.clone();
                l.push(("class", *class));
                (l, b.stats.responses(i as u16 + 1) as f64)
            })
        });
        family(
            &mut e,
            "backend_http_responses",
            "HTTP responses from the backend by status class",
            Counter,
            responses,
        )?;

        let listeners = || now.listeners.iter().map(|(n, l)| (vec![("listener", n.as_str())], &l.stats));
        let per_listener =
            |f: fn(&crate::listener::ListenerStats) -> f64| listeners().map(move |(l, s)| -> Row { (l, f(s)) });
        family(
            &mut e,
            "listener_active_connections",
            "Client connections (UDP: sessions) open on the listener",
            Gauge,
            per_listener(|s| s.active() as f64),
        )?;
        family(
            &mut e,
            "listener_connections",
            "Client connections (UDP: sessions) accepted by the listener",
            Counter,
            per_listener(|s| s.total() as f64),
        )?;
        let caps =
            || now.listeners.iter().filter_map(|(n, l)| Some((vec![("listener", n.as_str())], l.caps.as_ref()?)));
        family(
            &mut e,
            "listener_refused_connections",
            "Connections closed at accept: their client was at max_connections_per_client",
            Counter,
            caps().map(|(l, c)| -> Row { (l, c.refused() as f64) }),
        )?;
        family(
            &mut e,
            "listener_accept_paused",
            "Times the listener stopped accepting at max_connections (its own or runtime.max_connections)",
            Counter,
            caps().map(|(l, c)| -> Row { (l, c.paused() as f64) }),
        )?;
        family(
            &mut e,
            "listener_dropped_datagrams",
            "UDP: datagrams dropped (session limit, denied, no backend, queue full)",
            Counter,
            now.listeners
                .iter()
                .filter(|(_, l)| l.protocol == "udp")
                .map(|(n, l)| (vec![("listener", n.as_str())], l.stats.dropped() as f64)),
        )?;
        let listener_responses = listeners().flat_map(|(labels, s)| {
            CLASSES.iter().enumerate().map(move |(i, class)| {
                let mut l = labels.clone();
                l.push(("class", *class));
                (l, s.responses(i as u16 + 1) as f64)
            })
        });
        family(
            &mut e,
            "listener_http_responses",
            "HTTP responses sent to clients by status class",
            Counter,
            listener_responses,
        )?;
        histograms(
            &mut e,
            "listener_http_response_head_seconds",
            "HTTP: time from the request head to the response head",
            listeners().map(|(l, s)| (l, &s.response_time)),
        )?;
        let certificates: Vec<(&str, crate::tls::CertificateInfo)> = now
            .listeners
            .iter()
            .filter_map(|(n, l)| Some((n.as_str(), l.tls.as_ref()?)))
            .flat_map(|(n, tls)| tls.certificates().into_iter().map(move |c| (n, c)))
            .collect();
        family(
            &mut e,
            "tls_certificate_expiry_timestamp_seconds",
            "When each certificate a listener serves expires (its leaf's notAfter), Unix seconds",
            Gauge,
            certificates.iter().filter_map(|(n, c)| {
                let labels = vec![("listener", *n), ("name", c.name.as_str()), ("path", c.path.as_str())];
                Some((labels, c.not_after? as f64))
            }),
        )?;

        let help = "TCP, TLS and HTTP client connections open across listeners (runtime.max_connections caps them)";
        let open = e.encode_descriptor("open_connections", help, None, Gauge)?;
        ConstGauge::new(self.core.open_connections() as f64).encode(open)?;
        let overload = self.core.overload();
        let refusing = overload.reasons();
        family(
            &mut e,
            "overloaded",
            "1 while new work is refused for this reason (runtime.shed_loop_lag, shed_plugin_time, shed_memory)",
            Gauge,
            crate::overload::Reason::ALL
                .into_iter()
                .map(|r| (vec![("reason", r.name())], refusing.contains(&r) as u8 as f64)),
        )?;
        family(
            &mut e,
            "shed",
            "Connections and HTTP requests refused because the process was overloaded, by reason",
            Counter,
            overload.shed_counts().into_iter().map(|(r, n)| (vec![("reason", r.name())], n as f64)),
        )?;
        if let Some(lag) = overload.loop_lag() {
            let help = "The longest an event loop has gone without running its 5 ms ticker, now";
            let lag_metric = e.encode_descriptor("event_loop_lag_seconds", help, None, Gauge)?;
            ConstGauge::new(lag.as_secs_f64()).encode(lag_metric)?;
        }

        let reloads = self.core.reloads();
        family(
            &mut e,
            "config_reloads",
            "Config reloads (SIGHUP, weir reload, the admin API, the file watch) by result",
            Counter,
            [("applied", &reloads.applied), ("refused", &reloads.refused)]
                .into_iter()
                .map(|(r, n)| (vec![("result", r)], n.load(Relaxed) as f64)),
        )?;
        let help = "1 when the last reload was applied (or none was tried), 0 when it was refused";
        let last = e.encode_descriptor("config_last_reload_successful", help, None, Gauge)?;
        ConstGauge::new(reloads.last_applied.load(Relaxed) as u8 as f64).encode(last)?;
        let help = "When the config in force was applied (at start or by a reload), Unix seconds";
        let at = e.encode_descriptor("config_last_reload_success_timestamp_seconds", help, None, Gauge)?;
        ConstGauge::new(reloads.applied_at.load(Relaxed) as f64).encode(at)?;

        let plugins =
            || now.plugins.iter().map(|(n, p)| (vec![("plugin", n.as_str()), ("world", p.world().name())], p));
        let per_plugin = |f: fn(&PluginInstance) -> f64| plugins().map(move |(l, p)| -> Row { (l, f(p)) });
        family(
            &mut e,
            "plugin_calls",
            "Plugin calls made",
            Counter,
            per_plugin(|p| p.stats().calls.load(Relaxed) as f64),
        )?;
        family(
            &mut e,
            "plugin_errors",
            "Plugin calls that returned an error",
            Counter,
            per_plugin(|p| p.stats().errors.load(Relaxed) as f64),
        )?;
        family(
            &mut e,
            "plugin_traps",
            "Plugin calls that trapped",
            Counter,
            per_plugin(|p| p.stats().traps.load(Relaxed) as f64),
        )?;
        family(
            &mut e,
            "plugin_timeouts",
            "Plugin calls interrupted at their deadline",
            Counter,
            per_plugin(|p| p.stats().timeouts.load(Relaxed) as f64),
        )?;
        family(
            &mut e,
            "plugin_memory_exceeded",
            "Plugin calls stopped at the memory limit",
            Counter,
            per_plugin(|p| p.stats().memory_exceeded.load(Relaxed) as f64),
        )?;
        family(
            &mut e,
            "plugin_generation",
            "Generation in use (1, then +1 per swap)",
            Gauge,
            per_plugin(|p| p.generation().number as f64),
        )?;
        // Metrics plugins open themselves, for the instances in service.
        let custom = self.core.runtime().shared().metrics();
        let custom = custom.iter().filter(|(p, ..)| now.plugins.contains_key(&**p));
        let custom_of = |kind: MetricKind| {
            custom
                .clone()
                .filter(move |(_, _, k, _)| *k == kind)
                .map(|(p, n, _, v)| -> Row { (vec![("plugin", &**p), ("name", n.as_str())], *v as f64) })
        };
        family(
            &mut e,
            "plugin_custom",
            "Counters plugins keep (host.open-metric)",
            Counter,
            custom_of(MetricKind::Counter),
        )?;
        family(
            &mut e,
            "plugin_custom_gauge",
            "Gauges plugins keep (host.open-metric)",
            Gauge,
            custom_of(MetricKind::Gauge),
        )?;
        histograms(
            &mut e,
            "plugin_call_seconds",
            "Plugin call time (one hot-path call in eight, every background call)",
            plugins().map(|(l, p)| (l, &p.stats().call_time)),
        )?;
        let compiles = self.core.runtime().compiles();
        histograms(
            &mut e,
            "plugin_compile_seconds",
            "Time to compile a component to machine code (loads from the compile cache are not counted)",
            std::iter::once((Vec::new(), &compiles.compile_time)),
        )?;
        let help = "Components read back from the compile cache instead of compiled";
        let hits = e.encode_descriptor("plugin_compile_cache_hits", help, None, Counter)?;
        ConstCounter::new(compiles.cache_hits.load(Relaxed)).encode(hits)?;
        Ok(())
    }
}

/// The process metrics every Prometheus client library exports (unprefixed
/// `process_*`), read from `/proc/self` at each scrape.
#[derive(Debug)]
struct Process;

/// What `/proc/self` says of this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStat {
    cpu_seconds: f64,
    threads: u64,
    start_time_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
}

impl ProcessStat {
    /// Parse `/proc/self/stat` (fields after the command name, which may
    /// hold spaces and parentheses) with the machine's tick rate, page size
    /// and boot time.
    fn parse(stat: &str, ticks: f64, page: u64, boot_time: u64) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state) of proc(5).
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
        })
    }

    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let boot_time = boot.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        Self::parse(&stat, ticks, rustix::param::page_size() as u64, boot_time)
    }
}

/// The soft limit on open files, from `/proc/self/limits`.
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

impl Collector for Process {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = |e: &mut DescriptorEncoder, name: &str, help: &str, v: f64| -> Result<(), std::fmt::Error> {
            ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        if let Some(s) = ProcessStat::read() {
            let cpu =
                e.encode_descriptor("process_cpu_seconds", "User and system CPU time", None, MetricType::Counter)?;
            ConstCounter::new(s.cpu_seconds).encode(cpu)?;
            gauge(&mut e, "process_resident_memory_bytes", "Resident memory", s.resident_bytes as f64)?;
            gauge(&mut e, "process_virtual_memory_bytes", "Virtual memory", s.virtual_bytes as f64)?;
            gauge(&mut e, "process_start_time_seconds", "Start time, Unix seconds", s.start_time_seconds)?;
            gauge(&mut e, "process_threads", "OS threads", s.threads as f64)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(&mut e, "process_open_fds", "Open file descriptors", fds.count() as f64)?;
        }
        if let Some(max) = max_fds() {
            gauge(&mut e, "process_max_fds", "Limit on open file descriptors", max as f64)?;
        }
        Ok(())
    }
}

/// A registry that reads the server's pools and plugins on every scrape
/// (names with the `weir_` prefix), and the process (`process_*`).
pub fn registry(core: Arc<crate::server::ServerCore>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Process));
    registry.sub_registry_with_prefix("weir").register_collector(Box::new(Live { core }));
    registry
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_read_past_a_command_name_with_spaces_and_parentheses() {
        // proc(5): pid (comm) state ppid ... utime(14) stime(15) ... num_threads(20)
        // itrealvalue(21) starttime(22) vsize(23) rss(24) ...
        let stat = "4242 (weir (a) b) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 12000 \
                    104857600 2560 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = ProcessStat::parse(stat, 100.0, 4096, 1_700_000_000).unwrap();
        assert_eq!(
            s,
            ProcessStat {
                cpu_seconds: 3.0,
                threads: 7,
                start_time_seconds: 1_700_000_120.0,
                virtual_bytes: 104_857_600,
                resident_bytes: 2560 * 4096,
            }
        );
        assert_eq!(ProcessStat::parse("4242 (weir) S 1", 100.0, 4096, 0), None);
    }

    #[test]
    fn this_process_reads_as_running_with_memory_and_open_files() {
        let s = ProcessStat::read().expect("/proc/self/stat");
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes && s.threads >= 1, "{s:?}");
        assert!(max_fds().is_some_and(|m| m > 0));
    }
}
