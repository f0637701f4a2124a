//! Call metrics, the counts behind `pbfast.metrics`: kept here because the calls they count run
//! here (a plain method's call is read, run and answered inside a session's `feed`, with no
//! Python frame to count it in).
//!
//! While metrics are on ([`enabled`]), each call a session runs for the peer (side `server`) or
//! makes and sees settled (side `client`) adds one to its series, keyed by wire, side, method
//! label and outcome, and its duration to the series' histogram; each chunk a session reads or
//! writes adds its bytes. The series live in one process-wide registry behind a lock held only
//! for a lookup and a few additions (never while Python runs), and are read whole when the
//! metrics are collected. Off, each of these sites costs one relaxed load.
//!
//! Durations come from a clock cheap enough to read twice per call ([`now`]): the CPU's
//! time-stamp counter where it is invariant (x86-64: a read costs ~10 ns, the monotonic clock's
//! ~25 ns), scaled to nanoseconds by a factor measured once against the monotonic clock;
//! elsewhere the monotonic clock itself.
//!
//! Method names come from the network, so the labels they become are bounded: a name gets a label
//! of its own only from a call that ran (not one the peer sent to no object, to no method, or
//! that was refused before running), and only while fewer than `max_methods` names have one;
//! past that, calls count under [`OTHER`]; calls that never ran and whose name has no label
//! count under [`UNKNOWN`]; names longer than [`MAX_NAME`] get none. The per-session caches of
//! labels are bounded too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyAttributeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use super::PtrMap;

pyo3::import_exception!(pbfast.errors, NoSuchMethod);
pyo3::import_exception!(pbfast.errors, Violation);

/// The label of calls that never ran under a name that has no label of its own.
pub const UNKNOWN: u32 = 0;
/// The label of calls past the bound on distinct method labels.
pub const OTHER: u32 = 1;
const SPECIAL: [&str; 2] = ["(unknown)", "(other)"];

/// Distinct method labels, by default (`metrics_enable` sets it).
pub const MAX_METHODS: usize = 1000;
/// Method objects each session remembers the label of.
const MAX_CACHED: usize = 256;
/// The longest method name (in bytes) that gets a label of its own.
const MAX_NAME: usize = 200;

/// The histogram's upper bounds, in nanoseconds: 1-2.5-5 steps from 1 µs to 10 s (Prometheus'
/// `le`; the last bucket, past 10 s, is `+Inf`).
pub const BOUNDS_NS: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
const BUCKETS: usize = BOUNDS_NS.len() + 1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wire {
    Pb = 0,
    Foolscap = 1,
}
const WIRES: [&str; 2] = ["pb", "foolscap"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    /// A call the peer made, run here.
    Server = 0,
    /// A call made here, run by the peer.
    Client = 1,
}
const SIDES: [&str; 2] = ["server", "client"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Answered with a result (or, wanting no answer, returned or sent).
    Ok = 0,
    /// Answered with a failure (raised, refused, or its result could not be sent).
    Error = 1,
    /// Cancelled: the caller's future (client), the method's task (server).
    Cancelled = 2,
    /// The connection was lost before the answer came (client).
    Lost = 3,
}
const OUTCOMES: [&str; 4] = ["ok", "error", "cancelled", "lost"];

