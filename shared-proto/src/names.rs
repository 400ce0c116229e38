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
/// them to a reconnecting client. Names stay under [`MAX_NAME_LENGTH`]: a
/// group too long for that is named by its SHA-256 instead
/// (`gw.replay-h.<32 hex>`, a prefix no short name can take).
pub fn replay_channel(group: &str) -> String {
    if REPLAY_SHORT.len() + group.len() < MAX_NAME_LENGTH {
        return format!("{REPLAY_SHORT}{group}");
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(group.as_bytes());
    let mut name = String::from(REPLAY_HASHED);
    for byte in digest.iter().take(16) {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// The two forms of [`replay_channel`].
const REPLAY_SHORT: &str = "gw.replay.";
const REPLAY_HASHED: &str = "gw.replay-h.";

/// Whether `channel` is a replay channel (either form of [`replay_channel`]):
/// a sender that finds its key full refused a message to the window, not to
/// a consumer.
pub fn is_replay_channel(channel: &str) -> bool {
    channel.starts_with(REPLAY_SHORT) || channel.starts_with(REPLAY_HASHED)
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
    fn replay_channels_are_valid_and_distinct() {
        assert_eq!(replay_channel("user_42"), "gw.replay.user_42");
        let long = "g".repeat(99);
        let hashed = replay_channel(&long);
        assert!(hashed.starts_with("gw.replay-h."), "{hashed}");
        assert_ne!(hashed, replay_channel(&"g".repeat(98)));
        for group in ["user_42", &"a".repeat(89), &"a".repeat(90), &long] {
            let channel = replay_channel(group);
            assert!(is_valid_channel_name(&channel), "{channel}");
            assert!(!channel.contains('!'));
            assert!(is_replay_channel(&channel), "{channel}");
        }
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
