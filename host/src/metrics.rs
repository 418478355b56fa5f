//! Prometheus metrics, encoded on each scrape from the live numbers the
//! host keeps anyway (prometheus-client's text format): per backend the
//! gobetween set (active, total, refused, rx/tx, live) plus responses by
//! status class, latency and health transitions; per plugin instance its
//! call counters and generation.

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
            "Connections (TCP), sessions (UDP) or requests (HTTP) open to the backend",
            Gauge,
            per_backend(|b| b.stats.active() as f64),
        )?;
        family(
            &mut e,
            "backend_connections",
            "Connections (TCP), sessions (UDP) or requests (HTTP) sent to the backend",
            Counter,
            per_backend(|b| b.stats.total() as f64),
        )?;
        family(
            &mut e,
            "backend_refused_connections",
            "Failed attempts (connect errors, failure statuses)",
            Counter,
            per_backend(|b| b.stats.failures() as f64),
        )?;
        family(
            &mut e,
            "backend_rx_bytes",
            "Bytes received from the backend",
            Counter,
            per_backend(|b| b.stats.rx() as f64),
        )?;
        family(&mut e, "backend_tx_bytes", "Bytes sent to the backend", Counter, per_backend(|b| b.stats.tx() as f64))?;
        family(
            &mut e,
            "backend_bytes_per_second",
            "Recent rx+tx bytes per second",
            Gauge,
            per_backend(|b| b.stats.bytes_per_sec() as f64),
        )?;
        family(
            &mut e,
            "backend_latency_microseconds",
            "Recent latency (peak-EWMA of connect or response-head time)",
            Gauge,
            per_backend(|b| b.stats.latency_us() as f64),
        )?;
        family(
            &mut e,
            "backend_live",
            "1 when the backend may receive new work",
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
        type LRow<'a> = (Vec<(&'static str, &'a str)>, f64);
        let per_listener =
            |f: fn(&crate::listener::ListenerStats) -> f64| listeners().map(move |(l, s)| -> LRow { (l, f(s)) });
        family(
            &mut e,
            "server_active_connections",
            "Client connections (UDP: sessions) open on the listener",
            Gauge,
            per_listener(|s| s.active() as f64),
        )?;
        family(
            &mut e,
            "server_connections",
            "Client connections (UDP: sessions) accepted by the listener",
            Counter,
            per_listener(|s| s.total() as f64),
        )?;
        let caps =
            || now.listeners.iter().filter_map(|(n, l)| Some((vec![("listener", n.as_str())], l.caps.as_ref()?)));
        family(
            &mut e,
            "server_refused_connections",
            "Connections closed at accept: their client was at max_connections_per_client",
            Counter,
            caps().map(|(l, c)| -> LRow { (l, c.refused() as f64) }),
        )?;
        family(
            &mut e,
            "server_accept_paused",
            "Times the listener stopped accepting at max_connections (its own or runtime.max_connections)",
            Counter,
            caps().map(|(l, c)| -> LRow { (l, c.paused() as f64) }),
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
        let (resident, _) = overload.last_sample();
        let help = "Resident memory of the process, sampled every 100 ms (runtime.shed_memory caps it)";
        let memory = e.encode_descriptor("resident_memory_bytes", help, None, Gauge)?;
        ConstGauge::new(resident as f64).encode(memory)?;
        if let Some(lag) = overload.loop_lag() {
            let help = "The longest an event loop has gone without running its 5 ms ticker, now";
            let lag_metric = e.encode_descriptor("event_loop_lag_seconds", help, None, Gauge)?;
            ConstGauge::new(lag.as_secs_f64()).encode(lag_metric)?;
        }
        family(
            &mut e,
            "server_dropped_datagrams",
            "UDP: datagrams dropped (session limit, denied, no backend, queue full)",
            Counter,
            now.listeners
                .iter()
                .filter(|(_, l)| l.protocol == "udp")
                .map(|(n, l)| (vec![("listener", n.as_str())], l.stats.dropped() as f64)),
        )?;
        let server_responses = listeners().flat_map(|(labels, s)| {
            CLASSES.iter().enumerate().map(move |(i, class)| {
                let mut l = labels.clone();
                l.push(("class", *class));
                (l, s.responses(i as u16 + 1) as f64)
            })
        });
        family(
            &mut e,
            "server_http_responses",
            "HTTP responses sent to clients by status class",
            Counter,
            server_responses,
        )?;
        histograms(
            &mut e,
            "server_response_seconds",
            "HTTP: time from request head to response head",
            listeners().map(|(l, s)| (l, &s.response_time)),
        )?;

        let plugins =
            || now.plugins.iter().map(|(n, p)| (vec![("plugin", n.as_str()), ("world", p.world().name())], p));
        type PRow<'a> = (Vec<(&'static str, &'a str)>, f64);
        let per_plugin = |f: fn(&PluginInstance) -> f64| plugins().map(move |(l, p)| -> PRow { (l, f(p)) });
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
                .map(|(p, n, _, v)| -> PRow { (vec![("plugin", &**p), ("name", n.as_str())], *v as f64) })
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
        Ok(())
    }
}

/// A registry that reads the server's pools and plugins on every scrape; metric
/// names carry the `weir_` prefix.
pub fn registry(core: Arc<crate::server::ServerCore>) -> Registry {
    let mut registry = Registry::with_prefix("weir");
    registry.register_collector(Box::new(Live { core }));
    registry
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}
