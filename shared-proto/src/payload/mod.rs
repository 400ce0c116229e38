//! The payload bytes `channels_redis` stores in Redis (core layer: sorted-set
//! members; pub/sub layer: published messages), and their conversion to and
//! from a [`Message`].
//!
//! `payload = random_prefix + maybe_encrypt(serialize(message))`. This module
//! owns the prefix, the two serializers (`msgpack.packb`/`unpackb` and
//! `json.dumps`/`loads` with Python's defaults) and their error types; the
//! Fernet step between prefix and body is [`crate::encryption`], applied by
//! [`PayloadCodec::decode_with`]. It must not talk to Redis, read clocks or
//! pick randomness itself (callers pass an RNG and the time), and decoding
//! must never panic, whatever the bytes.
//!
//! Every msgpack byte is read by one lexer (`msgpack_lex`); the tree reader
//! behind [`PayloadCodec::deserialize`] builds values from its tokens, and
//! [`route`], the routing hot path, reads the fields it needs from the same
//! tokens without building a value tree, so the two accept and refuse
//! exactly the same bodies.

mod inline_vec;
mod json_read;
mod msgpack_lex;
mod msgpack_read;
mod msgpack_write;
pub mod route;

use std::fmt;
use std::str::FromStr;

use rand::RngCore;

use crate::encryption::{DecryptError, Encryption};
use crate::message::Message;
use crate::pyjson::{self, RenderError};

/// The `serializer_format` setting of a channels_redis layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SerializerFormat {
    /// `msgpack` (the default).
    #[default]
    Msgpack,
    /// `json`.
    Json,
}

impl SerializerFormat {
    /// The name used in the Django settings.
    pub fn as_str(self) -> &'static str {
        match self {
            SerializerFormat::Msgpack => "msgpack",
            SerializerFormat::Json => "json",
        }
    }
}

impl fmt::Display for SerializerFormat {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A `serializer_format` name channels_redis does not register.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown serializer format {0:?} (channels_redis knows \"msgpack\" and \"json\")")]
pub struct UnknownSerializerFormat(pub String);

impl FromStr for SerializerFormat {
    type Err = UnknownSerializerFormat;

    /// Exact, case-sensitive names, as channels_redis' registry looks them up.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "msgpack" => Ok(SerializerFormat::Msgpack),
            "json" => Ok(SerializerFormat::Json),
            other => Err(UnknownSerializerFormat(other.to_owned())),
        }
    }
}

/// Why a payload could not be turned into a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload cannot even hold the configured random prefix.
    #[error("payload is {actual} bytes, shorter than the {expected}-byte random prefix")]
    ShorterThanPrefix {
        /// The configured `random_prefix_length`.
        expected: usize,
        /// Length of the payload received.
        actual: usize,
    },
    /// The msgpack body is not something `msgpack.unpackb` would accept.
    #[error("msgpack body invalid at byte {offset}: {kind}")]
    Msgpack {
        /// Offset into the body (after the prefix).
        offset: usize,
        /// What was wrong.
        kind: MsgpackErrorKind,
    },
    /// The JSON body is not something `json.loads` would accept, or holds a
    /// value an `rmpv::Value` cannot represent.
    #[error("json body invalid at byte {offset}: {kind}")]
    Json {
        /// Offset into the body (after the prefix).
        offset: usize,
        /// What was wrong.
        kind: JsonErrorKind,
    },
    /// Encryption is configured and the body is not a token it accepts.
    #[error(transparent)]
    Decrypt(#[from] DecryptError),
    /// The body decoded, but to something other than a map.
    #[error("payload holds a {found}, not a map")]
    NotAMap {
        /// Kind of the top-level value (see [`crate::value_kind`]).
        found: &'static str,
    },
}

/// The ways a msgpack body can be rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MsgpackErrorKind {
    /// The bytes end inside a value.
    #[error("input ends inside a value")]
    UnexpectedEnd,
    /// 0xc1 is never used by msgpack.
    #[error("reserved marker byte 0xc1")]
    ReservedMarker,
    /// `raw=False`: every msgpack str must be valid UTF-8.
    #[error("str is not valid UTF-8")]
    InvalidUtf8,
    /// `strict_map_key=True`: only str and bin keys are allowed.
    #[error("a {found} is not allowed as a map key")]
    KeyNotAllowed {
        /// Kind of the key found.
        found: &'static str,
    },
    /// Deeper than [`crate::MAX_NESTING`], where Python raises `StackError`.
    #[error("nested deeper than {limit} containers")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// Python's `ExtType` only allows codes 0..=127; -1 is the timestamp.
    #[error("ext type code {code} is not allowed")]
    ExtCodeNotAllowed {
        /// The code found.
        code: i8,
    },
    /// Ext type -1 with a length or nanosecond field Python rejects.
    #[error("invalid timestamp ext")]
    InvalidTimestamp,
    /// `unpackb` raises `ExtraData` when bytes follow the value.
    #[error("extra bytes after the value")]
    TrailingBytes,
}

