//! Positions: where a notification stands in the stream of one socket's
//! groups, the same on every gateway process, so that a reconnecting client
//! can say "I have everything up to P" to any of them.
//!
//! A position is the message's send time as channels_redis scored it in
//! Redis (`time.time()` of the `group_send`, one reading for every queue
//! key of one host, so the gateway's own queue key and a replay key agree
//! bit for bit) and a CRC-32 of the frame the browser receives, which
//! orders messages sent in the same instant. It is written as 24 lowercase
//! hex digits: the 64 bits of the time (a non-negative IEEE 754 double,
//! whose bit pattern orders like its value) and the 32 bits of the digest,
//! so comparing two positions as strings compares them as positions.
//!
//! This module owns that format, the positioned frame
//! (`{"position": "…", …the frame's own members}`) and the recovery status
//! frame. It must not read clocks or Redis: callers pass times and frames in.

use std::fmt;

/// Characters of a written position.
pub const POSITION_LEN: usize = 24;

/// The frame a positioned frame starts with, before the position's digits.
const POSITIONED_PREFIX: &str = "{\"position\": \"";

/// Where a message stands: its send time, then its frame's digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// `f64::to_bits` of a finite, non-negative send time.
    sent_at_bits: u64,
    digest: u32,
}

impl Position {
    /// The position of a message sent at `sent_at` (UNIX seconds, the
    /// queue score) whose browser frame is `frame`. A time that is not a
    /// finite non-negative number counts as 0.
    pub fn of(sent_at: f64, frame: &[u8]) -> Position {
        Position {
            sent_at_bits: time_bits(sent_at),
            digest: crc32fast::hash(frame),
        }
    }

    /// The position just before every message sent at `seconds` or later.
    pub fn at_time(seconds: f64) -> Position {
        Position {
            sent_at_bits: time_bits(seconds),
            digest: 0,
        }
    }

    /// The send time, UNIX seconds.
    pub fn sent_at(&self) -> f64 {
        f64::from_bits(self.sent_at_bits)
    }

    /// Reads a written position: exactly 24 lowercase hex digits whose
    /// time is a finite non-negative number. Anything else is `None`.
    pub fn parse(text: &str) -> Option<Position> {
        if text.len() != POSITION_LEN
            || !text
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        {
            return None;
        }
        let sent_at_bits = u64::from_str_radix(text.get(..16)?, 16).ok()?;
        let digest = u32::from_str_radix(text.get(16..)?, 16).ok()?;
        let sent_at = f64::from_bits(sent_at_bits);
        (sent_at.is_finite() && sent_at >= 0.0 && sent_at_bits >> 63 == 0).then_some(Position {
            sent_at_bits,
            digest,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:08x}", self.sent_at_bits, self.digest)
    }
}

fn time_bits(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        seconds.to_bits()
    } else {
        0
    }
}

/// `frame` (a JSON object, as every frame the gateway renders is) with the
/// position as its first member: `{"position": "…", …}`.
pub fn positioned_frame(frame: &str, position: Position) -> String {
    let members = frame.strip_prefix('{').unwrap_or(frame).trim_start();
    let mut out = String::with_capacity(frame.len() + POSITIONED_PREFIX.len() + POSITION_LEN + 3);
    out.push_str(POSITIONED_PREFIX);
    out.push_str(&position.to_string());
    out.push('"');
    if members.starts_with('}') {
        out.push_str(members);
    } else {
        out.push_str(", ");
        out.push_str(members);
    }
    out
}

/// The frame that ends a recovery, after the replayed messages and before
/// the live ones: whether nothing was missed, how many messages were
/// replayed, and the position the client holds from here on.
pub fn recovery_status_frame(recovered: bool, replayed: usize, position: Position) -> String {
    format!(
        "{{\"type\": \"recovery\", \"recovered\": {recovered}, \"replayed\": {replayed}, \"position\": \"{position}\"}}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_positions_order_like_positions() {
        let times = [
            0.0,
            1.5,
            1_764_864_000.123_456,
            1_764_864_000.123_457,
            4.0e9,
        ];
        let mut positions: Vec<Position> = times
            .iter()
            .flat_map(|time| [Position::of(*time, b"a"), Position::of(*time, b"b")])
            .collect();
        positions.push(Position::at_time(1_764_864_000.123_456));
        positions.sort();
        let written: Vec<String> = positions.iter().map(ToString::to_string).collect();
        let mut sorted = written.clone();
        sorted.sort();
        assert_eq!(written, sorted);
        for (position, text) in positions.iter().zip(&written) {
            assert_eq!(text.len(), POSITION_LEN);
            assert_eq!(Position::parse(text), Some(*position));
        }
    }

    #[test]
    fn the_time_survives_exactly() {
        let sent_at = 1_764_864_000.123_456_7;
        assert_eq!(Position::of(sent_at, b"{}").sent_at(), sent_at);
        assert!(Position::at_time(sent_at) < Position::of(sent_at, b"x"));
    }

    #[test]
    fn garbage_is_not_a_position() {
        for text in [
            "",
            "zz",
            "41da4c5e0800000000000000x",
            "41DA4C5E0800000000000000",
            "41da4c5e080000000000000",
            // Negative, infinite and NaN times.
            "c1da4c5e0800000000000000",
            "7ff0000000000000000000000",
            "7ff0000000000000ffffffff",
            "7ff8000000000000ffffffff",
            "41da4c5e08000000000000é",
        ] {
            assert_eq!(Position::parse(text), None, "{text:?}");
        }
        assert!(Position::parse("41da4c5e0800000000000000").is_some());
    }

    #[test]
    fn bad_times_count_as_zero() {
        for time in [-1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(Position::at_time(time), Position::at_time(0.0));
        }
    }

    #[test]
    fn a_positioned_frame_puts_the_position_first() {
        let position = Position::of(1.0, b"x");
        assert_eq!(
            positioned_frame(r#"{"message": "hi"}"#, position),
            format!(r#"{{"position": "{position}", "message": "hi"}}"#)
        );
        assert_eq!(
            positioned_frame("{}", position),
            format!(r#"{{"position": "{position}"}}"#)
        );
        let parsed: serde_json::Value = serde_json::from_str(&positioned_frame(
            r#"{"type": "t", "n": [1, {}]}"#,
            position,
        ))
        .unwrap();
        assert_eq!(parsed["position"], position.to_string());
        assert_eq!(parsed["n"][0], 1);
    }

    #[test]
    fn the_status_frame_is_json() {
        let position = Position::at_time(2.0);
        let parsed: serde_json::Value =
            serde_json::from_str(&recovery_status_frame(false, 3, position)).unwrap();
        assert_eq!(parsed["type"], "recovery");
        assert_eq!(parsed["recovered"], false);
        assert_eq!(parsed["replayed"], 3);
        assert_eq!(parsed["position"], position.to_string());
    }
}
