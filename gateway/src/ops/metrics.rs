//! Metrics: every number the gateway exports, in one Prometheus registry.
//!
//! Owns metric names, help texts and label values, and renders the text
//! exposition for `/metrics`. Label values are fixed words chosen here, never
//! user input (no tokens, user ids or group names). It must not decide when
//! something is counted; callers do.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Why a message or a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The socket's outbox was full; the socket is closed.
    SlowConsumer,
    /// An event `type` that is neither `send_notification` nor passed through.
    UnknownType,
    /// The Redis payload could not be decoded (or decrypted).
    DecodeError,
    /// An encrypted payload older than the Fernet TTL (`expiry + 10`).
    Expired,
    /// The event could not be turned into JSON (bytes, ext types, no `message`).
    RenderError,
    /// The channel names a socket this process no longer holds.
    NoLocalSocket,
    /// The channel belongs to another process (misrouted or foreign).
    ForeignChannel,
    /// Pub/sub messages discarded because the router fell behind a
    /// subscriber connection's buffer.
    SubscriberLag,
    /// Frames still queued (or being written) for a socket that ended on
    /// its own account: the client left, its connection failed or timed
    /// out, its token expired, it broke the protocol or a limit.
    SocketClosed,
    /// Frames still queued for a socket closed by the drain at shutdown.
    Draining,
    /// Frames still queued for a socket the backend closed
    /// (`gateway.disconnect`).
    BackendDisconnect,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::SlowConsumer,
        DropReason::UnknownType,
        DropReason::DecodeError,
        DropReason::Expired,
        DropReason::RenderError,
        DropReason::NoLocalSocket,
        DropReason::ForeignChannel,
        DropReason::SubscriberLag,
        DropReason::SocketClosed,
        DropReason::Draining,
        DropReason::BackendDisconnect,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::UnknownType => "unknown_type",
            DropReason::DecodeError => "decode_error",
            DropReason::Expired => "expired",
            DropReason::RenderError => "render_error",
            DropReason::NoLocalSocket => "no_local_socket",
            DropReason::ForeignChannel => "foreign_channel",
            DropReason::SubscriberLag => "subscriber_lag",
            DropReason::SocketClosed => "socket_closed",
            DropReason::Draining => "draining",
            DropReason::BackendDisconnect => "backend_disconnect",
        }
    }
}

/// How a receiver's pause for sockets with half-full queues ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseOutcome {
    /// Every socket it waited for took its frames.
    CaughtUp,
    /// Some socket was still behind when the pause's limit passed.
    GaveUp,
    /// Not paused: the receiver had spent its pause budget for this second.
    OverBudget,
}

impl PauseOutcome {
    pub fn label(self) -> &'static str {
        match self {
            PauseOutcome::CaughtUp => "caught_up",
            PauseOutcome::GaveUp => "gave_up",
            PauseOutcome::OverBudget => "over_budget",
        }
    }
}

/// How one recovery of missed messages (`recovery`) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryResult {
    /// Everything after the client's position was replayed.
    Recovered,
    /// Messages after the position may be gone (trimmed by age, or refused
    /// at `capacity`): what was kept was replayed, `recovered: false`.
    WindowExceeded,
    /// A first connect (`recover=`): nothing to replay.
    Fresh,
    /// No usable position (garbage, or from the future).
    BadPosition,
    /// The replay keys could not be read.
    Unavailable,
}

impl RecoveryResult {
    pub fn label(self) -> &'static str {
        match self {
            RecoveryResult::Recovered => "recovered",
            RecoveryResult::WindowExceeded => "window_exceeded",
            RecoveryResult::Fresh => "fresh",
            RecoveryResult::BadPosition => "bad_position",
            RecoveryResult::Unavailable => "unavailable",
        }
    }

    const ALL: [RecoveryResult; 5] = [
        RecoveryResult::Recovered,
        RecoveryResult::WindowExceeded,
        RecoveryResult::Fresh,
        RecoveryResult::BadPosition,
        RecoveryResult::Unavailable,
    ];
}

/// How one fetch of the JWKS document (`auth.jwks_url`) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksFetchResult {
    /// A usable document; its keys replaced the previous ones.
    Ok,
    /// No complete answer within `auth.jwks_fetch_timeout`.
    Timeout,
    /// DNS, TCP or TLS failed (a certificate not signed by a trusted root
    /// lands here).
    ConnectError,
    /// An answer other than 200.
    BadStatus,
    /// A body larger than the cap.
    TooLarge,
    /// Not JSON, not a JWKS, or no usable signing key in it.
    BadDocument,
}

