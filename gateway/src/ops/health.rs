//! Health: the liveness and readiness verdicts behind `/healthz` and `/readyz`.
//!
//! Readiness means this process can deliver right now: every Redis host is
//! connected, the receiver has completed a round trip recently, no group
//! subscription local sockets need has been missing for long (pub/sub
//! layer), a canary sent through Redis the way Django sends came back
//! recently, and the process is not draining. It only keeps and judges flags set by others; it
//! must not probe Redis itself.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the receiver's last completed round trip.
    receiver_beat_ms: AtomicU64,
    receiver_stale_after: Duration,
    redis_connected: AtomicBool,
    draining: AtomicBool,
    /// Wakes what waits for the drain outside the registry (sockets still
    /// waiting for their first-message token).
    drain_started: tokio::sync::Notify,
    /// Handshakes past the draining check and not yet decided: the stop
    /// waits for them, so one that registers after the drain's list was
    /// taken is still closed with 1001 rather than cut off.
    handshakes_in_flight: AtomicUsize,
    /// Milliseconds since `started` of the last canary that came back.
    canary_beat_ms: AtomicU64,
    /// `None` when the canary is disabled.
    canary_stale_after: Option<Duration>,
    /// Milliseconds since `started` from which a wanted pub/sub
    /// subscription has been missing (`u64::MAX`: none is).
    subscriptions_missing_ms: AtomicU64,
}

/// How long a wanted pub/sub subscription may be missing before the
/// process is unready: a re-subscription after a reconnect, or a join's,
/// takes a round trip; one still failing after this is lost delivery.
pub const SUBSCRIPTION_GRACE: Duration = Duration::from_secs(2);

/// Why the process is not ready, for the `/readyz` body and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    RedisDisconnected,
    ReceiverStalled,
    /// A pub/sub subscription local sockets need has not been confirmed by
    /// Redis for longer than [`SUBSCRIPTION_GRACE`] (it is being retried).
    SubscriptionsMissing,
    CanaryMissing,
    Draining,
}

impl NotReady {
    pub const ALL: [NotReady; 5] = [
        NotReady::RedisDisconnected,
        NotReady::ReceiverStalled,
        NotReady::SubscriptionsMissing,
        NotReady::CanaryMissing,
        NotReady::Draining,
    ];

    pub fn label(self) -> &'static str {
        match self {
            NotReady::RedisDisconnected => "redis_disconnected",
            NotReady::ReceiverStalled => "receiver_stalled",
            NotReady::SubscriptionsMissing => "subscriptions_missing",
            NotReady::CanaryMissing => "canary_missing",
            NotReady::Draining => "draining",
        }
    }
}

