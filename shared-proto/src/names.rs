//! Channel names, group names and the Redis keys / pub-sub channels
//! channels_redis derives from them.
//!
//! This module owns those string shapes (including the places where
//! channels_redis puts no separator at all) and the validity rules. It must
//! not choose prefixes, process ids or shards; callers pass them in.
//!
//! Validity is the strict ASCII reading of Channels' rules. Python's own
//! regexes are Unicode-aware (`\d`, `\w`) and accept a trailing newline (`$`),
//! so Channels accepts a few odd names these checks reject on purpose.

/// Channels requires names strictly shorter than this (in characters; the
/// valid alphabet is ASCII, so also in bytes).
pub const MAX_NAME_LENGTH: usize = 100;

/// Separates the process part of a specific channel name from its local part.
const LOCAL_SEPARATOR: char = '!';

/// Core layer group key: `{prefix}:group:{group}`, a sorted set of channels.
pub fn group_key(prefix: &str, group: &str) -> String {
    format!("{prefix}:group:{group}")
}

/// Core layer queue key: `{prefix}{non_local}` with **no** separator, e.g.
/// `asgispecific.abc!`.
pub fn queue_key(prefix: &str, non_local: &str) -> String {
    format!("{prefix}{non_local}")
}

/// The backup key channels_redis' receiver keeps next to a queue key.
pub fn inflight_key(queue_key: &str) -> String {
    format!("{queue_key}$inflight")
}

/// Pub/sub layer group channel: `{prefix}__group__{group}`.
pub fn pubsub_group_channel(prefix: &str, group: &str) -> String {
    format!("{prefix}__group__{group}")
}

/// A process-specific channel name: `specific.{process_id}!{local}`.
pub fn specific_channel(process_id: &str, local: &str) -> String {
    format!("specific.{process_id}!{local}")
}

/// Everything up to and including the first `!`, or the whole name when
/// there is none (Channels' `non_local_name`).
pub fn non_local_part(channel: &str) -> &str {
    match channel.find(LOCAL_SEPARATOR) {
        Some(index) => channel
            .get(..index + LOCAL_SEPARATOR.len_utf8())
            .unwrap_or(channel),
        None => channel,
    }
}

/// What follows the first `!`, or `None` for a name without one.
pub fn local_part(channel: &str) -> Option<&str> {
    channel.split_once(LOCAL_SEPARATOR).map(|(_, local)| local)
}

/// The channel a gateway adds to a group so that channels_redis' own
/// `group_send` keeps the group's recent messages in a queue key nobody pops
/// (`<prefix>gw.replay.<group>`), from which any gateway process replays
/// them to a reconnecting client. On a ring of several hosts the name must
/// land on the first one (where every gateway keeps its queue keys when
/// recovering, so one clock reading scores both copies of a message):
/// the first of `gw.replay.<group>`, `gw.replay-1.<group>`, … that
/// channels_redis places there. Names stay under [`MAX_NAME_LENGTH`]: a group
/// too long for that is named by its SHA-256 instead (`gw.replay-h.<32
/// hex>`, then `gw.replay-h1.<32 hex>`, …: prefixes no short name takes).
pub fn replay_channel(group: &str, ring_size: usize) -> String {
    // Room for the longest variant tag ("-9999").
    const ROOM: usize = MAX_NAME_LENGTH - "gw.replay-9999.".len();
    let (tag, body) = if group.len() < ROOM {
        ("gw.replay", group.to_string())
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(group.as_bytes());
        let hex: String = digest
            .iter()
            .take(16)
            .map(|byte| format!("{byte:02x}"))
            .collect();
        ("gw.replay-h", hex)
    };
    let variant = |attempt: u32| match (attempt, tag) {
        (0, _) => format!("{tag}.{body}"),
        (n, "gw.replay") => format!("{tag}-{n}.{body}"),
        (n, _) => format!("{tag}{n}.{body}"),
    };
    // Each attempt lands on the first host with odds 1/ring_size: the
    // search ends within a few; the bound only keeps it finite.
    (0..10_000)
        .map(variant)
        .find(|name| crate::shard::shard_index(name, ring_size) == 0)
        .unwrap_or_else(|| variant(0))
}

