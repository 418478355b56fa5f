//! A backend's live numbers and health, kept by the host and shared by
//! every version of its pool's member list.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// One backend's numbers that balancers read on every pick: its place in
/// its pool's [`LiveTable`], kept apart from the other counters so that a
/// scan over a pool reads contiguous memory.
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    chunk: &'a Chunk,
    i: usize,
}

impl<'a> Live<'a> {
    /// Connections (or requests) open now.
    pub fn active(&self) -> u32 {
        self.chunk.active[self.i].load(Ordering::Relaxed)
    }
    /// Recent latency, microseconds (peak-EWMA).
    pub fn latency_us(&self) -> u32 {
        self.chunk.latency_us[self.i].load(Ordering::Relaxed)
    }
    /// Recent rx+tx bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.chunk.bytes_per_sec[self.i].load(Ordering::Relaxed)
    }
    fn active_cell(self) -> &'a AtomicU32 {
        &self.chunk.active[self.i]
    }
    fn latency_cell(self) -> &'a AtomicU32 {
        &self.chunk.latency_us[self.i]
    }
    fn bytes_per_sec_cell(self) -> &'a AtomicU64 {
        &self.chunk.bytes_per_sec[self.i]
    }
    fn reset(self) {
        self.active_cell().store(0, Ordering::Relaxed);
        self.latency_cell().store(0, Ordering::Relaxed);
        self.bytes_per_sec_cell().store(0, Ordering::Relaxed);
    }
}

/// Cells per chunk of a [`LiveTable`].
const CHUNK: usize = 1024;
/// Chunks a table may have: a million backends per pool, allocated as used.
const CHUNKS: usize = 1024;

/// [`CHUNK`] backends' live numbers, each number in an array of its own
/// (struct of arrays): a scan of one number reads one contiguous array.
#[derive(Debug)]
pub struct Chunk {
    /// Connections (or requests) open now.
    pub active: Box<[AtomicU32]>,
    /// Recent latency, microseconds (peak-EWMA).
    pub latency_us: Box<[AtomicU32]>,
    /// Recent rx+tx bytes per second.
    pub bytes_per_sec: Box<[AtomicU64]>,
}

