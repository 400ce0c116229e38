//! `soak`: the long-running churn scenario of `scripts/bench`. It starts
//! several gateway processes on one Redis (the binary it is given, each with
//! a config of its own on free loopback ports), keeps a steady population of
//! WebSockets on them (each new one on the process with the fewest) while a
//! fraction is replaced every second, publishes
//! per-user and broadcast messages through the native publisher
//! (`tests::publisher`, the same as the load generator's), SIGKILLs and
//! restarts one process at a fixed interval, and samples at another: each
//! process's RSS and open file descriptors, Redis' key count and used memory,
//! and the group members whose process is not a running gateway (stale
//! members). Every socket checks what it receives; loss is reported apart for
//! sockets of surviving processes and of killed ones. It prints one JSON
//! object (samples, kills, delivery, drift per hour of each figure).
//!
//! It owns the scenario only: it must not start anything but the gateways it
//! is given (Redis is the caller's), it stops every process it started by its
//! PID, it targets loopback only, and it ends by itself after `--duration-secs`
//! plus a bounded shutdown. It asserts nothing; the smoke test and the report
//! read its JSON.

#[global_allocator]
static ALLOCATOR: gateway::ops::allocator::Jemalloc = gateway::ops::allocator::Jemalloc;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use rmpv::Value;
use serde::Deserialize;
use serde_json::json;
use tests::lean_ws::LeanWs;
use tests::publisher::{notification, NativePublisher, PublisherConfig};
use tests::{GatewayConfig, GatewayLauncher, GatewayProcess, RespClient, RespValue, Signal};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "soak",
    about = "Churn, kills and leak sampling over several gateway processes"
)]
struct Args {
    /// The gateway binary (started as `BIN --config FILE serve`).
    #[arg(long)]
    gateway_bin: PathBuf,
    /// The one Redis of the run (`redis://127.0.0.1:PORT`), started by the caller.
    #[arg(long)]
    redis: String,
    /// HS256 secret the gateways verify tokens with.
    #[arg(long, env = "LOADGEN_SECRET")]
    secret: String,
    /// Gateway processes on the one Redis.
    #[arg(long, default_value_t = 3)]
    processes: usize,
    /// How long churn, publishing and kills go on.
    #[arg(long, default_value_t = 1800.0)]
    duration_secs: f64,
    /// Steady socket population over all processes.
    #[arg(long, default_value_t = 1500)]
    sockets: usize,
    /// Fraction of the population replaced every second.
    #[arg(long, default_value_t = 0.01)]
    churn_per_sec: f64,
    /// Per-user messages per second, each to the user of a random open socket.
    #[arg(long, default_value_t = 200.0)]
    per_user_rate: f64,
    /// Seconds between broadcasts to the group every socket joins.
    #[arg(long, default_value_t = 1.0)]
    broadcast_every_secs: f64,
    /// Seconds between SIGKILLs (0: never). The first process is never
    /// killed, so its figures span the whole run; the others take turns.
    #[arg(long, default_value_t = 300.0)]
    kill_every_secs: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60.0)]
    sample_every_secs: f64,
    /// Samples earlier than this (since the start, or since a process's own
    /// start for its RSS and fds) are left out of the drift slopes.
    #[arg(long, default_value_t = 300.0)]
    warmup_secs: f64,
    /// The publisher's `capacity` (Django's CHANNEL_LAYERS setting).
    #[arg(long, default_value_t = 10_000)]
    capacity: u64,
    #[arg(long, default_value = "asgi")]
    prefix: String,
    /// The gateways' `RUST_LOG` (the start-up lines naming each process's
    /// queue key must stay at info).
    #[arg(
        long,
        default_value = "warn,gateway::layer::core=info,gateway::server=info"
    )]
    gateway_log: String,
    /// Write the JSON result here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The extra group every soak socket joins (granted by its token), the
/// target of the broadcasts.
const BROADCAST_GROUP: &str = "soak_all";
/// User ids of soak sockets start here; each socket has a user of its own.
const USER_BASE: u64 = 7_000_000;
/// A leaving socket keeps reading this long before it closes, so what was
/// published before it left can still arrive.
const LEAVE_DRAIN: Duration = Duration::from_secs(1);
/// A socket gives up connecting after this long (every process down).
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The population manager's tick.
const CHURN_TICK: Duration = Duration::from_millis(100);
/// Most sockets the manager starts in one tick (the first fill is paced).
const SPAWN_PER_TICK: usize = 200;
/// Most per-user group_sends pipelined at once.
const PUBLISH_BATCH_MAX: u64 = 500;
/// After the run: how long publishing may settle and sockets may close.
const SETTLE: Duration = Duration::from_secs(2);
const CLOSE_LIMIT: Duration = Duration::from_secs(20);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// One message as the publisher sent it: its number and when its
/// group_send started and finished (µs since the run began).
#[derive(Clone, Copy)]
struct Sent {
    seq: u64,
    started_us: u64,
    finished_us: u64,
}

