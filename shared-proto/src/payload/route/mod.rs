//! The routing hot path: what the gateway needs from one plaintext payload
//! body — the event `type`, the `__asgi_channel__` names and the client frame
//! — read straight from the msgpack bytes, without building an
//! `rmpv::Value` tree. The gateway's default routing path reads every
//! payload through it.
//!
//! One scan of the body (`scan`), driven by the same lexer as the tree
//! reader (`payload::msgpack_lex`), accepts and rejects exactly what
//! [`PayloadCodec::deserialize`] does (same errors, same offsets) and records
//! only where each top-level field's value lies; channel names are then
//! borrowed `&str` slices of the body, and the `{"message": …}` or
//! pass-through frame is rendered (`render`) from the recorded bytes into
//! one `String`, byte for byte what [`crate::frame`] renders from a
//! [`Message`].
//!
//! Two cases go to the tree path instead, so they keep exactly its
//! semantics: a JSON body (`json.loads` has no cheap single-pass form here),
//! and a msgpack body with a repeated key in any map (Python keeps the first
//! position and the last value; rare, and awkward to render in one pass).
//!
//! This module owns the view type and what it answers: fields, channel
//! names, frames. It reads no msgpack byte itself (the lexer does), must not
//! do I/O, must never panic on any bytes, and must not accept or reject
//! anything the tree reader would not.

mod render;
mod scan;

use rmpv::Value;

use self::render::{write_key, write_packed_value};
use self::scan::{scan, Scanned};
use super::inline_vec::InlineVec;
use super::msgpack_lex::{Cursor, Token};
use super::msgpack_read;
use super::{DecodeError, PayloadCodec, SerializerFormat};
use crate::frame::{render_notification, render_passthrough, NOTIFICATION_FIELD};
use crate::message::{
    ChannelIter, Channels, ChannelsError, Message, NotAChannelName, ASGI_CHANNEL_KEY, TYPE_KEY,
};
use crate::pyjson::with_rollback;
use crate::pyjson::RenderError;
#[cfg(test)]
use crate::MAX_NESTING;

impl PayloadCodec {
    /// Reads a plaintext body (prefix stripped, decrypted) for routing.
    /// Accepts and rejects exactly what [`PayloadCodec::deserialize`] does,
    /// with the same error.
    pub fn route_view<'a>(&self, body: &'a [u8]) -> Result<RouteView<'a>, DecodeError> {
        RouteView::read(self.format, body)
    }
}

/// A decoded-enough event: `type`, channels, frames and any other field on
/// demand. Borrows the body it was read from.
#[derive(Debug)]
pub struct RouteView<'a> {
    repr: Repr<'a>,
}

// The inline fields make the packed variant large; it lives on the stack for
// one payload, and boxing it would put an allocation back on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Repr<'a> {
    /// Read in one scan; values stay msgpack bytes.
    Packed(Packed<'a>),
    /// JSON bodies and msgpack bodies with repeated keys.
    Tree(Message),
}

#[derive(Debug)]
struct Packed<'a> {
    body: &'a [u8],
    /// Top-level fields in publisher order; keys are unique.
    fields: InlineVec<Field<'a>, INLINE_FIELDS>,
}

/// A top-level key and the msgpack bytes of its value.
#[derive(Debug, Clone, Copy, Default)]
struct Field<'a> {
    key: Key<'a>,
    value: &'a [u8],
}

/// Python's unpacker allows only str and bin keys (`strict_map_key=True`),
/// and `"a" != b"a"`, so the kind is part of the key's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    Str(&'a str),
    Bin(&'a [u8]),
}

impl Default for Key<'_> {
    fn default() -> Self {
        Key::Bin(&[])
    }
}

impl Key<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Key::Str(text) => Some(text),
            Key::Bin(_) => None,
        }
    }
}

/// Channel-layer events carry a handful of fields; more spill to the heap.
const INLINE_FIELDS: usize = 8;
/// Open containers kept without a heap allocation; deeper values spill.
const INLINE_DEPTH: usize = 16;

