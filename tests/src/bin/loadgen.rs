//! `loadgen`: the benchmark load generator. It opens N authenticated
//! WebSockets to a gateway (or to the Daphne peer: anything serving
//! `/ws/notifications/?token=JWT`), spread over the source addresses
//! 127.0.0.2–127.0.0.250, publishes through the native core-layer publisher
//! (`tests::publisher`) and measures what arrives: connect rate, RSS per idle
//! socket of the server PIDs it is given, publish→receipt latency (hdrhistogram,
//! from the publish timestamp carried in each message), loss, duplicates and
//! misroutes, and the time a reconnect storm takes. It prints one JSON object.
//!
//! With `--recover` its sockets ask the gateway for recovery (`?recover=`,
//! `layer.recovery`): their frames come positioned and after a status frame,
//! which it reads too; `--mode recovery-storm` has every socket miss
//! messages and come back with its position at once. `--redis-stats` adds
//! Redis' own account of each step (commands by `INFO commandstats`,
//! `used_memory`): what a `group_send` costs Redis.
//!
//! It owns load and measurement only: it must not start or stop servers or
//! Redis (`scripts/bench` and the tests do), must target loopback only, and
//! every mode is bounded in sockets and time and ends by itself.

/// The publisher builds and drops many short-lived buffers per message;
/// under glibc's allocator half of its time went to malloc and free (and
/// their consolidation of freed chunks), cores taken from the server under
/// test on a shared machine.
#[global_allocator]
static ALLOCATOR: gateway::ops::allocator::Jemalloc = gateway::ops::allocator::Jemalloc;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rmpv::Value;
use serde::Deserialize;
use serde_json::json;
use shards::Shards;
use tests::lean_ws::LeanWs;
use tests::publisher::{notification, NativePublisher, PublisherConfig};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Connect N sockets, hold them, report connect rate and RSS.
    Idle,
    /// One user per socket; publish at each rate of `--rates` in turn.
    PerUser,
    /// Every socket is the same user; publish `--messages` to that one group.
    Broadcast,
    /// Connect N (one user), drop all at once, reconnect, time until a
    /// message reaches all of them again.
    ReconnectStorm,
    /// Recovery (`--recover` implied): connect N sockets, `--sockets-per-user`
    /// to a user, each holding the position its status frame gave; drop all
    /// at once, publish `--messages` to every user, reconnect all at once
    /// with their positions, and time until each has its replay and status
    /// frame; checks that every socket got every missed message exactly once.
    RecoveryStorm,
}

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "WebSocket load generator for the notification gateway"
)]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// Server address, loopback only (`127.0.0.1:8000`).
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value = "/ws/notifications/")]
    path: String,
    /// HS256 secret the server verifies tokens with.
    #[arg(long, env = "LOADGEN_SECRET")]
    secret: String,
    /// Redis of the channel layer (`redis://127.0.0.1:PORT`), repeatable in
    /// the backend's `hosts` order. Needed by every mode but `idle`.
    #[arg(long)]
    redis: Vec<String>,
    #[arg(long, default_value_t = 100)]
    sockets: usize,
    /// User ids are `user_base + i` (per-user) or `user_base` (broadcast, storm).
    #[arg(long, default_value_t = 1_000_000)]
    user_base: u64,
    /// Last octet of the first / last source address 127.0.0.X.
    #[arg(long, default_value_t = 2)]
    src_first: u8,
    #[arg(long, default_value_t = 250)]
    src_last: u8,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Give up on a handshake after this many seconds.
    #[arg(long, default_value_t = 20.0)]
    connect_timeout_secs: f64,
    /// Idle: seconds to hold the sockets after all connected.
    #[arg(long, default_value_t = 5.0)]
    hold_secs: f64,
    /// Idle: after the hold, group_send one message to the sockets' user and
    /// count who received it (proves held sockets still receive).
    #[arg(long)]
    probe: bool,
    /// Idle: seconds between the last connect and the RSS sample.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    /// Created (empty) once every socket is connected.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Server process whose VmRSS is sampled before and after connecting
    /// (repeatable).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// The redis-server process, whose CPU time each step reports next to the
    /// server's and the load generator's own (where the cores went).
    #[arg(long)]
    redis_pid: Option<u32>,
    /// The gateway's admin address (HOST:PORT): each step also reports how
    /// long messages waited between their queue score and routing there
    /// (`gateway_publish_lag_seconds`), to tell a latency tail in front of
    /// the gateway from one behind it.
    #[arg(long)]
    gateway_admin: Option<SocketAddr>,
    /// Per-user: message rates (msgs/s) of the ramp, in order.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    rates: Vec<u64>,
    /// Per-user: seconds per rate step.
    #[arg(long, default_value_t = 5.0)]
    step_secs: f64,
    /// Per-user: stop the ramp after a step with loss or a p99 above this.
    #[arg(long, default_value_t = 50.0)]
    stop_p99_ms: f64,
    /// Per-user: run every step of `--rates` whatever the loss and p99 (the
    /// ramp at Django's default capacity counts the sender's drops at each).
    #[arg(long)]
    ramp_through: bool,
    /// Broadcast: messages to publish. Recovery storm: messages each user
    /// misses while its sockets are gone.
    #[arg(long, default_value_t = 100)]
    messages: u64,
    /// Broadcast: publish rate in msgs/s.
    #[arg(long, default_value_t = 100)]
    broadcast_rate: u64,
    /// Parallel publisher connections.
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Sockets ask for recovery (`&recover=`, or `&recover=<position>` when
    /// they reconnect in the recovery storm).
    #[arg(long)]
    recover: bool,
    /// Recovery storm: sockets of each user (users = sockets / this).
    #[arg(long, default_value_t = 1)]
    sockets_per_user: usize,
    /// Recovery storm: publish rate (msgs/s) of the messages the sockets miss.
    #[arg(long, default_value_t = 20_000)]
    missed_rate: u64,
    /// Each step also reports Redis' commands (`INFO commandstats`) and
    /// `used_memory` before and after it, per group_send and per user (one
    /// `--redis` host); the connect reports the memory its joins took.
    #[arg(long)]
    redis_stats: bool,
    /// Per-user without sockets (the Redis-alone ceiling): give this many
    /// users' groups one member each, as sockets' joins would, and pop their
    /// queue key as a gateway's receiver would, so that Redis does all of a
    /// delivery's work and only the gateway and the sockets are missing.
    #[arg(long, default_value_t = 0)]
    ceiling_members: u64,
    /// Seconds to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    /// The publisher's `capacity` (as Django's CHANNEL_LAYERS would set it).
    #[arg(long, default_value_t = 100)]
    capacity: u64,
    /// `channel_capacity` entries `GLOB=N` (repeatable).
    #[arg(long)]
    channel_capacity: Vec<String>,
    #[arg(long, default_value = "asgi")]
    prefix: String,
    /// Free-form label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
    /// Write the JSON result here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A sharded mutex so recording latencies from thousands of socket tasks
/// does not serialise on one lock.
mod shards {
    use std::sync::{Mutex, MutexGuard};

    pub struct Shards<T> {
        shards: Vec<Mutex<T>>,
    }

    impl<T> Shards<T> {
        pub fn try_new<E>(count: usize, make: impl Fn() -> Result<T, E>) -> Result<Self, E> {
            let shards = (0..count.max(1))
                .map(|_| make().map(Mutex::new))
                .collect::<Result<_, E>>()?;
            Ok(Shards { shards })
        }

        pub fn with<R>(&self, index: usize, f: impl FnOnce(&mut T) -> R) -> R {
            f(&mut lock(&self.shards[index % self.shards.len()]))
        }

        pub fn all(&self) -> impl Iterator<Item = MutexGuard<'_, T>> {
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
struct StepStats {
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    misroutes: AtomicU64,
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

fn new_histogram() -> Result<Histogram<u64>> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

impl StepStats {
    fn new() -> Result<StepStats> {
        Ok(StepStats {
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            misroutes: AtomicU64::new(0),
            arrivals: Shards::try_new(HIST_SHARDS, Arrivals::new)?,
        })
    }

    fn received(&self) -> u64 {
        self.arrivals.all().map(|shard| shard.received).sum()
    }

    fn last_recv_us(&self) -> u64 {
        self.arrivals
            .all()
            .map(|shard| shard.last_recv_us)
            .max()
            .unwrap_or(0)
    }

    fn merged(&self) -> Result<Histogram<u64>> {
        let mut out = new_histogram()?;
        for shard in self.arrivals.all() {
            out.add(&shard.latency).context("merging histograms")?;
        }
        Ok(out)
    }
}

/// Shared by every socket task.
struct Shared {
    steps: Vec<StepStats>,
    unexpected_closes: AtomicU64,
    bad_frames: AtomicU64,
    /// Recovery status frames received (`{"type": "recovery", …}`).
    status_frames: AtomicU64,
    /// Positioned frames whose position was not above the last one the
    /// socket saw (positions grow along a socket's frames).
    position_regressions: AtomicU64,
    /// One per socket index: what recovery told it.
    sockets: Vec<SocketSlot>,
}

/// One socket's recovery, kept across its reconnections (by socket index).
#[derive(Default)]
struct SocketSlot {
    /// The greatest position it saw, a message's or a status frame's: the
    /// send time's 64 bits and the digest (0, 0: none yet).
    position_time: AtomicU64,
    position_digest: AtomicU64,
    /// Status frames on its current connection; when the last came (µs
    /// since the epoch); its `recovered` (0 none, 1 false, 2 true) and
    /// `replayed`.
    status_frames: AtomicU64,
    status_at_us: AtomicU64,
    recovered: AtomicU64,
    replayed: AtomicU64,
    /// Messages (first copies) on its current connection before its status
    /// frame, in all, and copies seen again.
    before_status: AtomicU64,
    messages: AtomicU64,
    duplicates: AtomicU64,
}

impl SocketSlot {
    /// Forgets the current connection's counts (not the position).
    fn new_connection(&self) {
        for counter in [
            &self.status_frames,
            &self.status_at_us,
            &self.recovered,
            &self.replayed,
            &self.before_status,
            &self.messages,
            &self.duplicates,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    fn position(&self) -> u128 {
        (u128::from(self.position_time.load(Ordering::Relaxed)) << 32)
            | u128::from(self.position_digest.load(Ordering::Relaxed))
    }

    /// Keeps `position` if it is above the one held; false if it was not.
    fn advance(&self, position: u128) -> bool {
        if position <= self.position() {
            return false;
        }
        self.position_time
            .store((position >> 32) as u64, Ordering::Relaxed);
        self.position_digest
            .store((position & 0xffff_ffff) as u64, Ordering::Relaxed);
        true
    }

    /// `recover=` or `recover=<position>`, as the handshake's query asks.
    fn recover_query(&self) -> String {
        match self.position() {
            0 => "recover=".to_string(),
            position => format!("recover={position:024x}"),
        }
    }
}

/// A frame from the server, read in place (its strings borrow the frame):
/// a message, `{"message": …}` or positioned `{"position": "…", "message":
/// …}`, or a recovery status frame `{"type": "recovery", "recovered": …,
/// "replayed": …, "position": "…"}`.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(default)]
    message: Option<Body>,
    #[serde(default, borrow)]
    position: Option<&'a str>,
    #[serde(default, rename = "type", borrow)]
    kind: Option<&'a str>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    replayed: Option<u64>,
}

/// A written position (24 hex digits) as the number it orders as.
fn parse_position(text: &str) -> Option<u128> {
    (text.len() == shared_proto::POSITION_LEN)
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

#[derive(Deserialize)]
struct Body {
    seq: u64,
    ts: u64,
    u: u64,
    k: usize,
    p: usize,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds a process (`/proc/PID/stat`) has used so far, in user
/// space and in the kernel.
#[derive(Clone, Copy, Default)]
struct CpuTimes {
    user: f64,
    kernel: f64,
}

impl CpuTimes {
    fn read(stat_path: &str) -> Option<CpuTimes> {
        let stat = std::fs::read_to_string(stat_path).ok()?;
        // The command name may hold spaces; fields resume after its ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (ticks > 0).then(|| CpuTimes {
            user: utime / ticks as f64,
            kernel: stime / ticks as f64,
        })
    }

    fn of_process(pid: u32) -> Option<CpuTimes> {
        CpuTimes::read(&format!("/proc/{pid}/stat"))
    }

    fn total(self) -> f64 {
        self.user + self.kernel
    }

    fn minus(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            kernel: self.kernel - earlier.kernel,
        }
    }

    fn plus(self, other: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user + other.user,
            kernel: self.kernel + other.kernel,
        }
    }
}

/// Seconds (busy, stolen) of all the machine's cores so far, from the first
/// line of /proc/stat. Busy is everything but idle and I/O wait, steal
/// included; steal is time the hypervisor ran something else while this
/// machine wanted a core.
fn machine_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    let steal = *ticks.get(7)?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| {
        (
            (total - idle) / per_second as f64,
            steal / per_second as f64,
        )
    })
}

/// CPU seconds of the server(s), Redis, this load generator and the whole
/// machine at one moment.
#[derive(Clone)]
struct CpuSample {
    servers: Vec<Option<CpuTimes>>,
    redis: Option<f64>,
    loadgen: Option<f64>,
    machine: Option<(f64, f64)>,
    at: Instant,
}

impl CpuSample {
    fn take(args: &Args) -> CpuSample {
        CpuSample {
            servers: args
                .server_pid
                .iter()
                .map(|&pid| CpuTimes::of_process(pid))
                .collect(),
            redis: args
                .redis_pid
                .and_then(CpuTimes::of_process)
                .map(CpuTimes::total),
            loadgen: CpuTimes::of_process(std::process::id()).map(CpuTimes::total),
            machine: machine_seconds(),
            at: Instant::now(),
        }
    }

    /// Cores each process (and the machine) kept busy since `self`, and the
    /// server's CPU microseconds per event (delivered frame, or connect).
    fn since(&self, args: &Args, events: u64) -> serde_json::Value {
        let now = CpuSample::take(args);
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let used = |before: Option<f64>, after: Option<f64>| match (before, after) {
            (Some(b), Some(a)) => Some(a - b),
            _ => None,
        };
        // No server given (the ceiling run) reads "none", not zero.
        let server: Option<CpuTimes> = if self.servers.is_empty() {
            None
        } else {
            self.servers
                .iter()
                .zip(&now.servers)
                .map(|(b, a)| a.zip(*b).map(|(a, b)| a.minus(b)))
                .try_fold(CpuTimes::default(), |sum, one| one.map(|one| sum.plus(one)))
        };
        let server_s = server.map(CpuTimes::total);
        let cores = |seconds: Option<f64>| seconds.map(|s| if wall > 0.0 { s / wall } else { 0.0 });
        let machine = self.machine.zip(now.machine);
        json!({
            "wall_s": wall,
            "server_cpu_s": server_s,
            "redis_cpu_s": used(self.redis, now.redis),
            "loadgen_cpu_s": used(self.loadgen, now.loadgen),
            "server_cores": cores(server_s),
            "server_kernel_share": server
                .filter(|times| times.total() > 0.0)
                .map(|times| times.kernel / times.total()),
            "redis_cores": cores(used(self.redis, now.redis)),
            "loadgen_cores": cores(used(self.loadgen, now.loadgen)),
            "machine_busy_cores": cores(machine.map(|(b, a)| a.0 - b.0)),
            "machine_steal_cores": cores(machine.map(|(b, a)| a.1 - b.1)),
            "machine_cores": std::thread::available_parallelism().map_or(0, usize::from),
            "server_cpu_us_per_delivery": server_s
                .filter(|_| events > 0)
                .map(|s| s * 1e6 / events as f64),
        })
    }
}

type Ws = LeanWs;

struct Connector {
    target: SocketAddr,
    path: String,
    /// Each socket's token, by socket index, minted before any measured step.
    tokens: Vec<String>,
    src_first: u8,
    src_count: usize,
    timeout: Duration,
    /// Sockets ask for recovery, from the position their slot holds.
    recover_from: Option<Arc<Shared>>,
}

impl Connector {
    /// TCP from 127.0.0.X (port chosen at connect time), then the handshake.
    async fn open(&self, index: usize) -> Result<Ws> {
        let octet = u8::try_from(usize::from(self.src_first) + index % self.src_count)
            .context("source address octet")?;
        let src = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, octet), 0));
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .context("socket")?;
        let one: libc::c_int = 1;
        // SAFETY: a valid fd we own, a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("IP_BIND_ADDRESS_NO_PORT");
        }
        socket.set_nonblocking(true).context("nonblocking")?;
        socket
            .bind(&src.into())
            .with_context(|| format!("bind {src}"))?;
        let socket = TcpSocket::from_std_stream(socket.into());
        let tcp = socket
            .connect(self.target)
            .await
            .with_context(|| format!("connect {} from {src}", self.target))?;
        tcp.set_nodelay(true).ok();
        let token = self
            .tokens
            .get(index)
            .with_context(|| format!("no token minted for socket {index}"))?;
        let path = match &self.recover_from {
            Some(shared) => {
                let recover = shared
                    .sockets
                    .get(index)
                    .map_or_else(|| "recover=".to_string(), SocketSlot::recover_query);
                format!("{}?token={token}&{recover}", self.path)
            }
            None => format!("{}?token={token}", self.path),
        };
        LeanWs::handshake(tcp, &self.target.to_string(), &path)
            .await
            .context("websocket handshake")
    }

    async fn open_retrying(&self, index: usize, deadline: Instant) -> Result<(Ws, u32)> {
        let mut failures = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                bail!("socket {index}: no connection before the deadline ({failures} failures)");
            }
            match tokio::time::timeout(remaining.min(self.timeout), self.open(index)).await {
                Ok(Ok(ws)) => return Ok((ws, failures)),
                Ok(Err(_)) | Err(_) => {
                    failures += 1;
                    let backoff = 20u64 * u64::from(failures.min(10));
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
    }
}

