//! Drain: closing every socket of a stopping process without a reconnect
//! storm.
//!
//! Sockets are closed in batches spread evenly over the drain window (sized
//! to the pod's termination grace period), each close carrying a randomized
//! "retry after" hint in its reason, so clients come back to the other pods
//! gradually instead of all at once. A socket that registers after the
//! drain took its list, or that still waits for its first-message token,
//! is closed the same way at once (`close_one`). This module owns the
//! pacing and the hint, and counts the frames a drain's close discards
//! (`draining`); it
//! must not decide when draining starts or touch Redis (`server` orders the
//! shutdown, the layers remove memberships).

use std::time::Duration;

use shared_proto::close::CloseCode;

use crate::ops::metrics::{DropReason, Metrics};
use crate::relay::outbox::{CloseNote, Outbox};
use crate::relay::registry::Registry;

/// How often a batch of sockets is closed while draining.
const BATCH_EVERY: Duration = Duration::from_millis(100);

pub struct DrainPlan {
    /// Spread of the closes; zero closes everything at once.
    pub window: Duration,
    /// Upper bound of the random reconnect delay hinted to each client.
    pub reconnect_jitter: Duration,
}

/// Closes every socket in `registry` as `plan` says; returns how many.
pub async fn close_all(registry: &Registry, plan: &DrainPlan, metrics: &Metrics) -> usize {
    let outboxes = registry.all_outboxes();
    let total = outboxes.len();
    let batches = (plan.window.as_millis() / BATCH_EVERY.as_millis()).max(1) as usize;
    let per_batch = total.div_ceil(batches).max(1);
    metrics.drain_remaining.set(total as i64);
    let mut closed = 0;
    for (index, batch) in outboxes.chunks(per_batch).enumerate() {
        if index > 0 {
            tokio::time::sleep(BATCH_EVERY).await;
        }
        let mut discarded = 0;
        for outbox in batch {
            close_one(outbox, plan.reconnect_jitter);
            // Counted now, not when the socket's task ends: a client that
            // does not read may keep it until after the process has gone.
            discarded += outbox.take_discarded();
        }
        if discarded > 0 {
            metrics.dropped_many(DropReason::Draining, discarded as u64);
        }
        closed += batch.len();
        metrics.drain_remaining.set((total - closed) as i64);
    }
    total
}

/// Closes one socket for the drain: 1001, with a reconnect hint of its own
/// up to `jitter`.
pub(crate) fn close_one(outbox: &Outbox, jitter: Duration) {
    outbox.close_with(
        CloseCode::GoingAway,
        CloseNote::RetryAfter(retry_after(jitter)),
    );
}

/// A random reconnect delay for one drained client, up to `jitter`.
pub(crate) fn retry_after(jitter: Duration) -> Duration {
    let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=jitter_ms))
}

/// The close reason a draining socket gets: the table's reason plus a
/// machine-readable hint, e.g. `server shutting down; retry_after_ms=1234`.
pub fn reason_with_hint(code: CloseCode, retry_after: Duration) -> String {
    format!(
        "{}; retry_after_ms={}",
        code.reason(),
        retry_after.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_fits_a_close_frame() {
        let reason = reason_with_hint(CloseCode::GoingAway, Duration::from_secs(3600));
        assert_eq!(reason, "server shutting down; retry_after_ms=3600000");
        assert!(reason.len() <= 123, "close reasons are at most 123 bytes");
    }
}
