//! Health: the liveness and readiness verdicts behind `/healthz` and `/readyz`.
//!
//! Readiness means this process can deliver right now: every Redis host is
//! connected, the receiver has completed a round trip recently, and the
//! process is not draining. It only keeps and judges flags set by others; it
//! must not probe Redis itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the receiver's last completed round trip.
    receiver_beat_ms: AtomicU64,
    receiver_stale_after: Duration,
    redis_connected: AtomicBool,
    draining: AtomicBool,
}

/// Why the process is not ready, for the `/readyz` body and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    RedisDisconnected,
    ReceiverStalled,
    Draining,
}

impl NotReady {
    pub fn label(self) -> &'static str {
        match self {
            NotReady::RedisDisconnected => "redis_disconnected",
            NotReady::ReceiverStalled => "receiver_stalled",
            NotReady::Draining => "draining",
        }
    }
}

impl Health {
    pub fn new(receiver_stale_after: Duration) -> Health {
        Health {
            started: Instant::now(),
            receiver_beat_ms: AtomicU64::new(u64::MAX),
            receiver_stale_after,
            redis_connected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    pub fn receiver_beat(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.receiver_beat_ms.store(now, Ordering::Relaxed);
    }

    pub fn set_redis_connected(&self, connected: bool) {
        self.redis_connected.store(connected, Ordering::Relaxed);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.is_draining() {
            return Err(NotReady::Draining);
        }
        if !self.redis_connected.load(Ordering::Relaxed) {
            return Err(NotReady::RedisDisconnected);
        }
        let beat = self.receiver_beat_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        if beat == u64::MAX
            || now.saturating_sub(beat) > self.receiver_stale_after.as_millis() as u64
        {
            return Err(NotReady::ReceiverStalled);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_redis_a_recent_beat_and_no_drain() {
        let health = Health::new(Duration::from_secs(5));
        assert_eq!(health.readiness(), Err(NotReady::RedisDisconnected));
        health.set_redis_connected(true);
        assert_eq!(health.readiness(), Err(NotReady::ReceiverStalled));
        health.receiver_beat();
        assert_eq!(health.readiness(), Ok(()));
        health.start_draining();
        assert_eq!(health.readiness(), Err(NotReady::Draining));
    }
}