impl Sent {
    /// Owed to a socket that was in the group before the send read it and
    /// still open when the send had queued it.
    fn owed_between(&self, opened_us: u64, end_us: u64) -> bool {
        self.started_us >= opened_us && self.finished_us <= end_us
    }
}

/// What one group of sockets (on surviving or on killed processes) saw.
#[derive(Default, Clone)]
struct Tally {
    sockets: u64,
    expected: u64,
    received: u64,
    duplicates: u64,
    misroutes: u64,
    unexpected_closes: u64,
    bad_frames: u64,
}

impl Tally {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "sockets": self.sockets,
            "expected": self.expected,
            "received": self.received,
            "lost": self.expected.saturating_sub(self.received),
            "duplicates": self.duplicates,
            "misroutes": self.misroutes,
            "unexpected_closes": self.unexpected_closes,
            "bad_frames": self.bad_frames,
        })
    }
}

/// State every task shares.
struct Run {
    started: Instant,
    /// Each process slot's listen address while it is up.
    addrs: Vec<RwLock<Option<String>>>,
    /// Bumped before a slot's process is killed: a socket that connected
    /// under an older generation was on the killed process.
    generations: Vec<AtomicU64>,
    /// Sockets on each slot, connecting ones included: a new socket goes to
    /// the running process with the fewest (least connections, as a load
    /// balancer would), so a restarted process fills up again and each
    /// process's figures follow its own leaks, not a drifting share of the
    /// population.
    assigned: Vec<AtomicU64>,
    /// Users of open sockets (per-user publishing picks among them).
    live_users: Mutex<Vec<u64>>,
    /// Per-user sends, by user, kept while the user's socket lives.
    sent_to_user: Mutex<HashMap<u64, Vec<Sent>>>,
    /// Broadcast sends, in send order.
    sent_broadcast: Mutex<Vec<Sent>>,
    /// How to tell an open socket to leave, by user.
    leavers: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Sockets counted in the population (connecting or open, not leaving).
    population: AtomicU64,
    /// Socket tasks not yet finished (leaving ones included).
    tasks: AtomicU64,
    next_user: AtomicU64,
    surviving: Mutex<Tally>,
    killed: Mutex<Tally>,
    connects_ok: AtomicU64,
    connects_failed: AtomicU64,
    connect_retries: AtomicU64,
    sent_per_user: AtomicU64,
    sent_broadcasts: AtomicU64,
    publish_errors: AtomicU64,
    stop_publishing: AtomicBool,
    secret: String,
}