impl<'a> RouteView<'a> {
    /// See [`PayloadCodec::route_view`].
    pub fn read(format: SerializerFormat, body: &'a [u8]) -> Result<RouteView<'a>, DecodeError> {
        let repr = match format {
            SerializerFormat::Json => {
                Repr::Tree(PayloadCodec::pubsub_layer(format).deserialize(body)?)
            }
            SerializerFormat::Msgpack => match scan(body)? {
                Scanned::Unique(fields) => Repr::Packed(Packed { body, fields }),
                Scanned::RepeatedKey => Repr::Tree(Message::from_checked_entries(
                    msgpack_read::read_message(body)?,
                )),
            },
        };
        Ok(RouteView { repr })
    }

    /// Whether the single-pass reading was used (false: the tree path).
    pub fn is_single_pass(&self) -> bool {
        matches!(self.repr, Repr::Packed(_))
    }

    /// The `type` field, when it is a string ([`Message::message_type`]).
    pub fn message_type(&self) -> Option<&str> {
        self.field(TYPE_KEY).and_then(|value| value.as_str())
    }

    /// The value under the string key `key` ([`Message::get`]).
    pub fn field(&self, key: &str) -> Option<FieldValue<'_>> {
        match &self.repr {
            Repr::Packed(packed) => packed.get(key).map(FieldValue::Packed),
            Repr::Tree(message) => message.get(key).map(FieldValue::Tree),
        }
    }

    /// The destination channel names ([`Message::channels`]).
    pub fn channels(&self) -> Result<ChannelNames<'_>, ChannelsError> {
        let packed = match &self.repr {
            Repr::Tree(message) => {
                return message.channels().map(|channels| ChannelNames {
                    inner: NamesInner::Tree(channels.iter()),
                })
            }
            Repr::Packed(packed) => packed,
        };
        let value = packed.get(ASGI_CHANNEL_KEY).ok_or(ChannelsError::Missing)?;
        let mut cursor = Cursor::new(value);
        let inner = match cursor.token() {
            Some(Token::ArrayStart(length)) => NamesInner::Packed {
                cursor,
                remaining: length,
                index: 0,
            },
            Some(Token::Str(name)) => NamesInner::One(Some(name)),
            Some(other) => {
                return Err(ChannelsError::WrongType {
                    found: other.kind(),
                })
            }
            // A validated value always reads; say so rather than panic.
            None => return Err(ChannelsError::WrongType { found: "invalid" }),
        };
        Ok(ChannelNames { inner })
    }

    /// Appends [`crate::render_notification`]'s frame; on error `out` is
    /// unchanged.
    pub fn render_notification(&self, out: &mut String) -> Result<(), RenderError> {
        let packed = match &self.repr {
            Repr::Tree(message) => return render_notification(message, out),
            Repr::Packed(packed) => packed,
        };
        let value = packed
            .get(NOTIFICATION_FIELD)
            .ok_or(RenderError::MissingField {
                field: NOTIFICATION_FIELD,
            })?;
        with_rollback(out, |out| {
            out.reserve(value.len() + 16);
            out.push_str("{\"message\": ");
            write_packed_value(value, out, 1)?;
            out.push('}');
            Ok(())
        })
    }

    /// Appends [`crate::render_passthrough`]'s frame; on error `out` is
    /// unchanged.
    pub fn render_passthrough(&self, out: &mut String) -> Result<(), RenderError> {
        let packed = match &self.repr {
            Repr::Tree(message) => return render_passthrough(message, out),
            Repr::Packed(packed) => packed,
        };
        let message_type = packed
            .get(TYPE_KEY)
            .ok_or(RenderError::MissingField { field: TYPE_KEY })?;
        with_rollback(out, |out| {
            out.reserve(packed.body.len() + 16);
            out.push_str("{\"type\": ");
            write_packed_value(message_type, out, 1)?;
            for field in packed.fields.as_slice() {
                if matches!(field.key.as_str(), Some(TYPE_KEY | ASGI_CHANNEL_KEY)) {
                    continue;
                }
                out.push_str(", ");
                write_key(field.key, out)?;
                out.push_str(": ");
                write_packed_value(field.value, out, 1)?;
            }
            out.push('}');
            Ok(())
        })
    }

    /// The whole event as a [`Message`], for callers that need every field
    /// as a tree (this decodes the body again).
    pub fn to_message(&self) -> Result<Message, DecodeError> {
        match &self.repr {
            Repr::Tree(message) => Ok(message.clone()),
            Repr::Packed(packed) => Ok(Message::from_checked_entries(msgpack_read::read_message(
                packed.body,
            )?)),
        }
    }
}

impl<'a> Packed<'a> {
    fn get(&self, key: &str) -> Option<&'a [u8]> {
        self.fields
            .as_slice()
            .iter()
            .find(|field| field.key.as_str() == Some(key))
            .map(|field| field.value)
    }
}

