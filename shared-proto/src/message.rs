//! A channel-layer event as the gateway sees it: the Python `dict` that the
//! backend handed to `group_send` / `send`, decoded into an ordered list of
//! `rmpv::Value` pairs.
//!
//! This module owns the invariants every [`Message`] holds (a map at the top,
//! valid UTF-8 in every string, nesting within [`MAX_NESTING`], no duplicate
//! keys — Python dict semantics: the first position wins, the last value wins)
//! and the typed accessors for the two fields the gateway routes on, `type` and
//! `__asgi_channel__`. It must not know about byte formats, Redis or frames;
//! decoding lives in [`crate::payload`], rendering in [`crate::pyjson`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use rmpv::Value;

use crate::MAX_NESTING;

/// The field `channels_redis` adds to carry the destination channel name(s).
pub const ASGI_CHANNEL_KEY: &str = "__asgi_channel__";

/// The field Channels dispatches on (`send.notification` → `send_notification`).
pub const TYPE_KEY: &str = "type";

/// One channel-layer event: the top-level map of a decoded payload.
///
/// Entries keep the order the publisher wrote them in, because Python dicts are
/// ordered and every rendering of the message must match Python's byte for byte.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    entries: Vec<(Value, Value)>,
}

/// Why a value cannot be a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// channels_redis only ever sends dicts.
    #[error("a channel-layer message must be a map, found {found}")]
    NotAMap {
        /// Kind of the value that was given instead (see [`value_kind`]).
        found: &'static str,
    },
    /// Deeper than any Python consumer could unpack.
    #[error("value is nested deeper than {limit} containers")]
    TooDeep {
        /// The limit, [`MAX_NESTING`].
        limit: usize,
    },
    /// Python strings are always valid Unicode; a message must be too.
    #[error("a string in the message is not valid UTF-8")]
    InvalidUtf8,
}

/// Why `__asgi_channel__` could not be read as channel names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelsError {
    /// Only `send`/`group_send` to process-specific channels set the field.
    #[error("the message has no __asgi_channel__ field")]
    Missing,
    /// channels_redis writes a string (`send`) or a list (`group_send`).
    #[error("__asgi_channel__ is a {found}, not a string or an array")]
    WrongType {
        /// Kind of the value found (see [`value_kind`]).
        found: &'static str,
    },
}

/// An element of a `__asgi_channel__` list that is not a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("__asgi_channel__ entry {index} is a {found}, not a string")]
pub struct NotAChannelName {
    /// Position in the list.
    pub index: usize,
    /// Kind of the value found (see [`value_kind`]).
    pub found: &'static str,
}

/// The destination channel names of a message, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Channels<'a> {
    /// `send(channel, message)`: one full channel name.
    One(&'a str),
    /// `group_send`: every member channel that shares one queue key.
    Many(&'a [Value]),
}

impl<'a> Channels<'a> {
    /// Number of entries, strings or not.
    pub fn len(&self) -> usize {
        match self {
            Channels::One(_) => 1,
            Channels::Many(items) => items.len(),
        }
    }

    /// True for an empty `group_send` list.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, reporting the ones that are not strings.
    pub fn iter(&self) -> ChannelIter<'a> {
        let inner = match *self {
            Channels::One(name) => ChannelIterInner::One(Some(name)),
            Channels::Many(items) => ChannelIterInner::Many(items.iter()),
        };
        ChannelIter { inner, index: 0 }
    }

    /// Only the entries that are strings; the rest are skipped silently.
    pub fn names(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter_map(Result::ok)
    }
}

impl<'a> IntoIterator for Channels<'a> {
    type Item = Result<&'a str, NotAChannelName>;
    type IntoIter = ChannelIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over [`Channels`]; allocates nothing.
#[derive(Debug, Clone)]
pub struct ChannelIter<'a> {
    inner: ChannelIterInner<'a>,
    index: usize,
}