impl Chunk {
    fn new() -> Self {
        Self {
            active: (0..CHUNK).map(|_| AtomicU32::new(0)).collect(),
            latency_us: (0..CHUNK).map(|_| AtomicU32::new(0)).collect(),
            bytes_per_sec: (0..CHUNK).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// A pool's live numbers: chunks that never move, one cell (an index into
/// each of a chunk's arrays) per backend for as long as any member list or
/// in-flight work holds its [`BackendStats`]; freed cells are reused.
#[derive(Debug)]
pub struct LiveTable {
    chunks: Box<[OnceLock<Chunk>]>,
    free: Mutex<Vec<u32>>,
    next: AtomicU32,
}

impl Default for LiveTable {
    fn default() -> Self {
        Self { chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(), free: Mutex::default(), next: AtomicU32::new(0) }
    }
}

impl LiveTable {
    /// The cell `index`.
    #[inline]
    pub fn cell(&self, index: u32) -> Live<'_> {
        let i = index as usize;
        Live { chunk: self.chunks[i / CHUNK].get_or_init(Chunk::new), i: i % CHUNK }
    }

    /// The chunk of cell `index`, and the cell's position in it.
    #[inline]
    pub fn place(&self, index: u32) -> (&Chunk, usize) {
        let i = index as usize;
        (self.chunks[i / CHUNK].get_or_init(Chunk::new), i % CHUNK)
    }

    /// The chunk holding cells `first .. first + len` and their positions
    /// in it, when they lie in one chunk.
    #[inline]
    pub fn run(&self, first: u32, len: usize) -> Option<(&Chunk, std::ops::Range<usize>)> {
        let i = first as usize;
        let chunk = self.chunks.get(i / CHUNK)?.get_or_init(Chunk::new);
        let range = i % CHUNK..i % CHUNK + len;
        (range.end <= CHUNK).then_some((chunk, range))
    }

    fn alloc(&self) -> u32 {
        if let Some(i) = self.free.lock().pop() {
            return i;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        assert!((i as usize) < CHUNK * CHUNKS, "more than {} live backends in one pool", CHUNK * CHUNKS);
        i
    }

    fn release(&self, index: u32) {
        self.cell(index).reset();
        self.free.lock().push(index);
    }
}

/// Live counters of one backend, kept by the host.
#[derive(Debug)]
pub struct BackendStats {
    table: Arc<LiveTable>,
    cell: u32,
    /// TCP connections and UDP sessions ever opened.
    connections: AtomicU64,
    /// HTTP requests ever sent.
    requests: AtomicU64,
    /// HTTP requests in progress (the live `active` count holds them too).
    active_requests: AtomicU32,
    /// Bytes received from the backend.
    rx: AtomicU64,
    /// Bytes sent to the backend.
    tx: AtomicU64,
    /// Failed connection attempts (connect errors, TLS handshakes, a UDP
    /// port unreachable).
    connect_failures: AtomicU64,
    /// HTTP responses whose status the pool counts as a failure
    /// (`fail_on`, `retry_on`).
    failed_responses: AtomicU64,
    /// HTTP responses by status class: 1xx .. 5xx.
    responses: [AtomicU64; 5],
}

impl Drop for BackendStats {
    fn drop(&mut self) {
        self.table.release(self.cell);
    }
}

impl BackendStats {
    /// Counters for a new backend, with a cell of `table`.
    pub fn new(table: &Arc<LiveTable>) -> Self {
        Self {
            table: table.clone(),
            cell: table.alloc(),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            active_requests: AtomicU32::new(0),
            rx: AtomicU64::new(0),
            tx: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            failed_responses: AtomicU64::new(0),
            responses: Default::default(),
        }
    }

    /// The backend's cell in its pool's live table.
    pub fn cell(&self) -> u32 {
        self.cell
    }

    /// The live numbers.
    #[inline]
    pub fn live(&self) -> Live<'_> {
        self.table.cell(self.cell)
    }

    /// Connections, sessions and requests open now (what balancers read).
    pub fn active(&self) -> u32 {
        self.live().active()
    }
    /// HTTP requests in progress.
    pub fn active_requests(&self) -> u32 {
        self.active_requests.load(Ordering::Relaxed)
    }
    /// TCP connections and UDP sessions open now.
    pub fn active_connections(&self) -> u32 {
        self.active().saturating_sub(self.active_requests())
    }
    /// TCP connections and UDP sessions ever opened.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// HTTP requests ever sent.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Connections, sessions and requests ever sent.
    pub fn total(&self) -> u64 {
        self.connections() + self.requests()
    }
    /// Bytes received from the backend.
    pub fn rx(&self) -> u64 {
        self.rx.load(Ordering::Relaxed)
    }
    /// Bytes sent to the backend.
    pub fn tx(&self) -> u64 {
        self.tx.load(Ordering::Relaxed)
    }
    /// Failed connection attempts.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }
    /// HTTP responses with a status the pool counts as a failure.
    pub fn failed_responses(&self) -> u64 {
        self.failed_responses.load(Ordering::Relaxed)
    }
    /// Failed attempts of either kind.
    pub fn failures(&self) -> u64 {
        self.connect_failures() + self.failed_responses()
    }
    /// Recent connect latency, microseconds (EWMA).
    pub fn latency_us(&self) -> u32 {
        self.live().latency_us()
    }
    /// Recent rx+tx bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.live().bytes_per_sec()
    }
    /// Count bytes received from the backend.
    pub fn add_rx(&self, n: u64) {
        self.rx.fetch_add(n, Ordering::Relaxed);
    }
    /// Count bytes sent to the backend.
    pub fn add_tx(&self, n: u64) {
        self.tx.fetch_add(n, Ordering::Relaxed);
    }
    /// Record a failed connection attempt.
    pub fn record_connect_failure(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }
    /// Record an HTTP response whose status counts as a failure.
    pub fn record_failed_response(&self) {
        self.failed_responses.fetch_add(1, Ordering::Relaxed);
    }
    /// Record a latency sample (connect on L4, response head on L7) as a
    /// peak-EWMA: a slower sample is taken at once, faster ones decay the
    /// value by 1/8, so a backend that turns slow is noticed immediately.
    pub fn record_latency(&self, d: Duration) {
        let sample = d.as_micros().min(u32::MAX as u128) as u32;
        let cell = self.live().latency_cell();
        let old = cell.load(Ordering::Relaxed);
        let new = if sample >= old { sample } else { old - old / 8 + sample / 8 };
        cell.store(new, Ordering::Relaxed);
    }

    /// Fold the bytes moved since the last call, `elapsed` ago, into the
    /// bytes-per-second average (EWMA with weight 1/2 per tick).
    pub fn tick_throughput(&self, last_total: &mut u64, elapsed: Duration) {
        let total = self.rx() + self.tx();
        let rate = ((total - *last_total) as f64 / elapsed.as_secs_f64().max(1e-3)) as u64;
        *last_total = total;
        let cell = self.live().bytes_per_sec_cell();
        let old = cell.load(Ordering::Relaxed);
        cell.store(old / 2 + rate / 2, Ordering::Relaxed);
    }
    /// Set the throughput and latency balancers read, as if measured (the
    /// test kit's synthetic pools and benchmarks).
    pub fn set_live_numbers(&self, bytes_per_sec: Option<u64>, latency_us: Option<u32>) {
        if let Some(v) = bytes_per_sec {
            self.live().bytes_per_sec_cell().store(v, Ordering::Relaxed);
        }
        if let Some(v) = latency_us {
            self.live().latency_cell().store(v, Ordering::Relaxed);
        }
    }
    /// Record an HTTP response status.
    pub fn record_status(&self, status: u16) {
        if let Some(c) = self.responses.get((status / 100).wrapping_sub(1) as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// HTTP responses with status `class`xx (1 to 5).
    pub fn responses(&self, class: u16) -> u64 {
        self.responses.get((class as usize).wrapping_sub(1)).map_or(0, |c| c.load(Ordering::Relaxed))
    }
    /// Mark a TCP connection or UDP session as open; the guard closes it.
    pub fn open_connection(self: &Arc<Self>) -> ActiveGuard {
        self.live().active_cell().fetch_add(1, Ordering::Relaxed);
        self.connections.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { stats: self.clone(), request: false }
    }
    /// Mark an HTTP request as sent; the guard ends it.
    pub fn open_request(self: &Arc<Self>) -> ActiveGuard {
        self.live().active_cell().fetch_add(1, Ordering::Relaxed);
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { stats: self.clone(), request: true }
    }
}

/// Decrements a backend's active count when dropped.
pub struct ActiveGuard {
    stats: Arc<BackendStats>,
    request: bool,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.request {
            self.stats.active_requests.fetch_sub(1, Ordering::Relaxed);
        }
        self.stats.live().active_cell().fetch_sub(1, Ordering::Relaxed);
    }
}

/// One backend of a pool, as one version of the pool's member list has it.
/// A backend that stays across member-list changes (discovery, reload)
/// keeps its `stats` and `health`; its slot may change.
#[derive(Debug)]
pub struct Backend {
    /// Position in the member list.
    pub slot: u32,
    /// `host:port`.
    pub address: String,
    /// The address parsed once as a URI authority, for HTTP requests
    /// (`None` if it is not one).
    pub authority: Option<http::uri::Authority>,
    /// Relative weight.
    pub weight: u32,
    /// Priority group (lower preferred).
    pub priority: u32,
    /// Labels.
    pub tags: Vec<String>,
    /// Live counters.
    pub stats: Arc<BackendStats>,
    /// Active and passive health.
    pub health: Arc<Health>,
}

impl Backend {
    /// The static data it was built from.
    pub fn spec(&self) -> super::BackendSpec {
        super::BackendSpec {
            address: self.address.clone(),
            weight: self.weight,
            priority: self.priority,
            tags: self.tags.clone(),
        }
    }

    /// Whether the backend may receive new work.
    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }
}

/// What passive health (outlier detection) says about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Ejection {
    /// In rotation.
    None = 0,
    /// Out of rotation for the backoff period.
    Backoff = 1,
    /// Backoff over; back in rotation at the next passing active check.
    AwaitingCheck = 2,
}

