//! How arrivals are measured: the clock messages carry (µs since the
//! epoch), latency histograms and their quantiles as JSON, one step's
//! arrival record ([`StepStats`]) and the machine's hiccup meter. It records
//! and summarises only: it must not open a socket or talk to Redis.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use shards::Shards;

/// A sharded mutex so recording latencies from thousands of socket tasks
/// does not serialise on one lock.
mod shards {
    use std::sync::{Mutex, MutexGuard};

    pub(super) struct Shards<T> {
        shards: Vec<Mutex<T>>,
    }

    impl<T> Shards<T> {
        pub(super) fn try_new<E>(count: usize, make: impl Fn() -> Result<T, E>) -> Result<Self, E> {
            let shards = (0..count.max(1))
                .map(|_| make().map(Mutex::new))
                .collect::<Result<_, E>>()?;
            Ok(Shards { shards })
        }

        pub(super) fn with<R>(&self, index: usize, f: impl FnOnce(&mut T) -> R) -> R {
            f(&mut lock(&self.shards[index % self.shards.len()]))
        }

        pub(super) fn all(&self) -> impl Iterator<Item = MutexGuard<'_, T>> {
            self.shards.iter().map(lock)
        }
    }

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        match mutex.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

const HIST_SHARDS: usize = 32;

/// What arrived during one step (one rate, or one broadcast run).
pub(crate) struct StepStats {
    pub(crate) duplicates: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) misroutes: AtomicU64,
    /// Per-frame records, sharded by socket: one uncontended lock per frame
    /// instead of counters every reader thread fights over.
    arrivals: Shards<Arrivals>,
}

/// One shard's share of a step's arrivals.
struct Arrivals {
    latency: Histogram<u64>,
    received: u64,
    last_recv_us: u64,
}

impl Arrivals {
    fn new() -> Result<Arrivals> {
        Ok(Arrivals {
            latency: new_histogram()?,
            received: 0,
            last_recv_us: 0,
        })
    }

    fn record(&mut self, latency_us: u64, recv_us: u64) {
        self.latency.saturating_record(latency_us);
        self.received += 1;
        self.last_recv_us = self.last_recv_us.max(recv_us);
    }
}

pub(crate) fn new_histogram() -> Result<Histogram<u64>> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

impl StepStats {
    pub(crate) fn new() -> Result<StepStats> {
        Ok(StepStats {
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            misroutes: AtomicU64::new(0),
            arrivals: Shards::try_new(HIST_SHARDS, Arrivals::new)?,
        })
    }

    /// Records one frame's arrival on the shard of socket `index`.
    pub(crate) fn record_arrival(&self, index: usize, latency_us: u64, recv_us: u64) {
        self.arrivals
            .with(index, |shard| shard.record(latency_us, recv_us));
    }

    pub(crate) fn received(&self) -> u64 {
        self.arrivals.all().map(|shard| shard.received).sum()
    }

    pub(crate) fn last_recv_us(&self) -> u64 {
        self.arrivals
            .all()
            .map(|shard| shard.last_recv_us)
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn merged(&self) -> Result<Histogram<u64>> {
        let mut out = new_histogram()?;
        for shard in self.arrivals.all() {
            out.add(&shard.latency).context("merging histograms")?;
        }
        Ok(out)
    }
}

/// Microseconds since the epoch: the clock of the publish timestamp a
/// message carries and of its receipt.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A histogram of µs as quantiles in ms, or null when it is empty.
pub(crate) fn latency_json(hist: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    if hist.is_empty() {
        return json!(null);
    }
    json!({
        "count": hist.len(),
        "p50_ms": ms(hist.value_at_quantile(0.50)),
        "p90_ms": ms(hist.value_at_quantile(0.90)),
        "p99_ms": ms(hist.value_at_quantile(0.99)),
        "p999_ms": ms(hist.value_at_quantile(0.999)),
        "max_ms": ms(hist.max()),
        "mean_ms": hist.mean() / 1000.0,
    })
}

/// A hiccup meter: a thread of its own sleeps 1 ms at a time and records by
/// how much each sleep overran. What it sees, every process on the machine
/// suffers too (scheduler queueing, the hypervisor taking the CPU away), so
/// a latency tail as long as the worst hiccups was not made by the server.
pub(crate) struct Hiccups {
    overruns: Arc<std::sync::Mutex<Histogram<u64>>>,
}

impl Hiccups {
    const TICK: Duration = Duration::from_millis(1);

    /// Starts the meter's thread; it ends with the process.
    pub(crate) fn start() -> Result<Hiccups> {
        let overruns = Arc::new(std::sync::Mutex::new(new_histogram()?));
        let recorder = Arc::clone(&overruns);
        std::thread::Builder::new()
            .name("hiccup-meter".into())
            .spawn(move || loop {
                let started = Instant::now();
                std::thread::sleep(Self::TICK);
                let overrun = started.elapsed().saturating_sub(Self::TICK);
                if let Ok(mut overruns) = recorder.lock() {
                    overruns.saturating_record(overrun.as_micros() as u64 + 1);
                }
            })
            .context("starting the hiccup meter")?;
        Ok(Hiccups { overruns })
    }

    pub(crate) fn reset(&self) {
        if let Ok(mut overruns) = self.overruns.lock() {
            overruns.reset();
        }
    }

    /// Overrun quantiles since the last reset.
    pub(crate) fn since_reset(&self) -> serde_json::Value {
        match self.overruns.lock() {
            Ok(overruns) => latency_json(&overruns),
            Err(_) => json!(null),
        }
    }
}

pub(crate) static HICCUPS: std::sync::OnceLock<Hiccups> = std::sync::OnceLock::new();