#[derive(Debug, Clone)]
enum ChannelIterInner<'a> {
    One(Option<&'a str>),
    Many(std::slice::Iter<'a, Value>),
}

impl<'a> Iterator for ChannelIter<'a> {
    type Item = Result<&'a str, NotAChannelName>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.index;
        let item = match &mut self.inner {
            ChannelIterInner::One(name) => name.take().map(Ok),
            ChannelIterInner::Many(items) => items.next().map(|value| {
                value.as_str().ok_or(NotAChannelName {
                    index,
                    found: value_kind(value),
                })
            }),
        };
        if item.is_some() {
            self.index += 1;
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = match &self.inner {
            ChannelIterInner::One(name) => usize::from(name.is_some()),
            ChannelIterInner::Many(items) => items.len(),
        };
        (remaining, Some(remaining))
    }
}

impl ExactSizeIterator for ChannelIter<'_> {}

impl Message {
    /// Builds a message from a map value, normalising it the way Python would
    /// see it: a key repeated in a map keeps its first position and its last
    /// value. Non-string keys are allowed here (Python dicts allow them and
    /// `json.dumps` converts some of them), but note that Python's msgpack
    /// unpacker rejects any key that is not str or bytes.
    pub fn from_value(value: Value) -> Result<Self, MessageError> {
        match value {
            Value::Map(mut entries) => {
                normalize_map(&mut entries)?;
                Ok(Self { entries })
            }
            other => Err(MessageError::NotAMap {
                found: value_kind(&other),
            }),
        }
    }

    /// For decoders that have already enforced every invariant while reading.
    pub(crate) fn from_checked_entries(entries: Vec<(Value, Value)>) -> Self {
        Self { entries }
    }

    /// The fields in publisher order.
    pub fn entries(&self) -> &[(Value, Value)] {
        &self.entries
    }

    /// The message as one `rmpv::Value::Map`.
    pub fn into_value(self) -> Value {
        Value::Map(self.entries)
    }

    /// Number of top-level fields.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the message has no fields at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value stored under the string key `key` (bytes keys never match,
    /// as in Python where `b"type" != "type"`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(candidate, _)| candidate.as_str() == Some(key))
            .map(|(_, value)| value)
    }

    /// The `type` field, when it is a string.
    pub fn message_type(&self) -> Option<&str> {
        self.get(TYPE_KEY).and_then(Value::as_str)
    }

    /// The destination channel name(s) from `__asgi_channel__`.
    pub fn channels(&self) -> Result<Channels<'_>, ChannelsError> {
        match self.get(ASGI_CHANNEL_KEY) {
            None => Err(ChannelsError::Missing),
            Some(Value::Array(items)) => Ok(Channels::Many(items)),
            Some(other) => other
                .as_str()
                .map(Channels::One)
                .ok_or(ChannelsError::WrongType {
                    found: value_kind(other),
                }),
        }
    }
}

impl TryFrom<Value> for Message {
    type Error = MessageError;

    fn try_from(value: Value) -> Result<Self, Self::Error> {
        Self::from_value(value)
    }
}

/// A short name for the kind of a value, used in error messages.
pub fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "bool",
        Value::Integer(_) => "int",
        Value::F32(_) | Value::F64(_) => "float",
        Value::String(_) => "str",
        Value::Binary(_) => "bin",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Ext(_, _) => "ext",
    }
}

/// Enforces the [`Message`] invariants on a top-level map in place. Walks
/// with a heap stack instead of recursion so deep input cannot exhaust the
/// thread's stack.
fn normalize_map(entries: &mut Vec<(Value, Value)>) -> Result<(), MessageError> {
    // Each pending value comes with the nesting level of its container.
    let mut pending: Vec<(&mut Value, usize)> = Vec::new();
    dedupe_keys(entries);
    push_entries(entries, 1, &mut pending);
    while let Some((value, container_depth)) = pending.pop() {
        match value {
            Value::String(text) if !text.is_str() => return Err(MessageError::InvalidUtf8),
            Value::Array(items) => {
                let depth = nested_depth(container_depth)?;
                pending.extend(items.iter_mut().map(|item| (item, depth)));
            }
            Value::Map(entries) => {
                let depth = nested_depth(container_depth)?;
                dedupe_keys(entries);
                push_entries(entries, depth, &mut pending);
            }
            _ => {}
        }
    }
    Ok(())
}

fn push_entries<'a>(
    entries: &'a mut [(Value, Value)],
    depth: usize,
    pending: &mut Vec<(&'a mut Value, usize)>,
) {
    for (key, value) in entries.iter_mut() {
        pending.push((key, depth));
        pending.push((value, depth));
    }
}