impl JwksFetchResult {
    pub const ALL: [JwksFetchResult; 6] = [
        JwksFetchResult::Ok,
        JwksFetchResult::Timeout,
        JwksFetchResult::ConnectError,
        JwksFetchResult::BadStatus,
        JwksFetchResult::TooLarge,
        JwksFetchResult::BadDocument,
    ];

    pub fn label(self) -> &'static str {
        match self {
            JwksFetchResult::Ok => "ok",
            JwksFetchResult::Timeout => "timeout",
            JwksFetchResult::ConnectError => "connect_error",
            JwksFetchResult::BadStatus => "bad_status",
            JwksFetchResult::TooLarge => "too_large",
            JwksFetchResult::BadDocument => "bad_document",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub sockets_open: IntGauge,
    connects: IntCounterVec,
    auth_failures: IntCounterVec,
    redis_messages_core: IntCounter,
    redis_messages_pubsub: IntCounter,
    pub frames_delivered: IntCounter,
    drops: IntCounterVec,
    delivery_pauses: IntCounterVec,
    pub redis_reconnects: IntCounter,
    pub membership_writes_failed: IntCounter,
    pub membership_pipelines: IntCounter,
    pub publish_lag: Histogram,
    pub client_frames: IntCounter,
    pub canary_round_trip: Histogram,
    pub draining: IntGauge,
    redis_command: prometheus::HistogramVec,
    pub groups_local: IntGauge,
    pub drain_remaining: IntGauge,
    pub canaries_received: IntCounter,
    jwks_fetches: IntCounterVec,
    /// Keys held from the fetched JWKS document.
    pub jwks_keys: IntGauge,
    pub processes_seen: IntGauge,
    pub processes_reaped: IntCounter,
    pub memberships_reaped: IntCounter,
    pub liveness_lost: IntCounter,
    pub leaves_awaiting_retry: IntGauge,
    recoveries: IntCounterVec,
    pub messages_replayed: IntCounter,
    pub replay_members_removed: IntCounter,
    pubsub_subscriptions: prometheus::IntGaugeVec,
    pub pubsub_subscription_failures: IntCounter,
}

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Authenticated connects arrive faster than `connect_rate` allows.
    ConnectRate,
    /// One client address starts handshakes faster than
    /// `connect_rate_per_ip` allows.
    AddressConnectRate,
    /// This process holds `max_sockets` already.
    ProcessFull,
    /// This user holds `max_sockets_per_user` already.
    UserFull,
    /// This client address holds `max_sockets_per_ip` already.
    AddressFull,
    /// A socket still waiting for its first-message token sent frames
    /// faster than `inbound_rate` allows (closed with 4007).
    InboundRate,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::ConnectRate => "connect_rate",
            Refusal::AddressConnectRate => "address_connect_rate",
            Refusal::ProcessFull => "process_full",
            Refusal::UserFull => "user_full",
            Refusal::AddressFull => "address_full",
            Refusal::InboundRate => "inbound_rate",
        }
    }
}

/// Outcome of one upgrade request.
#[derive(Debug, Clone, Copy)]
pub enum ConnectResult {
    Accepted,
    Unauthorized,
    /// Refused with 403 by the origin allowlist (`auth.allowed_origins`,
    /// `auth.missing_origin`) before any token was looked at.
    ForbiddenOrigin,
    /// Refused with 403: the token asks for a group no pattern allows.
    ForbiddenGroup,
    BadHandshake,
    RedisUnavailable,
    Draining,
    /// Refused by a limit (`limits.*`); labelled with the limit's name.
    Limited(Refusal),
}

impl ConnectResult {
    fn label(self) -> &'static str {
        match self {
            ConnectResult::Accepted => "accepted",
            ConnectResult::Unauthorized => "unauthorized",
            ConnectResult::ForbiddenOrigin => "forbidden_origin",
            ConnectResult::ForbiddenGroup => "forbidden_group",
            ConnectResult::BadHandshake => "bad_handshake",
            ConnectResult::RedisUnavailable => "redis_unavailable",
            ConnectResult::Draining => "draining",
            ConnectResult::Limited(refusal) => refusal.label(),
        }
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    // Names are constants of this module, so a clash is a bug caught by the tests.
    if let Err(error) = registry.register(Box::new(metric.clone())) {
        tracing::error!(%error, "metric registration failed");
    }
    metric
}

