//! Core layer: the receiving side of `channels_redis.core.RedisChannelLayer`.
//!
//! Three tasks: the receiver drains this process's queue keys (its lanes,
//! `<prefix>specific.<process>.<lane>!`, through its merged key and spill
//! slots: `RedisHost::pop_queues`) with a blocking pop plus batched pops and
//! feeds the router, on the runtime it is given (a socket thread's, so that
//! popping, routing and writing the frames happen on one thread); the
//! membership writer turns joins, leaves and refreshes
//! into one pipeline per Redis host per batch, keeping the process's record
//! of what it joined (`layer::liveness`) in step in the same pipelines, and
//! retries leaves whose write failed; the keeper re-adds every live
//! membership well before `group_expiry` and right after any reconnect, since
//! Channels itself never refreshes and a Redis restart wipes them. It must not
//! render frames or touch sockets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use parking_lot::Mutex;
use shared_proto::names;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::liveness::{self, LivenessSettings};
use super::replay;
use super::{CanarySending, HostRing, LayerError};
use crate::layer::redis::{MembershipWrites, ReceiveKeys, RecordWrites, RedisHost, ReplaySnapshot};
use crate::ops::clock::unix_now;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::relay::outbox::Wakeups;
use crate::relay::registry::{Registry, SPILL_SLOTS};
use crate::relay::router::Router;

/// How long one blocking pop waits; also the receiver's heartbeat period.
pub const RECEIVE_BLOCK: Duration = Duration::from_secs(1);
/// Pending membership operations; connects wait when it is full.
const MEMBERSHIP_QUEUE: usize = 16_384;
/// Operations folded into one round of pipelines.
const MEMBERSHIP_BATCH: usize = 2_048;
/// How often a missing canary may trigger a full re-add of memberships.
const CANARY_REPAIR_EVERY: Duration = Duration::from_secs(5);
/// Channels per `ZADD`, so one refresh of a huge group is not one huge command.
const MEMBERS_PER_COMMAND: usize = 1_000;
/// A membership write that follows the previous one within this window
/// waits for the window's end and takes everything queued by then.
const STORM_GATHER: Duration = Duration::from_millis(1);
/// Leaves whose write failed wait at most this many for a retry; beyond,
/// the record of this process still lists them for a reaper.
const MAX_LEAVES_AWAITING_RETRY: usize = 65_536;
/// How long a failed leave waits before it is written again.
const LEAVE_RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct CoreSettings {
    pub prefix: String,
    pub expiry: u64,
    pub group_expiry: u64,
    pub refresh_interval: Duration,
    pub receive_batch: usize,
    pub canary: Option<CanarySending>,
    /// `layer.liveness_timeout`: see `layer::liveness`.
    pub liveness_timeout: Duration,
    /// `layer.recovery`: every group joined gets its replay member
    /// (`layer::replay`).
    pub recovery: bool,
    /// Payloads one lane may hold behind a backlog before the receiver
    /// spills the lanes (a quarter of the backend's `capacity`).
    pub spill_at: usize,
}

enum MembershipOp {
    Join {
        groups: Vec<Arc<str>>,
        channel: String,
        done: oneshot::Sender<Result<(), LayerError>>,
    },
    Leave {
        groups: Vec<Arc<str>>,
        channel: String,
    },
    RefreshAll,
    RemoveAll,
    Flush {
        done: oneshot::Sender<()>,
    },
}

pub struct CoreLayer {
    ops: mpsc::Sender<MembershipOp>,
    stop: Shutdown,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    prefix: String,
    hosts: HostRing,
    receive_host: RedisHost,
    /// The receiver until `start_receiving` places it.
    receiver: Mutex<Option<Box<Receiver>>>,
    liveness: Arc<LivenessSettings>,
}

/// Everything the receiver needs, so it can be started on another runtime
/// than the one that built the layer.
struct Receiver {
    host: RedisHost,
    /// The lanes and the process's own keys the receiver pops through.
    keys: ReceiveKeys,
    /// The backend's `expiry`, which the process's own keys get like a
    /// queue key.
    expiry: u64,
    batch: usize,
    router: Arc<Router>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
}

