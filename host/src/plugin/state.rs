//! Per-store state of a plugin instance and the host imports it is given:
//! log, clock, random, shared counters and key-value store, the pool view of
//! a `pick` call and the request head of an HTTP phase call.

use super::bindings::access::weir::plugin::http;
use super::bindings::balancer::weir::plugin::{host, pool};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Host data behind a guest's `shared-counter` handle.
pub struct SharedCounterRep(Arc<AtomicI64>);

/// Host data behind a guest's `metric` handle.
pub struct MetricRep {
    kind: MetricKind,
    value: Arc<AtomicI64>,
}

/// What a plugin metric measures (the WIT `metric-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Metrics one plugin instance name may open.
pub const MAX_PLUGIN_METRICS: usize = 64;

/// Marker for the `pool-view` handle; the data is the store's current [`PickCall`].
pub struct PoolViewRep;

/// Marker for the `request` handle; the data is the store's current request head.
pub struct RequestRep;

/// Counters and key-value pairs owned by the host, namespaced by plugin
/// instance name, shared across worker threads and generations.
#[derive(Default)]
pub struct SharedStore {
    counters: Mutex<HashMap<Key, Arc<AtomicI64>>>,
    kv: Mutex<HashMap<Key, Vec<u8>>>,
    metrics: Mutex<std::collections::BTreeMap<Key, (MetricKind, Arc<AtomicI64>)>>,
    buckets: parking_lot::RwLock<HashMap<Key, Arc<AtomicU64>>>,
    listeners: parking_lot::RwLock<Vec<String>>,
}

/// Buckets kept before idle ones are swept.
const MAX_IDLE_BUCKETS: usize = 100_000;

/// (plugin instance name, key).
type Key = (Arc<str>, String);