/// A backend's health: the verdict of active checks and of passive
/// (live-traffic) failures. It is eligible when both say yes.
#[derive(Debug)]
pub struct Health {
    /// Active checks' verdict (always up when the pool has no checks).
    pub(crate) up: AtomicBool,
    ejection: AtomicU8,
    /// Taken out of rotation by hand (admin API).
    pub(crate) disabled: AtomicBool,
    /// Consecutive failed attempts from live traffic.
    pub(crate) consecutive_failures: AtomicU32,
    /// Consecutive active-check results agreeing with each other:
    /// positive for passes, negative for failures.
    streak: AtomicI32,
    /// Health transitions (either way) since the backend appeared.
    transitions: AtomicU64,
    /// Why the last active check failed.
    last_failure: Mutex<String>,
    /// The pool whose member list holds this backend now. A reload builds
    /// a new pool that keeps the health of the backends that stay, so the
    /// end of an ejection refreshes this one, not the pool that ejected it.
    pub(crate) owner: Mutex<std::sync::Weak<super::Pool>>,
}

impl Health {
    /// Health starting up or down by active checks.
    pub fn new(up: bool) -> Self {
        Self {
            up: AtomicBool::new(up),
            ejection: AtomicU8::new(Ejection::None as u8),
            disabled: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            streak: AtomicI32::new(0),
            transitions: AtomicU64::new(0),
            last_failure: Mutex::new(String::new()),
            owner: Mutex::new(std::sync::Weak::new()),
        }
    }

