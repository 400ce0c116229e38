//! Pub/sub layer: the receiving side of `channels_redis.pubsub.RedisPubSubChannelLayer`.
//!
//! Django `PUBLISH`es each `group_send` to `<prefix>__group__<group>` on the
//! host the crc32 ring picks for that channel name; nothing is stored in
//! Redis. So this layer subscribes to a group's channel while at least one
//! local socket is in the group and unsubscribes when the last leaves, in one
//! `SUBSCRIBE`/`UNSUBSCRIBE` per host per batch of changes; it subscribes
//! again to everything after a reconnect, and retries a change Redis did not
//! confirm with backoff until it holds (`subscriptions` keeps the account of
//! what is wanted and what Redis confirmed, which feeds readiness and the
//! metrics). A join resolves only once the subscription is confirmed, so
//! nothing published after the upgrade is missed. It must not render frames
//! or touch sockets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use parking_lot::Mutex;
use shared_proto::names;
use shared_proto::shard::shard_index;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use super::subscriptions::{HostChanges, SubscriptionBook};
use super::{CanarySending, HostRing, LayerError};
use crate::config::LayerConfig;
use crate::layer::redis::{NextPublished, RedisError, RedisSubscriber};
use crate::ops::clock::unix_now;
use crate::ops::health::Health;
use crate::ops::metrics::{DropReason, Metrics};
use crate::ops::shutdown::Shutdown;
use crate::relay::outbox::Wakeups;
use crate::relay::registry::Registry;
use crate::relay::router::Router;

const SUBSCRIPTION_QUEUE: usize = 16_384;
const SUBSCRIPTION_BATCH: usize = 2_048;

enum SubscriptionOp {
    Join {
        groups: Vec<Arc<str>>,
        done: oneshot::Sender<Result<(), LayerError>>,
    },
    Leave {
        groups: Vec<Arc<str>>,
    },
    UnsubscribeAll {
        done: oneshot::Sender<()>,
    },
}

pub struct PubSubLayer {
    ops: mpsc::Sender<SubscriptionOp>,
    stop: Shutdown,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    subscribers: Vec<RedisSubscriber>,
    publishers: HostRing,
    /// The receivers until `start_receiving` places them.
    receivers: Mutex<Option<Receivers>>,
}

/// What the receivers need, so they can be started on another runtime than
/// the one that built the layer.
struct Receivers {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
}

impl PubSubLayer {
    /// Starts the subscription tasks; the receivers (and the subscriber
    /// connections) start with [`PubSubLayer::start_receiving`].
    pub fn start(
        config: &LayerConfig,
        registry: Arc<Registry>,
        router: Arc<Router>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        canary: Option<CanarySending>,
    ) -> Result<PubSubLayer, RedisError> {
        let subscribers = config
            .hosts
            .iter()
            .map(RedisSubscriber::new)
            .collect::<Result<Vec<_>, _>>()?;
        let stop = Shutdown::new();
        let mut tasks = Vec::new();
        let receivers = Receivers {
            router,
            metrics: metrics.clone(),
        };
        // One command connection per host: the canary's publishes, and
        // reading back what Redis holds for the subscriber connections.
        let publishers = HostRing::from_config(config)?;
        for host in publishers.hosts() {
            host.start();
        }
        let (ops, ops_rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        let connections = Arc::new(Connections::new(subscribers.len()));
        tasks.push(tokio::spawn(manage_subscriptions(
            ops_rx,
            Subscribing {
                subscribers: subscribers.clone(),
                commands: publishers.clone(),
                prefix: config.prefix.clone(),
                registry,
                metrics: metrics.clone(),
                health: health.clone(),
                connections: connections.clone(),
            },
        )));
        tasks.push(tokio::spawn(keep_subscriptions(
            subscribers.clone(),
            connections,
            health,
            metrics,
            stop.clone(),
        )));
        if let Some(sending) = canary {
            tasks.push(tokio::spawn(send_canaries(
                sending,
                publishers.clone(),
                config.prefix.clone(),
                stop.clone(),
            )));
        }
        tracing::info!(hosts = subscribers.len(), "pub/sub layer started");
        Ok(PubSubLayer {
            ops,
            stop,
            tasks: Mutex::new(tasks),
            subscribers,
            publishers,
            receivers: Mutex::new(Some(receivers)),
        })
    }

    /// Connects the subscribers and starts their receivers on `runtime`, so
    /// messages are read on the thread that routes them. Only the first
    /// call does anything.
    pub fn start_receiving(&self, runtime: &tokio::runtime::Handle) {
        let Some(receivers) = self.receivers.lock().take() else {
            return;
        };
        let mut tasks = self.tasks.lock();
        for subscriber in &self.subscribers {
            let subscriber = subscriber.clone();
            let router = receivers.router.clone();
            let metrics = receivers.metrics.clone();
            let stop = self.stop.clone();
            tasks.push(runtime.spawn(async move {
                subscriber.start();
                receive(subscriber, router, metrics, stop).await;
            }));
        }
    }

    pub async fn join(&self, groups: &[Arc<str>]) -> Result<(), LayerError> {
        let (done, subscribed) = oneshot::channel();
        self.ops
            .send(SubscriptionOp::Join {
                groups: groups.to_vec(),
                done,
            })
            .await
            .map_err(|_| LayerError::Stopped)?;
        subscribed.await.map_err(|_| LayerError::Stopped)?
    }

    pub fn leave(&self, groups: &[Arc<str>]) {
        let op = SubscriptionOp::Leave {
            groups: groups.to_vec(),
        };
        if let Err(mpsc::error::TrySendError::Full(op)) = self.ops.try_send(op) {
            let ops = self.ops.clone();
            tokio::spawn(async move {
                let _ = ops.send(op).await;
            });
        }
    }

    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self
            .ops
            .send(SubscriptionOp::UnsubscribeAll { done })
            .await
            .is_ok()
        {
            let _ = finished.await;
        }
        self.stop.trigger();
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        // Subscribers never placed never connected.
        if self.receivers.lock().is_none() {
            for subscriber in &self.subscribers {
                subscriber.stop().await;
            }
        }
        for host in self.publishers.hosts() {
            host.stop().await;
        }
    }
}