/// Reads one socket until told to stop; records every data frame.
async fn run_socket(
    mut ws: Ws,
    index: usize,
    user: u64,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // Every (step, seq) seen, for exact duplicate counts; the last seq per
    // publisher connection in the current step, for order (each publisher's
    // sends are in order; every step numbers its messages from 0 again).
    let mut seen: HashSet<(usize, u64)> = HashSet::new();
    let mut last_by_publisher: Vec<Option<u64>> = Vec::new();
    let mut order_step = 0usize;
    let slot = shared.sockets.get(index);
    if let Some(slot) = slot {
        slot.new_connection();
    }
    let mut status_seen = false;
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close()).await;
                    return;
                }
            }
            next = ws.next_text() => match next {
                Ok(Some(text)) => {
                    let recv = now_us();
                    let Ok(frame) = serde_json::from_slice::<Frame>(text) else {
                        shared.bad_frames.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if let Some(position) = frame.position {
                        let advanced = match (parse_position(position), slot) {
                            (Some(position), Some(slot)) => slot.advance(position),
                            (Some(_), None) => true,
                            (None, _) => false,
                        };
                        // A status frame may repeat the last message's position.
                        if !advanced && frame.message.is_some() {
                            shared.position_regressions.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let Some(body) = frame.message else {
                        if frame.kind == Some("recovery") {
                            status_seen = true;
                            shared.status_frames.fetch_add(1, Ordering::Relaxed);
                            if let Some(slot) = slot {
                                let recovered = match frame.recovered {
                                    Some(true) => 2,
                                    Some(false) => 1,
                                    None => 0,
                                };
                                slot.recovered.store(recovered, Ordering::Relaxed);
                                slot.replayed.store(frame.replayed.unwrap_or(0), Ordering::Relaxed);
                                slot.status_at_us.store(recv, Ordering::Relaxed);
                                slot.status_frames.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            shared.bad_frames.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    };
                    let Some(step) = shared.steps.get(body.k) else {
                        shared.bad_frames.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if body.u != user {
                        step.misroutes.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if !seen.insert((body.k, body.seq)) {
                        step.duplicates.fetch_add(1, Ordering::Relaxed);
                        if let Some(slot) = slot {
                            slot.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    if let Some(slot) = slot {
                        slot.messages.fetch_add(1, Ordering::Relaxed);
                        if !status_seen {
                            slot.before_status.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if body.k != order_step {
                        order_step = body.k;
                        last_by_publisher.clear();
                    }
                    if body.p < 1024 {
                        if last_by_publisher.len() <= body.p {
                            last_by_publisher.resize(body.p + 1, None);
                        }
                        let last = &mut last_by_publisher[body.p];
                        if last.is_some_and(|l| body.seq < l) {
                            step.out_of_order.fetch_add(1, Ordering::Relaxed);
                        } else {
                            *last = Some(body.seq);
                        }
                    }
                    let latency = recv.saturating_sub(body.ts).max(1);
                    step.arrivals.with(index, |shard| shard.record(latency, recv));
                }
                Ok(None) | Err(_) => {
                    if !*stop.borrow() {
                        shared.unexpected_closes.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    }
}

struct Fleet {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

struct ConnectReport {
    ok: usize,
    failed: usize,
    retries: u64,
    elapsed: Duration,
}

impl ConnectReport {
    fn to_json(&self) -> serde_json::Value {
        let secs = self.elapsed.as_secs_f64();
        json!({
            "ok": self.ok,
            "failed": self.failed,
            "retries": self.retries,
            "elapsed_s": secs,
            "rate_per_s": if secs > 0.0 { self.ok as f64 / secs } else { 0.0 },
        })
    }
}

/// Opens `count` sockets (user of socket i = `user_of(i)`) and starts their
/// reader tasks.
async fn connect_fleet(
    connector: Arc<Connector>,
    count: usize,
    user_of: impl Fn(usize) -> u64,
    concurrency: usize,
    shared: Arc<Shared>,
) -> Result<(Fleet, ConnectReport)> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let retries = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut handshakes = Vec::with_capacity(count);
    for index in 0..count {
        let user = user_of(index);
        let connector = Arc::clone(&connector);
        let limit = Arc::clone(&limit);
        let retries = Arc::clone(&retries);
        handshakes.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.ok()?;
            match connector.open_retrying(index, deadline).await {
                Ok((ws, failures)) => {
                    retries.fetch_add(u64::from(failures), Ordering::Relaxed);
                    Some((ws, index, user))
                }
                Err(_) => None,
            }
        }));
    }
    let mut tasks = Vec::with_capacity(count);
    let mut failed = 0;
    for handshake in handshakes {
        match handshake.await {
            Ok(Some((ws, index, user))) => tasks.push(tokio::spawn(run_socket(
                ws,
                index,
                user,
                Arc::clone(&shared),
                stop_rx.clone(),
            ))),
            _ => failed += 1,
        }
    }
    let elapsed = started.elapsed();
    let report = ConnectReport {
        ok: tasks.len(),
        failed,
        retries: retries.load(Ordering::Relaxed),
        elapsed,
    };
    Ok((
        Fleet {
            tasks,
            stop: stop_tx,
        },
        report,
    ))
}

impl Fleet {
    /// Clean close of every socket.
    async fn close(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Drops every socket at once (no close handshake).
    async fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn latency_json(hist: &Histogram<u64>) -> serde_json::Value {
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

/// Most group_sends one publisher connection pipelines at once (a publisher
/// that fell behind catches up in batches this large).
const PUBLISH_BATCH_MAX: u64 = 2000;

/// What one step's publishing did.
struct PublishReport {
    published: u64,
    /// Sends refused by a full queue key of a consumer (the gateway's).
    over_capacity: u64,
    /// Sends refused by a full replay key (recovery's window): no socket
    /// misses those.
    replay_over_capacity: u64,
    secs: f64,
    /// How long each pipelined batch of group_sends took, from the publish
    /// timestamp its messages carry to the last reply (µs): a latency tail
    /// that is already here arose in the publisher or in Redis.
    batch_times: Histogram<u64>,
}

/// Publishes `plan` (target user, expected deliveries) messages of step `k`
/// at `rate`/s over `publishers` connections.
async fn publish_step(
    args: &Args,
    config: &PublisherConfig,
    k: usize,
    total: u64,
    rate: u64,
    target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync>,
) -> Result<PublishReport> {
    let publishers = args.publishers.max(1) as u64;
    let started = Instant::now();
    let mut handles = Vec::new();
    for p in 0..publishers {
        let mut publisher = NativePublisher::connect(&args.redis, config.clone()).await?;
        let target_of = Arc::clone(&target_of);
        let mine = (0..total).filter(|seq| seq % publishers == p).count() as u64;
        let my_rate = (rate as f64 / publishers as f64).max(1.0);
        handles.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut over = 0u64;
            let mut replay_over = 0u64;
            let mut batch_times = new_histogram()?;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while sent < mine {
                tick.tick().await;
                let due = ((started.elapsed().as_secs_f64() * my_rate) as u64).min(mine);
                let n = due.saturating_sub(sent).min(PUBLISH_BATCH_MAX);
                if n == 0 {
                    continue;
                }
                let mut batch = Vec::with_capacity(n as usize);
                let ts = now_us();
                for j in sent..sent + n {
                    let seq = p + j * publishers;
                    let user = target_of(seq);
                    let body = Value::Map(vec![
                        (Value::from("seq"), Value::from(seq)),
                        (Value::from("ts"), Value::from(ts)),
                        (Value::from("u"), Value::from(user)),
                        (Value::from("k"), Value::from(k as u64)),
                        (Value::from("p"), Value::from(p)),
                    ]);
                    batch.push((format!("user_{user}"), notification(body)?));
                }
                for outcome in publisher.group_send_many(&batch).await? {
                    over += outcome.over_capacity - outcome.replay_over_capacity;
                    replay_over += outcome.replay_over_capacity;
                }
                batch_times.saturating_record(now_us().saturating_sub(ts).max(1));
                sent += n;
            }
            Ok::<_, anyhow::Error>((sent, over, replay_over, batch_times))
        }));
    }
    let mut report = PublishReport {
        published: 0,
        over_capacity: 0,
        replay_over_capacity: 0,
        secs: 0.0,
        batch_times: new_histogram()?,
    };
    for handle in handles {
        let (sent, dropped, replay_dropped, times) = handle.await.context("publisher task")??;
        report.published += sent;
        report.over_capacity += dropped;
        report.replay_over_capacity += replay_dropped;
        report
            .batch_times
            .add(&times)
            .context("merging batch times")?;
    }
    report.secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Waits until `expected` deliveries of step `k` arrived or `drain` passed
/// without progress.
async fn drain(shared: &Shared, k: usize, expected: u64, drain: Duration) {
    let mut last = 0;
    let mut since = Instant::now();
    loop {
        let step = &shared.steps[k];
        let seen = step.received()
            + step.duplicates.load(Ordering::Relaxed)
            + step.misroutes.load(Ordering::Relaxed);
        if seen >= expected {
            return;
        }
        if seen != last {
            last = seen;
            since = Instant::now();
        } else if since.elapsed() >= drain {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One step's publishing side, for [`step_json`].
struct Published {
    k: usize,
    target_rate: u64,
    published: u64,
    over_capacity: u64,
    replay_over_capacity: u64,
    publish_secs: f64,
    expected: u64,
    started_us: u64,
}

/// The step's result, its loss and its p99 in ms.
fn step_json(shared: &Shared, p: &Published) -> Result<(serde_json::Value, u64, f64)> {
    let step = &shared.steps[p.k];
    let received = step.received();
    let hist = step.merged()?;
    let last = step.last_recv_us();
    let span = last.saturating_sub(p.started_us) as f64 / 1e6;
    let lost = p.expected.saturating_sub(received);
    let p99_ms = if hist.is_empty() {
        f64::INFINITY
    } else {
        hist.value_at_quantile(0.99) as f64 / 1000.0
    };
    let achieved = if p.publish_secs > 0.0 {
        p.published as f64 / p.publish_secs
    } else {
        0.0
    };
    Ok((
        json!({
            "target_rate": p.target_rate,
            "published": p.published,
            "achieved_rate": achieved,
            "over_capacity": p.over_capacity,
            // Refused into a full replay key (recovery's window, not a
            // consumer): no socket misses these, so they explain no loss.
            "replay_over_capacity": p.replay_over_capacity,
            // Loss the sender's capacity drops do not explain (each drop is
            // one payload to one queue key; exact for one socket per user).
            "lost_beyond_over_capacity": lost.saturating_sub(p.over_capacity),
            "expected": p.expected,
            "received": received,
            "lost": lost,
            "duplicates": step.duplicates.load(Ordering::Relaxed),
            "out_of_order": step.out_of_order.load(Ordering::Relaxed),
            "misroutes": step.misroutes.load(Ordering::Relaxed),
            "deliveries_per_s": if span > 0.0 { received as f64 / span } else { 0.0 },
            "latency": latency_json(&hist),
        }),
        lost,
        p99_ms,
    ))
}

/// The gateway's cumulative `gateway_publish_lag_seconds` buckets
/// (upper bound in seconds, count), read from its admin listener.
async fn publish_lag_buckets(admin: SocketAddr) -> Option<Vec<(f64, u64)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(admin))
        .await
        .ok()?
        .ok()?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    let buckets: Vec<(f64, u64)> = body
        .lines()
        .filter_map(|line| line.strip_prefix("gateway_publish_lag_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect();
    (!buckets.is_empty()).then_some(buckets)
}

/// Quantiles of the routing lag between two bucket readings, as the upper
/// bound (ms) of the bucket each falls in.
fn lag_quantiles(before: &[(f64, u64)], after: &[(f64, u64)]) -> serde_json::Value {
    let deltas: Vec<(f64, u64)> = after
        .iter()
        .map(|&(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, c)| *c);
            (bound, count.saturating_sub(earlier))
        })
        .collect();
    let total = deltas.last().map_or(0, |(_, count)| *count);
    let at = |quantile: f64| {
        let wanted = (quantile * total as f64).ceil() as u64;
        deltas
            .iter()
            .find(|(_, count)| *count >= wanted)
            .map(|(bound, _)| {
                if bound.is_finite() {
                    json!(bound * 1000.0)
                } else {
                    json!("inf")
                }
            })
    };
    json!({
        "messages": total,
        "p50_ms_at_most": at(0.50),
        "p99_ms_at_most": at(0.99),
        "p999_ms_at_most": at(0.999),
    })
}

/// What one measured step publishes: `messages` at `rate`, message `seq` to
/// the user `target_of(seq)`, each expected on `fan_out` sockets.
struct StepPlan {
    k: usize,
    messages: u64,
    rate: u64,
    target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync>,
    fan_out: u64,
}

/// Publishes a step's messages, waits until each reached its sockets or the
/// drain time passed, and reports the step with where the cores went.
/// Returns the step's JSON, its loss and its p99 in ms.
async fn measured_step(
    args: &Args,
    config: &PublisherConfig,
    shared: &Shared,
    plan: StepPlan,
) -> Result<(serde_json::Value, u64, f64)> {
    let StepPlan {
        k,
        messages,
        rate,
        target_of,
        fan_out,
    } = plan;
    let started_us = now_us();
    if let Some(hiccups) = HICCUPS.get() {
        hiccups.reset();
    }
    let cpu = CpuSample::take(args);
    let lag_before = match args.gateway_admin {
        Some(admin) => publish_lag_buckets(admin).await,
        None => None,
    };
    let mut redis_before = match args.redis_stats {
        true => {
            let mut client = RedisStats::connect(args).await?;
            let before = RedisStats::take(&mut client).await?;
            Some((client, before))
        }
        false => None,
    };
    let publish = publish_step(args, config, k, messages, rate, target_of).await?;
    let (published, over, secs) = (publish.published, publish.over_capacity, publish.secs);
    let expected = published * fan_out;
    drain(
        shared,
        k,
        expected,
        Duration::from_secs_f64(args.drain_secs),
    )
    .await;
    let (mut json, lost, p99) = step_json(
        shared,
        &Published {
            k,
            target_rate: rate,
            published,
            over_capacity: over,
            replay_over_capacity: publish.replay_over_capacity,
            publish_secs: secs,
            expected,
            started_us,
        },
    )?;
    json["cpu"] = cpu.since(args, json["received"].as_u64().unwrap_or(0));
    if let Some(hiccups) = HICCUPS.get() {
        json["machine_hiccups"] = hiccups.since_reset();
    }
    json["publish_batch_time"] = latency_json(&publish.batch_times);
    if let Some((client, before)) = redis_before.as_mut() {
        // The publishers' connections are gone; let Redis free them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = RedisStats::take(client).await?;
        json["redis"] = after.since(before, published, args.sockets.max(1) as u64);
        json["redis"]["replay_key_of_first_user"] = replay_key_sample(args).await?;
    }
    if let Some(admin) = args.gateway_admin {
        if let Some(after) = publish_lag_buckets(admin).await {
            json["gateway_routing_lag"] =
                lag_quantiles(lag_before.as_deref().unwrap_or(&[]), &after);
        }
    }
    Ok((json, lost, p99))
}

/// A hiccup meter: a thread of its own sleeps 1 ms at a time and records by
/// how much each sleep overran. What it sees, every process on the machine
/// suffers too (scheduler queueing, the hypervisor taking the CPU away), so
/// a latency tail as long as the worst hiccups was not made by the server.
struct Hiccups {
    overruns: Arc<std::sync::Mutex<Histogram<u64>>>,
}

impl Hiccups {
    const TICK: Duration = Duration::from_millis(1);

    /// Starts the meter's thread; it ends with the process.
    fn start() -> Result<Hiccups> {
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

    fn reset(&self) {
        if let Ok(mut overruns) = self.overruns.lock() {
            overruns.reset();
        }
    }

    /// Overrun quantiles since the last reset.
    fn since_reset(&self) -> serde_json::Value {
        match self.overruns.lock() {
            Ok(overruns) => latency_json(&overruns),
            Err(_) => json!(null),
        }
    }
}

static HICCUPS: std::sync::OnceLock<Hiccups> = std::sync::OnceLock::new();

/// Redis's side of delivery without a gateway, for the ceiling run: the
/// users' groups each hold one channel of a made-up process, and a task pops
/// that process's queue key the way the gateway's receiver does (a blocking
/// pop with a batched pop pipelined behind it) and counts what it popped.
struct CeilingConsumer {
    popped: Arc<AtomicU64>,
    /// Queue score (the send time) → pop, in µs: the wait in front of a
    /// gateway's receiver that Redis and the publisher cause by themselves.
    queue_lag: Arc<std::sync::Mutex<Histogram<u64>>>,
    task: JoinHandle<()>,
}

impl CeilingConsumer {
    const PROCESS: &'static str = "ceiling";
    const POP_BATCH: usize = 512;

    async fn start(args: &Args) -> Result<CeilingConsumer> {
        let addr = single_redis_addr(args, "--ceiling-members")?;
        let mut setup = tests::RespClient::connect(addr).await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs_f64())
            .unwrap_or(0.0)
            .to_string();
        let users: Vec<u64> = (0..args.ceiling_members).collect();
        for chunk in users.chunks(1000) {
            let joins: Vec<Vec<String>> = chunk
                .iter()
                .map(|&i| {
                    let group = format!("user_{}", args.user_base + i);
                    let channel =
                        shared_proto::names::specific_channel(Self::PROCESS, &i.to_string());
                    vec![
                        "ZADD".into(),
                        shared_proto::names::group_key(&args.prefix, &group),
                        now.clone(),
                        channel,
                    ]
                })
                .collect();
            for reply in setup.pipeline(&joins).await? {
                reply.check().context("ZADD of a ceiling member")?;
            }
        }
        let queue = shared_proto::names::queue_key(
            &args.prefix,
            &shared_proto::names::specific_channel(Self::PROCESS, ""),
        );
        let mut client = tests::RespClient::connect(addr).await?;
        let popped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&popped);
        let queue_lag = Arc::new(std::sync::Mutex::new(new_histogram()?));
        let lags = Arc::clone(&queue_lag);
        let task = tokio::spawn(async move {
            loop {
                let Ok(popped) = client.pop_queue(&queue, Self::POP_BATCH).await else {
                    return;
                };
                let now = now_us();
                if let Ok(mut lags) = lags.lock() {
                    for (_member, score) in &popped {
                        let sent = std::str::from_utf8(score)
                            .ok()
                            .and_then(|text| text.parse::<f64>().ok());
                        if let Some(sent) = sent {
                            let sent_us = (sent * 1e6) as u64;
                            lags.saturating_record(now.saturating_sub(sent_us).max(1));
                        }
                    }
                }
                counter.fetch_add(popped.len() as u64, Ordering::Relaxed);
            }
        });
        Ok(CeilingConsumer {
            popped,
            queue_lag,
            task,
        })
    }

    /// The queue lag since the last call, as latency quantiles.
    fn take_queue_lag(&self) -> serde_json::Value {
        match self.queue_lag.lock() {
            Ok(mut lags) => {
                let json = latency_json(&lags);
                lags.reset();
                json
            }
            Err(_) => json!(null),
        }
    }

    fn popped(&self) -> u64 {
        self.popped.load(Ordering::Relaxed)
    }

    /// Waits (at most 10 s) until `count` payloads were popped in all.
    async fn wait_for(&self, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.popped() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for CeilingConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Redis' own account at one moment (`--redis-stats`): calls and CPU µs
/// per command since it started (`INFO commandstats`: commands a script
/// runs count under their own names too) and `used_memory`.
struct RedisStats {
    commands: std::collections::BTreeMap<String, (u64, u64)>,
    used_memory: u64,
}

impl RedisStats {
    /// A connection for [`RedisStats::take`], opened before the first
    /// sample so that its own memory is in every sample alike.
    async fn connect(args: &Args) -> Result<tests::RespClient> {
        tests::RespClient::connect(single_redis_addr(args, "--redis-stats")?).await
    }

    async fn take(client: &mut tests::RespClient) -> Result<RedisStats> {
        let info = |reply: tests::resp::RespValue| -> Result<String> {
            Ok(reply.check()?.into_strings()?.concat())
        };
        let commandstats = info(client.cmd(&["INFO", "commandstats"]).await?)?;
        let memory = info(client.cmd(&["INFO", "memory"]).await?)?;
        let mut commands = std::collections::BTreeMap::new();
        for line in commandstats.lines() {
            let Some((name, fields)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |wanted: &str| {
                fields
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(wanted)?.strip_prefix('='))
                    .and_then(|value| value.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            commands.insert(name.to_string(), (field("calls"), field("usec")));
        }
        let used_memory = memory
            .lines()
            .find_map(|line| line.trim().strip_prefix("used_memory:"))
            .and_then(|value| value.parse().ok())
            .context("INFO memory has no used_memory")?;
        Ok(RedisStats {
            commands,
            used_memory,
        })
    }

    /// What Redis did from `before` to `self`, also per group_send and per
    /// user (`users` users held what was sent).
    fn since(&self, before: &RedisStats, group_sends: u64, users: u64) -> serde_json::Value {
        let mut commands = serde_json::Map::new();
        let (mut calls, mut usec) = (0u64, 0u64);
        for (name, &(after_calls, after_usec)) in &self.commands {
            let (was_calls, was_usec) = before.commands.get(name).copied().unwrap_or((0, 0));
            let (c, u) = (
                after_calls.saturating_sub(was_calls),
                after_usec.saturating_sub(was_usec),
            );
            // INFO itself is this measurement's own command.
            if c == 0 || name == "info" {
                continue;
            }
            calls += c;
            usec += u;
            commands.insert(name.clone(), json!({"calls": c, "usec": u}));
        }
        let memory = self.used_memory as i64 - before.used_memory as i64;
        let per = |value: f64, by: u64| {
            if by > 0 {
                json!(value / by as f64)
            } else {
                json!(null)
            }
        };
        json!({
            "group_sends": group_sends,
            "users": users,
            "commands": commands,
            "calls": calls,
            "usec": usec,
            "used_memory_before": before.used_memory,
            "used_memory_after": self.used_memory,
            "used_memory_delta": memory,
            "calls_per_group_send": per(calls as f64, group_sends),
            "usec_per_group_send": per(usec as f64, group_sends),
            "memory_bytes_per_group_send": per(memory as f64, group_sends),
            "memory_bytes_per_user": per(memory as f64, users),
        })
    }
}

/// Entries and `MEMORY USAGE` of the first user's replay key (recovery's
/// window of that user), or null where it has none.
async fn replay_key_sample(args: &Args) -> Result<serde_json::Value> {
    let mut client = tests::RespClient::connect(single_redis_addr(args, "--redis-stats")?).await?;
    let key = shared_proto::names::queue_key(
        &args.prefix,
        &shared_proto::names::replay_channel(&format!("user_{}", args.user_base), 1),
    );
    let entries = client
        .cmd(&["ZCARD", &key])
        .await?
        .check()?
        .as_int()
        .unwrap_or(0);
    if entries == 0 {
        return Ok(json!(null));
    }
    let bytes = client
        .cmd(&["MEMORY", "USAGE", &key, "SAMPLES", "0"])
        .await?
        .check()?
        .as_int();
    Ok(json!({"key": key, "entries": entries, "memory_usage_bytes": bytes}))
}

/// `HOST:PORT` of the one `--redis` host `what` works with.
fn single_redis_addr<'a>(args: &'a Args, what: &str) -> Result<&'a str> {
    let [host] = args.redis.as_slice() else {
        bail!("{what} takes exactly one --redis host");
    };
    Ok(tests::resp::host_port(host))
}

fn publisher_config(args: &Args) -> Result<PublisherConfig> {
    let mut config = PublisherConfig {
        prefix: args.prefix.clone(),
        capacity: args.capacity,
        ..PublisherConfig::default()
    };
    for entry in &args.channel_capacity {
        let (glob, n) = entry
            .rsplit_once('=')
            .ok_or_else(|| anyhow!("--channel-capacity wants GLOB=N, got {entry:?}"))?;
        config
            .channel_capacity
            .push((glob.to_string(), n.parse().context("channel capacity")?));
    }
    Ok(config)
}

async fn run(args: Args) -> Result<serde_json::Value> {
    if HICCUPS.get().is_none() {
        let _ = HICCUPS.set(Hiccups::start()?);
    }
    if !args.target.ip().is_loopback() {
        bail!("--target must be a loopback address");
    }
    if args.src_first < 1 || args.src_last < args.src_first {
        bail!("bad source address range");
    }
    if (args.mode != Mode::Idle || args.probe) && args.redis.is_empty() {
        bail!("--redis is required for {:?}", args.mode);
    }
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    if (args.sockets as u64) + 200 > fd_limit {
        bail!(
            "{} sockets need more than the fd limit {fd_limit}: use several loadgen processes",
            args.sockets
        );
    }
    let steps_needed = match args.mode {
        Mode::PerUser => args.rates.len().max(1),
        _ => 1,
    };
    let n = args.sockets;
    let shared = Arc::new(Shared {
        steps: (0..steps_needed)
            .map(|_| StepStats::new())
            .collect::<Result<_>>()?,
        unexpected_closes: AtomicU64::new(0),
        bad_frames: AtomicU64::new(0),
        status_frames: AtomicU64::new(0),
        position_regressions: AtomicU64::new(0),
        sockets: (0..n).map(|_| SocketSlot::default()).collect(),
    });
    let base = args.user_base;
    let per_user = args.mode == Mode::PerUser;
    let storm_users = (n / args.sockets_per_user.max(1)).max(1);
    let storm = args.mode == Mode::RecoveryStorm;
    let user_of = move |i: usize| {
        if per_user {
            base + i as u64
        } else if storm {
            base + (i % storm_users) as u64
        } else {
            base
        }
    };
    let recover = args.recover || storm;
    let tokens = tests::tokens::try_mint_many(
        &args.secret,
        (0..n).map(|i| tests::tokens::claims_for_user(user_of(i), 3600)),
    )?;
    let connector = Arc::new(Connector {
        target: args.target,
        path: args.path.clone(),
        tokens,
        src_first: args.src_first,
        src_count: usize::from(args.src_last - args.src_first) + 1,
        timeout: Duration::from_secs_f64(args.connect_timeout_secs),
        recover_from: recover.then(|| Arc::clone(&shared)),
    });
    let config = publisher_config(&args)?;
    let rss_before: Vec<(u32, Option<u64>)> = args
        .server_pid
        .iter()
        .map(|&p| (p, vm_rss_kib(p)))
        .collect();

    let mut out = json!({
        "mode": format!("{:?}", args.mode),
        "label": args.label,
        "sockets": n,
        "fd_limit": fd_limit,
        "target": args.target.to_string(),
        "recover": recover,
    });
    let mut connect_redis = match args.redis_stats {
        true => {
            let mut client = RedisStats::connect(&args).await?;
            let before = RedisStats::take(&mut client).await?;
            Some((client, before))
        }
        false => None,
    };
    let connect_cpu = CpuSample::take(&args);
    let (fleet, connect) = connect_fleet(
        Arc::clone(&connector),
        n,
        user_of,
        args.connect_concurrency,
        Arc::clone(&shared),
    )
    .await?;
    out["connect"] = connect.to_json();
    // Here "per delivery" reads "per connect": the handshake's server cost.
    out["connect"]["cpu"] = connect_cpu.since(&args, connect.ok as u64);
    if recover {
        // Each socket's status frame follows its handshake (after the
        // gateway's settle); wait for them so no step counts them.
        out["connect"]["status_frames"] = json!(wait_for_status(&shared, connect.ok as u64).await);
    }
    if let Some((client, before)) = connect_redis.as_mut() {
        // What the joins left in Redis: per socket, its group membership
        // (and with recovery, the group's replay member).
        let after = RedisStats::take(client).await?;
        out["connect"]["redis"] = after.since(before, 0, connect.ok.max(1) as u64);
    }
    drop(connect_redis);
    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"").with_context(|| format!("writing {}", path.display()))?;
    }

    match args.mode {
        Mode::Idle => {
            tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
            let mut rss = Vec::new();
            for (pid, before) in &rss_before {
                let after = vm_rss_kib(*pid);
                let per_socket = match (before, after) {
                    (Some(b), Some(a)) if connect.ok > 0 => {
                        Some((a as f64 - *b as f64) / connect.ok as f64)
                    }
                    _ => None,
                };
                rss.push(json!({"pid": pid, "before_kib": before, "after_kib": after,
                                "per_socket_kib": per_socket}));
            }
            out["rss"] = json!(rss);
            tokio::time::sleep(Duration::from_secs_f64(args.hold_secs)).await;
            out["still_open"] = json!(fleet.tasks.iter().filter(|t| !t.is_finished()).count());
            if args.probe {
                let target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync> = Arc::new(move |_| base);
                let fan_out = connect.ok as u64;
                let plan = StepPlan {
                    k: 0,
                    messages: 1,
                    rate: 1000,
                    target_of,
                    fan_out,
                };
                let (json, _, _) = measured_step(&args, &config, &shared, plan).await?;
                out["probe"] = json;
            }
            fleet.close().await;
        }
        Mode::PerUser => {
            let mut steps = Vec::new();
            let ceiling = if n == 0 && args.ceiling_members > 0 {
                Some(CeilingConsumer::start(&args).await?)
            } else {
                None
            };
            let count = match &ceiling {
                Some(_) => args.ceiling_members,
                None => n.max(1) as u64,
            };
            for (k, &rate) in args.rates.iter().enumerate() {
                let total = ((rate as f64) * args.step_secs).round().max(1.0) as u64;
                let target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync> =
                    Arc::new(move |seq| base + seq % count);
                // Without sockets (the Redis-alone ceiling) nothing is expected.
                let fan_out = u64::from(n > 0);
                let plan = StepPlan {
                    k,
                    messages: total,
                    rate,
                    target_of,
                    fan_out,
                };
                let popped_before = ceiling.as_ref().map(CeilingConsumer::popped);
                let (mut json, lost, p99) = measured_step(&args, &config, &shared, plan).await?;
                if let (Some(ceiling), Some(before)) = (&ceiling, popped_before) {
                    ceiling.wait_for(before + total).await;
                    json["ceiling_popped"] = json!(ceiling.popped() - before);
                    json["ceiling_queue_lag"] = ceiling.take_queue_lag();
                }
                steps.push(json);
                if n > 0 && !args.ramp_through && (lost > 0 || p99 > args.stop_p99_ms) {
                    out["stopped_at_rate"] = json!(rate);
                    break;
                }
            }
            out["steps"] = json!(steps);
            fleet.close().await;
        }
        Mode::Broadcast => {
            let target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync> = Arc::new(move |_| base);
            let plan = StepPlan {
                k: 0,
                messages: args.messages,
                rate: args.broadcast_rate,
                target_of,
                fan_out: connect.ok as u64,
            };
            let (json, _, _) = measured_step(&args, &config, &shared, plan).await?;
            out["steps"] = json!([json]);
            fleet.close().await;
        }
        Mode::RecoveryStorm => {
            let users = storm_users;
            out["storm"] = recovery_storm(
                &args,
                &config,
                &shared,
                Arc::clone(&connector),
                fleet,
                users,
                user_of,
            )
            .await?;
        }
        Mode::ReconnectStorm => {
            let before = connect.ok;
            fleet.kill().await;
            let storm_started = Instant::now();
            let (fleet, again) = connect_fleet(
                Arc::clone(&connector),
                n,
                user_of,
                args.connect_concurrency,
                Arc::clone(&shared),
            )
            .await?;
            let joined = storm_started.elapsed();
            let target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync> = Arc::new(move |_| base);
            let plan = StepPlan {
                k: 0,
                messages: 1,
                rate: 1000,
                target_of,
                fan_out: again.ok as u64,
            };
            let (json, lost, _) = measured_step(&args, &config, &shared, plan).await?;
            let reached_all = storm_started.elapsed();
            out["storm"] = json!({
                "dropped": before,
                "reconnect": again.to_json(),
                "all_joined_s": joined.as_secs_f64(),
                "message_reached_all_s": if lost == 0 { json!(reached_all.as_secs_f64()) } else { json!(null) },
                "delivery": json,
            });
            fleet.close().await;
        }
    }
    out["unexpected_closes"] = json!(shared.unexpected_closes.load(Ordering::Relaxed));
    out["bad_frames"] = json!(shared.bad_frames.load(Ordering::Relaxed));
    out["status_frames"] = json!(shared.status_frames.load(Ordering::Relaxed));
    out["position_regressions"] = json!(shared.position_regressions.load(Ordering::Relaxed));
    Ok(out)
}

/// Waits until `target` status frames have arrived in all, or 10 s pass
/// without one; returns how many arrived.
async fn wait_for_status(shared: &Shared, target: u64) -> u64 {
    let mut last = 0;
    let mut since = Instant::now();
    loop {
        let seen = shared.status_frames.load(Ordering::Relaxed);
        if seen >= target {
            return seen;
        }
        if seen != last {
            last = seen;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(10) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The recovery storm after its first connect (`fleet`, every socket with
/// the position its status frame gave): drop every socket, publish
/// `--messages` to each user, reconnect all at once with their positions,
/// and account for what each socket got.
async fn recovery_storm(
    args: &Args,
    config: &PublisherConfig,
    shared: &Arc<Shared>,
    connector: Arc<Connector>,
    fleet: Fleet,
    users: usize,
    user_of: impl Fn(usize) -> u64,
) -> Result<serde_json::Value> {
    let dropped = fleet.tasks.len();
    fleet.kill().await;
    // The gateway sees the connections end and leaves their groups; a
    // message sent before it did still lands in the replay key.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = args.user_base;
    let users_u64 = users as u64;
    let target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync> =
        Arc::new(move |seq| base + seq % users_u64);
    let missed = publish_step(
        args,
        config,
        0,
        users_u64 * args.messages,
        args.missed_rate,
        target_of,
    )
    .await?;
    let status_before = shared.status_frames.load(Ordering::Relaxed);
    let started = Instant::now();
    let started_us = now_us();
    let (fleet, again) = connect_fleet(
        connector,
        args.sockets,
        user_of,
        args.connect_concurrency,
        Arc::clone(shared),
    )
    .await?;
    let joined = started.elapsed();
    let statuses = wait_for_status(shared, status_before + again.ok as u64).await - status_before;
    // Nothing is published after the reconnect: whatever still arrives is a
    // duplicate or a late copy.
    let expected = missed.published / users_u64.max(1);
    drain(
        shared,
        0,
        expected * again.ok as u64,
        Duration::from_secs_f64(args.drain_secs.min(2.0)),
    )
    .await;
    // A second for any copy that should not come (live after replay).
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.close().await;
    let mut to_status = new_histogram()?;
    let (mut recovered, mut not_recovered, mut no_status) = (0u64, 0u64, 0u64);
    let (mut complete, mut missing, mut duplicated, mut after_status) = (0u64, 0u64, 0u64, 0u64);
    let mut replayed_reported = 0u64;
    let mut last_status_us = 0u64;
    for slot in &shared.sockets {
        let status_at = slot.status_at_us.load(Ordering::Relaxed);
        match slot.recovered.load(Ordering::Relaxed) {
            2 => recovered += 1,
            1 => not_recovered += 1,
            _ => no_status += 1,
        }
        if status_at > 0 {
            to_status.saturating_record(status_at.saturating_sub(started_us).max(1));
            last_status_us = last_status_us.max(status_at);
        }
        replayed_reported += slot.replayed.load(Ordering::Relaxed);
        let messages = slot.messages.load(Ordering::Relaxed);
        let before = slot.before_status.load(Ordering::Relaxed);
        let dups = slot.duplicates.load(Ordering::Relaxed);
        if messages < expected {
            missing += 1;
        }
        if dups > 0 {
            duplicated += 1;
        }
        if before < messages {
            after_status += 1;
        }
        if messages == expected && before == expected && dups == 0 && status_at > 0 {
            complete += 1;
        }
    }
    let step = &shared.steps[0];
    let all_s = (statuses >= again.ok as u64 && last_status_us > 0)
        .then(|| last_status_us.saturating_sub(started_us) as f64 / 1e6);
    Ok(json!({
        "sockets": args.sockets,
        "users": users,
        "sockets_per_user": args.sockets_per_user.max(1),
        "dropped": dropped,
        "missed_per_user": expected,
        "missed_publish": {
            "published": missed.published,
            "secs": missed.secs,
            "over_capacity": missed.over_capacity,
            "replay_over_capacity": missed.replay_over_capacity,
        },
        "reconnect": again.to_json(),
        "all_joined_s": joined.as_secs_f64(),
        "status_frames": statuses,
        "all_recovered_s": all_s,
        "to_status": latency_json(&to_status),
        "recovered_true": recovered,
        "recovered_false": not_recovered,
        "no_status": no_status,
        "replayed_reported": replayed_reported,
        "expected": expected * again.ok as u64,
        "received": step.received(),
        "duplicates": step.duplicates.load(Ordering::Relaxed),
        "misroutes": step.misroutes.load(Ordering::Relaxed),
        "out_of_order": step.out_of_order.load(Ordering::Relaxed),
        "sockets_complete": complete,
        "sockets_missing_messages": missing,
        "sockets_with_duplicates": duplicated,
        "sockets_with_messages_after_status": after_status,
        "all_exactly_once": complete == args.sockets as u64 && again.ok == args.sockets,
    }))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let out_path = args.out.clone();
    // Like dropping the runtime: the sockets' tasks are cancelled at once.
    tests::tool_result::run("loadgen", out_path.as_deref(), Duration::ZERO, run(args))
}