/// The ways a JSON body can be rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonErrorKind {
    /// Not UTF-8 (including UTF-8-encoded surrogates, which Python would pass
    /// through as lone surrogates a Rust string cannot hold).
    #[error("not valid UTF-8")]
    InvalidUtf8,
    /// The text ends inside a value.
    #[error("text ends inside a value")]
    UnexpectedEnd,
    /// No value starts here.
    #[error("expected a value")]
    ExpectedValue,
    /// Object keys must be strings.
    #[error("expected a string key")]
    ExpectedKey,
    /// A key must be followed by `:`.
    #[error("expected ':'")]
    ExpectedColon,
    /// Items must be separated by `,` and the container closed.
    #[error("expected ',' or a closing bracket")]
    ExpectedCommaOrClose,
    /// Malformed number.
    #[error("invalid number")]
    InvalidNumber,
    /// An integer outside the i64/u64 range: Python keeps it, rmpv cannot.
    #[error("integer outside the 64-bit range")]
    IntegerOutOfRange,
    /// Unknown backslash escape or bad `\u` digits.
    #[error("invalid escape")]
    InvalidEscape,
    /// A raw character below U+0020 inside a string (`strict=True`).
    #[error("control character inside a string")]
    ControlCharacter,
    /// A `\u` escape for an unpaired surrogate: Python keeps it, Rust cannot.
    #[error("unpaired surrogate escape")]
    LoneSurrogate,
    /// Deeper than [`crate::MAX_NESTING`].
    #[error("nested deeper than {limit} containers")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// Something other than whitespace follows the value.
    #[error("extra data after the value")]
    TrailingCharacters,
}

/// Why a message could not be serialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// `json.dumps` would raise `TypeError` on this message.
    #[error("message cannot be rendered as JSON: {0}")]
    Json(#[from] RenderError),
    /// A str, bin, array, map or ext longer than msgpack can describe.
    #[error("a {kind} of length {length} exceeds msgpack's 32-bit length limit")]
    TooLong {
        /// Kind of the value.
        kind: &'static str,
        /// Its length.
        length: usize,
    },
}

/// Encodes and decodes payloads the way one configured channels_redis layer
/// does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadCodec {
    /// The layer's `serializer_format`.
    pub format: SerializerFormat,
    /// The layer's `random_prefix_length` (core layer; the pub/sub layer uses 0).
    pub random_prefix_length: usize,
}

impl Default for PayloadCodec {
    fn default() -> Self {
        Self::core_layer(SerializerFormat::Msgpack)
    }
}

impl PayloadCodec {
    /// `RedisChannelLayer`'s default `random_prefix_length`.
    pub const CORE_LAYER_PREFIX_LENGTH: usize = 12;

    /// A codec with an explicit prefix length.
    pub fn new(format: SerializerFormat, random_prefix_length: usize) -> Self {
        Self {
            format,
            random_prefix_length,
        }
    }

    /// `channels_redis.core.RedisChannelLayer` with its default prefix length.
    pub fn core_layer(format: SerializerFormat) -> Self {
        Self::new(format, Self::CORE_LAYER_PREFIX_LENGTH)
    }

    /// `channels_redis.pubsub.RedisPubSubChannelLayer`, which never prefixes.
    pub fn pubsub_layer(format: SerializerFormat) -> Self {
        Self::new(format, 0)
    }

    /// A stored payload to a message: prefix strip, then deserialize.
    pub fn decode(&self, raw: &[u8]) -> Result<Message, DecodeError> {
        let body = self.strip_random_prefix(raw)?;
        self.deserialize(body)
    }