fn nested_depth(container_depth: usize) -> Result<usize, MessageError> {
    let depth = container_depth + 1;
    if depth > MAX_NESTING {
        return Err(MessageError::TooDeep { limit: MAX_NESTING });
    }
    Ok(depth)
}

/// Maps up to this size are checked pairwise, which beats hashing for the
/// handful of fields a channel-layer message usually has.
const PAIRWISE_DEDUPE_MAX: usize = 16;

/// Python builds a dict from the pairs it unpacks, so a repeated key keeps the
/// position of its first occurrence and the value of its last one.
pub(crate) fn dedupe_keys(entries: &mut Vec<(Value, Value)>) {
    if entries.len() < 2 {
        return;
    }
    if entries.len() <= PAIRWISE_DEDUPE_MAX && !has_duplicate_pairwise(entries) {
        return;
    }

    let mut moves = Vec::new();
    {
        let mut first_position: HashMap<KeyIdentity<'_>, usize> =
            HashMap::with_capacity(entries.len());
        for (position, (key, _)) in entries.iter().enumerate() {
            match first_position.entry(key_identity(key, position)) {
                Entry::Occupied(first) => moves.push((*first.get(), position)),
                Entry::Vacant(slot) => {
                    slot.insert(position);
                }
            }
        }
    }
    if moves.is_empty() {
        return;
    }

    let mut keep = vec![true; entries.len()];
    for (first, duplicate) in moves {
        let value = match entries.get_mut(duplicate) {
            Some((_, value)) => std::mem::replace(value, Value::Nil),
            None => continue,
        };
        if let Some((_, slot)) = entries.get_mut(first) {
            *slot = value;
        }
        if let Some(flag) = keep.get_mut(duplicate) {
            *flag = false;
        }
    }
    let mut flags = keep.into_iter();
    entries.retain(|_| flags.next().unwrap_or(true));
}

fn has_duplicate_pairwise(entries: &[(Value, Value)]) -> bool {
    entries.iter().enumerate().any(|(position, (key, _))| {
        let identity = key_identity(key, position);
        entries
            .iter()
            .take(position)
            .enumerate()
            .any(|(earlier_position, (earlier, _))| {
                key_identity(earlier, earlier_position) == identity
            })
    })
}

/// What makes two keys "the same key". Str and bin stay distinct (Python's
/// `"a" != b"a"`); keys Python could not hash get their position so they never
/// collide.
#[derive(Debug, PartialEq, Eq, Hash)]
enum KeyIdentity<'a> {
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Int(i128),
    Bool(bool),
    Nil,
    Float(u64),
    Unique(usize),
}