/// At most this many published messages are routed as one run before the
/// receiver yields to the other tasks of its thread.
const PUBLISHED_RUN: usize = 512;

/// Hands every published message of one connection to the router. The
/// messages already waiting (up to `PUBLISHED_RUN`) are routed as one run
/// whose sockets are woken together.
async fn receive(
    subscriber: RedisSubscriber,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) {
    let mut messages = subscriber.messages();
    let mut wakeups = Wakeups::counting(metrics.frames_delivered.clone());
    let mut pacer = super::Pacer::new();
    tracing::info!(
        thread = super::thread_name(),
        host = subscriber.label(),
        "receiving"
    );
    loop {
        let mut next = tokio::select! {
            _ = stop.triggered() => return,
            next = messages.next() => next,
        };
        let mut handled = 0;
        loop {
            match next {
                NextPublished::Message(published) => {
                    router.route_published(
                        &published.channel,
                        &published.payload,
                        unix_now(),
                        &mut wakeups,
                    );
                    pacer.between_payloads(&mut wakeups, &metrics).await;
                }
                NextPublished::Lagged(missed) => {
                    metrics.dropped_many(DropReason::SubscriberLag, missed);
                    tracing::warn!(
                        missed,
                        host = subscriber.label(),
                        "router fell behind a subscriber"
                    );
                }
                NextPublished::Closed => return,
            }
            handled += 1;
            if handled == PUBLISHED_RUN {
                break;
            }
            match messages.try_next() {
                Some(waiting) => next = waiting,
                None => break,
            }
        }
        wakeups.wake_all();
    }
}

/// Which connection each subscriber host is on: bumped on every reconnect
/// (and when the canary says subscriptions were lost without one), so the
/// subscription manager knows Redis holds nothing for it any more.
struct Connections {
    generations: Vec<AtomicU64>,
    changed: Notify,
}

impl Connections {
    fn new(hosts: usize) -> Connections {
        Connections {
            generations: (0..hosts).map(|_| AtomicU64::new(0)).collect(),
            changed: Notify::new(),
        }
    }

    fn replaced(&self, host: usize) {
        if let Some(generation) = self.generations.get(host) {
            generation.fetch_add(1, Ordering::Relaxed);
        }
        self.changed.notify_one();
    }

    fn current(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.generations
            .iter()
            .map(|generation| generation.load(Ordering::Relaxed))
            .enumerate()
    }
}

/// What the subscription manager works with.
struct Subscribing {
    subscribers: Vec<RedisSubscriber>,
    /// A command connection per host, to read back what Redis holds.
    commands: HostRing,
    prefix: String,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    connections: Arc<Connections>,
}

/// Rounds of changes one batch may take when connections change under it,
/// before its joins are answered with what holds.
const ROUNDS_PER_BATCH: usize = 3;