impl Health {
    pub fn new(receiver_stale_after: Duration, canary_stale_after: Option<Duration>) -> Health {
        Health {
            started: Instant::now(),
            receiver_beat_ms: AtomicU64::new(u64::MAX),
            receiver_stale_after,
            redis_connected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain_started: tokio::sync::Notify::new(),
            handshakes_in_flight: AtomicUsize::new(0),
            canary_beat_ms: AtomicU64::new(u64::MAX),
            canary_stale_after,
            subscriptions_missing_ms: AtomicU64::new(u64::MAX),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn is_stale(&self, beat: &AtomicU64, limit: Duration) -> bool {
        let beat = beat.load(Ordering::Relaxed);
        beat == u64::MAX || self.now_ms().saturating_sub(beat) > limit.as_millis() as u64
    }

    pub fn receiver_beat(&self) {
        self.receiver_beat_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn canary_beat(&self) {
        self.canary_beat_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn set_redis_connected(&self, connected: bool) {
        self.redis_connected.store(connected, Ordering::Relaxed);
    }

    pub fn redis_connected(&self) -> bool {
        self.redis_connected.load(Ordering::Relaxed)
    }

    /// Since when a wanted pub/sub subscription has been missing, if one is.
    pub fn set_subscriptions_missing_since(&self, since: Option<Instant>) {
        let since_ms = since.map_or(u64::MAX, |since| {
            since.saturating_duration_since(self.started).as_millis() as u64
        });
        self.subscriptions_missing_ms
            .store(since_ms, Ordering::Relaxed);
    }

    /// A wanted subscription has been missing for at least
    /// [`SUBSCRIPTION_GRACE`].
    pub fn subscriptions_missing(&self) -> bool {
        let since = self.subscriptions_missing_ms.load(Ordering::Relaxed);
        since != u64::MAX
            && self.now_ms().saturating_sub(since) >= SUBSCRIPTION_GRACE.as_millis() as u64
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.drain_started.notify_waiters();
    }

    /// Counts a handshake as in flight until the guard is dropped.
    pub fn handshake_started(&self) -> HandshakeInFlight<'_> {
        self.handshakes_in_flight.fetch_add(1, Ordering::SeqCst);
        HandshakeInFlight(self)
    }

    pub fn handshakes_in_flight(&self) -> usize {
        self.handshakes_in_flight.load(Ordering::SeqCst)
    }

    /// Resolves once the process drains (at once if it already does).
    pub async fn draining_started(&self) {
        let notified = self.drain_started.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a drain that starts in
        // between still wakes it.
        notified.as_mut().enable();
        if self.draining.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Canaries are enabled and none came back recently.
    pub fn canary_missing(&self) -> bool {
        self.canary_stale_after
            .is_some_and(|limit| self.is_stale(&self.canary_beat_ms, limit))
    }

    /// The canary is missing for longer than a freshly started process
    /// needs for its first one: something lost messages, repair is due.
    pub fn canary_overdue(&self) -> bool {
        self.canary_stale_after
            .is_some_and(|limit| self.canary_missing() && self.now_ms() > limit.as_millis() as u64)
    }

    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.is_draining() {
            return Err(NotReady::Draining);
        }
        if !self.redis_connected.load(Ordering::Relaxed) {
            return Err(NotReady::RedisDisconnected);
        }
        if self.is_stale(&self.receiver_beat_ms, self.receiver_stale_after) {
            return Err(NotReady::ReceiverStalled);
        }
        if self.subscriptions_missing() {
            return Err(NotReady::SubscriptionsMissing);
        }
        if self.canary_missing() {
            return Err(NotReady::CanaryMissing);
        }
        Ok(())
    }
}

/// A handshake in flight; dropping it counts it done.
pub struct HandshakeInFlight<'a>(&'a Health);

impl Drop for HandshakeInFlight<'_> {
    fn drop(&mut self) {
        self.0.handshakes_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_redis_recent_beats_and_no_drain() {
        let health = Health::new(Duration::from_secs(5), Some(Duration::from_secs(5)));
        assert_eq!(health.readiness(), Err(NotReady::RedisDisconnected));
        health.set_redis_connected(true);
        assert_eq!(health.readiness(), Err(NotReady::ReceiverStalled));
        health.receiver_beat();
        assert_eq!(health.readiness(), Err(NotReady::CanaryMissing));
        health.canary_beat();
        assert_eq!(health.readiness(), Ok(()));
        health.start_draining();
        assert_eq!(health.readiness(), Err(NotReady::Draining));
    }

    #[tokio::test]
    async fn waiting_for_the_drain_wakes_when_it_starts_or_at_once_after() {
        let health = std::sync::Arc::new(Health::new(Duration::from_secs(5), None));
        let waiter = tokio::spawn({
            let health = health.clone();
            async move { health.draining_started().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        health.start_draining();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the drain")
            .expect("waiter ran");
        tokio::time::timeout(Duration::from_secs(5), health.draining_started())
            .await
            .expect("already draining: at once");
    }

    #[test]
    fn handshakes_in_flight_are_counted_until_their_guard_drops() {
        let health = Health::new(Duration::from_secs(5), None);
        let first = health.handshake_started();
        let second = health.handshake_started();
        assert_eq!(health.handshakes_in_flight(), 2);
        drop(first);
        drop(second);
        assert_eq!(health.handshakes_in_flight(), 0);
    }

    #[test]
    fn a_subscription_missing_past_the_grace_makes_it_unready() {
        let mut health = Health::new(Duration::from_secs(5), Some(Duration::from_secs(5)));
        // As if running for a while, so "missing since" can lie in the past.
        health.started -= SUBSCRIPTION_GRACE * 2;
        health.set_redis_connected(true);
        health.receiver_beat();
        health.canary_beat();
        let now = Instant::now();
        health.set_subscriptions_missing_since(Some(now));
        assert_eq!(health.readiness(), Ok(()), "within the grace");
        health.set_subscriptions_missing_since(Some(now - SUBSCRIPTION_GRACE));
        assert_eq!(health.readiness(), Err(NotReady::SubscriptionsMissing));
        health.set_subscriptions_missing_since(None);
        assert_eq!(health.readiness(), Ok(()));
    }
}