fn parse<T: Copy>(what: &str, names: &[&str], values: &[T], name: &str) -> PyResult<T> {
    names
        .iter()
        .position(|n| *n == name)
        .map(|i| values[i])
        .ok_or_else(|| PyValueError::new_err(format!("unknown metrics {what} {name:?} (known: {})", names.join(", "))))
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether calls and bytes are being counted.
#[inline(always)]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------- the clock

/// Ticks are the time-stamp counter's (else nanoseconds since [`ORIGIN`]); set once, by
/// [`calibrate`], before metrics are first turned on.
static TSC: AtomicBool = AtomicBool::new(false);
/// Nanoseconds per tick, times 2^32.
static SCALE: AtomicU64 = AtomicU64::new(1 << 32);
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Choose the clock, and measure the time-stamp counter's rate against the monotonic clock
/// over a short sleep (once per process).
fn calibrate() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        ORIGIN.get_or_init(Instant::now);
        if !invariant_tsc() {
            return;
        }
        let (t0, i0) = (tsc(), Instant::now());
        std::thread::sleep(Duration::from_millis(10));
        let (t1, i1) = (tsc(), Instant::now());
        let ticks = t1.wrapping_sub(t0);
        if ticks == 0 || ticks > 1 << 62 {
            return;
        }
        let scale = (i1 - i0).as_nanos() as f64 / ticks as f64 * (1u64 << 32) as f64;
        SCALE.store(scale as u64, Ordering::Relaxed);
        TSC.store(true, Ordering::Relaxed);
    });
}