/// Serialises subscription changes and folds each batch into one
/// `UNSUBSCRIBE` and one `SUBSCRIBE` per host. Whether a group should be
/// subscribed is read from the registry when the batch runs, so a join and
/// a leave racing each other end in the state the registry holds. What
/// Redis did not confirm is retried with backoff (at once for a host a
/// join waits on), and after a reconnect everything wanted is subscribed
/// again.
async fn manage_subscriptions(mut ops: mpsc::Receiver<SubscriptionOp>, context: Subscribing) {
    let Subscribing {
        subscribers,
        commands,
        prefix,
        registry,
        metrics,
        health,
        connections,
    } = context;
    let mut book = SubscriptionBook::new(subscribers.len());
    let host_of = |group: &str| {
        shard_index(
            &names::pubsub_group_channel(&prefix, group),
            subscribers.len(),
        )
    };
    let mut batch = Vec::with_capacity(256);
    loop {
        let retry_at = book.next_retry();
        tokio::select! {
            received = ops.recv_many(&mut batch, SUBSCRIPTION_BATCH) => {
                if received == 0 {
                    return;
                }
            }
            () = connections.changed.notified() => {}
            () = until(retry_at) => {}
        }
        let now = Instant::now();
        let mut joins = Vec::new();
        let mut finished = Vec::new();
        let mut unsubscribe_all = false;
        for op in batch.drain(..) {
            match op {
                SubscriptionOp::Join { groups, done } => {
                    let hosts: Vec<usize> = groups.iter().map(|group| host_of(group)).collect();
                    for (group, host) in groups.iter().zip(&hosts) {
                        book.want(*host, group, registry.has_group(group), now);
                    }
                    joins.push((groups, hosts, done));
                }
                SubscriptionOp::Leave { groups } => {
                    for group in &groups {
                        book.want(host_of(group), group, registry.has_group(group), now);
                    }
                }
                SubscriptionOp::UnsubscribeAll { done } => {
                    unsubscribe_all = true;
                    finished.push(done);
                }
            }
        }
        if unsubscribe_all {
            book.want_nothing(now);
        }
        for _ in 0..ROUNDS_PER_BATCH {
            let now = Instant::now();
            for (host, connection) in connections.current() {
                book.connection(host, connection, now);
            }
            let waited_on = |host: usize| {
                joins.iter().any(|(groups, hosts, _)| {
                    groups
                        .iter()
                        .zip(hosts)
                        .any(|(group, group_host)| *group_host == host && !book.holds(host, group))
                })
            };
            let due = book.changes(now, waited_on);
            if due.is_empty() {
                break;
            }
            let outcomes = join_all(
                due.into_iter()
                    .map(|changes| apply(&metrics, &subscribers, &commands, &prefix, changes)),
            )
            .await;
            let now = Instant::now();
            // A connection replaced meanwhile makes these outcomes unknown.
            for (host, connection) in connections.current() {
                book.connection(host, connection, now);
            }
            for (changes, unsubscribed, subscribed) in outcomes {
                book.outcome(changes, unsubscribed, subscribed, now);
            }
        }
        for (groups, hosts, done) in joins {
            let held = groups
                .iter()
                .zip(&hosts)
                .all(|(group, host)| book.holds(*host, group));
            let _ = done.send(if held {
                Ok(())
            } else {
                Err(LayerError::Unavailable("SUBSCRIBE failed".into()))
            });
        }
        for done in finished {
            let _ = done.send(());
        }
        let counts = book.counts();
        metrics.set_pubsub_subscriptions(counts.wanted, counts.held, counts.missing);
        health.set_subscriptions_missing_since(book.missing_since());
    }
}

/// Waits until `at`, or forever without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Tokens of the PINGs that wait for subscription changes, unique in the
/// process so a reply can only be taken for its own PING.
static CONFIRMATIONS: AtomicU64 = AtomicU64::new(0);

/// Whether the warning that subscriptions cannot be verified was logged.
static CANNOT_VERIFY_REPORTED: AtomicBool = AtomicBool::new(false);