fn counter_vec(name: &str, help: &str, label: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &[label])
        .unwrap_or_else(|error| unreachable!("metric {name} has a valid definition: {error}"))
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let redis_messages = register(
            &registry,
            counter_vec(
                "gateway_redis_messages_total",
                "Payloads received from Redis by layer",
                "layer",
            ),
        );
        let metrics = Metrics {
            sockets_open: register(
                &registry,
                IntGauge::new("gateway_sockets_open", "WebSocket connections open now")
                    .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            connects: register(
                &registry,
                counter_vec(
                    "gateway_connects_total",
                    "WebSocket upgrade requests by result",
                    "result",
                ),
            ),
            auth_failures: register(
                &registry,
                counter_vec(
                    "gateway_auth_failures_total",
                    "Refused handshakes by reason",
                    "reason",
                ),
            ),
            // Resolved once: this counter moves on every message.
            redis_messages_core: redis_messages.with_label_values(&["core"]),
            redis_messages_pubsub: redis_messages.with_label_values(&["pubsub"]),
            frames_delivered: register(
                &registry,
                IntCounter::new(
                    "gateway_frames_delivered_total",
                    "Text frames handed to client sockets",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            drops: register(
                &registry,
                counter_vec(
                    "gateway_drops_total",
                    "Messages or frames not delivered, by reason",
                    "reason",
                ),
            ),
            delivery_pauses: register(
                &registry,
                counter_vec(
                    "gateway_delivery_pauses_total",
                    "Pauses of a receiver's run so sockets half full could take their frames, by outcome",
                    "outcome",
                ),
            ),
            redis_reconnects: register(
                &registry,
                IntCounter::new(
                    "gateway_redis_reconnects_total",
                    "Reconnections to any Redis host",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            membership_writes_failed: register(
                &registry,
                IntCounter::new(
                    "gateway_membership_write_failures_total",
                    "Pipelines of group membership writes that failed",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            membership_pipelines: register(
                &registry,
                IntCounter::new(
                    "gateway_membership_pipelines_total",
                    "Round trips that wrote group memberships (many joins and leaves each)",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            publish_lag: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "gateway_publish_lag_seconds",
                        "From the channels_redis send time (queue score) to routing",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ]),
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            client_frames: register(
                &registry,
                IntCounter::new(
                    "gateway_client_frames_total",
                    "Data frames received from clients",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            redis_command: register(
                &registry,
                prometheus::HistogramVec::new(
                    HistogramOpts::new(
                        "gateway_redis_command_seconds",
                        "Redis round trips by purpose (blocking waits excluded)",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0, 5.0,
                    ]),
                    &["command"],
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            groups_local: register(
                &registry,
                IntGauge::new(
                    "gateway_groups_local",
                    "Groups with at least one socket on this process",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            draining: register(
                &registry,
                IntGauge::new("gateway_draining", "1 while the process is shutting down")
                    .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            drain_remaining: register(
                &registry,
                IntGauge::new(
                    "gateway_drain_sockets_remaining",
                    "Sockets not yet told to close during a drain",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            canary_round_trip: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "gateway_canary_round_trip_seconds",
                        "A canary group_send from this process back to itself through Redis",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    ]),
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            canaries_received: register(
                &registry,
                IntCounter::new(
                    "gateway_canaries_received_total",
                    "Canaries that came back through Redis",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            jwks_fetches: register(
                &registry,
                counter_vec(
                    "gateway_jwks_fetches_total",
                    "Fetches of the JWKS document (auth.jwks_url) by result",
                    "result",
                ),
            ),
            jwks_keys: register(
                &registry,
                IntGauge::new(
                    "gateway_jwks_keys",
                    "Signing keys held from the fetched JWKS document",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            processes_seen: register(
                &registry,
                IntGauge::new(
                    "gateway_processes_seen",
                    "Gateway processes with a live liveness record at the last reaper pass, \
                     this one included (core layer)",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            processes_reaped: register(
                &registry,
                IntCounter::new(
                    "gateway_processes_reaped_total",
                    "Records of dead gateway processes this process removed, one per Redis host",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            memberships_reaped: register(
                &registry,
                IntCounter::new(
                    "gateway_memberships_reaped_total",
                    "Group memberships of dead gateway processes this process removed",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            liveness_lost: register(
                &registry,
                IntCounter::new(
                    "gateway_liveness_lost_total",
                    "Heartbeats that found this process's liveness record gone (stalled past \
                     layer.liveness_timeout, or Redis lost it); each re-adds every membership",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            leaves_awaiting_retry: register(
                &registry,
                IntGauge::new(
                    "gateway_leaves_awaiting_retry",
                    "Group leaves whose write failed and that are retried every second",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            recoveries: register(
                &registry,
                counter_vec(
                    "gateway_recoveries_total",
                    "Sockets that asked for missed messages (?recover=), by result; \
                     result=\"window_exceeded\" counts the window misses",
                    "result",
                ),
            ),
            messages_replayed: register(
                &registry,
                IntCounter::new(
                    "gateway_messages_replayed_total",
                    "Messages replayed to recovering sockets",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            replay_members_removed: register(
                &registry,
                IntCounter::new(
                    "gateway_replay_members_removed_total",
                    "Replay members this process removed from groups idle past twice the window",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            pubsub_subscriptions: register(
                &registry,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "gateway_pubsub_subscriptions",
                        "Pub/sub layer group subscriptions: wanted by local sockets, held \
                         (confirmed by Redis on the current connection), missing (wanted, not held)",
                    ),
                    &["state"],
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            pubsub_subscription_failures: register(
                &registry,
                IntCounter::new(
                    "gateway_pubsub_subscription_failures_total",
                    "SUBSCRIBE or UNSUBSCRIBE commands Redis did not confirm (retried)",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            registry,
        };
        // Export every label value from the start so dashboards and alerts see zeros.
        for reason in DropReason::ALL {
            metrics.drops.with_label_values(&[reason.label()]);
        }
        for result in JwksFetchResult::ALL {
            metrics.jwks_fetches.with_label_values(&[result.label()]);
        }
        for result in RecoveryResult::ALL {
            metrics.recoveries.with_label_values(&[result.label()]);
        }
        metrics
    }

    /// The pub/sub layer's subscriptions now (see `layer::subscriptions`).
    pub fn set_pubsub_subscriptions(&self, wanted: usize, held: usize, missing: usize) {
        for (state, count) in [("wanted", wanted), ("held", held), ("missing", missing)] {
            self.pubsub_subscriptions
                .with_label_values(&[state])
                .set(count as i64);
        }
    }

    pub fn connect(&self, result: ConnectResult) {
        self.connects.with_label_values(&[result.label()]).inc();
    }

    pub fn jwks_fetch(&self, result: JwksFetchResult) {
        self.jwks_fetches.with_label_values(&[result.label()]).inc();
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// One payload received from Redis by the core layer.
    pub fn core_message(&self) {
        self.redis_messages_core.inc();
    }

    /// One message received from Redis by the pub/sub layer.
    pub fn pubsub_message(&self) {
        self.redis_messages_pubsub.inc();
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped_many(reason, 1);
    }

    pub fn dropped_many(&self, reason: DropReason, count: u64) {
        self.drops
            .with_label_values(&[reason.label()])
            .inc_by(count);
    }

    /// One pause of a receiver's run (`outbox::Wakeups::pace`), or one it
    /// skipped.
    /// One recovery, and how many messages it replayed.
    pub fn recovery(&self, result: RecoveryResult, replayed: usize) {
        self.recoveries.with_label_values(&[result.label()]).inc();
        self.messages_replayed.inc_by(replayed as u64);
    }

    pub fn delivery_paused(&self, outcome: PauseOutcome) {
        self.delivery_pauses
            .with_label_values(&[outcome.label()])
            .inc();
    }

    /// Runs one Redis round trip and records how long it took under `command`.
    pub async fn timed_redis<T>(
        &self,
        command: &'static str,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let started = std::time::Instant::now();
        let result = call.await;
        self.redis_command
            .with_label_values(&[command])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "metrics encoding failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_metrics_render() {
        let metrics = Metrics::new();
        metrics.connect(ConnectResult::Accepted);
        metrics.dropped(DropReason::UnknownType);
        let text = metrics.render();
        for name in [
            "gateway_sockets_open",
            "gateway_connects_total{result=\"accepted\"} 1",
            "gateway_drops_total{reason=\"unknown_type\"} 1",
            "gateway_drops_total{reason=\"slow_consumer\"} 0",
            "gateway_publish_lag_seconds_bucket",
            "gateway_jwks_fetches_total{result=\"bad_status\"} 0",
            "gateway_processes_seen 0",
            "gateway_processes_reaped_total 0",
            "gateway_memberships_reaped_total 0",
            "gateway_liveness_lost_total 0",
            "gateway_leaves_awaiting_retry 0",
            "gateway_recoveries_total{result=\"window_exceeded\"} 0",
            "gateway_messages_replayed_total 0",
            "gateway_replay_members_removed_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
