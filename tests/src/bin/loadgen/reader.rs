//! What the sockets receive: each socket's reader task parses every frame
//! in place and counts it into the run's shared record ([`Shared`]: per
//! step, per socket), and the waits that poll that record. It reads and
//! counts only: it must not send on a socket (but the close it is told to
//! make) or publish.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;
use tests::lean_ws::LeanWs;
use tokio::sync::watch;

use crate::measure::{now_us, StepStats};

/// Shared by every socket task.
pub(crate) struct Shared {
    pub(crate) steps: Vec<StepStats>,
    pub(crate) unexpected_closes: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    /// Recovery status frames received (`{"type": "recovery", …}`).
    pub(crate) status_frames: AtomicU64,
    /// Positioned frames whose position was not above the last one the
    /// socket saw (positions grow along a socket's frames).
    pub(crate) position_regressions: AtomicU64,
    /// One per socket index: what recovery told it.
    pub(crate) sockets: Vec<SocketSlot>,
}

impl Shared {
    /// A record of `steps` steps and `sockets` sockets, all counts zero.
    pub(crate) fn new(steps: usize, sockets: usize) -> Result<Shared> {
        Ok(Shared {
            steps: (0..steps)
                .map(|_| StepStats::new())
                .collect::<Result<_>>()?,
            unexpected_closes: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            status_frames: AtomicU64::new(0),
            position_regressions: AtomicU64::new(0),
            sockets: (0..sockets).map(|_| SocketSlot::default()).collect(),
        })
    }
}

/// One socket's recovery, kept across its reconnections (by socket index).
#[derive(Default)]
pub(crate) struct SocketSlot {
    /// The greatest position it saw, a message's or a status frame's: the
    /// send time's 64 bits and the digest (0, 0: none yet).
    position_time: AtomicU64,
    position_digest: AtomicU64,
    /// Status frames on its current connection; when the last came (µs
    /// since the epoch); its `recovered` (0 none, 1 false, 2 true) and
    /// `replayed`.
    status_frames: AtomicU64,
    pub(crate) status_at_us: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) replayed: AtomicU64,
    /// Messages (first copies) on its current connection before its status
    /// frame, in all, and copies seen again.
    pub(crate) before_status: AtomicU64,
    pub(crate) messages: AtomicU64,
    pub(crate) duplicates: AtomicU64,
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
    pub(crate) fn recover_query(&self) -> String {
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

/// Reads one socket until told to stop; records every data frame.
pub(crate) async fn run_socket(
    mut ws: LeanWs,
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
                    step.record_arrival(index, latency, recv);
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

/// Waits until `expected` deliveries of step `k` arrived or `drain` passed
/// without progress.
pub(crate) async fn drain(shared: &Shared, k: usize, expected: u64, drain: Duration) {
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

/// Waits until `target` status frames have arrived in all, or 10 s pass
/// without one; returns how many arrived.
pub(crate) async fn wait_for_status(shared: &Shared, target: u64) -> u64 {
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
