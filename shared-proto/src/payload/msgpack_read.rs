//! Reads a msgpack body into an `rmpv::Value` tree, the way Python's
//! `msgpack.unpackb` does with its defaults (`raw=False`,
//! `strict_map_key=True`, `timestamp=0`, no `ext_hook`): the tree path, used
//! by [`super::PayloadCodec::deserialize`] and by the routing scan
//! ([`super::route`]) for the rare bodies it hands over (a map that repeats a
//! key) and for fields asked for as trees.
//!
//! It owns only the building of values: what the bytes are, and whether
//! Python would accept them, is [`super::msgpack_lex`]'s decision, taken
//! token by token, so this reader holds no byte-level reading of its own.
//! On top of the lexer it applies what a Python `dict` does to a map that
//! repeats a key (first position, last value) and requires the value to be a
//! map. It must not do I/O and must never panic; it allocates only what the
//! tree needs (a container reserves at most what the remaining bytes could
//! fill), and open containers live on a heap stack, not the thread's stack.

use rmpv::Value;

use super::msgpack_lex::{Event, Lexer, Token};
use super::{DecodeError, MsgpackErrorKind};
use crate::message::{dedupe_keys, value_kind};
#[cfg(test)]
use crate::MAX_NESTING;

/// Reads a whole body that must hold exactly one map.
pub(super) fn read_message(body: &[u8]) -> Result<Vec<(Value, Value)>, DecodeError> {
    let mut lexer = Lexer::new(body);
    let mut open: Vec<OpenContainer> = Vec::new();
    let mut root = None;
    while let Some(event) = lexer.next()? {
        let finished = match event {
            Event::Token { token, .. } => match token {
                // Every element takes at least one byte, so the remaining
                // input caps what a forged length can make us reserve.
                Token::ArrayStart(length) => {
                    open.push(OpenContainer::Array {
                        items: Vec::with_capacity(length.min(lexer.remaining())),
                    });
                    continue;
                }
                Token::MapStart(length) => {
                    open.push(OpenContainer::Map {
                        entries: Vec::with_capacity(length.min(lexer.remaining() / 2)),
                        pending_key: None,
                    });
                    continue;
                }
                Token::Nil => Value::Nil,
                Token::Bool(flag) => Value::Boolean(flag),
                Token::Unsigned(number) => Value::from(number),
                Token::Signed(number) => Value::from(number),
                Token::Float(number) => Value::F64(number),
                Token::Str(text) => Value::from(text),
                Token::Bin(bytes) => Value::Binary(bytes.to_vec()),
                Token::Ext { code, data } => Value::Ext(code, data.to_vec()),
            },
            // The lexer closes only what it opened, and so did we.
            Event::End { .. } => match open.pop() {
                Some(container) => container.into_value(),
                None => break,
            },
        };
        match open.last_mut() {
            Some(parent) => parent.accept(finished),
            None => root = Some(finished),
        }
    }
    match root {
        Some(Value::Map(entries)) => Ok(entries),
        Some(other) => Err(DecodeError::NotAMap {
            found: value_kind(&other),
        }),
        // The lexer ends only after a complete value; should it not, say
        // the input ended rather than guess.
        None => Err(DecodeError::Msgpack {
            offset: body.len(),
            kind: MsgpackErrorKind::UnexpectedEnd,
        }),
    }
}

/// A container still being filled. The lexer counts its elements and says
/// when it is complete; this only collects them.
enum OpenContainer {
    Array {
        items: Vec<Value>,
    },
    Map {
        entries: Vec<(Value, Value)>,
        pending_key: Option<Value>,
    },
}

impl OpenContainer {
    /// Takes the next element, map key or map value.
    fn accept(&mut self, value: Value) {
        match self {
            OpenContainer::Array { items } => items.push(value),
            OpenContainer::Map {
                entries,
                pending_key,
            } => match pending_key.take() {
                None => *pending_key = Some(value),
                Some(key) => entries.push((key, value)),
            },
        }
    }

    fn into_value(self) -> Value {
        match self {
            OpenContainer::Array { items } => Value::Array(items),
            OpenContainer::Map { mut entries, .. } => {
                dedupe_keys(&mut entries);
                Value::Map(entries)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_kind(body: &[u8]) -> MsgpackErrorKind {
        match read_message(body) {
            Err(DecodeError::Msgpack { kind, .. }) => kind,
            other => panic!("expected a msgpack error, got {other:?}"),
        }
    }

    #[test]
    fn reads_every_integer_width() {
        let body = b"\x81\xa1n\x9a\x05\xcc\xff\xcd\xff\xff\xce\xff\xff\xff\xff\
\xcf\xff\xff\xff\xff\xff\xff\xff\xff\xd0\x80\xd1\x80\x00\xd2\x80\x00\x00\x00\
\xd3\x80\x00\x00\x00\x00\x00\x00\x00\xe0";
        let entries = read_message(body).unwrap();
        let expected = Value::Array(vec![
            Value::from(5),
            Value::from(255),
            Value::from(65535),
            Value::from(u32::MAX),
            Value::from(u64::MAX),
            Value::from(i8::MIN),
            Value::from(i16::MIN),
            Value::from(i32::MIN),
            Value::from(i64::MIN),
            Value::from(-32),
        ]);
        assert_eq!(entries, vec![(Value::from("n"), expected)]);
    }

    #[test]
    fn forged_lengths_do_not_allocate_or_panic() {
        assert_eq!(
            error_kind(b"\xdf\xff\xff\xff\xff"),
            MsgpackErrorKind::UnexpectedEnd
        );
        assert_eq!(
            error_kind(b"\x81\xa1a\xdb\xff\xff\xff\xff"),
            MsgpackErrorKind::UnexpectedEnd
        );
        assert_eq!(
            error_kind(b"\x81\xa1a\xc9\xff\xff\xff\xff\x01"),
            MsgpackErrorKind::UnexpectedEnd
        );
    }

    #[test]
    fn nesting_limit_matches_python() {
        let mut body = b"\x81\xa1a".repeat(MAX_NESTING);
        body.push(0xc0);
        assert!(read_message(&body).is_ok());
        let mut deeper = b"\x81\xa1a".repeat(MAX_NESTING + 1);
        deeper.push(0xc0);
        assert_eq!(
            error_kind(&deeper),
            MsgpackErrorKind::TooDeep { limit: MAX_NESTING }
        );
    }

    #[test]
    fn error_offsets_point_at_the_problem() {
        assert_eq!(
            read_message(b"\x82\xa1a\x01\x02\x03"),
            Err(DecodeError::Msgpack {
                offset: 4,
                kind: MsgpackErrorKind::KeyNotAllowed { found: "int" }
            })
        );
        assert_eq!(
            read_message(b"\x81\xa1a\xa3ab\xff"),
            Err(DecodeError::Msgpack {
                offset: 6,
                kind: MsgpackErrorKind::InvalidUtf8
            })
        );
    }

    #[test]
    fn top_level_must_be_a_map() {
        assert_eq!(
            read_message(b"\x90"),
            Err(DecodeError::NotAMap { found: "array" })
        );
    }
}