/// One field of a [`RouteView`], read on demand.
#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'a> {
    /// The msgpack bytes of the value (validated).
    Packed(&'a [u8]),
    /// A value of the tree path.
    Tree(&'a Value),
}

impl<'a> FieldValue<'a> {
    /// The value when it is a string (`rmpv::Value::as_str`).
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            FieldValue::Packed(bytes) => match Cursor::new(bytes).token() {
                Some(Token::Str(text)) => Some(text),
                _ => None,
            },
            FieldValue::Tree(value) => value.as_str(),
        }
    }

    /// The value as a float when it is a number (`rmpv::Value::as_f64`:
    /// integers convert, float32 widens).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            FieldValue::Packed(bytes) => match Cursor::new(bytes).token() {
                Some(Token::Float(number)) => Some(number),
                Some(Token::Unsigned(number)) => Some(number as f64),
                Some(Token::Signed(number)) => Some(number as f64),
                _ => None,
            },
            FieldValue::Tree(value) => value.as_f64(),
        }
    }

    /// The value as a tree.
    pub fn to_value(&self) -> Option<Value> {
        match *self {
            // Wrapped as the only value of a one-entry map, the bytes go
            // through the tree decoder itself, so the value is exactly the
            // tree path's (float32 widened, nested keys normalised).
            FieldValue::Packed(bytes) => {
                let mut wrapped = Vec::with_capacity(bytes.len() + 3);
                wrapped.extend_from_slice(b"\x81\xa1v");
                wrapped.extend_from_slice(bytes);
                let entries = msgpack_read::read_message(&wrapped).ok()?;
                entries.into_iter().next().map(|(_, value)| value)
            }
            FieldValue::Tree(value) => Some(value.clone()),
        }
    }
}

/// The names in `__asgi_channel__`, borrowed; entries that are not strings
/// come out as [`NotAChannelName`], as from [`Channels::iter`].
#[derive(Debug, Clone)]
pub struct ChannelNames<'a> {
    inner: NamesInner<'a>,
}