impl SharedStore {
    /// The id of a listener name, registering it on first use.
    pub fn listener_id(&self, name: &str) -> u32 {
        if let Some(i) = self.listeners.read().iter().position(|n| n == name) {
            return i as u32;
        }
        let mut names = self.listeners.write();
        match names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                names.push(name.to_string());
                names.len() as u32 - 1
            }
        }
    }

    /// The name of a listener id ("" if unknown).
    pub fn listener_name(&self, id: u32) -> String {
        self.listeners.read().get(id as usize).cloned().unwrap_or_default()
    }

    /// GCRA token bucket: the bucket stores its "theoretical arrival time";
    /// a token is granted when that time, advanced by one interval, is not
    /// more than `burst` intervals ahead of now. Returns the wait in ms (0: granted).
    pub fn take_token(&self, ns: &Arc<str>, key: String, rate: u32, burst: u32, now: u64) -> u32 {
        if rate == 0 {
            return u32::MAX;
        }
        let interval = 1_000_000_000 / rate as u64;
        let tolerance = interval * burst.max(1) as u64;
        let key = (ns.clone(), key);
        let bucket = self.buckets.read().get(&key).cloned();
        let bucket = bucket.unwrap_or_else(|| {
            let mut map = self.buckets.write();
            if map.len() >= MAX_IDLE_BUCKETS {
                map.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
            }
            map.entry(key).or_default().clone()
        });
        let mut tat = bucket.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now) + interval;
            if next - now > tolerance {
                return ((next - now - tolerance).div_ceil(1_000_000)).max(1) as u32;
            }
            match bucket.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return 0,
                Err(actual) => tat = actual,
            }
        }
    }

    /// The counter `name` of namespace `ns`, created at zero.
    pub fn counter(&self, ns: &Arc<str>, name: String) -> Arc<AtomicI64> {
        self.counters.lock().entry((ns.clone(), name)).or_default().clone()
    }

    /// The metric `name` of plugin instance `ns`, created at zero; refused
    /// with the reason when the name is not a metric name, is open as the
    /// other kind, or `ns` has [`MAX_PLUGIN_METRICS`] already.
    pub fn metric(&self, ns: &Arc<str>, name: String, kind: MetricKind) -> Result<Arc<AtomicI64>, String> {
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`{name}` is not a metric name (1 to 64 of a-z, A-Z, 0-9 and _)"));
        }
        let mut metrics = self.metrics.lock();
        let key = (ns.clone(), name);
        if let Some((k, value)) = metrics.get(&key) {
            return match *k == kind {
                true => Ok(value.clone()),
                false => Err(format!("`{}` is already open as a {k:?}", key.1)),
            };
        }
        let open = metrics.range((ns.clone(), String::new())..).take_while(|((n, _), _)| n == ns).count();
        if open >= MAX_PLUGIN_METRICS {
            return Err(format!("this plugin instance has {MAX_PLUGIN_METRICS} metrics already"));
        }
        Ok(metrics.entry(key).or_insert_with(|| (kind, Arc::default())).1.clone())
    }

    /// Every plugin metric: (plugin instance, name, kind, value), by plugin and name.
    pub fn metrics(&self) -> Vec<(Arc<str>, String, MetricKind, i64)> {
        let metrics = self.metrics.lock();
        metrics
            .iter()
            .map(|((ns, name), (kind, v))| (ns.clone(), name.clone(), *kind, v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// One version of a pool's member list as a balancer call reads it. The
/// pools layer implements it, so the runtime needs no pool type of its own.
pub trait MemberView: Send + Sync {
    /// The id of the pool, handed to balancers.
    fn pool_id(&self) -> u32;
    /// The pool's next pick sequence: 0, 1, 2, ... across every thread.
    fn next_sequence(&self) -> u64;
    /// The version of this list; balancers get `set-backends` when it changes.
    fn version(&self) -> u64;
    /// The backends as balancers receive them, indexed by slot.
    fn backends(&self) -> &[super::bindings::types::Backend];
    /// Connections (or requests) open now on the backend in `slot`.
    fn active(&self, slot: u32) -> Option<u32>;
    /// Active counts of the backends in `eligible` (ascending slots), in that order.
    fn gather_active(&self, eligible: &[u32]) -> Vec<u32>;
    /// Latencies (µs) of the backends in `eligible`, in that order.
    fn gather_latency_us(&self, eligible: &[u32]) -> Vec<u32>;
    /// Bytes/s of the backends in `eligible`, in that order.
    fn gather_bytes_per_sec(&self, eligible: &[u32]) -> Vec<u64>;
}

/// What a `pick` call's `pool-view` shows.
pub struct PickCall {
    /// The id of the pool being balanced.
    pub pool: u32,
    /// The member list the pick is over.
    pub members: Arc<dyn MemberView>,
    /// Slots eligible for this call, ascending.
    pub eligible: Arc<Vec<u32>>,
    /// The connection being balanced.
    pub conn: super::bindings::types::Connection,
    /// HTTP picks: the request's cookies in, response headers out.
    pub http: Option<HttpPick>,
}

/// What an HTTP `pick` sees of its request and adds to its response.
#[derive(Debug, Default)]
pub struct HttpPick {
    /// The request's header fields, lent for the pick and given back.
    pub headers: ::http::HeaderMap,
    /// When `Some` (a replay), the headers and cookies a pick asked for and
    /// did not find, as `header x` or `cookie x`.
    pub missing: Option<Vec<String>>,
    /// Headers the balancer adds to the response.
    pub response_headers: Vec<(String, String)>,
}

impl HttpPick {
    /// `value`, noting `what` among the missing when it is `None` and
    /// missing reads are kept.
    fn note_missing(&mut self, value: Option<String>, what: impl FnOnce() -> String) -> Option<String> {
        if let (None, Some(missing)) = (&value, &mut self.missing) {
            let what = what();
            if !missing.contains(&what) {
                missing.push(what);
            }
        }
        value
    }
}

/// An HTTP request head as plugins see it: the request's own parts, lent
/// for the duration of the phase calls and taken back afterwards.
pub type RequestHead = ::http::request::Parts;

/// What the `request` resource of an access or route call reads.
pub struct RequestCall {
    /// The request's head.
    pub head: Arc<RequestHead>,
    /// The connection it came on.
    pub conn: super::bindings::types::Connection,
}

/// `request.host`: the URI's host (HTTP/2 `:authority`, absolute form) or
/// the `Host` header's, without the port.
pub fn request_host(req: &RequestHead) -> Option<&str> {
    req.uri.host().or_else(|| req.headers.get(::http::header::HOST)?.to_str().ok().map(strip_port))
}

/// The memory cap of a store, remembering whether it was hit so that a
/// failed call can be told apart from an ordinary trap.
pub struct MemoryCap {
    /// Bytes of linear memory the instance may have.
    pub max_bytes: usize,
    /// Whether a growth past the cap was refused.
    pub hit: bool,
}

/// Table elements an instance may have (indirect-call tables are small).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            wasmtime::bail!("memory limit of {} bytes reached (wanted {desired})", self.max_bytes);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            wasmtime::bail!("table limit of {MAX_TABLE_ELEMENTS} elements reached");
        }
        Ok(true)
    }
}