    /// Like [`decode`](Self::decode), decrypting the body first when the
    /// layer has `symmetric_encryption_keys`; `now_secs` is the current UNIX
    /// time for the Fernet TTL check.
    pub fn decode_with(
        &self,
        raw: &[u8],
        encryption: Option<&Encryption>,
        now_secs: u64,
    ) -> Result<Message, DecodeError> {
        let body = self.strip_random_prefix(raw)?;
        match encryption {
            None => self.deserialize(body),
            Some(encryption) => self.deserialize(&encryption.decrypt(body, now_secs)?),
        }
    }

    /// The part of a payload after the random prefix (still encrypted, when a
    /// deployment uses `symmetric_encryption_keys`).
    pub fn strip_random_prefix<'a>(&self, raw: &'a [u8]) -> Result<&'a [u8], DecodeError> {
        raw.get(self.random_prefix_length..)
            .ok_or(DecodeError::ShorterThanPrefix {
                expected: self.random_prefix_length,
                actual: raw.len(),
            })
    }

    /// A plaintext serialized body (no prefix, not encrypted) to a message.
    pub fn deserialize(&self, body: &[u8]) -> Result<Message, DecodeError> {
        let entries = match self.format {
            SerializerFormat::Msgpack => msgpack_read::read_message(body)?,
            SerializerFormat::Json => json_read::read_message(body)?,
        };
        Ok(Message::from_checked_entries(entries))
    }

    /// What channels_redis' serializer's `as_bytes` produces: `msgpack.packb`
    /// or `json.dumps(...).encode()`, without prefix.
    pub fn serialize(&self, message: &Message) -> Result<Vec<u8>, EncodeError> {
        let mut body = Vec::new();
        self.serialize_into(message, &mut body)?;
        Ok(body)
    }

    /// [`PayloadCodec::serialize`] appending to `out`; on error `out` is left
    /// as it was.
    pub fn serialize_into(&self, message: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = match self.format {
            SerializerFormat::Msgpack => msgpack_write::write_message(message, out),
            SerializerFormat::Json => {
                let mut text = String::new();
                pyjson::render_message(message, &mut text)
                    .map(|()| out.extend_from_slice(text.as_bytes()))
                    .map_err(EncodeError::from)
            }
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// The full payload channels_redis would store: `random_prefix_length`
    /// random bytes from `rng`, then the serialized message.
    pub fn encode<R: RngCore + ?Sized>(
        &self,
        message: &Message,
        rng: &mut R,
    ) -> Result<Vec<u8>, EncodeError> {
        let mut payload = vec![0; self.random_prefix_length];
        rng.fill_bytes(&mut payload);
        self.serialize_into(message, &mut payload)?;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn sample() -> Message {
        Message::from_value(Value::Map(vec![
            (Value::from("type"), Value::from("send_notification")),
            (
                Value::from("message"),
                Value::Map(vec![(Value::from("n"), Value::from(1))]),
            ),
        ]))
        .unwrap()
    }

    #[test]
    fn format_names_round_trip() {
        for format in [SerializerFormat::Msgpack, SerializerFormat::Json] {
            assert_eq!(format.as_str().parse::<SerializerFormat>(), Ok(format));
        }
        assert!("MsgPack".parse::<SerializerFormat>().is_err());
    }

    #[test]
    fn prefix_is_random_and_stripped() {
        let codec = PayloadCodec::default();
        let mut rng = rand::rng();
        let first = codec.encode(&sample(), &mut rng).unwrap();
        let second = codec.encode(&sample(), &mut rng).unwrap();
        assert_eq!(first.len(), second.len());
        assert_ne!(first[..12], second[..12]);
        assert_eq!(codec.decode(&first).unwrap(), sample());
    }

    #[test]
    fn too_short_for_prefix() {
        let codec = PayloadCodec::default();
        assert_eq!(
            codec.decode(&[0; 11]),
            Err(DecodeError::ShorterThanPrefix {
                expected: 12,
                actual: 11
            })
        );
        assert!(matches!(
            codec.decode(&[0; 12]),
            Err(DecodeError::Msgpack {
                offset: 0,
                kind: MsgpackErrorKind::UnexpectedEnd
            })
        ));
    }

    #[test]
    fn json_encode_failure_leaves_buffer_untouched() {
        let message =
            Message::from_value(Value::Map(vec![(Value::from("b"), Value::Binary(vec![1]))]))
                .unwrap();
        let mut out = b"keep".to_vec();
        let codec = PayloadCodec::pubsub_layer(SerializerFormat::Json);
        assert!(codec.serialize_into(&message, &mut out).is_err());
        assert_eq!(out, b"keep");
    }
}