fn key_identity(key: &Value, position: usize) -> KeyIdentity<'_> {
    match key {
        Value::String(text) => KeyIdentity::Str(text.as_bytes()),
        Value::Binary(bytes) => KeyIdentity::Bin(bytes),
        Value::Integer(integer) => integer
            .as_i64()
            .map(i128::from)
            .or_else(|| integer.as_u64().map(i128::from))
            .map_or(KeyIdentity::Unique(position), KeyIdentity::Int),
        Value::Boolean(flag) => KeyIdentity::Bool(*flag),
        Value::Nil => KeyIdentity::Nil,
        Value::F64(number) => KeyIdentity::Float(number.to_bits()),
        Value::F32(number) => KeyIdentity::Float(f64::from(*number).to_bits()),
        Value::Array(_) | Value::Map(_) | Value::Ext(_, _) => KeyIdentity::Unique(position),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(
            pairs
                .into_iter()
                .map(|(key, value)| (Value::from(key), value))
                .collect(),
        )
    }

    #[test]
    fn type_and_get_read_string_keys_only() {
        let message = Message::from_value(Value::Map(vec![
            (Value::Binary(b"type".to_vec()), Value::from("bytes-key")),
            (Value::from("type"), Value::from("send_notification")),
        ]))
        .unwrap();
        assert_eq!(message.message_type(), Some("send_notification"));
        assert_eq!(message.get("missing"), None);
    }

    #[test]
    fn non_string_type_is_not_a_type() {
        let message = Message::from_value(map(vec![("type", Value::from(3))])).unwrap();
        assert_eq!(message.message_type(), None);
    }

    #[test]
    fn channels_single_string() {
        let message =
            Message::from_value(map(vec![(ASGI_CHANNEL_KEY, Value::from("specific.a!b"))]))
                .unwrap();
        let channels = message.channels().unwrap();
        assert_eq!(channels, Channels::One("specific.a!b"));
        assert_eq!(
            channels.iter().collect::<Vec<_>>(),
            vec![Ok("specific.a!b")]
        );
        assert_eq!(channels.len(), 1);
    }

    #[test]
    fn channels_list_reports_non_strings() {
        let message = Message::from_value(map(vec![(
            ASGI_CHANNEL_KEY,
            Value::Array(vec![Value::from("a!1"), Value::from(7), Value::from("a!2")]),
        )]))
        .unwrap();
        let channels = message.channels().unwrap();
        assert_eq!(
            channels.iter().collect::<Vec<_>>(),
            vec![
                Ok("a!1"),
                Err(NotAChannelName {
                    index: 1,
                    found: "int"
                }),
                Ok("a!2")
            ]
        );
        assert_eq!(channels.names().collect::<Vec<_>>(), vec!["a!1", "a!2"]);
        assert_eq!(channels.iter().len(), 3);
    }

    #[test]
    fn channels_errors() {
        let missing = Message::from_value(map(vec![("type", Value::from("x"))])).unwrap();
        assert_eq!(missing.channels(), Err(ChannelsError::Missing));
        let wrong = Message::from_value(map(vec![(ASGI_CHANNEL_KEY, Value::Nil)])).unwrap();
        assert_eq!(
            wrong.channels(),
            Err(ChannelsError::WrongType { found: "nil" })
        );
    }

    #[test]
    fn from_value_rejects_non_maps_and_bad_strings() {
        assert_eq!(
            Message::from_value(Value::Array(vec![])),
            Err(MessageError::NotAMap { found: "array" })
        );
        let bad = rmpv::Value::String(rmpv::Utf8String::from(String::new()));
        assert!(Message::from_value(map(vec![("ok", bad)])).is_ok());
        let invalid = {
            let mut buffer = Vec::new();
            rmp::encode::write_str_len(&mut buffer, 1).unwrap();
            buffer.push(0xff);
            rmpv::decode::read_value(&mut buffer.as_slice()).unwrap()
        };
        assert_eq!(
            Message::from_value(map(vec![("bad", invalid)])),
            Err(MessageError::InvalidUtf8)
        );
    }

    #[test]
    fn duplicate_keys_follow_python_dict_semantics() {
        let message = Message::from_value(map(vec![
            ("a", Value::from(1)),
            ("b", Value::from(2)),
            ("a", Value::from(3)),
        ]))
        .unwrap();
        assert_eq!(
            message.entries(),
            &[
                (Value::from("a"), Value::from(3)),
                (Value::from("b"), Value::from(2))
            ]
        );
    }

    #[test]
    fn duplicate_keys_in_big_maps_use_the_hashed_path() {
        let mut pairs: Vec<(Value, Value)> = (0..40)
            .map(|index| (Value::from(format!("k{index}")), Value::from(index)))
            .collect();
        pairs.push((Value::from("k3"), Value::from("late")));
        pairs.push((Value::Binary(b"k3".to_vec()), Value::from("bytes")));
        pairs.push((Value::from("k3"), Value::from("later")));
        let message = Message::from_value(Value::Map(pairs)).unwrap();
        assert_eq!(message.len(), 41);
        assert_eq!(message.get("k3"), Some(&Value::from("later")));
        assert_eq!(message.entries()[3].0, Value::from("k3"));
        assert_eq!(message.entries()[40].0, Value::Binary(b"k3".to_vec()));
    }

    #[test]
    fn nesting_limit_counts_the_top_level_map() {
        let mut value = Value::Nil;
        for _ in 0..MAX_NESTING - 1 {
            value = Value::Array(vec![value]);
        }
        let at_limit = map(vec![("deep", value.clone())]);
        assert!(Message::from_value(at_limit).is_ok());
        let over = map(vec![("deep", Value::Array(vec![value]))]);
        assert_eq!(
            Message::from_value(over),
            Err(MessageError::TooDeep { limit: MAX_NESTING })
        );
    }
}