/// The data of one plugin store.
pub struct PluginState {
    pub(crate) name: Arc<str>,
    pub(crate) shared: Arc<SharedStore>,
    pub(crate) limits: MemoryCap,
    table: ResourceTable,
    wasi: WasiCtx,
    pub(crate) pick: Option<PickCall>,
    pub(crate) request: Option<RequestCall>,
    /// What `io` may reach, from the instance's config.
    pub(crate) grants: Arc<super::grants::Grants>,
    /// Set during a background call: the call's I/O scope.
    pub(crate) io: Option<super::grants::CallScope>,
    /// What the instance printed to its stdout and stderr.
    pub(crate) output: super::output::Output,
    /// The message of a panic the SDK reported (`panicked at ...`), for
    /// the error of the trap that follows it.
    pub(crate) panic: Option<String>,
}

impl PluginState {
    pub(crate) fn new(
        name: Arc<str>,
        shared: Arc<SharedStore>,
        max_memory: usize,
        grants: Arc<super::grants::Grants>,
    ) -> Self {
        let output = super::output::Output::default();
        Self {
            name,
            shared,
            grants,
            io: None,
            limits: MemoryCap { max_bytes: max_memory, hit: false },
            table: ResourceTable::new(),
            // Nothing granted: no files, no network, no environment, no
            // args; what it prints is kept for the log.
            wasi: WasiCtx::builder().stdout(output.clone()).stderr(output.clone()).build(),
            output,
            panic: None,
            pick: None,
            request: None,
        }
    }

    fn pick(&self) -> wasmtime::Result<&PickCall> {
        self.pick.as_ref().ok_or_else(|| wasmtime::format_err!("pool-view used outside of pick"))
    }

    fn http_pick(&mut self) -> wasmtime::Result<Option<&mut HttpPick>> {
        let call = self.pick.as_mut().ok_or_else(|| wasmtime::format_err!("pool-view used outside of pick"))?;
        Ok(call.http.as_mut())
    }

    fn request(&self) -> wasmtime::Result<&RequestHead> {
        self.request.as_ref().map(|r| &*r.head).ok_or_else(|| wasmtime::format_err!("request used outside of its call"))
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl host::Host for PluginState {
    fn log(&mut self, level: host::LogLevel, message: String) -> wasmtime::Result<()> {
        let plugin = &*self.name;
        if matches!(level, host::LogLevel::Error) && message.starts_with("panicked at ") {
            self.panic = Some(message.clone());
        }
        match level {
            host::LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            host::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            host::LogLevel::Info => tracing::info!(plugin, "{message}"),
            host::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            host::LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }

    fn now_nanos(&mut self) -> wasmtime::Result<u64> {
        Ok(crate::clock::now_nanos())
    }

    fn listener_name(&mut self, id: u32) -> wasmtime::Result<String> {
        Ok(self.shared.listener_name(id))
    }

    fn random_u64(&mut self) -> wasmtime::Result<u64> {
        Ok(rand::random())
    }

    fn take_token(&mut self, key: String, rate: u32, burst: u32) -> wasmtime::Result<u32> {
        Ok(self.shared.take_token(&self.name, key, rate, burst, crate::clock::now_nanos()))
    }

    fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.shared.kv.lock().get(&(self.name.clone(), key)).cloned())
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        self.shared.kv.lock().insert((self.name.clone(), key), value);
        Ok(())
    }

    fn kv_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.shared.kv.lock().remove(&(self.name.clone(), key));
        Ok(())
    }