    /// Active checks and passive health both allow new work, and nobody
    /// took the backend out of rotation by hand.
    pub fn is_healthy(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.ejection() == Ejection::None && !self.disabled()
    }

    /// Whether it was taken out of rotation by hand.
    pub fn disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Whether active checks say the backend is up.
    pub fn checked_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The passive-health state.
    pub fn ejection(&self) -> Ejection {
        match self.ejection.load(Ordering::Relaxed) {
            0 => Ejection::None,
            1 => Ejection::Backoff,
            _ => Ejection::AwaitingCheck,
        }
    }

    pub(crate) fn set_ejection(&self, e: Ejection) -> Ejection {
        match self.ejection.swap(e as u8, Ordering::Relaxed) {
            0 => Ejection::None,
            1 => Ejection::Backoff,
            _ => Ejection::AwaitingCheck,
        }
    }

    /// Consecutive agreeing active-check results: passes (positive) or
    /// failures (negative).
    pub fn streak(&self) -> i32 {
        self.streak.load(Ordering::Relaxed)
    }

    /// Health transitions so far.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    pub(crate) fn count_transition(&self) {
        self.transitions.fetch_add(1, Ordering::Relaxed);
    }

    /// Why the last active check failed ("" if none did).
    pub fn last_failure(&self) -> String {
        self.last_failure.lock().clone()
    }

    /// Fold one active-check result in. Returns the new up/down verdict when
    /// it flipped: after `rise` passes in a row for a down backend, after
    /// `fall` failures in a row for an up one.
    pub(crate) fn record_check(&self, passed: Result<(), String>, rise: u32, fall: u32) -> Option<bool> {
        let streak = match &passed {
            Ok(()) => self.streak.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| Some(s.max(0) + 1)),
            Err(_) => self.streak.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| Some(s.min(0) - 1)),
        }
        .unwrap_or(0);
        let streak = if passed.is_ok() { streak.max(0) + 1 } else { streak.min(0) - 1 };
        if let Err(reason) = passed {
            *self.last_failure.lock() = reason;
        }
        let up = self.checked_up();
        let flip = if up { streak <= -(fall.max(1) as i32) } else { streak >= rise.max(1) as i32 };
        if flip {
            self.up.store(!up, Ordering::Relaxed);
            self.count_transition();
            Some(!up)
        } else {
            None
        }
    }
}
