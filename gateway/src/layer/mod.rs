//! Layers: the gateway's side of a channels_redis channel layer.
//!
//! A layer makes a socket a member of its groups in Redis (so Django's
//! `group_send` reaches it), receives what Django sends, and hands every
//! payload to the router. `core` speaks `RedisChannelLayer`'s sorted-set
//! protocol, `pubsub` `RedisPubSubChannelLayer`'s channel subscriptions;
//! both sit behind the same `Layer` type; `liveness` keeps the core layer's
//! processes' heartbeats and reaps what dead ones left in Redis; `replay`
//! keeps each group's replay member for recovery and reads it back;
//! `redis` is the one module that speaks to Redis (every `fred` type stays
//! in it). Layers own their background tasks; they must not touch sockets
//! directly (the router and the outboxes do).

pub mod core;
pub(crate) mod liveness;
pub(crate) mod pubsub;
pub mod redis;
pub(crate) mod replay;
pub(crate) mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use shared_proto::shard::shard_index;

use crate::config::LayerConfig;
use crate::layer::redis::{RedisError, RedisHost, ReplaySnapshot};
use crate::ops::canary::Canary;
use crate::ops::metrics::{Metrics, PauseOutcome};
use crate::relay::outbox::{Paused, Wakeups};
use crate::relay::router::Router;

/// How long a receiver may hold back the wake-ups of the socket tasks it is
/// routing a run of payloads to (see `outbox::Wakeups`; the sockets it
/// writes to itself wait for the end of the run): when payloads queue up,
/// long enough for a broadcast's sockets to get several frames per write;
/// short next to what a notification may take end to end.
pub const WAKE_WINDOW: Duration = Duration::from_millis(2);

/// The longest a receiver pauses its run for sockets that reached half
/// their outbox: a fast client's task takes its frames within
/// microseconds on this thread and within a scheduler slice on another;
/// a client that does not read costs this once.
pub const PAUSE_LIMIT: Duration = Duration::from_millis(25);

/// Of every second, the most a receiver spends paused: sockets that keep
/// falling half behind (many slow links during a long backlog) must not
/// slow everyone else's delivery by more than this share.
const PAUSE_BUDGET: Duration = Duration::from_millis(250);
const PAUSE_BUDGET_WINDOW: Duration = Duration::from_secs(1);

/// What a receiver does between two payloads of a run: pause for sockets
/// that are half full (within its budget), or give the wake-ups held for
/// `WAKE_WINDOW`.
struct Pacer {
    window_started: tokio::time::Instant,
    paused_in_window: Duration,
}

impl Pacer {
    fn new() -> Pacer {
        Pacer {
            window_started: tokio::time::Instant::now(),
            paused_in_window: Duration::ZERO,
        }
    }

    async fn between_payloads(&mut self, wakeups: &mut Wakeups, metrics: &Metrics) {
        if !wakeups.wants_pause() {
            wakeups.wake_if_held_for(WAKE_WINDOW);
            return;
        }
        let now = tokio::time::Instant::now();
        if now.duration_since(self.window_started) >= PAUSE_BUDGET_WINDOW {
            self.window_started = now;
            self.paused_in_window = Duration::ZERO;
        }
        if self.paused_in_window >= PAUSE_BUDGET {
            wakeups.forget_pauses();
            wakeups.wake_if_held_for(WAKE_WINDOW);
            metrics.delivery_paused(PauseOutcome::OverBudget);
            return;
        }
        let paused = wakeups.pace(PAUSE_LIMIT).await;
        self.paused_in_window += now.elapsed();
        metrics.delivery_paused(match paused {
            Paused::CaughtUp => PauseOutcome::CaughtUp,
            Paused::GaveUp => PauseOutcome::GaveUp,
        });
    }
}

/// The current thread's name, for the log line that says where a receiver
/// runs.
fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string()
}

/// What a layer needs to send the process's canary through Redis.
#[derive(Clone)]
pub struct CanarySending {
    pub canary: Arc<Canary>,
    /// Encodes the canary event exactly as the backend encodes its events.
    pub router: Arc<Router>,
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    #[error("the layer is shutting down")]
    Stopped,
}

/// The configured Redis hosts, in the backend's `hosts` order.
#[derive(Clone)]
pub struct HostRing {
    hosts: Vec<RedisHost>,
}