    fn open_metric(
        &mut self,
        name: String,
        kind: host::MetricKind,
    ) -> wasmtime::Result<Result<Resource<MetricRep>, String>> {
        let kind = match kind {
            host::MetricKind::Counter => MetricKind::Counter,
            host::MetricKind::Gauge => MetricKind::Gauge,
        };
        Ok(match self.shared.metric(&self.name, name, kind) {
            Ok(value) => Ok(self.table.push(MetricRep { kind, value })?),
            Err(e) => Err(e),
        })
    }
}

impl host::HostSharedCounter for PluginState {
    fn new(&mut self, name: String) -> wasmtime::Result<Resource<SharedCounterRep>> {
        let counter = self.shared.counter(&self.name, name);
        Ok(self.table.push(SharedCounterRep(counter))?)
    }

    fn fetch_add(&mut self, this: Resource<SharedCounterRep>, delta: i64) -> wasmtime::Result<i64> {
        Ok(self.table.get(&this)?.0.fetch_add(delta, Ordering::Relaxed))
    }

    fn get(&mut self, this: Resource<SharedCounterRep>) -> wasmtime::Result<i64> {
        Ok(self.table.get(&this)?.0.load(Ordering::Relaxed))
    }

    fn set(&mut self, this: Resource<SharedCounterRep>, value: i64) -> wasmtime::Result<()> {
        self.table.get(&this)?.0.store(value, Ordering::Relaxed);
        Ok(())
    }

