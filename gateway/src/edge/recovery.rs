//! Recovery: what a reconnecting client missed, replayed by whichever
//! gateway process it reaches.
//!
//! A client asks for it in the handshake's query: `recover=` the first time
//! (nothing to replay yet), `recover=<position>` when it comes back with the
//! position of the last message it has (`shared_proto::position`). Its
//! frames then carry their positions. Once the socket has joined its groups
//! (so nothing published from then on can be missed) and the sends already
//! under way have landed ([`SETTLE_BEFORE_READ`]), this module reads the
//! groups' replay keys (`layer::replay`: kept by channels_redis itself, for
//! Django's `expiry` and `capacity`), renders every message after the
//! client's position exactly as the live path would (`Router`), and decides
//! whether that is all the client missed. The replayed frames and a status
//! frame (`{"type": "recovery", "recovered": …, "replayed": …, "position":
//! …}`) go out before any live frame; live copies of replayed messages are
//! dropped by the socket's outbox.
//!
//! It owns the request's reading, the verdict and the status; it must not
//! write to Redis or touch sockets.

use std::sync::Arc;

use bytestring::ByteString;
use shared_proto::{recovery_status_frame, Position};

use crate::layer::redis::ReplaySnapshot;
use crate::layer::Layer;
use crate::ops::clock::unix_now;
use crate::ops::metrics::{Metrics, RecoveryResult};
use crate::relay::router::Router;

/// The query parameter a client asks for recovery with.
pub const RECOVER_PARAM: &str = "recover";

/// How long after the join the replay keys are read. channels_redis'
/// `group_send` reads a group's members, then writes the message to their
/// keys two round trips later: a send that read the members just before
/// the socket joined still writes the replay key after the join, and
/// reaches the socket only through the replay. Reading once such sends have
/// landed closes that gap (a send that takes longer between its two steps
/// is the one case left).
pub const SETTLE_BEFORE_READ: std::time::Duration = std::time::Duration::from_millis(250);

/// How far the clocks of Django's hosts and Redis may disagree, in
/// seconds: positions are Django's send times, windows are judged by
/// Redis' clock.
const CLOCK_MARGIN: f64 = 2.0;

/// What a handshake asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Since {
    /// `recover=`: a first connect, nothing to replay.
    Start,
    /// `recover=<position>`: everything after it.
    At(Position),
    /// A value that is no position.
    Unreadable,
}

impl Since {
    /// The recovery a query string asks for, if any.
    pub fn from_query(query: &str) -> Option<Since> {
        let value = query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == RECOVER_PARAM).then_some(value)
        })?;
        Some(if value.is_empty() {
            Since::Start
        } else {
            Position::parse(value).map_or(Since::Unreadable, Since::At)
        })
    }
}

/// How a gateway recovers: the layer's window and where frames come from.
pub struct Recovery {
    pub router: Arc<Router>,
    /// Django's `expiry`: how long channels_redis keeps a message.
    pub window_secs: f64,
    /// Django's `capacity`: a replay key this full may have refused one.
    pub capacity: u64,
    /// How long the read may take (`server.join_timeout`).
    pub read_timeout: std::time::Duration,
    pub metrics: Arc<Metrics>,
}

/// What a recovering socket gets before its live frames.
#[derive(Debug)]
pub struct Recovered {
    /// The replayed frames, then the status frame.
    pub preface: Vec<ByteString>,
    /// Live copies of messages up to here are dropped.
    pub replayed_through: Option<Position>,
}

/// The verdict on one key of a snapshot read after `since`.
struct Judged {
    frames: Vec<(Position, ByteString)>,
    complete: bool,
}

