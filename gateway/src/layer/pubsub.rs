//! Pub/sub layer: the receiving side of `channels_redis.pubsub.RedisPubSubChannelLayer`.
//!
//! Django `PUBLISH`es each `group_send` to `<prefix>__group__<group>` on the
//! host the crc32 ring picks for that channel name; nothing is stored in
//! Redis. So this layer subscribes to a group's channel while at least one
//! local socket is in the group and unsubscribes when the last leaves, in one
//! `SUBSCRIBE`/`UNSUBSCRIBE` per host per batch of changes; it subscribes
//! again to everything after a reconnect. A join resolves only once the
//! subscription is confirmed, so nothing published after the upgrade is
//! missed. It must not render frames or touch sockets.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use parking_lot::Mutex;
use shared_proto::names;
use shared_proto::shard::shard_index;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{CanarySending, HostRing, LayerError};
use crate::config::LayerConfig;
use crate::health::Health;
use crate::metrics::{DropReason, Metrics};
use crate::outbox::Wakeups;
use crate::redis::{NextPublished, RedisError, RedisSubscriber};
use crate::registry::Registry;
use crate::router::Router;
use crate::shutdown::Shutdown;

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
        let (ops, ops_rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        tasks.push(tokio::spawn(manage_subscriptions(
            ops_rx,
            subscribers.clone(),
            config.prefix.clone(),
            registry,
            metrics.clone(),
        )));
        tasks.push(tokio::spawn(keep_subscriptions(
            subscribers.clone(),
            health,
            metrics,
            stop.clone(),
        )));
        let publishers = HostRing::from_config(config)?;
        if let Some(sending) = canary {
            for host in publishers.hosts() {
                host.start();
            }
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
                    router.route_published(&published.channel, &published.payload, &mut wakeups);
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

/// Serialises subscription changes and folds each batch into one
/// `UNSUBSCRIBE` and one `SUBSCRIBE` per host. Whether a group should be
/// subscribed is read from the registry when the batch runs, so a join and
/// a leave racing each other end in the state the registry holds.
async fn manage_subscriptions(
    mut ops: mpsc::Receiver<SubscriptionOp>,
    subscribers: Vec<RedisSubscriber>,
    prefix: String,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) {
    let mut subscribed: HashSet<Arc<str>> = HashSet::new();
    let mut batch = Vec::with_capacity(256);
    while ops.recv_many(&mut batch, SUBSCRIPTION_BATCH).await > 0 {
        let mut touched: Vec<Arc<str>> = Vec::new();
        let mut joins = Vec::new();
        let mut finished = Vec::new();
        let mut unsubscribe_all = false;
        for op in batch.drain(..) {
            match op {
                SubscriptionOp::Join { groups, done } => {
                    touched.extend(groups.iter().cloned());
                    joins.push((groups, done));
                }
                SubscriptionOp::Leave { groups } => touched.extend(groups),
                SubscriptionOp::UnsubscribeAll { done } => {
                    unsubscribe_all = true;
                    finished.push(done);
                }
            }
        }
        let mut to_subscribe = Vec::new();
        let mut to_unsubscribe = Vec::new();
        if unsubscribe_all {
            to_unsubscribe.extend(subscribed.iter().cloned());
        } else {
            for group in touched {
                let wanted = registry.has_group(&group);
                let active = subscribed.contains(&group);
                if wanted && !active && !to_subscribe.contains(&group) {
                    to_subscribe.push(group);
                } else if !wanted && active && !to_unsubscribe.contains(&group) {
                    to_unsubscribe.push(group);
                }
            }
        }
        let unsubscribed = per_host(&metrics, &subscribers, &prefix, &to_unsubscribe, false).await;
        for group in unsubscribed {
            subscribed.remove(&group);
        }
        let newly = per_host(&metrics, &subscribers, &prefix, &to_subscribe, true).await;
        subscribed.extend(newly);
        for (groups, done) in joins {
            let ready = groups.iter().all(|group| subscribed.contains(group));
            let _ = done.send(if ready {
                Ok(())
            } else {
                Err(LayerError::Unavailable("SUBSCRIBE failed".into()))
            });
        }
        for done in finished {
            let _ = done.send(());
        }
    }
}

/// Sends one (UN)SUBSCRIBE per host for `groups`; returns the groups whose
/// host confirmed it.
async fn per_host(
    metrics: &Metrics,
    subscribers: &[RedisSubscriber],
    prefix: &str,
    groups: &[Arc<str>],
    subscribe: bool,
) -> Vec<Arc<str>> {
    if groups.is_empty() {
        return Vec::new();
    }
    let mut by_host: Vec<(Vec<String>, Vec<Arc<str>>)> =
        vec![Default::default(); subscribers.len()];
    for group in groups {
        let channel = names::pubsub_group_channel(prefix, group);
        if let Some((channels, members)) = by_host.get_mut(shard_index(&channel, subscribers.len()))
        {
            channels.push(channel);
            members.push(group.clone());
        }
    }
    let outcomes = join_all(subscribers.iter().zip(by_host).map(
        |(subscriber, (channels, members))| async move {
            let result = if subscribe {
                metrics
                    .timed_redis("subscribe", subscriber.subscribe(channels))
                    .await
            } else {
                metrics
                    .timed_redis("unsubscribe", subscriber.unsubscribe(channels))
                    .await
            };
            match result {
                Ok(()) => members,
                Err(error) => {
                    tracing::warn!(%error, subscribe, "subscription change failed");
                    Vec::new()
                }
            }
        },
    ))
    .await;
    outcomes.into_iter().flatten().collect()
}

/// Readiness from connectivity, and a fresh SUBSCRIBE of every tracked
/// channel after each reconnect (Redis forgets subscriptions with the
/// connection).
async fn keep_subscriptions(
    subscribers: Vec<RedisSubscriber>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) {
    let mut watchers = tokio::task::JoinSet::new();
    for subscriber in &subscribers {
        let mut events = subscriber.reconnects();
        let subscriber = subscriber.clone();
        let metrics = metrics.clone();
        watchers.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        metrics.redis_reconnects.inc();
                        tracing::info!(
                            host = subscriber.label(),
                            "Redis connected; subscribing again"
                        );
                        if let Err(error) = subscriber.resubscribe().await {
                            tracing::warn!(%error, "re-subscribing failed");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    loop {
        let connected = subscribers.iter().all(RedisSubscriber::is_connected);
        health.set_redis_connected(connected);
        if connected {
            // Nothing polls on this layer: a live subscriber connection is
            // the receiver running.
            health.receiver_beat();
        }
        tokio::select! {
            _ = stop.triggered() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
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
        let Some(payload) = sending
            .canary
            .event(&[])
            .and_then(|event| sending.router.encode(&event))
        else {
            continue;
        };
        if let Err(error) = host.publish(&channel, payload).await {
            tracing::debug!(%error, "canary: publishing failed");
        }
    }
}