/// Whether `channel` is a replay channel (any name [`replay_channel`]
/// gives): a sender that finds its key full refused a message to the
/// window, not to a consumer.
pub fn is_replay_channel(channel: &str) -> bool {
    channel.starts_with("gw.replay.") || channel.starts_with("gw.replay-")
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')
}

/// `^[a-zA-Z0-9\-_.]+$` and shorter than [`MAX_NAME_LENGTH`].
pub fn is_valid_group_name(name: &str) -> bool {
    !name.is_empty() && name.len() < MAX_NAME_LENGTH && name.bytes().all(is_name_byte)
}

/// `^[a-zA-Z0-9\-_.]+(![a-zA-Z0-9\-_.]*)?$` and shorter than
/// [`MAX_NAME_LENGTH`].
pub fn is_valid_channel_name(name: &str) -> bool {
    if name.len() >= MAX_NAME_LENGTH {
        return false;
    }
    let (head, local) = match name.split_once(LOCAL_SEPARATOR) {
        Some((head, local)) => (head, local),
        None => (name, ""),
    };
    !head.is_empty() && head.bytes().all(is_name_byte) && local.bytes().all(is_name_byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(group_key("asgi", "user_42"), "asgi:group:user_42");
        assert_eq!(queue_key("asgi", "specific.abc!"), "asgispecific.abc!");
        assert_eq!(
            inflight_key("asgispecific.abc!"),
            "asgispecific.abc!$inflight"
        );
        assert_eq!(
            pubsub_group_channel("asgi", "user_42"),
            "asgi__group__user_42"
        );
        assert_eq!(specific_channel("abc", "def"), "specific.abc!def");
    }

    #[test]
    fn replay_channels_are_valid_distinct_and_on_the_first_host() {
        assert_eq!(replay_channel("user_42", 1), "gw.replay.user_42");
        let long = "g".repeat(99);
        let hashed = replay_channel(&long, 1);
        assert!(hashed.starts_with("gw.replay-h."), "{hashed}");
        assert_ne!(hashed, replay_channel(&"g".repeat(98), 1));
        for ring_size in 1..8 {
            for group in ["user_42", "user_7", &"a".repeat(84), &"a".repeat(85), &long] {
                let channel = replay_channel(group, ring_size);
                assert!(is_valid_channel_name(&channel), "{channel}");
                assert!(!channel.contains('!'));
                assert!(channel.starts_with("gw.replay"));
                assert!(is_replay_channel(&channel), "{channel}");
                assert_eq!(
                    crate::shard::shard_index(&channel, ring_size),
                    0,
                    "{channel}"
                );
            }
        }
        assert_ne!(replay_channel("user_1", 3), replay_channel("user_2", 3));
        assert!(!is_replay_channel("specific.gw-abc.0!1"));
        assert!(!is_replay_channel("gw.replayer"));
    }

    #[test]
    fn parts() {
        assert_eq!(non_local_part("specific.abc!def"), "specific.abc!");
        assert_eq!(non_local_part("a!b!c"), "a!");
        assert_eq!(non_local_part("plain"), "plain");
        assert_eq!(local_part("specific.abc!def"), Some("def"));
        assert_eq!(local_part("specific.abc!"), Some(""));
        assert_eq!(local_part("plain"), None);
    }

    #[test]
    fn validity() {
        assert!(is_valid_channel_name("specific.abc!"));
        assert!(is_valid_channel_name("specific.abc!def"));
        assert!(!is_valid_channel_name("!def"));
        assert!(!is_valid_channel_name("a!b!c"));
        assert!(!is_valid_channel_name(""));
        assert!(is_valid_group_name("user_42"));
        assert!(!is_valid_group_name("user 42"));
        assert!(!is_valid_group_name(&"a".repeat(100)));
        assert!(is_valid_group_name(&"a".repeat(99)));
    }
}