impl CoreLayer {
    /// Connects to every host and starts the layer's tasks, except the
    /// receiver: see [`CoreLayer::start_receiving`].
    pub fn start(
        hosts: HostRing,
        registry: Arc<Registry>,
        router: Arc<Router>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        settings: CoreSettings,
    ) -> Result<CoreLayer, LayerError> {
        // Every lane's key lives on the host of the first (`ChannelNaming`).
        let non_locals = registry.naming().non_local_parts().to_vec();
        let home = non_locals
            .first()
            .map(|non_local| hosts.index_for(non_local))
            .ok_or_else(|| LayerError::Unavailable("no queue key named".into()))?;
        let queue_keys: Vec<String> = non_locals
            .iter()
            .map(|non_local| names::queue_key(&settings.prefix, non_local))
            .collect();
        let receive_host = hosts
            .host(home)
            .ok_or_else(|| LayerError::Unavailable("no Redis host configured".into()))?
            .twin();
        for host in hosts.hosts() {
            host.start();
        }
        tracing::info!(
            queue_key = %queue_keys.first().map_or("", String::as_str),
            queue_keys = queue_keys.len(),
            receive_host = receive_host.label(),
            hosts = hosts.len(),
            "core layer started"
        );

        let stop = Shutdown::new();
        let (ops, ops_rx) = mpsc::channel(MEMBERSHIP_QUEUE);
        let needs_refresh = Arc::new(AtomicBool::new(false));
        let queue_host = hosts
            .host(home)
            .cloned()
            .ok_or_else(|| LayerError::Unavailable("no Redis host configured".into()))?;
        let canary_task = settings.canary.clone().map(|sending| {
            tokio::spawn(send_canaries(
                sending,
                hosts.clone(),
                queue_host,
                registry.clone(),
                (settings.prefix.clone(), settings.expiry),
                stop.clone(),
            ))
        });
        let receiver = Receiver {
            host: receive_host.clone(),
            keys: ReceiveKeys {
                lanes: queue_keys,
                merged: names::queue_key(&settings.prefix, registry.naming().merged_part()),
                spill_stem: names::queue_key(&settings.prefix, registry.naming().spill_stem()),
                spill_slots: SPILL_SLOTS,
                spilled: names::queue_key(&settings.prefix, registry.naming().spilled_part()),
                spill_at: settings.spill_at,
            },
            expiry: settings.expiry,
            batch: settings.receive_batch,
            router,
            health: health.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        // The record names every key of the process: its lanes and the keys
        // its receiver moves their payloads through, on the lanes' host.
        let own_parts: Vec<String> = registry.naming().own_parts().collect();
        let mut liveness = LivenessSettings::new(
            &hosts,
            &settings.prefix,
            registry.naming().process_id(),
            (registry.naming().non_local_parts(), &own_parts),
            settings.liveness_timeout,
            settings.group_expiry,
        );
        if settings.recovery {
            liveness = liveness.with_replay_idle(replay::idle_key(&settings.prefix));
        }
        let liveness = Arc::new(liveness);
        let sweeper = settings.recovery.then(|| {
            tokio::spawn(replay::sweep_idle_groups(
                hosts.clone(),
                settings.prefix.clone(),
                Duration::from_secs(settings.expiry),
                metrics.clone(),
                stop.clone(),
            ))
        });
        let prefix = settings.prefix.clone();
        let settings = Arc::new(settings);
        let mut tasks = vec![
            tokio::spawn(liveness::keep_alive(
                hosts.clone(),
                liveness.clone(),
                needs_refresh.clone(),
                metrics.clone(),
                stop.clone(),
            )),
            tokio::spawn(liveness::reap_dead(
                hosts.clone(),
                liveness.clone(),
                metrics.clone(),
                stop.clone(),
            )),
            tokio::spawn(write_memberships(
                ops_rx,
                hosts.clone(),
                registry,
                settings.clone(),
                liveness.clone(),
                metrics.clone(),
                needs_refresh.clone(),
            )),
            tokio::spawn(keep_memberships(
                ops.clone(),
                hosts.clone(),
                receive_host.clone(),
                settings,
                health,
                metrics,
                needs_refresh,
                stop.clone(),
            )),
        ];
        tasks.extend(canary_task);
        tasks.extend(sweeper);
        Ok(CoreLayer {
            ops,
            stop,
            tasks: Mutex::new(tasks),
            prefix,
            hosts,
            receive_host,
            receiver: Mutex::new(Some(Box::new(receiver))),
            liveness,
        })
    }

    /// Starts the receiver, and its Redis connection, on `runtime`. Only the
    /// first call does anything: one popper per queue key keeps each
    /// socket's messages in order.
    pub fn start_receiving(&self, runtime: &tokio::runtime::Handle) {
        let Some(receiver) = self.receiver.lock().take() else {
            return;
        };
        let task = runtime.spawn(async move {
            // The client's connection task is spawned here, on `runtime`,
            // so replies are read on the thread that routes them.
            receiver.host.start();
            receive(receiver).await;
        });
        self.tasks.lock().push(task);
    }

    pub async fn join(&self, groups: &[Arc<str>], channel: &str) -> Result<(), LayerError> {
        let (done, written) = oneshot::channel();
        self.ops
            .send(MembershipOp::Join {
                groups: groups.to_vec(),
                channel: channel.to_string(),
                done,
            })
            .await
            .map_err(|_| LayerError::Stopped)?;
        written.await.map_err(|_| LayerError::Stopped)?
    }

    /// Reads the replay keys of `groups` (see `layer::replay::read`).
    pub async fn read_replay(
        &self,
        groups: &[Arc<str>],
        from: Option<f64>,
        limit: usize,
    ) -> Result<ReplaySnapshot, LayerError> {
        replay::read(&self.hosts, &self.prefix, groups, from, limit)
            .await
            .map_err(|error| LayerError::Unavailable(error.to_string()))
    }

    pub fn leave(&self, groups: &[Arc<str>], channel: String) {
        let op = MembershipOp::Leave {
            groups: groups.to_vec(),
            channel,
        };
        if let Err(mpsc::error::TrySendError::Full(op)) = self.ops.try_send(op) {
            // Rare (a disconnect storm): wait for room off this thread
            // rather than leave a stale member behind.
            let ops = self.ops.clone();
            tokio::spawn(async move {
                let _ = ops.send(op).await;
            });
        }
    }

    pub async fn shutdown(&self) {
        let (done, flushed) = oneshot::channel();
        let sent = self.ops.send(MembershipOp::RemoveAll).await.is_ok()
            && self.ops.send(MembershipOp::Flush { done }).await.is_ok();
        if sent {
            let _ = flushed.await;
        }
        self.stop.trigger();
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        liveness::retire(&self.hosts, &self.liveness).await;
        for host in self.hosts.hosts() {
            host.stop().await;
        }
        // A receiver never placed never connected.
        if self.receiver.lock().is_none() {
            self.receive_host.stop().await;
        }
    }
}

/// Drains the queue key: a blocking pop when idle, plain batched pops while
/// a backlog lasts. Each round trip is a readiness heartbeat.
async fn receive(receiver: Box<Receiver>) {
    let Receiver {
        host,
        keys,
        expiry,
        batch,
        router,
        health,
        metrics,
        stop,
    } = *receiver;
    tracing::info!(thread = super::thread_name(), "receiving");
    let mut backlog = false;
    let mut wakeups = Wakeups::counting(metrics.frames_delivered.clone());
    let mut pacer = super::Pacer::new();
    loop {
        // Blocking on the lanes is safe only once nothing else waits.
        let block = (!backlog).then_some(RECEIVE_BLOCK);
        let pop = host.pop_queues(&keys, batch, expiry, block);
        let popped = tokio::select! {
            _ = stop.triggered() => return,
            popped = async {
                // A blocking pop's wait says nothing about Redis; time only
                // the pops that drain a backlog.
                if block.is_some() { pop.await } else { metrics.timed_redis("pop", pop).await }
            } => popped,
        };
        match popped {
            Ok((payloads, more)) => {
                health.receiver_beat();
                backlog = more;
                for queued in &payloads {
                    router.route_queued(&queued.payload, queued.sent_at, unix_now(), &mut wakeups);
                    pacer.between_payloads(&mut wakeups, &metrics).await;
                }
                wakeups.wake_all();
            }
            Err(error) => {
                // The merged key or a spill slot may still hold payloads:
                // drain them before blocking on the lanes again.
                backlog = true;
                tracing::warn!(%error, "receiving from the queue keys failed; retrying");
                tokio::select! {
                    _ = stop.triggered() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// Folds queued membership operations into one pipeline per host.
async fn write_memberships(
    mut ops: mpsc::Receiver<MembershipOp>,
    hosts: HostRing,
    registry: Arc<Registry>,
    settings: Arc<CoreSettings>,
    liveness: Arc<LivenessSettings>,
    metrics: Arc<Metrics>,
    needs_refresh: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(256);
    let mut last_write: Option<Instant> = None;
    // Groups whose messages a reconnecting client may want replayed: every
    // group but the process's own canary group.
    let canary_group = settings
        .canary
        .as_ref()
        .map(|sending| sending.canary.group().clone());
    let replayable = |group: &str| {
        settings.recovery && canary_group.as_deref().is_none_or(|canary| canary != group)
    };
    let mut failed_leaves = FailedLeaves::default();
    loop {
        let received = match failed_leaves.retry_at {
            None => ops.recv_many(&mut batch, MEMBERSHIP_BATCH).await,
            // Wake up for the retry even when nothing else is queued.
            Some(retry_at) => {
                tokio::time::timeout_at(retry_at, ops.recv_many(&mut batch, MEMBERSHIP_BATCH))
                    .await
                    .unwrap_or(usize::MAX)
            }
        };
        if received == 0 {
            break;
        }
        // Writes back to back mean a connect storm: gather the joins of one
        // short window into one pipeline instead of a round trip (and a
        // wake-up of this thread) per connect. A lone join goes out at once.
        if let Some(last) = last_write.filter(|last| last.elapsed() < STORM_GATHER) {
            tokio::time::sleep_until(last + STORM_GATHER).await;
            while batch.len() < MEMBERSHIP_BATCH {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
        }
        last_write = Some(Instant::now());
        let mut plan = WritePlan::new(hosts.len());
        // A flush (shutdown) takes the failed leaves along at once.
        let flushing = batch
            .iter()
            .any(|op| matches!(op, MembershipOp::Flush { .. }));
        failed_leaves.retry_due_into(&mut plan, flushing, &metrics);
        let mut joins = Vec::new();
        let mut flushes = Vec::new();
        for op in batch.drain(..) {
            match op {
                MembershipOp::Join {
                    groups,
                    channel,
                    done,
                } => {
                    let touched: Vec<usize> = groups
                        .iter()
                        .map(|group| {
                            if replayable(group) {
                                plan.add_replay(&hosts, &settings.prefix, group);
                            }
                            plan.add(&hosts, &settings.prefix, group, &channel)
                        })
                        .collect();
                    joins.push((touched, done));
                }
                MembershipOp::Leave { groups, channel } => {
                    for group in &groups {
                        plan.remove(&hosts, &settings.prefix, group, &channel);
                        if replayable(group) && !registry.has_group(group) {
                            plan.idle(&hosts, &settings.prefix, group);
                        }
                    }
                }
                MembershipOp::RefreshAll => {
                    for (group, channels) in registry.memberships() {
                        if replayable(&group) {
                            plan.add_replay(&hosts, &settings.prefix, &group);
                        }
                        for channel in &channels {
                            plan.add(&hosts, &settings.prefix, &group, channel);
                        }
                    }
                }
                MembershipOp::RemoveAll => {
                    for (group, channels) in registry.memberships() {
                        for channel in &channels {
                            plan.remove(&hosts, &settings.prefix, &group, channel);
                        }
                        if replayable(&group) {
                            plan.idle(&hosts, &settings.prefix, &group);
                        }
                    }
                }
                MembershipOp::Flush { done } => flushes.push(done),
            }
        }
        let outcomes = plan
            .execute(
                &hosts,
                &settings.prefix,
                settings.group_expiry,
                &liveness,
                &metrics,
                &mut failed_leaves,
            )
            .await;
        if outcomes.iter().any(Result::is_err) {
            metrics.membership_writes_failed.inc();
            needs_refresh.store(true, Ordering::Relaxed);
        }
        for (touched, done) in joins {
            let failure = touched.iter().find_map(|index| {
                outcomes
                    .get(*index)
                    .and_then(|outcome| outcome.clone().err())
            });
            let _ = done.send(match failure {
                None => Ok(()),
                Some(reason) => Err(LayerError::Unavailable(reason)),
            });
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// One leave whose write failed: retried until it is written.
struct FailedLeave {
    host: usize,
    group_key: String,
    channel: String,
}

/// Leaves waiting for a retry, bounded; the oldest stay, the overflow is
/// left to the record (a reaper removes it once this process is gone).
#[derive(Default)]
struct FailedLeaves {
    leaves: Vec<FailedLeave>,
    retry_at: Option<Instant>,
}

impl FailedLeaves {
    fn push(&mut self, leave: FailedLeave) -> bool {
        if self.leaves.len() >= MAX_LEAVES_AWAITING_RETRY {
            return false;
        }
        self.leaves.push(leave);
        self.retry_at
            .get_or_insert_with(|| Instant::now() + LEAVE_RETRY_AFTER);
        true
    }

    /// Moves the waiting leaves into `plan` once their retry is due, or
    /// at once with `now`.
    fn retry_due_into(&mut self, plan: &mut WritePlan, now: bool, metrics: &Metrics) {
        let due = self.retry_at.is_some_and(|at| now || at <= Instant::now());
        if !due {
            return;
        }
        self.retry_at = None;
        for leave in self.leaves.drain(..) {
            plan.remove_on(leave.host, leave.group_key, leave.channel);
        }
        metrics.leaves_awaiting_retry.set(0);
    }
}

/// Membership writes of one batch, merged per host and per group key.
struct WritePlan {
    adds: Vec<HashMap<String, Vec<String>>>,
    removes: Vec<HashMap<String, Vec<String>>>,
    /// Group key → its replay member, added with the batch's adds but kept
    /// out of the process's record (it belongs to the group).
    replays: Vec<HashMap<String, String>>,
    /// Entries for the idle set (`layer::replay`): groups left without a
    /// socket here.
    idle: Vec<Vec<String>>,
}

impl WritePlan {
    fn new(host_count: usize) -> WritePlan {
        WritePlan {
            adds: vec![HashMap::new(); host_count],
            removes: vec![HashMap::new(); host_count],
            replays: vec![HashMap::new(); host_count],
            idle: vec![Vec::new(); host_count],
        }
    }

    fn add_replay(&mut self, hosts: &HostRing, prefix: &str, group: &str) {
        if let Some(replays) = self.replays.get_mut(hosts.index_for(group)) {
            replays
                .entry(names::group_key(prefix, group))
                .or_insert_with(|| replay::replay_member(group, hosts.len()));
        }
    }

    fn idle(&mut self, hosts: &HostRing, prefix: &str, group: &str) {
        if let Some(idle) = self.idle.get_mut(hosts.index_for(group)) {
            idle.push(names::group_key(prefix, group));
        }
    }

    fn add(&mut self, hosts: &HostRing, prefix: &str, group: &str, channel: &str) -> usize {
        let index = hosts.index_for(group);
        if let Some(keys) = self.adds.get_mut(index) {
            keys.entry(names::group_key(prefix, group))
                .or_default()
                .push(channel.to_string());
        }
        index
    }

    fn remove(&mut self, hosts: &HostRing, prefix: &str, group: &str, channel: &str) {
        let index = hosts.index_for(group);
        if let Some(keys) = self.removes.get_mut(index) {
            keys.entry(names::group_key(prefix, group))
                .or_default()
                .push(channel.to_string());
        }
    }

    fn remove_on(&mut self, host: usize, group_key: String, channel: String) {
        if let Some(keys) = self.removes.get_mut(host) {
            keys.entry(group_key).or_default().push(channel);
        }
    }

    /// Adds go before removes, so a socket that joined and left within one
    /// batch ends up absent; the record of this process changes in the same
    /// pipelines. The removes of a host whose write failed go to
    /// `failed_leaves`. Returns each host's outcome by index.
    async fn execute(
        self,
        hosts: &HostRing,
        prefix: &str,
        group_expiry: u64,
        liveness: &LivenessSettings,
        metrics: &Metrics,
        failed_leaves: &mut FailedLeaves,
    ) -> Vec<Result<(), String>> {
        let score = unix_now();
        let expiry = i64::try_from(group_expiry).unwrap_or(i64::MAX);
        let writes: Vec<MembershipWrites> = self
            .adds
            .into_iter()
            .zip(self.removes)
            .zip(self.replays.into_iter().zip(self.idle))
            .map(|((mut adds, removes), (replays, idle))| {
                let record = (!adds.is_empty() || !removes.is_empty()).then(|| RecordWrites {
                    key: liveness.keys.record.clone(),
                    expiry: liveness.record_expiry,
                    adds: record_entries(&adds),
                    removes: record_entries(&removes),
                });
                for (group_key, member) in replays {
                    adds.entry(group_key).or_default().push(member);
                }
                MembershipWrites {
                    adds: split_large(adds),
                    removes: split_large(removes),
                    record,
                    idle: (!idle.is_empty()).then(|| (replay::idle_key(prefix), idle)),
                }
            })
            .collect();
        let pipelines = writes.iter().filter(|writes| !writes.is_empty()).count();
        metrics.membership_pipelines.inc_by(pipelines as u64);
        let outcomes = join_all(hosts.hosts().iter().zip(&writes).map(
            |(host, writes)| async move {
                metrics
                    .timed_redis(
                        "membership_write",
                        host.write_memberships(writes, score, expiry),
                    )
                    .await
                    .map_err(|error| {
                        tracing::warn!(%error, "membership write failed");
                        error.to_string()
                    })
            },
        ))
        .await;
        let mut overflow = 0usize;
        for (host, (outcome, writes)) in outcomes.iter().zip(writes).enumerate() {
            if outcome.is_ok() {
                continue;
            }
            for (group_key, channels) in writes.removes {
                for channel in channels {
                    let leave = FailedLeave {
                        host,
                        group_key: group_key.clone(),
                        channel,
                    };
                    if !failed_leaves.push(leave) {
                        overflow += 1;
                    }
                }
            }
        }
        if overflow > 0 {
            tracing::warn!(
                overflow,
                "too many failed leaves to retry; the process record keeps them for a reaper"
            );
        }
        metrics
            .leaves_awaiting_retry
            .set(i64::try_from(failed_leaves.leaves.len()).unwrap_or(i64::MAX));
        outcomes
    }
}

/// The record entries of a host's adds or removes, in commands of at most
/// `MEMBERS_PER_COMMAND` entries.
fn record_entries(keys: &HashMap<String, Vec<String>>) -> Vec<Vec<String>> {
    let mut commands: Vec<Vec<String>> = Vec::new();
    for (group_key, channels) in keys {
        for channel in channels {
            match commands.last_mut() {
                Some(entries) if entries.len() < MEMBERS_PER_COMMAND => {
                    entries.push(liveness::record_entry(group_key, channel));
                }
                _ => commands.push(vec![liveness::record_entry(group_key, channel)]),
            }
        }
    }
    commands
}

fn split_large(keys: HashMap<String, Vec<String>>) -> Vec<(String, Vec<String>)> {
    let mut commands = Vec::with_capacity(keys.len());
    for (key, mut channels) in keys {
        while channels.len() > MEMBERS_PER_COMMAND {
            let rest = channels.split_off(MEMBERS_PER_COMMAND);
            commands.push((key.clone(), channels));
            channels = rest;
        }
        commands.push((key, channels));
    }
    commands
}

/// Tracks connectivity for readiness, and asks for a full re-add of live
/// memberships periodically, after every reconnect and after failed writes.
#[allow(clippy::too_many_arguments)]
async fn keep_memberships(
    ops: mpsc::Sender<MembershipOp>,
    hosts: HostRing,
    receive_host: RedisHost,
    settings: Arc<CoreSettings>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    needs_refresh: Arc<AtomicBool>,
    stop: Shutdown,
) {
    let mut reconnects = tokio::task::JoinSet::new();
    for host in hosts.hosts().iter().chain(std::iter::once(&receive_host)) {
        let mut events = host.reconnects();
        let needs_refresh = needs_refresh.clone();
        let metrics = metrics.clone();
        let label = host.label().to_string();
        reconnects.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(_) => {
                        metrics.redis_reconnects.inc();
                        tracing::info!(host = %label, "Redis connected; re-adding memberships");
                        needs_refresh.store(true, Ordering::Relaxed);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        needs_refresh.store(true, Ordering::Relaxed);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    let tick = Duration::from_millis(100);
    let mut since_refresh = Duration::ZERO;
    let mut since_repair = CANARY_REPAIR_EVERY;
    loop {
        tokio::select! {
            _ = stop.triggered() => break,
            _ = tokio::time::sleep(tick) => {}
        }
        let connected =
            hosts.hosts().iter().all(RedisHost::is_connected) && receive_host.is_connected();
        health.set_redis_connected(connected);
        since_refresh += tick;
        since_repair += tick;
        // Connected but the canary is not coming back: memberships were
        // lost without a reconnect (FLUSHALL, a failover to a stale
        // replica, an operator's DEL). Re-add them rather than wait hours.
        if connected && health.canary_overdue() && since_repair >= CANARY_REPAIR_EVERY {
            since_repair = Duration::ZERO;
            tracing::warn!("canary missing while connected; re-adding memberships");
            needs_refresh.store(true, Ordering::Relaxed);
        }
        let due = since_refresh >= settings.refresh_interval;
        if (due || needs_refresh.load(Ordering::Relaxed)) && connected {
            needs_refresh.store(false, Ordering::Relaxed);
            since_refresh = Duration::ZERO;
            if ops.send(MembershipOp::RefreshAll).await.is_err() {
                break;
            }
        }
    }
    reconnects.abort_all();
}

/// Every `interval`, group_sends a canary to this process's own canary
/// group as channels_redis would: read the group's members from Redis,
/// then queue one payload per queue key listing this process's channels
/// of that key. A lost membership therefore means no canary, and readiness
/// notices. The sender's capacity is not applied: a busy key means the
/// process is behind, which the receiver's heartbeat reports; it must not
/// read as lost memberships and trigger a full re-add.
async fn send_canaries(
    sending: CanarySending,
    hosts: HostRing,
    queue_host: RedisHost,
    registry: Arc<Registry>,
    (prefix, expiry): (String, u64),
    stop: Shutdown,
) {
    let group = sending.canary.group().clone();
    let group_key = names::group_key(&prefix, &group);
    loop {
        tokio::select! {
            _ = stop.triggered() => return,
            _ = tokio::time::sleep(sending.interval) => {}
        }
        let Some(group_host) = hosts.host(hosts.index_for(&group)) else {
            return;
        };
        let members = match group_host.sorted_set_members(&group_key).await {
            Ok(members) => members,
            Err(error) => {
                tracing::debug!(%error, "canary: reading the group failed");
                continue;
            }
        };
        let naming = registry.naming();
        for non_local in naming.non_local_parts() {
            let ours: Vec<String> = members
                .iter()
                .filter(|channel| names::non_local_part(channel) == non_local)
                .cloned()
                .collect();
            if ours.is_empty() {
                continue;
            }
            let now = unix_now();
            let Some(payload) = sending
                .canary
                .event(&ours, now)
                .and_then(|event| sending.router.encode(&event, now))
            else {
                continue;
            };
            let queue_key = names::queue_key(&prefix, non_local);
            if let Err(error) = queue_host
                .queue_payload(&queue_key, payload, expiry, now)
                .await
            {
                tracing::debug!(%error, "canary: queueing failed");
            }
        }
    }
}