    fn drop(&mut self, this: Resource<SharedCounterRep>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl host::HostMetric for PluginState {
    fn add(&mut self, this: Resource<MetricRep>, delta: i64) -> wasmtime::Result<()> {
        let m = self.table.get(&this)?;
        if m.kind == MetricKind::Gauge || delta > 0 {
            m.value.fetch_add(delta, Ordering::Relaxed);
        }
        Ok(())
    }

    fn set(&mut self, this: Resource<MetricRep>, value: i64) -> wasmtime::Result<()> {
        let m = self.table.get(&this)?;
        if m.kind == MetricKind::Gauge {
            m.value.store(value, Ordering::Relaxed);
        }
        Ok(())
    }

    fn drop(&mut self, this: Resource<MetricRep>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl pool::Host for PluginState {}

impl pool::HostPoolView for PluginState {
    fn id(&mut self, _: Resource<PoolViewRep>) -> wasmtime::Result<u32> {
        Ok(self.pick()?.pool)
    }

    fn eligible_count(&mut self, _: Resource<PoolViewRep>) -> wasmtime::Result<u32> {
        Ok(self.pick()?.eligible.len() as u32)
    }

    fn eligible(&mut self, _: Resource<PoolViewRep>, index: u32) -> wasmtime::Result<u32> {
        let call = self.pick()?;
        call.eligible
            .get(index as usize)
            .copied()
            .ok_or_else(|| wasmtime::format_err!("eligible index {index} out of range ({})", call.eligible.len()))
    }

    fn eligible_slots(&mut self, _: Resource<PoolViewRep>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.pick()?.eligible.to_vec())
    }

    fn is_eligible(&mut self, _: Resource<PoolViewRep>, slot: u32) -> wasmtime::Result<bool> {
        Ok(self.pick()?.eligible.binary_search(&slot).is_ok())
    }

    fn active(&mut self, _: Resource<PoolViewRep>, slot: u32) -> wasmtime::Result<u32> {
        self.pick()?.members.active(slot).ok_or_else(|| wasmtime::format_err!("slot {slot} out of range"))
    }

    fn eligible_active_pair(&mut self, _: Resource<PoolViewRep>, a: u32, b: u32) -> wasmtime::Result<u64> {
        let call = self.pick()?;
        let active = |index: u32| match call.eligible.get(index as usize) {
            Some(&slot) => Ok(call.members.active(slot).unwrap_or(0) as u64),
            None => Err(wasmtime::format_err!("eligible index {index} out of range ({})", call.eligible.len())),
        };
        Ok(active(a)? | active(b)? << 32)
    }

    fn eligible_active(&mut self, _: Resource<PoolViewRep>) -> wasmtime::Result<Vec<u32>> {
        let call = self.pick()?;
        Ok(call.members.gather_active(&call.eligible))
    }

    fn eligible_latency_us(&mut self, _: Resource<PoolViewRep>) -> wasmtime::Result<Vec<u32>> {
        let call = self.pick()?;
        Ok(call.members.gather_latency_us(&call.eligible))
    }

    fn eligible_bytes_per_sec(&mut self, _: Resource<PoolViewRep>) -> wasmtime::Result<Vec<u64>> {
        let call = self.pick()?;
        Ok(call.members.gather_bytes_per_sec(&call.eligible))
    }

    fn connection(&mut self, _: Resource<PoolViewRep>) -> wasmtime::Result<super::bindings::types::Connection> {
        Ok(self.pick()?.conn.clone())
    }

    fn request_header(&mut self, _: Resource<PoolViewRep>, name: String) -> wasmtime::Result<Option<String>> {
        let Some(http) = self.http_pick()? else { return Ok(None) };
        let value = http.headers.get(name.as_str()).and_then(header_str);
        Ok(http.note_missing(value, || format!("header {}", name.to_ascii_lowercase())))
    }

    fn request_cookie(&mut self, _: Resource<PoolViewRep>, name: String) -> wasmtime::Result<Option<String>> {
        let Some(http) = self.http_pick()? else { return Ok(None) };
        let value = cookie_value(http.headers.get_all(::http::header::COOKIE).iter(), &name);
        Ok(http.note_missing(value, || format!("cookie {name}")))
    }

    fn add_response_header(&mut self, _: Resource<PoolViewRep>, name: String, value: String) -> wasmtime::Result<()> {
        if let Some(http) = self.http_pick()? {
            if http.response_headers.len() < 16 {
                http.response_headers.push((name, value));
            }
        }
        Ok(())
    }

    fn drop(&mut self, _: Resource<PoolViewRep>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl http::Host for PluginState {}

/// The value of cookie `name` in `Cookie` header fields.
pub fn cookie_value<'a>(fields: impl Iterator<Item = &'a ::http::HeaderValue>, name: &str) -> Option<String> {
    weir_wire::cookie::value(fields.map(::http::HeaderValue::as_bytes), name).map(str::to_owned)
}

fn header_str(v: &::http::HeaderValue) -> Option<String> {
    v.to_str().ok().map(str::to_owned)
}

impl http::HostRequest for PluginState {
    fn connection(&mut self, _: Resource<RequestRep>) -> wasmtime::Result<super::bindings::types::Connection> {
        let call = self.request.as_ref().ok_or_else(|| wasmtime::format_err!("request used outside of its call"))?;
        Ok(call.conn.clone())
    }

    fn method(&mut self, _: Resource<RequestRep>) -> wasmtime::Result<String> {
        Ok(self.request()?.method.as_str().to_owned())
    }

    fn path(&mut self, _: Resource<RequestRep>) -> wasmtime::Result<String> {
        Ok(self.request()?.uri.path().to_owned())
    }

    fn query(&mut self, _: Resource<RequestRep>) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.uri.query().map(str::to_owned))
    }

    fn host(&mut self, _: Resource<RequestRep>) -> wasmtime::Result<Option<String>> {
        Ok(request_host(self.request()?).map(str::to_owned))
    }

    fn header(&mut self, _: Resource<RequestRep>, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.headers.get(name.as_str()).and_then(header_str))
    }

    fn header_all(&mut self, _: Resource<RequestRep>, name: String) -> wasmtime::Result<Vec<String>> {
        Ok(self.request()?.headers.get_all(name.as_str()).iter().filter_map(header_str).collect())
    }

    fn cookie(&mut self, _: Resource<RequestRep>, name: String) -> wasmtime::Result<Option<String>> {
        Ok(cookie_value(self.request()?.headers.get_all(::http::header::COOKIE).iter(), &name))
    }

    fn query_param(&mut self, _: Resource<RequestRep>, name: String) -> wasmtime::Result<Option<String>> {
        let req = self.request()?;
        let found = req
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned());
        Ok(found)
    }