impl HostRing {
    pub fn from_config(config: &LayerConfig) -> Result<HostRing, RedisError> {
        let hosts = config
            .hosts
            .iter()
            .map(RedisHost::new)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostRing { hosts })
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The index channels_redis picks for `name` (a group name, or the
    /// non-local part of a channel).
    pub fn index_for(&self, name: &str) -> usize {
        shard_index(name, self.hosts.len())
    }

    pub fn host(&self, index: usize) -> Option<&RedisHost> {
        self.hosts.get(index)
    }

    pub fn hosts(&self) -> &[RedisHost] {
        &self.hosts
    }
}

/// The layer this process runs, as configured by `layer.backend`.
pub enum Layer {
    Core(core::CoreLayer),
    Pubsub(pubsub::PubSubLayer),
}

impl Layer {
    /// Adds `channel` to `groups` in Redis; resolves once written. On the
    /// core layer that includes every join and leave queued before it: the
    /// membership writer takes them in order (except a leave that found
    /// the queue full, which follows later), so even a join of no groups
    /// waits for the leaves queued before it.
    pub async fn join(&self, groups: &[Arc<str>], channel: &str) -> Result<(), LayerError> {
        match self {
            Layer::Core(layer) => layer.join(groups, channel).await,
            Layer::Pubsub(layer) => layer.join(groups).await,
        }
    }

    /// Reads the replay keys of `groups` for a recovering socket (core
    /// layer; the configuration refuses recovery on the pub/sub layer).
    pub async fn read_replay(
        &self,
        groups: &[Arc<str>],
        from: Option<f64>,
        limit: usize,
    ) -> Result<ReplaySnapshot, LayerError> {
        match self {
            Layer::Core(layer) => layer.read_replay(groups, from, limit).await,
            Layer::Pubsub(_) => Err(LayerError::Unavailable(
                "the pub/sub layer keeps no messages to replay".into(),
            )),
        }
    }

    /// Removes `channel` from `groups`, in the background.
    pub fn leave(&self, groups: &[Arc<str>], channel: String) {
        match self {
            Layer::Core(layer) => layer.leave(groups, channel),
            Layer::Pubsub(layer) => layer.leave(groups),
        }
    }

    /// Starts receiving what the backend sends, on `runtime`: a socket
    /// thread's, so a message is read, routed and written on one thread.
    /// Only the first call does anything.
    pub fn start_receiving(&self, runtime: &tokio::runtime::Handle) {
        match self {
            Layer::Core(layer) => layer.start_receiving(runtime),
            Layer::Pubsub(layer) => layer.start_receiving(runtime),
        }
    }

    /// Removes every remaining membership of this process and stops receiving.
    pub async fn shutdown(&self) {
        match self {
            Layer::Core(layer) => layer.shutdown().await,
            Layer::Pubsub(layer) => layer.shutdown().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::outbox::Outbox;

    /// Sockets that never read ask for a pause each; the receiver pauses
    /// for them until a quarter of the second is spent, then goes on.
    #[tokio::test]
    async fn a_receiver_pauses_within_its_budget_then_goes_on() {
        let metrics = Metrics::new();
        let mut pacer = Pacer::new();
        let mut wakeups = Wakeups::new();
        let mut outboxes = Vec::new();
        let started = tokio::time::Instant::now();
        for _ in 0..40 {
            let outbox = Arc::new(Outbox::new(2));
            outbox.push("frame".into(), &mut wakeups);
            outboxes.push(outbox);
            pacer.between_payloads(&mut wakeups, &metrics).await;
            assert!(!wakeups.wants_pause());
        }
        assert!(
            started.elapsed() < PAUSE_BUDGET_WINDOW,
            "{:?}",
            started.elapsed()
        );
        let text = metrics.render();
        let count = |outcome: &str| {
            text.lines()
                .find_map(|line| {
                    line.strip_prefix(&format!(
                        "gateway_delivery_pauses_total{{outcome=\"{outcome}\"}} "
                    ))
                })
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let given_up = count("gave_up");
        let limit = (PAUSE_BUDGET.as_millis() / PAUSE_LIMIT.as_millis()) as u64;
        assert!(
            (1..=limit).contains(&given_up),
            "paused {given_up} times within the budget"
        );
        assert_eq!(given_up + count("over_budget"), 40);
    }
}