#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    // CPUID 0x8000_0007, EDX bit 8: the counter runs at a constant rate in every power state.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86-64 processor.
    unsafe {
        use std::arch::x86_64::__cpuid;
        __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn invariant_tsc() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tsc() -> u64 {
    // SAFETY: RDTSC is available on every x86-64 processor and only reads the counter.
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn tsc() -> u64 {
    0
}

/// The time, in the clock's ticks.
#[inline(always)]
pub fn now() -> u64 {
    if TSC.load(Ordering::Relaxed) {
        tsc()
    } else {
        ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Nanoseconds from tick `start` to tick `end` (0 if the counter went back: another core's).
#[inline(always)]
fn nanos(start: u64, end: u64) -> u64 {
    ((u128::from(end.saturating_sub(start)) * u128::from(SCALE.load(Ordering::Relaxed))) >> 32) as u64
}

/// When a call starts: the time if metrics are on (the call is then counted when it ends).
#[inline(always)]
pub fn start() -> Option<u64> {
    enabled().then(now)
}

/// The bucket of a duration of `nanos`: the first whose bound it does not exceed.
#[inline(always)]
fn bucket(nanos: u64) -> usize {
    // Start from the first bucket whose bound is at least the power of two below `nanos` (a
    // table by bit length), then step over the one or two bounds below `nanos` from there.
    let mut i = FIRST_BUCKET[(64 - nanos.leading_zeros()) as usize] as usize;
    while i < BOUNDS_NS.len() && BOUNDS_NS[i] < nanos {
        i += 1;
    }
    i
}

/// By bit length `b` of a duration: the first bucket whose bound is at least 2^(b-1).
const FIRST_BUCKET: [u8; 65] = {
    let mut table = [0u8; 65];
    let mut b = 1;
    while b <= 64 {
        let low = 1u64 << (b - 1);
        let mut i = 0;
        while i < BOUNDS_NS.len() && BOUNDS_NS[i] < low {
            i += 1;
        }
        table[b] = i as u8;
        b += 1;
    }
    table
};

// ---------------------------------------------------------------------------------- the registry

#[derive(Clone)]
struct Series {
    calls: u64,
    sum_ns: u64,
    /// Timed calls per bucket (not cumulative); their total is the histogram's count.
    buckets: [u64; BUCKETS],
}

struct Registry {
    /// Label id -> method name (the first two are [`SPECIAL`]).
    names: Vec<Box<str>>,
    /// Method name -> label id (SipHash: the names come from the network).
    ids: HashMap<Box<str>, u32>,
    max_methods: usize,
    /// Indexed by [`index`]; grown as labels are added.
    series: Vec<Option<Box<Series>>>,
}

impl Registry {
    fn new() -> Registry {
        Registry {
            names: SPECIAL.iter().map(|s| Box::from(*s)).collect(),
            ids: SPECIAL.iter().enumerate().map(|(i, s)| (Box::from(*s), i as u32)).collect(),
            max_methods: MAX_METHODS,
            series: Vec::new(),
        }
    }

    /// The label of method `name`, made if `ran` and there is room (see the module docs).
    fn label(&mut self, name: &str, ran: bool) -> u32 {
        if name.len() > MAX_NAME {
            return if ran { OTHER } else { UNKNOWN };
        }
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        if !ran {
            return UNKNOWN;
        }
        if self.names.len() - SPECIAL.len() >= self.max_methods {
            return OTHER;
        }
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    /// Count one call in the series at `index`, timed (`nanos`) or not ([`UNTIMED`]).
    #[inline]
    fn add(&mut self, index: usize, nanos: u64) {
        let series = match self.series.get_mut(index) {
            Some(Some(series)) => series,
            _ => self.new_series(index),
        };
        // (Wrapping: no count can reach 2^64, and no check is needed per call.)
        series.calls = series.calls.wrapping_add(1);
        if nanos != UNTIMED {
            series.sum_ns = series.sum_ns.wrapping_add(nanos);
            let bucket = &mut series.buckets[bucket(nanos)];
            *bucket = bucket.wrapping_add(1);
        }
    }
}

impl Registry {
    /// The series at `index`, made.
    #[cold]
    fn new_series(&mut self, index: usize) -> &mut Series {
        if index >= self.series.len() {
            self.series.resize_with((index / PER_LABEL + 1) * PER_LABEL, || None);
        }
        self.series[index].get_or_insert_with(|| Box::new(Series { calls: 0, sum_ns: 0, buckets: [0; BUCKETS] }))
    }
}

/// The duration of a call counted but not timed.
const UNTIMED: u64 = u64::MAX;

const PER_LABEL: usize = WIRES.len() * SIDES.len() * OUTCOMES.len();

fn index(label: u32, wire: Wire, side: Side, outcome: Outcome) -> usize {
    label as usize * PER_LABEL + (wire as usize * SIDES.len() + side as usize) * OUTCOMES.len() + outcome as usize
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// The registry, locked (nothing that can run Python code is done while it is held).
fn registry() -> RegistryGuard {
    let mut guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(Registry::new);
    RegistryGuard(guard)
}

struct RegistryGuard(MutexGuard<'static, Option<Registry>>);

impl std::ops::Deref for RegistryGuard {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        self.0.as_ref().expect("made by `registry()`")
    }
}

impl std::ops::DerefMut for RegistryGuard {
    fn deref_mut(&mut self) -> &mut Registry {
        self.0.as_mut().expect("made by `registry()`")
    }
}

/// Count one call at once (the calls the fast paths count go through a [`Tally`]).
fn count(wire: Wire, side: Side, method: &str, outcome: Outcome, nanos: u64, ran: bool) {
    let mut registry = registry();
    let label = registry.label(method, ran);
    registry.add(index(label, wire, side, outcome), nanos);
}

/// Bytes read and written, per wire.
static BYTES: [[AtomicU64; 2]; 2] = [[AtomicU64::new(0), AtomicU64::new(0)], [AtomicU64::new(0), AtomicU64::new(0)]];

/// `n` bytes read from the peer.
#[inline(always)]
pub fn received(wire: Wire, n: usize) {
    if enabled() {
        BYTES[wire as usize][0].fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// `n` bytes handed to the transport.
#[inline(always)]
pub fn sent(wire: Wire, n: usize) {
    if enabled() {
        BYTES[wire as usize][1].fetch_add(n as u64, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------- a session's tally

/// What a session's fast path counts: the calls of one chunk, added to the registry together
/// when the chunk is done (one lock per chunk, not per call), and the labels of the method
/// names it met (the decoder's cached `str`s, our calls' names), so that a call finds its label
/// without hashing its name. Bounded like the dispatch's names. Saved when dropped.
pub struct Tally {
    /// Method name objects -> their labels (the objects are kept, so that an address is not
    /// reused while it is a key).
    labels: PtrMap<(Py<PyString>, u32)>,
    /// In front of `labels`: (address, label) by a hash of the address; every address here is
    /// a key of `labels`.
    recent: [(usize, u32); RECENT],
    /// (series index, nanoseconds or [`UNTIMED`]).
    unsaved: Vec<(usize, u64)>,
}

/// Calls a tally holds before it saves them, whatever the chunk.
const UNSAVED: usize = 256;
/// Slots of a tally's cache of recent labels (a power of two).
const RECENT: usize = 32;

impl Default for Tally {
    fn default() -> Tally {
        Tally { labels: PtrMap::default(), recent: [(0, 0); RECENT], unsaved: Vec::new() }
    }
}

impl Tally {
    #[inline(always)]
    fn label(&mut self, name: &Bound<'_, PyString>, ran: bool) -> u32 {
        let key = name.as_ptr() as usize;
        let slot = ((key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - RECENT.trailing_zeros())) as usize;
        match self.recent[slot] {
            (k, id) if k == key => id,
            _ => self.label_slow(name, ran, slot),
        }
    }

    #[inline(never)]
    fn label_slow(&mut self, name: &Bound<'_, PyString>, ran: bool, slot: usize) -> u32 {
        let key = name.as_ptr() as usize;
        if let Some((_, id)) = self.labels.get(&key) {
            self.recent[slot] = (key, *id);
            return *id;
        }
        let id = registry().label(&name.to_string_lossy(), ran);
        // Not remembered: calls that did not run (the name may get a label later), and those
        // past the bound (a hostile peer's stream of names must not grow the cache).
        if id > OTHER && self.labels.len() < MAX_CACHED {
            self.labels.insert(key, (name.clone().unbind(), id));
            self.recent[slot] = (key, id);
        }
        id
    }

    fn push(&mut self, index: usize, nanos: u64) {
        self.unsaved.push((index, nanos));
        if self.unsaved.len() >= UNSAVED {
            self.save();
        }
    }

    /// Count a call the peer made that ended here (`started`: when it began, from [`start`];
    /// None if metrics were off then). `ran`: the method was found and ran (see the module
    /// docs).
    #[inline]
    pub fn served(
        &mut self,
        wire: Wire,
        method: &Bound<'_, PyString>,
        outcome: Outcome,
        started: Option<u64>,
        ran: bool,
    ) {
        let Some(started) = started.filter(|_| enabled()) else { return };
        let nanos = nanos(started, now());
        let label = self.label(method, ran);
        self.push(index(label, wire, Side::Server, outcome), nanos);
    }

    /// Count our call `made`, which ended with `outcome`.
    #[inline]
    pub fn made(&mut self, py: Python<'_>, wire: Wire, made: Made, outcome: Outcome) {
        if !enabled() {
            return;
        }
        let nanos = made.nanos(outcome);
        // (Dropped as a bound object: no check of which thread holds the GIL.)
        let method = made.method.into_bound(py);
        let label = self.label(&method, true);
        self.push(index(label, wire, Side::Client, outcome), nanos);
    }

    /// Add the calls counted so far to the registry.
    pub fn save(&mut self) {
        if self.unsaved.is_empty() {
            return;
        }
        let mut registry = registry();
        for &(index, nanos) in &self.unsaved {
            registry.add(index, nanos);
        }
        drop(registry);
        self.unsaved.clear();
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.save();
    }
}

/// Whether a call that raised `error` ran a method: not when the error says there is no such
/// method (PB's `NoSuchMethod`, foolscap's lookup `AttributeError`, a schema's `Violation`).
pub fn ran(py: Python<'_>, error: &PyErr) -> bool {
    !(error.is_instance_of::<NoSuchMethod>(py)
        || error.is_instance_of::<PyAttributeError>(py)
        || error.is_instance_of::<Violation>(py))
}

// ---------------------------------------------------------------------------------- calls made

/// A call of ours awaiting its answer, timed: its method, and when it was sent.
pub struct Made {
    method: Py<PyString>,
    at: u64,
}

impl Made {
    /// The call's duration if it ended with `outcome`: a call cancelled or lost has none worth
    /// the name (it is counted, not timed).
    fn nanos(&self, outcome: Outcome) -> u64 {
        if matches!(outcome, Outcome::Ok | Outcome::Error) {
            nanos(self.at, now())
        } else {
            UNTIMED
        }
    }
}

/// When our call of `method` starts: its record if metrics are on.
#[inline(always)]
pub fn making(method: &Bound<'_, PyString>) -> Option<Made> {
    enabled().then(|| Made { method: method.clone().unbind(), at: now() })
}

/// Count our call `made`, which ended with `outcome`, at once (outside a fast path).
pub fn made(py: Python<'_>, wire: Wire, made: Made, outcome: Outcome) {
    if enabled() {
        count(wire, Side::Client, &made.method.bind(py).to_string_lossy(), outcome, made.nanos(outcome), true);
    }
}

/// Count a call of ours that wants no answer: sent, so `ok`, and not timed.
pub fn sent_only(wire: Wire, method: &Bound<'_, PyString>) {
    if enabled() {
        count(wire, Side::Client, &method.to_string_lossy(), Outcome::Ok, UNTIMED, true);
    }
}

// ---------------------------------------------------------------------------------- Python

/// Turn counting on or off (what was counted stays); `max_methods` bounds the distinct method
/// labels from now on.
#[pyfunction]
#[pyo3(signature = (on, max_methods=None))]
pub fn metrics_enable(py: Python<'_>, on: bool, max_methods: Option<usize>) -> PyResult<()> {
    if on {
        // The clock is calibrated once, before the first call is timed (the GIL is not needed).
        py.detach(calibrate);
    }
    if let Some(max) = max_methods {
        if max == 0 {
            return Err(PyValueError::new_err("max_methods must be a positive integer"));
        }
        registry().max_methods = max;
    }
    ENABLED.store(on, Ordering::Relaxed);
    Ok(())
}

/// Whether calls and bytes are being counted.
#[pyfunction]
pub fn metrics_enabled() -> bool {
    enabled()
}

/// Count one call ended in Python (a method that returned an awaitable, a call refused there):
/// `seconds` it took (None: not timed); `ran` as for the calls counted here.
#[pyfunction]
#[pyo3(signature = (wire, side, method, outcome, seconds, ran=true))]
pub fn metrics_record(
    wire: &str,
    side: &str,
    method: &str,
    outcome: &str,
    seconds: Option<f64>,
    ran: bool,
) -> PyResult<()> {
    if !enabled() {
        return Ok(());
    }
    let wire = parse("wire", &WIRES, &[Wire::Pb, Wire::Foolscap], wire)?;
    let side = parse("side", &SIDES, &[Side::Server, Side::Client], side)?;
    let outcomes = [Outcome::Ok, Outcome::Error, Outcome::Cancelled, Outcome::Lost];
    let outcome = parse("outcome", &OUTCOMES, &outcomes, outcome)?;
    let nanos = seconds.map_or(UNTIMED, |s| (s.max(0.0) * 1e9).min((UNTIMED - 1) as f64) as u64);
    count(wire, side, method, outcome, nanos, ran);
    Ok(())
}

/// Everything counted so far: `(bounds, series, bytes, max_methods)`. `bounds`: the histogram's
/// upper bounds in seconds; `series`: `(wire, side, method, outcome, calls, seconds, buckets)`
/// per series with calls, `buckets` the timed calls per bucket (the last past the last bound),
/// `seconds` their total duration; `bytes`: `(wire, received, sent)`.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn metrics_collect(
    py: Python<'_>,
) -> PyResult<(Vec<f64>, Bound<'_, PyList>, Vec<(&'static str, u64, u64)>, usize)> {
    let bounds = BOUNDS_NS.iter().map(|&ns| ns as f64 / 1e9).collect();
    // Copied under the lock, made into Python objects after it.
    let (names, series, max_methods) = {
        let r = registry();
        let series: Vec<(usize, Series)> =
            r.series.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (i, (**s).clone()))).collect();
        (r.names.clone(), series, r.max_methods)
    };
    let list = PyList::empty(py);
    for (i, s) in series {
        let (label, rest) = (i / PER_LABEL, i % PER_LABEL);
        let (wire_side, outcome) = (rest / OUTCOMES.len(), rest % OUTCOMES.len());
        let (wire, side) = (wire_side / SIDES.len(), wire_side % SIDES.len());
        let item = (
            WIRES[wire],
            SIDES[side],
            &*names[label],
            OUTCOMES[outcome],
            s.calls,
            s.sum_ns as f64 / 1e9,
            s.buckets.to_vec(),
        );
        list.append(item)?;
    }
    let bytes = (0..WIRES.len())
        .map(|w| (WIRES[w], BYTES[w][0].load(Ordering::Relaxed), BYTES[w][1].load(Ordering::Relaxed)))
        .collect();
    Ok((bounds, list, bytes, max_methods))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_indexed_apart() {
        let mut seen = std::collections::HashSet::new();
        for label in 0..3 {
            for wire in [Wire::Pb, Wire::Foolscap] {
                for side in [Side::Server, Side::Client] {
                    for outcome in [Outcome::Ok, Outcome::Error, Outcome::Cancelled, Outcome::Lost] {
                        assert!(seen.insert(index(label, wire, side, outcome)));
                    }
                }
            }
        }
        assert_eq!(seen.len(), 3 * PER_LABEL);
        assert_eq!(*seen.iter().max().unwrap(), 3 * PER_LABEL - 1);
    }

    #[test]
    fn labels_are_bounded_and_made_only_by_calls_that_ran() {
        let mut registry = Registry::new();
        registry.max_methods = 2;
        assert_eq!(registry.label("nope", false), UNKNOWN);
        let echo = registry.label("echo", true);
        assert!(echo > OTHER);
        assert_eq!(registry.label("echo", false), echo);
        assert!(registry.label("fail", true) > OTHER);
        assert_eq!(registry.label("third", true), OTHER);
        assert_eq!(registry.label("third", false), UNKNOWN);
        assert_eq!(registry.names.len(), SPECIAL.len() + 2);
        let mut registry = Registry::new();
        let long = "x".repeat(MAX_NAME + 1);
        assert_eq!(registry.label(&long, true), OTHER);
        assert_eq!(registry.label(&long, false), UNKNOWN);
        assert!(registry.label(&long[1..], true) > OTHER);
    }

    #[test]
    fn durations_fall_in_the_bucket_of_their_upper_bound() {
        let mut registry = Registry::new();
        let at = index(UNKNOWN, Wire::Pb, Side::Server, Outcome::Ok);
        for nanos in [0, 1_000, 1_001, 10_000_000_000, 10_000_000_001] {
            registry.add(at, nanos);
        }
        registry.add(at, UNTIMED);
        let series = registry.series[at].as_ref().unwrap();
        assert_eq!(series.calls, 6);
        assert_eq!(series.buckets[0], 2);
        assert_eq!(series.buckets[1], 1);
        assert_eq!(series.buckets[BUCKETS - 2], 1);
        assert_eq!(series.buckets[BUCKETS - 1], 1);
        assert_eq!(series.buckets.iter().sum::<u64>(), 5);
    }

    #[test]
    fn a_duration_falls_in_the_first_bucket_it_does_not_exceed() {
        let mut durations = vec![0, 1, u64::MAX - 1];
        for bound in BOUNDS_NS {
            durations.extend([bound - 1, bound, bound + 1]);
        }
        for nanos in durations {
            assert_eq!(bucket(nanos), BOUNDS_NS.partition_point(|&bound| bound < nanos), "{nanos} ns");
        }
    }

    #[test]
    fn the_clock_counts_nanoseconds() {
        calibrate();
        let (t0, i0) = (now(), Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, i1) = (now(), Instant::now());
        let measured = nanos(t0, t1) as f64;
        let real = (i1 - i0).as_nanos() as f64;
        assert!((measured / real - 1.0).abs() < 0.01, "{measured} ns measured for {real} ns");
    }
}