    fn drop(&mut self, _: Resource<RequestRep>) -> wasmtime::Result<()> {
        Ok(())
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        host.split_once(']').map_or(host, |(h, _)| &h[1..])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let store = SharedStore::default();
        let ns: Arc<str> = "rl".into();
        let t0 = 1_000_000_000_000u64;
        // Burst of 5 at once, then refused with a wait of one interval (100 ms at 10/s).
        for _ in 0..5 {
            assert_eq!(store.take_token(&ns, "k".into(), 10, 5, t0), 0);
        }
        assert_eq!(store.take_token(&ns, "k".into(), 10, 5, t0), 100);
        // One interval later, exactly one more.
        assert_eq!(store.take_token(&ns, "k".into(), 10, 5, t0 + 100_000_000), 0);
        assert!(store.take_token(&ns, "k".into(), 10, 5, t0 + 100_000_000) > 0);
        // Other keys and namespaces are independent.
        assert_eq!(store.take_token(&ns, "other".into(), 10, 5, t0), 0);
        assert_eq!(store.take_token(&"rl2".into(), "k".into(), 10, 5, t0), 0);
    }

    #[test]
    fn metrics_are_named_kinded_and_capped_per_plugin() {
        let store = SharedStore::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let hits = store.metric(&a, "hits".into(), MetricKind::Counter).unwrap();
        hits.fetch_add(2, Ordering::Relaxed);
        // The same name gives the same value; the other kind is refused.
        assert_eq!(store.metric(&a, "hits".into(), MetricKind::Counter).unwrap().load(Ordering::Relaxed), 2);
        assert!(store.metric(&a, "hits".into(), MetricKind::Gauge).unwrap_err().contains("already open as a Counter"));
        for bad in ["", "has space", "dash-ed", &"x".repeat(65)] {
            assert!(
                store.metric(&a, bad.into(), MetricKind::Gauge).unwrap_err().contains("not a metric name"),
                "{bad}"
            );
        }
        for i in 1..MAX_PLUGIN_METRICS {
            store.metric(&a, format!("m{i}"), MetricKind::Gauge).unwrap();
        }
        assert!(store.metric(&a, "one_more".into(), MetricKind::Gauge).unwrap_err().contains("64 metrics"));
        // Another plugin has its own names and its own cap.
        store.metric(&b, "hits".into(), MetricKind::Gauge).unwrap().store(-5, Ordering::Relaxed);
        let all = store.metrics();
        assert_eq!(all.len(), MAX_PLUGIN_METRICS + 1);
        assert_eq!(
            all.iter().find(|(p, n, ..)| &**p == "a" && n == "hits").map(|m| (m.2, m.3)),
            Some((MetricKind::Counter, 2))
        );
        assert_eq!(
            all.iter().find(|(p, n, ..)| &**p == "b" && n == "hits").map(|m| (m.2, m.3)),
            Some((MetricKind::Gauge, -5))
        );
    }
}