/// Sends one host's changes: one `UNSUBSCRIBE`, one `SUBSCRIBE`, a `PING`
/// that returns once Redis carried both out, then reads from Redis (on the
/// host's command connection) how many channels the subscriber connection
/// holds: the changes are confirmed only if that is every wanted group.
/// Returns them with whether each was confirmed.
async fn apply(
    metrics: &Metrics,
    subscribers: &[RedisSubscriber],
    commands: &HostRing,
    prefix: &str,
    changes: HostChanges,
) -> (HostChanges, bool, bool) {
    let (Some(subscriber), Some(command)) =
        (subscribers.get(changes.host), commands.host(changes.host))
    else {
        return (changes, false, false);
    };
    let channels = |groups: &[Arc<str>]| -> Vec<String> {
        groups
            .iter()
            .map(|group| names::pubsub_group_channel(prefix, group))
            .collect()
    };
    let token = format!(
        "gateway-subscriptions-{}",
        CONFIRMATIONS.fetch_add(1, Ordering::Relaxed)
    );
    let outcome: Result<Option<u64>, RedisError> = metrics
        .timed_redis("subscribe", async {
            subscriber
                .unsubscribe(channels(&changes.unsubscribe))
                .await?;
            subscriber.subscribe(channels(&changes.subscribe)).await?;
            subscriber.carried_out(&token).await?;
            command.subscriptions_of(subscriber.name()).await
        })
        .await;
    match outcome {
        Ok(Some(held)) if held == changes.wanted as u64 => (changes, true, true),
        Ok(None) => {
            // Redis will not say what it holds: carried out has to do.
            if !CANNOT_VERIFY_REPORTED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    host = subscriber.label(),
                    "CLIENT LIST is not allowed: a SUBSCRIBE Redis refuses (ACL) cannot be noticed"
                );
            }
            (changes, true, true)
        }
        outcome => {
            metrics.pubsub_subscription_failures.inc();
            let error = match outcome {
                Ok(held) => format!(
                    "Redis holds {} subscriptions for the connection, {} are wanted",
                    held.unwrap_or(0),
                    changes.wanted
                ),
                Err(error) => error.to_string(),
            };
            tracing::warn!(
                %error,
                host = subscriber.label(),
                subscribe = changes.subscribe.len(),
                unsubscribe = changes.unsubscribe.len(),
                "subscription change not confirmed; retrying"
            );
            // Which part Redis refused is not known: all of it is repeated
            // (both commands are idempotent).
            (changes, false, false)
        }
    }
}

/// At most this often, subscriptions are renewed because the canary stopped
/// coming back while Redis looked connected.
const CANARY_REPAIR_EVERY: Duration = Duration::from_secs(5);

/// Readiness from connectivity; after each reconnect, tells the
/// subscription manager the host's connection was replaced (Redis forgets
/// subscriptions with the connection), and so does a canary that stopped
/// coming back while connected (subscriptions lost some other way).
async fn keep_subscriptions(
    subscribers: Vec<RedisSubscriber>,
    connections: Arc<Connections>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) {
    let mut watchers = tokio::task::JoinSet::new();
    for (host, subscriber) in subscribers.iter().enumerate() {
        let mut events = subscriber.reconnects();
        let label = subscriber.label().to_string();
        let metrics = metrics.clone();
        let connections = connections.clone();
        watchers.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        metrics.redis_reconnects.inc();
                        tracing::info!(host = label, "Redis connected; subscribing again");
                        connections.replaced(host);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    let tick = Duration::from_millis(100);
    let mut since_repair = CANARY_REPAIR_EVERY;
    loop {
        let connected = subscribers.iter().all(RedisSubscriber::is_connected);
        health.set_redis_connected(connected);
        if connected {
            // Nothing polls on this layer: a live subscriber connection is
            // the receiver running.
            health.receiver_beat();
        }
        since_repair += tick;
        if connected && health.canary_overdue() && since_repair >= CANARY_REPAIR_EVERY {
            since_repair = Duration::ZERO;
            tracing::warn!("canary missing while connected; subscribing again to everything");
            for host in 0..subscribers.len() {
                connections.replaced(host);
            }
        }
        tokio::select! {
            _ = stop.triggered() => break,
            _ = tokio::time::sleep(tick) => {}
        }
    }
    watchers.abort_all();
}

/// Every `interval`, publishes a canary to this process's canary group the
/// way the pub/sub layer's group_send does; it comes back only while the
/// subscription is alive.
async fn send_canaries(
    sending: CanarySending,
    publishers: HostRing,
    prefix: String,
    stop: Shutdown,
) {
    let channel = names::pubsub_group_channel(&prefix, sending.canary.group());
    let Some(host) = publishers.host(publishers.index_for(&channel)) else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.triggered() => return,
            _ = tokio::time::sleep(sending.interval) => {}
        }
        let now = unix_now();
        let Some(payload) = sending
            .canary
            .event(&[], now)
            .and_then(|event| sending.router.encode(&event, now))
        else {
            continue;
        };
        if let Err(error) = host.publish(&channel, payload).await {
            tracing::debug!(%error, "canary: publishing failed");
        }
    }
}