impl Recovery {
    /// Reads what the socket's `groups` kept and decides what it gets. A
    /// failed read still lets the socket in: it gets live messages and
    /// `recovered: false`.
    pub async fn recover(&self, layer: &Layer, groups: &[Arc<str>], since: Since) -> Recovered {
        let from = match since {
            Since::At(position) => Some(position.sent_at()),
            Since::Start | Since::Unreadable => None,
        };
        let limit = usize::try_from(self.capacity).unwrap_or(usize::MAX);
        tokio::time::sleep(SETTLE_BEFORE_READ).await;
        let read = tokio::time::timeout(self.read_timeout, layer.read_replay(groups, from, limit));
        let snapshot = match read
            .await
            .unwrap_or_else(|_| Err(crate::layer::LayerError::Unavailable("timed out".into())))
        {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::warn!(%error, "reading the replay keys failed; no recovery");
                self.metrics.recovery(RecoveryResult::Unavailable, 0);
                let position = match since {
                    Since::At(position) => position,
                    Since::Start | Since::Unreadable => {
                        Position::at_time(unix_now() - CLOCK_MARGIN)
                    }
                };
                return Recovered {
                    preface: vec![ByteString::from(recovery_status_frame(false, 0, position))],
                    replayed_through: None,
                };
            }
        };
        let (recovered, result) = self.decide(since, &snapshot);
        self.metrics
            .recovery(result, recovered.preface.len().saturating_sub(1));
        recovered
    }

    /// The verdict on a snapshot (see the module's documentation).
    fn decide(&self, since: Since, snapshot: &ReplaySnapshot) -> (Recovered, RecoveryResult) {
        let now = snapshot.now;
        // Encrypted payloads are judged by this host's clock, as live ones.
        let local_now = unix_now();
        let start = Position::at_time(now - CLOCK_MARGIN);
        let position = match since {
            Since::At(position) if position.sent_at() <= now + CLOCK_MARGIN => position,
            // From the future: a forged or broken position, replayed from
            // nothing.
            Since::At(_) | Since::Start | Since::Unreadable => {
                let newest = snapshot
                    .keys
                    .iter()
                    .flat_map(|key| key.entries.last())
                    .filter_map(|entry| {
                        self.router
                            .replayed_frame(&entry.payload, entry.sent_at, local_now)
                    })
                    .map(|(position, _)| position)
                    .max();
                let held = newest.map_or(start, |newest| newest.max(start));
                let (recovered, result) = match since {
                    Since::Start => (true, RecoveryResult::Fresh),
                    _ => (false, RecoveryResult::BadPosition),
                };
                let status = recovery_status_frame(recovered, 0, held);
                return (
                    Recovered {
                        preface: vec![ByteString::from(status)],
                        replayed_through: None,
                    },
                    result,
                );
            }
        };
        let mut complete = true;
        let mut frames = Vec::new();
        for key in &snapshot.keys {
            let judged = self.judge(key, position, now, local_now);
            complete &= judged.complete;
            frames.extend(judged.frames);
        }
        frames.sort_by_key(|(position, _)| *position);
        frames.dedup_by_key(|(position, _)| *position);
        let replayed = frames.len();
        let through = frames
            .last()
            .map_or(position, |(last, _)| (*last).max(position));
        let mut preface: Vec<ByteString> = frames.into_iter().map(|(_, frame)| frame).collect();
        preface.push(ByteString::from(recovery_status_frame(
            complete,
            replayed,
            through.max(start),
        )));
        let result = if complete {
            RecoveryResult::Recovered
        } else {
            RecoveryResult::WindowExceeded
        };
        (
            Recovered {
                preface,
                replayed_through: Some(through),
            },
            result,
        )
    }

    /// One key's messages after `since`, and whether they are all it missed:
    /// the key refused nothing (it is below `capacity`; the read takes at
    /// most that many) and trimmed nothing after `since` (the position is within the
    /// window, or an older message is still there: channels_redis trims
    /// oldest first).
    fn judge(
        &self,
        key: &crate::layer::redis::ReplayKeyContents,
        since: Position,
        now: f64,
        local_now: f64,
    ) -> Judged {
        let mut frames = Vec::with_capacity(key.entries.len());
        let mut kept_older = key.oldest.is_some_and(|oldest| oldest < since.sent_at());
        for entry in &key.entries {
            let Some((position, frame)) =
                self.router
                    .replayed_frame(&entry.payload, entry.sent_at, local_now)
            else {
                continue;
            };
            if position <= since {
                kept_older = true;
            } else {
                frames.push((position, frame));
            }
        }
        let within_window = since.sent_at() >= now - self.window_secs + CLOCK_MARGIN;
        Judged {
            frames,
            complete: key.count < self.capacity && (within_window || kept_older),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_says_whether_and_from_where() {
        let position = Position::at_time(1_764_864_000.5);
        assert_eq!(Since::from_query(""), None);
        assert_eq!(Since::from_query("token=abc"), None);
        assert_eq!(Since::from_query("recovered=1"), None);
        assert_eq!(Since::from_query("recover"), Some(Since::Start));
        assert_eq!(Since::from_query("token=a&recover="), Some(Since::Start));
        assert_eq!(
            Since::from_query(&format!("recover={position}&token=a")),
            Some(Since::At(position))
        );
        assert_eq!(
            Since::from_query("recover=%27%20or%201"),
            Some(Since::Unreadable)
        );
    }
}