#[derive(Debug, Clone)]
enum NamesInner<'a> {
    One(Option<&'a str>),
    Packed {
        cursor: Cursor<'a>,
        remaining: usize,
        index: usize,
    },
    Tree(ChannelIter<'a>),
}

impl<'a> ChannelNames<'a> {
    /// Entries not yet iterated, strings or not.
    pub fn len(&self) -> usize {
        match &self.inner {
            NamesInner::One(name) => usize::from(name.is_some()),
            NamesInner::Packed { remaining, .. } => *remaining,
            NamesInner::Tree(iter) => iter.len(),
        }
    }

    /// True when no entries are left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> Iterator for ChannelNames<'a> {
    type Item = Result<&'a str, NotAChannelName>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            NamesInner::One(name) => name.take().map(Ok),
            NamesInner::Tree(iter) => iter.next(),
            NamesInner::Packed {
                cursor,
                remaining,
                index,
            } => {
                if *remaining == 0 {
                    return None;
                }
                *remaining -= 1;
                let position = *index;
                *index += 1;
                let item = match cursor.token() {
                    Some(item) => item,
                    None => {
                        // Only reachable if validation and reading disagree:
                        // end the list rather than guess.
                        *remaining = 0;
                        return None;
                    }
                };
                if let Token::Str(name) = item {
                    return Some(Ok(name));
                }
                if cursor.skip_contents(item).is_none() {
                    *remaining = 0;
                }
                Some(Err(NotAChannelName {
                    index: position,
                    found: item.kind(),
                }))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self.len();
        (remaining, Some(remaining))
    }
}

impl ExactSizeIterator for ChannelNames<'_> {}

impl<'a> From<Channels<'a>> for ChannelNames<'a> {
    fn from(channels: Channels<'a>) -> Self {
        ChannelNames {
            inner: NamesInner::Tree(channels.iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(body: &[u8]) -> RouteView<'_> {
        PayloadCodec::pubsub_layer(SerializerFormat::Msgpack)
            .route_view(body)
            .unwrap()
    }

    fn pack(value: &Value) -> Vec<u8> {
        let mut body = Vec::new();
        rmpv::encode::write_value(&mut body, value).unwrap();
        body
    }

    fn event(pairs: Vec<(&str, Value)>) -> Vec<u8> {
        pack(&Value::Map(
            pairs
                .into_iter()
                .map(|(key, value)| (Value::from(key), value))
                .collect(),
        ))
    }

    #[test]
    fn typical_group_send_takes_the_single_pass() {
        let body = event(vec![
            ("type", Value::from("send_notification")),
            (
                "message",
                Value::Map(vec![
                    (Value::from("title"), Value::from("Héllo")),
                    (Value::from("n"), Value::F32(1.5)),
                ]),
            ),
            (
                ASGI_CHANNEL_KEY,
                Value::Array(vec![Value::from("specific.gw-1!a"), Value::from(3)]),
            ),
            ("sent_at", Value::from(12)),
        ]);
        let view = view(&body);
        assert!(view.is_single_pass());
        assert_eq!(view.message_type(), Some("send_notification"));
        let mut names = view.channels().unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(names.next(), Some(Ok("specific.gw-1!a")));
        assert_eq!(
            names.next(),
            Some(Err(NotAChannelName {
                index: 1,
                found: "int"
            }))
        );
        assert_eq!(names.next(), None);
        let mut out = String::new();
        view.render_notification(&mut out).unwrap();
        assert_eq!(out, r#"{"message": {"title": "H\u00e9llo", "n": 1.5}}"#);
        out.clear();
        view.render_passthrough(&mut out).unwrap();
        assert_eq!(
            out,
            r#"{"type": "send_notification", "message": {"title": "H\u00e9llo", "n": 1.5}, "sent_at": 12}"#
        );
        assert_eq!(view.field("sent_at").and_then(|v| v.as_f64()), Some(12.0));
    }

    #[test]
    fn repeated_keys_anywhere_fall_back_to_python_dict_semantics() {
        let nested = event(vec![
            ("type", Value::from("send_notification")),
            (
                "message",
                Value::Map(vec![
                    (Value::from("a"), Value::from(1)),
                    (Value::from("b"), Value::from(2)),
                    (Value::from("a"), Value::from(3)),
                ]),
            ),
        ]);
        let view = view(&nested);
        assert!(!view.is_single_pass());
        let mut out = String::new();
        view.render_notification(&mut out).unwrap();
        assert_eq!(out, r#"{"message": {"a": 3, "b": 2}}"#);

        let top = event(vec![
            ("type", Value::from("x")),
            (ASGI_CHANNEL_KEY, Value::from("a!1")),
            ("type", Value::from("send_notification")),
        ]);
        let view = super::tests::view(&top);
        assert!(!view.is_single_pass());
        assert_eq!(view.message_type(), Some("send_notification"));
        // str and bin keys never collide, as in Python.
        let mixed = pack(&Value::Map(vec![
            (Value::from("type"), Value::from("x")),
            (Value::Binary(b"type".to_vec()), Value::from("y")),
        ]));
        assert!(super::tests::view(&mixed).is_single_pass());
    }

    #[test]
    fn big_maps_detect_repeats_by_sorting() {
        let mut entries: Vec<(Value, Value)> = (0..40)
            .map(|index| (Value::from(format!("k{index}")), Value::from(index)))
            .collect();
        let inner = Value::Map(entries.clone());
        assert!(view(&event(vec![("message", inner)])).is_single_pass());
        entries.push((Value::from("k7"), Value::Nil));
        assert!(!view(&event(vec![("message", Value::Map(entries))])).is_single_pass());
    }

    #[test]
    fn errors_match_the_tree_decoder() {
        let codec = PayloadCodec::pubsub_layer(SerializerFormat::Msgpack);
        let cases: &[&[u8]] = &[
            b"",
            b"\x90",
            b"\x81\xa1a",
            b"\x82\xa1a\x01\x02\x03",
            b"\x81\xa1a\xa3ab\xff",
            b"\x81\xa1a\xc1",
            b"\x81\x90\x01",
            b"\x81\xc0\x01",
            b"\x81\xa1a\xd4\xfe\x00",
            b"\x81\xa1a\xd6\xff\x00\x00\x00\x00\x01",
            b"\x80\x00",
            b"\xdf\xff\xff\xff\xff",
            b"\x81\xa1a\xdb\xff\xff\xff\xff",
        ];
        for body in cases {
            assert_eq!(
                codec.route_view(body).map(|_| ()),
                codec.deserialize(body).map(|_| ()),
                "{body:?}"
            );
        }
    }

    #[test]
    fn nesting_limit_matches_the_tree_decoder() {
        let codec = PayloadCodec::pubsub_layer(SerializerFormat::Msgpack);
        for extra in [0, 1] {
            let mut body = b"\x81\xa7message".repeat(MAX_NESTING - 1 + extra);
            body.push(0x90);
            let tree = codec.deserialize(&body).map(|_| ());
            let fast = codec.route_view(&body);
            assert_eq!(fast.as_ref().map(|_| ()).map_err(Clone::clone), tree);
            if let Ok(view) = fast {
                let mut out = String::new();
                view.render_notification(&mut out).unwrap();
                assert!(out.ends_with(&format!("[]{}", "}".repeat(MAX_NESTING - 1))));
                assert_eq!(out.matches('{').count(), MAX_NESTING - 1);
            }
        }
    }

    #[test]
    fn inline_vec_spills_and_keeps_one_slice() {
        let mut values: InlineVec<usize, 2> = InlineVec::new();
        for value in 0..5 {
            values.push(value);
        }
        assert_eq!(values.as_slice(), &[0, 1, 2, 3, 4]);
        values.truncate(1);
        assert_eq!(values.pop(), Some(0));
        assert_eq!(values.pop(), None);
        assert!(values.is_empty());
    }
}