impl Run {
    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

#[derive(Deserialize)]
struct Frame {
    message: Body,
}

/// A soak message: sequence number, addressed user, broadcast or not.
#[derive(Deserialize)]
struct Body {
    s: u64,
    u: u64,
    b: bool,
}

/// How a socket's life ended.
enum Ending {
    /// Told to leave at this moment (µs).
    Left(u64),
    /// The connection ended by itself at this moment (µs).
    Closed(u64),
}

/// Opens a socket on a running process, holds it until told to leave or
/// until its process goes away, and tallies what it received against what
/// it was owed.
async fn socket_life(run: Arc<Run>, user: u64) {
    let finished_early = |run: &Run| {
        run.population.fetch_sub(1, Ordering::SeqCst);
        run.tasks.fetch_sub(1, Ordering::SeqCst);
    };
    let mut claims = tests::tokens::claims_for_user(user, 24 * 3600);
    claims["groups"] = json!([BROADCAST_GROUP]);
    let Ok(token) = tests::tokens::try_mint(&run.secret, &claims) else {
        run.connects_failed.fetch_add(1, Ordering::Relaxed);
        finished_early(&run);
        return;
    };
    let Some((mut ws, slot, generation)) = connect(&run, &token).await else {
        run.connects_failed.fetch_add(1, Ordering::Relaxed);
        finished_early(&run);
        return;
    };
    run.connects_ok.fetch_add(1, Ordering::Relaxed);
    let opened_us = run.now_us();
    let (leave_tx, mut leave_rx) = oneshot::channel();
    lock(&run.sent_to_user).insert(user, Vec::new());
    lock(&run.leavers).insert(user, leave_tx);
    lock(&run.live_users).push(user);

    let mut own: HashSet<u64> = HashSet::new();
    let mut broadcasts: HashSet<u64> = HashSet::new();
    let mut tally = Tally {
        sockets: 1,
        ..Tally::default()
    };
    let mut record = |text: &[u8], tally: &mut Tally| {
        let Ok(frame) = serde_json::from_slice::<Frame>(text) else {
            tally.bad_frames += 1;
            return;
        };
        let body = frame.message;
        let fresh = if body.b {
            broadcasts.insert(body.s)
        } else if body.u != user {
            tally.misroutes += 1;
            return;
        } else {
            own.insert(body.s)
        };
        if !fresh {
            tally.duplicates += 1;
        }
    };
    let ending = loop {
        tokio::select! {
            _ = &mut leave_rx => {
                let left_us = run.now_us();
                forget_live_user(&run, user);
                let drain_until = tokio::time::Instant::now() + LEAVE_DRAIN;
                while let Ok(Ok(Some(text))) =
                    tokio::time::timeout_at(drain_until, ws.next_text()).await
                {
                    record(text, &mut tally);
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close()).await;
                break Ending::Left(left_us);
            }
            next = ws.next_text() => match next {
                Ok(Some(text)) => record(text, &mut tally),
                Ok(None) | Err(_) => {
                    let closed_us = run.now_us();
                    forget_live_user(&run, user);
                    // Not told to leave: it no longer counts in the population.
                    if lock(&run.leavers).remove(&user).is_some() {
                        run.population.fetch_sub(1, Ordering::SeqCst);
                    }
                    break Ending::Closed(closed_us);
                }
            }
        }
    };
    run.assigned[slot].fetch_sub(1, Ordering::SeqCst);
    let was_killed = run.generations[slot].load(Ordering::SeqCst) != generation;
    let end_us = match ending {
        Ending::Left(at) => at,
        Ending::Closed(at) => {
            if !was_killed {
                tally.unexpected_closes += 1;
            }
            at
        }
    };
    let owed_own: Vec<u64> = lock(&run.sent_to_user)
        .remove(&user)
        .unwrap_or_default()
        .iter()
        .filter(|sent| sent.owed_between(opened_us, end_us))
        .map(|sent| sent.seq)
        .collect();
    let owed_broadcasts: Vec<u64> = {
        let sent = lock(&run.sent_broadcast);
        let first = sent.partition_point(|s| s.started_us < opened_us);
        sent[first..]
            .iter()
            .filter(|s| s.owed_between(opened_us, end_us))
            .map(|s| s.seq)
            .collect()
    };
    tally.expected = (owed_own.len() + owed_broadcasts.len()) as u64;
    tally.received = owed_own.iter().filter(|seq| own.contains(seq)).count() as u64
        + owed_broadcasts
            .iter()
            .filter(|seq| broadcasts.contains(seq))
            .count() as u64;
    let mut into = if was_killed {
        lock(&run.killed)
    } else {
        lock(&run.surviving)
    };
    into.sockets += tally.sockets;
    into.expected += tally.expected;
    into.received += tally.received;
    into.duplicates += tally.duplicates;
    into.misroutes += tally.misroutes;
    into.unexpected_closes += tally.unexpected_closes;
    into.bad_frames += tally.bad_frames;
    drop(into);
    run.tasks.fetch_sub(1, Ordering::SeqCst);
}

fn forget_live_user(run: &Run, user: u64) {
    let mut users = lock(&run.live_users);
    if let Some(at) = users.iter().position(|&u| u == user) {
        users.swap_remove(at);
    }
}

/// Connects to a random running process: the socket, its slot and the
/// slot's generation when the attempt began.
async fn connect(run: &Run, token: &str) -> Option<(LeanWs, usize, u64)> {
    let deadline = Instant::now() + CONNECT_DEADLINE;
    let path = format!("/ws/notifications/?token={token}");
    while Instant::now() < deadline {
        if let Some((slot, generation, addr)) = least_loaded_slot(run) {
            run.assigned[slot].fetch_add(1, Ordering::SeqCst);
            let attempt = async {
                let tcp = TcpStream::connect(addr.as_str()).await.ok()?;
                tcp.set_nodelay(true).ok();
                LeanWs::handshake(tcp, &addr, &path).await.ok()
            };
            if let Ok(Some(ws)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
                return Some((ws, slot, generation));
            }
            run.assigned[slot].fetch_sub(1, Ordering::SeqCst);
        }
        run.connect_retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The running slot with the fewest sockets (ties broken at random): its
/// index, its generation and its address. The generation is read before the
/// address: a process killed after this read shows as a newer generation
/// when the socket ends.
fn least_loaded_slot(run: &Run) -> Option<(usize, u64, String)> {
    let offset = rand::random_range(0..run.addrs.len());
    (0..run.addrs.len())
        .map(|i| (i + offset) % run.addrs.len())
        .filter_map(|slot| {
            let generation = run.generations[slot].load(Ordering::SeqCst);
            let addr = match run.addrs[slot].read() {
                Ok(addr) => addr.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            }?;
            Some((slot, generation, addr))
        })
        .min_by_key(|(slot, _, _)| run.assigned[*slot].load(Ordering::SeqCst))
}

/// Keeps the population at `target`, replacing `churn_per_sec` of it every
/// second, until `until`.
async fn churn(run: Arc<Run>, target: usize, churn_per_sec: f64, until: Instant) {
    let mut tick = tokio::time::interval(CHURN_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owed_leaves = 0.0f64;
    while Instant::now() < until {
        tick.tick().await;
        owed_leaves += target as f64 * churn_per_sec * CHURN_TICK.as_secs_f64();
        let leaves = owed_leaves.floor() as usize;
        owed_leaves -= leaves as f64;
        if leaves > 0 {
            let mut leavers = lock(&run.leavers);
            let chosen: Vec<u64> = leavers.keys().copied().take(leaves * 4).collect();
            let mut told = 0;
            for user in chosen {
                if told == leaves {
                    break;
                }
                // HashMap order is arbitrary but not random: pick at random
                // among a few candidates.
                if rand::random_bool(0.5) {
                    continue;
                }
                if let Some(leave) = leavers.remove(&user) {
                    let _ = leave.send(());
                    run.population.fetch_sub(1, Ordering::SeqCst);
                    told += 1;
                }
            }
        }
        let population = run.population.load(Ordering::SeqCst) as usize;
        for _ in population..target.min(population + SPAWN_PER_TICK) {
            let user = USER_BASE + run.next_user.fetch_add(1, Ordering::Relaxed);
            run.population.fetch_add(1, Ordering::SeqCst);
            run.tasks.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(socket_life(Arc::clone(&run), user));
        }
    }
}

fn soak_message(seq: u64, user: u64, broadcast: bool) -> Result<shared_proto::Message> {
    notification(Value::Map(vec![
        (Value::from("s"), Value::from(seq)),
        (Value::from("u"), Value::from(user)),
        (Value::from("b"), Value::from(broadcast)),
    ]))
}

/// Per-user messages at `rate`/s, each to the user of a random open socket.
async fn publish_per_user(run: Arc<Run>, mut publisher: NativePublisher, rate: f64) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let begun = Instant::now();
    let mut seq = 0u64;
    while !run.stop_publishing.load(Ordering::SeqCst) {
        tick.tick().await;
        let due = (begun.elapsed().as_secs_f64() * rate) as u64;
        let n = due.saturating_sub(seq).min(PUBLISH_BATCH_MAX);
        if n == 0 {
            continue;
        }
        let users: Vec<u64> = {
            let live = lock(&run.live_users);
            if live.is_empty() {
                seq += n;
                continue;
            }
            (0..n)
                .map(|_| live[rand::random_range(0..live.len())])
                .collect()
        };
        let mut batch = Vec::with_capacity(users.len());
        let mut failed = false;
        for (i, &user) in users.iter().enumerate() {
            match soak_message(seq + i as u64, user, false) {
                Ok(message) => batch.push((format!("user_{user}"), message)),
                Err(_) => failed = true,
            }
        }
        if failed {
            run.publish_errors.fetch_add(1, Ordering::Relaxed);
            seq += n;
            continue;
        }
        let started_us = run.now_us();
        let sent = publisher.group_send_many(&batch).await;
        let finished_us = run.now_us();
        match sent {
            Ok(_) => {
                let mut log = lock(&run.sent_to_user);
                for (i, user) in users.iter().enumerate() {
                    // A user whose socket already ended is owed nothing.
                    if let Some(sends) = log.get_mut(user) {
                        sends.push(Sent {
                            seq: seq + i as u64,
                            started_us,
                            finished_us,
                        });
                    }
                }
                run.sent_per_user.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {
                run.publish_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        seq += n;
    }
}

/// One broadcast to every socket every `every`.
async fn publish_broadcasts(run: Arc<Run>, mut publisher: NativePublisher, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    while !run.stop_publishing.load(Ordering::SeqCst) {
        tick.tick().await;
        let Ok(message) = soak_message(seq, 0, true) else {
            run.publish_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let started_us = run.now_us();
        let sent = publisher.group_send(BROADCAST_GROUP, &message).await;
        let finished_us = run.now_us();
        match sent {
            Ok(_) => {
                lock(&run.sent_broadcast).push(Sent {
                    seq,
                    started_us,
                    finished_us,
                });
                run.sent_broadcasts.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                run.publish_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        seq += 1;
    }
}

/// The process id in a channel name or queue key: the text between
/// `specific.` and the first `.` or `!` after it (`specific.gw-ab!c1` and
/// `specific.gw-ab.3!c1` both give `gw-ab`).
fn process_id_of(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("specific.")?;
    let end = rest.find(['.', '!']).unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// The process id a gateway logged with its queue key at start
/// (`core layer started queue_key=...`), else the `process` field of its
/// `gateway starting` line (JSON logs).
async fn logged_process_id(process: &GatewayProcess) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = process.log_text();
        let from_queue_key = log
            .lines()
            .filter(|line| line.contains("core layer started"))
            .find_map(|line| {
                let (_, after) = line.split_once("queue_key")?;
                process_id_of(after).map(str::to_string)
            });
        let from_start_line = || {
            log.lines()
                .filter(|line| line.contains("gateway starting"))
                .find_map(|line| {
                    let (_, after) = line.split_once("\"process\":\"")?;
                    let id = &after[..after.find('"')?];
                    (!id.is_empty()).then(|| id.to_string())
                })
        };
        if let Some(id) = from_queue_key.or_else(from_start_line) {
            return Ok(id);
        }
        if Instant::now() >= deadline {
            bail!(
                "gateway pid {} logged no `core layer started queue_key=...` line (log {})",
                process.pid(),
                process.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One gateway process slot: its config (kept across restarts) and the
/// process running now.
struct Slot {
    config: GatewayConfig,
    process: GatewayProcess,
    process_id: String,
    started_s: f64,
    restarts: u32,
}

async fn start_gateway(
    args: &Args,
    index: usize,
    config: &mut GatewayConfig,
) -> Result<(GatewayProcess, String)> {
    let process = GatewayLauncher::new()
        .bin(&args.gateway_bin)
        .test_name(&format!("soak-gw-{index}"))
        .env("RUST_LOG", &args.gateway_log)
        .start_config(config)
        .await
        .with_context(|| format!("starting gateway {index}"))?;
    let id = logged_process_id(&process).await?;
    Ok((process, id))
}

fn gateway_config(args: &Args) -> Result<GatewayConfig> {
    let mut config = GatewayConfig::new(&args.redis)?
        .jwt_secret(args.secret.clone())
        .prefix(args.prefix.clone())
        .line("auth", "groups_claim = \"groups\"")
        .line("auth", format!("allowed_groups = [\"{BROADCAST_GROUP}\"]"));
    config.log_format = "json".into();
    Ok(config)
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn open_fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|entries| entries.count() as u64)
}

/// Every key matching `pattern` (SCAN, so Redis is never blocked long).
async fn scan_keys(redis: &mut RespClient, pattern: &str) -> Result<Vec<Vec<u8>>> {
    let mut cursor = b"0".to_vec();
    let mut keys = Vec::new();
    loop {
        let reply = redis
            .command(&[
                b"SCAN".as_slice(),
                cursor.as_slice(),
                b"MATCH".as_slice(),
                pattern.as_bytes(),
                b"COUNT".as_slice(),
                b"1000".as_slice(),
            ])
            .await?
            .check()?;
        let RespValue::Array(mut parts) = reply else {
            bail!("SCAN answered {reply:?}");
        };
        let batch = parts.pop().ok_or_else(|| anyhow!("SCAN reply too short"))?;
        let next = parts.pop().ok_or_else(|| anyhow!("SCAN reply too short"))?;
        keys.extend(batch.into_bytes_list()?);
        cursor = next
            .into_bytes_list()?
            .pop()
            .ok_or_else(|| anyhow!("SCAN gave no cursor"))?;
        if cursor == b"0" {
            return Ok(keys);
        }
    }
}

/// Group members in every `<prefix>:group:*` key: (all, stale = of no
/// running process, group keys).
async fn group_members(
    redis: &mut RespClient,
    prefix: &str,
    live: &HashSet<String>,
) -> Result<(u64, u64, u64)> {
    let keys = scan_keys(redis, &format!("{prefix}:group:*")).await?;
    let (mut members, mut stale) = (0u64, 0u64);
    for chunk in keys.chunks(500) {
        let reads: Vec<Vec<&[u8]>> = chunk
            .iter()
            .map(|key| {
                vec![
                    b"ZRANGE".as_slice(),
                    key.as_slice(),
                    b"0".as_slice(),
                    b"-1".as_slice(),
                ]
            })
            .collect();
        for reply in redis.pipeline(&reads).await? {
            for member in reply.check()?.into_bytes_list()? {
                members += 1;
                let text = String::from_utf8_lossy(&member);
                if !process_id_of(&text).is_some_and(|id| live.contains(id)) {
                    stale += 1;
                }
            }
        }
    }
    Ok((members, stale, keys.len() as u64))
}

fn info_field(info: &str, field: &str) -> Option<u64> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
}

async fn sample(
    run: &Run,
    slots: &[Slot],
    redis: &mut RespClient,
    prefix: &str,
    phase: &str,
) -> Result<serde_json::Value> {
    let live: HashSet<String> = slots.iter().map(|s| s.process_id.clone()).collect();
    let processes: Vec<serde_json::Value> = slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let pid = slot.process.pid();
            json!({
                "slot": i,
                "pid": pid,
                "process_id": slot.process_id,
                "started_s": slot.started_s,
                "sockets": run.assigned[i].load(Ordering::SeqCst),
                "rss_kib": vm_rss_kib(pid),
                "fds": open_fds(pid),
            })
        })
        .collect();
    let keys = redis.cmd(&["DBSIZE"]).await?.check()?.as_int();
    let info = redis
        .cmd(&["INFO", "memory"])
        .await?
        .check()?
        .into_strings()?;
    let used_memory = info_field(&info.concat(), "used_memory");
    let (members, stale, group_keys) = group_members(redis, prefix, &live).await?;
    let queue_keys = scan_keys(redis, &format!("{prefix}specific.*"))
        .await?
        .len();
    Ok(json!({
        "t_s": run.seconds(),
        "phase": phase,
        "processes": processes,
        "redis_keys": keys,
        "redis_used_memory_bytes": used_memory,
        "group_keys": group_keys,
        "queue_keys": queue_keys,
        "group_members": members,
        "stale_members": stale,
        "sockets_open": lock(&run.live_users).len(),
        "sent_per_user": run.sent_per_user.load(Ordering::Relaxed),
        "sent_broadcasts": run.sent_broadcasts.load(Ordering::Relaxed),
    }))
}

/// Least-squares slope of `points` (seconds, value), per hour; `None` with
/// fewer than three points or no spread in time.
fn slope_per_hour(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
    let spread: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if spread <= 0.0 {
        return None;
    }
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_v)).sum();
    Some(covariance / spread * 3600.0)
}

/// Drift per hour of each figure over the running-phase samples after the
/// warm-up; a process's RSS and fds over its last incarnation only (a
/// restart starts it from scratch).
fn drift(samples: &[serde_json::Value], slots: &[Slot], warmup: f64) -> serde_json::Value {
    let running: Vec<&serde_json::Value> = samples
        .iter()
        .filter(|s| s["phase"] == "running" && s["t_s"].as_f64().is_some_and(|t| t >= warmup))
        .collect();
    let series = |field: &str| -> Vec<(f64, f64)> {
        running
            .iter()
            .filter_map(|s| Some((s["t_s"].as_f64()?, s[field].as_f64()?)))
            .collect()
    };
    let mut processes = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let pid = slot.process.pid();
        let mine = |field: &str| -> Vec<(f64, f64)> {
            samples
                .iter()
                .filter(|s| s["phase"] == "running")
                .filter_map(|s| {
                    let t = s["t_s"].as_f64()?;
                    let process = s["processes"].get(i)?;
                    (process["pid"] == pid && t >= slot.started_s + warmup)
                        .then_some((t, process[field].as_f64()?))
                })
                .collect()
        };
        let rss = mine("rss_kib");
        processes.push(json!({
            "slot": i,
            "pid": pid,
            "samples": rss.len(),
            "rss_kib": slope_per_hour(&rss),
            "fds": slope_per_hour(&mine("fds")),
        }));
    }
    json!({
        "samples": running.len(),
        "warmup_s": warmup,
        "processes": processes,
        "redis_keys": slope_per_hour(&series("redis_keys")),
        "redis_used_memory_bytes": slope_per_hour(&series("redis_used_memory_bytes")),
        "group_members": slope_per_hour(&series("group_members")),
        "stale_members": slope_per_hour(&series("stale_members")),
    })
}

/// SIGKILLs the slot's process, then starts it again with the same config:
/// the kill's record.
async fn kill_and_restart(
    args: &Args,
    run: &Run,
    slots: &mut [Slot],
    index: usize,
) -> Result<serde_json::Value> {
    let slot = &mut slots[index];
    match run.addrs[index].write() {
        Ok(mut addr) => *addr = None,
        Err(poisoned) => *poisoned.into_inner() = None,
    }
    run.generations[index].fetch_add(1, Ordering::SeqCst);
    let killed_at = run.seconds();
    let old_pid = slot.process.pid();
    let old_id = slot.process_id.clone();
    slot.process.signal(Signal::Kill)?;
    slot.process.wait_exit(Duration::from_secs(10)).await?;
    let (process, id) = start_gateway(args, index, &mut slot.config).await?;
    slot.process = process;
    slot.process_id = id;
    slot.started_s = run.seconds();
    slot.restarts += 1;
    match run.addrs[index].write() {
        Ok(mut addr) => *addr = Some(slot.config.listen.clone()),
        Err(poisoned) => *poisoned.into_inner() = Some(slot.config.listen.clone()),
    }
    Ok(json!({
        "slot": index,
        "killed_at_s": killed_at,
        "ready_again_s": slot.started_s,
        "old_pid": old_pid,
        "old_process_id": old_id,
        "new_pid": slot.process.pid(),
        "new_process_id": slot.process_id,
    }))
}

async fn run(args: Args) -> Result<serde_json::Value> {
    let redis_addr = tests::resp::host_port(&args.redis).to_string();
    let host = redis_addr.split(':').next().unwrap_or_default();
    if host != "127.0.0.1" && host != "localhost" {
        bail!("--redis must be on loopback");
    }
    if args.processes < 1 || (args.kill_every_secs > 0.0 && args.processes < 2) {
        bail!(
            "--processes must be at least 1, and at least 2 with kills (the first is never killed)"
        );
    }
    if !(args.sample_every_secs > 0.0 && args.broadcast_every_secs > 0.0) {
        bail!("--sample-every-secs and --broadcast-every-secs must be positive");
    }
    if !(0.0..=1.0).contains(&args.churn_per_sec) {
        bail!("--churn-per-sec is a fraction of the population (0..1)");
    }
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    if (args.sockets as u64) * 2 + 200 > fd_limit {
        bail!(
            "{} sockets need more than the fd limit {fd_limit}",
            args.sockets
        );
    }

    let mut slots = Vec::with_capacity(args.processes);
    for index in 0..args.processes {
        let mut config = gateway_config(&args)?;
        let (process, process_id) = start_gateway(&args, index, &mut config).await?;
        slots.push(Slot {
            config,
            process,
            process_id,
            started_s: 0.0,
            restarts: 0,
        });
    }
    let run = Arc::new(Run {
        started: Instant::now(),
        addrs: slots
            .iter()
            .map(|slot| RwLock::new(Some(slot.config.listen.clone())))
            .collect(),
        generations: slots.iter().map(|_| AtomicU64::new(0)).collect(),
        assigned: slots.iter().map(|_| AtomicU64::new(0)).collect(),
        live_users: Mutex::new(Vec::new()),
        sent_to_user: Mutex::new(HashMap::new()),
        sent_broadcast: Mutex::new(Vec::new()),
        leavers: Mutex::new(HashMap::new()),
        population: AtomicU64::new(0),
        tasks: AtomicU64::new(0),
        next_user: AtomicU64::new(0),
        surviving: Mutex::new(Tally::default()),
        killed: Mutex::new(Tally::default()),
        connects_ok: AtomicU64::new(0),
        connects_failed: AtomicU64::new(0),
        connect_retries: AtomicU64::new(0),
        sent_per_user: AtomicU64::new(0),
        sent_broadcasts: AtomicU64::new(0),
        publish_errors: AtomicU64::new(0),
        stop_publishing: AtomicBool::new(false),
        secret: args.secret.clone(),
    });
    let publisher_config = PublisherConfig {
        prefix: args.prefix.clone(),
        capacity: args.capacity,
        ..PublisherConfig::default()
    };
    let hosts = vec![args.redis.clone()];
    let per_user = NativePublisher::connect(&hosts, publisher_config.clone()).await?;
    let broadcaster = NativePublisher::connect(&hosts, publisher_config).await?;
    let mut redis = RespClient::connect(&redis_addr).await?;

    let duration = Duration::from_secs_f64(args.duration_secs.max(0.0));
    let until = Instant::now() + duration;
    let churner = tokio::spawn(churn(
        Arc::clone(&run),
        args.sockets,
        args.churn_per_sec,
        until,
    ));
    let publishers = [
        tokio::spawn(publish_per_user(
            Arc::clone(&run),
            per_user,
            args.per_user_rate,
        )),
        tokio::spawn(publish_broadcasts(
            Arc::clone(&run),
            broadcaster,
            Duration::from_secs_f64(args.broadcast_every_secs),
        )),
    ];

    let mut samples = vec![sample(&run, &slots, &mut redis, &args.prefix, "running").await?];
    let mut kills = Vec::new();
    let sample_every = Duration::from_secs_f64(args.sample_every_secs);
    let mut next_sample = Instant::now() + sample_every;
    let kill_every =
        (args.kill_every_secs > 0.0).then(|| Duration::from_secs_f64(args.kill_every_secs));
    let mut next_kill = kill_every.map(|every| Instant::now() + every);
    let mut next_victim = 1;
    while Instant::now() < until {
        let now = Instant::now();
        if next_kill.is_some_and(|at| now >= at) {
            kills.push(kill_and_restart(&args, &run, &mut slots, next_victim).await?);
            next_victim = if next_victim + 1 >= slots.len() {
                1
            } else {
                next_victim + 1
            };
            next_kill = kill_every.map(|every| now + every);
        }
        if Instant::now() >= next_sample {
            samples.push(sample(&run, &slots, &mut redis, &args.prefix, "running").await?);
            next_sample += sample_every;
        }
        let wake = [Some(next_sample), next_kill, Some(until)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(until);
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
    }
    samples.push(sample(&run, &slots, &mut redis, &args.prefix, "running").await?);

    // The end: no more churn or sends, then every socket leaves cleanly and
    // what remains in Redis is sampled once more.
    let _ = churner.await;
    run.stop_publishing.store(true, Ordering::SeqCst);
    for publisher in publishers {
        let _ = publisher.await;
    }
    tokio::time::sleep(SETTLE).await;
    let leavers: Vec<oneshot::Sender<()>> =
        lock(&run.leavers).drain().map(|(_, leave)| leave).collect();
    for leave in leavers {
        let _ = leave.send(());
    }
    let close_deadline = Instant::now() + CLOSE_LIMIT;
    while run.tasks.load(Ordering::SeqCst) > 0 && Instant::now() < close_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(SETTLE).await;
    samples.push(sample(&run, &slots, &mut redis, &args.prefix, "after-close").await?);
    let drift = drift(&samples, &slots, args.warmup_secs);

    for slot in &mut slots {
        if slot.process.signal(Signal::Term).is_ok()
            && slot
                .process
                .wait_exit(Duration::from_secs(15))
                .await
                .is_ok()
        {
            continue;
        }
        let _ = slot.process.kill().await;
    }

    Ok(json!({
        "mode": "soak",
        "settings": {
            "processes": args.processes,
            "duration_s": args.duration_secs,
            "sockets": args.sockets,
            "churn_per_sec": args.churn_per_sec,
            "per_user_rate": args.per_user_rate,
            "broadcast_every_s": args.broadcast_every_secs,
            "kill_every_s": args.kill_every_secs,
            "sample_every_s": args.sample_every_secs,
            "warmup_s": args.warmup_secs,
            "capacity": args.capacity,
        },
        "samples": samples,
        "kills": kills,
        "restarts": slots.iter().map(|slot| slot.restarts).sum::<u32>(),
        "connects": {
            "ok": run.connects_ok.load(Ordering::Relaxed),
            "failed": run.connects_failed.load(Ordering::Relaxed),
            "retries": run.connect_retries.load(Ordering::Relaxed),
        },
        "sockets_left_open": run.tasks.load(Ordering::SeqCst),
        "sent": {
            "per_user": run.sent_per_user.load(Ordering::Relaxed),
            "broadcasts": run.sent_broadcasts.load(Ordering::Relaxed),
            "errors": run.publish_errors.load(Ordering::Relaxed),
        },
        "delivery": {
            "surviving": lock(&run.surviving).to_json(),
            "killed": lock(&run.killed).to_json(),
        },
        "drift_per_hour": drift,
    }))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let out_path = args.out.clone();
    // Socket tasks still draining must not hold the exit up.
    tests::tool_result::run(
        "soak",
        out_path.as_deref(),
        Duration::from_secs(1),
        run(args),
    )
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn process_ids_parse_from_channels_and_queue_keys_of_both_shapes() {
        assert_eq!(process_id_of("specific.gw-ab12!c0ffee"), Some("gw-ab12"));
        assert_eq!(process_id_of("specific.gw-ab12.3!c0ffee"), Some("gw-ab12"));
        assert_eq!(process_id_of("asgispecific.gw-ab12!"), Some("gw-ab12"));
        assert_eq!(process_id_of("\":\"asgispecific.gw-x.0!\""), Some("gw-x"));
        assert_eq!(process_id_of("plain-channel"), None);
        assert_eq!(process_id_of("specific.!x"), None);
    }

    #[test]
    fn slope_is_per_hour_and_needs_three_points() {
        let rising = [(0.0, 10.0), (60.0, 11.0), (120.0, 12.0)];
        let slope = slope_per_hour(&rising).unwrap_or(f64::NAN);
        assert!((slope - 60.0).abs() < 1e-9, "{slope}");
        assert_eq!(slope_per_hour(&rising[..2]), None);
        assert_eq!(slope_per_hour(&[(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)]), None);
    }
}
