//! Reads a msgpack body the way Python's `msgpack.unpackb` does with its
//! defaults (`raw=False`, `strict_map_key=True`, `timestamp=0`, no
//! `ext_hook`), straight from the borrowed slice into `rmpv::Value`s.
//!
//! This is the gateway's hot path: one call per Redis message. It owns only
//! the byte-level reading; it must not allocate more than the input can
//! justify (declared lengths are capped by the bytes actually present), must
//! refuse nesting beyond [`MAX_NESTING`] without recursing (open containers
//! live on a heap stack), and must never panic.

use rmpv::Value;

use super::{DecodeError, MsgpackErrorKind};
use crate::message::{dedupe_keys, value_kind};
use crate::MAX_NESTING;

/// Reads a whole body that must hold exactly one map.
pub(super) fn read_message(body: &[u8]) -> Result<Vec<(Value, Value)>, DecodeError> {
    let mut reader = Reader {
        input: body,
        offset: 0,
    };
    let value = reader.read_root().map_err(Failure::into_error)?;
    if reader.offset != body.len() {
        return Err(DecodeError::Msgpack {
            offset: reader.offset,
            kind: MsgpackErrorKind::TrailingBytes,
        });
    }
    match value {
        Value::Map(entries) => Ok(entries),
        other => Err(DecodeError::NotAMap {
            found: value_kind(&other),
        }),
    }
}

/// One marker's worth of input: a complete scalar, or the header of a
/// container whose elements follow.
enum Item {
    Complete(Value),
    ArrayHeader(usize),
    MapHeader(usize),
}

/// A container still being filled. The reader keeps these on a heap stack
/// instead of recursing, so nesting depth never touches the thread's stack.
enum OpenContainer {
    Array {
        items: Vec<Value>,
        remaining: usize,
    },
    Map {
        entries: Vec<(Value, Value)>,
        remaining: usize,
        pending_key: Option<Value>,
    },
}

impl OpenContainer {
    fn expects_key(&self) -> bool {
        matches!(
            self,
            OpenContainer::Map {
                pending_key: None,
                ..
            }
        )
    }

    /// Takes the next element (or map key, or map value); true once the
    /// container has all it declared.
    fn accept(&mut self, value: Value) -> bool {
        match self {
            OpenContainer::Array { items, remaining } => {
                items.push(value);
                *remaining = remaining.saturating_sub(1);
                *remaining == 0
            }
            OpenContainer::Map {
                entries,
                remaining,
                pending_key,
            } => match pending_key.take() {
                None => {
                    *pending_key = Some(value);
                    false
                }
                Some(key) => {
                    entries.push((key, value));
                    *remaining = remaining.saturating_sub(1);
                    *remaining == 0
                }
            },
        }
    }

    fn into_value(self) -> Value {
        match self {
            OpenContainer::Array { items, .. } => Value::Array(items),
            OpenContainer::Map { mut entries, .. } => {
                dedupe_keys(&mut entries);
                Value::Map(entries)
            }
        }
    }
}

struct Failure {
    offset: usize,
    kind: MsgpackErrorKind,
}

impl Failure {
    fn into_error(self) -> DecodeError {
        DecodeError::Msgpack {
            offset: self.offset,
            kind: self.kind,
        }
    }
}

struct Reader<'a> {
    input: &'a [u8],
    offset: usize,
}

/// Python's `Timestamp` refuses nanosecond fields at or above one second.
const MAX_TIMESTAMP_NANOS: u64 = 999_999_999;

pub(super) const TIMESTAMP_EXT_CODE: i8 = -1;

impl<'a> Reader<'a> {
    fn fail(&self, offset: usize, kind: MsgpackErrorKind) -> Failure {
        Failure { offset, kind }
    }

    fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.offset)
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], Failure> {
        let bytes = self
            .offset
            .checked_add(length)
            .and_then(|end| self.input.get(self.offset..end))
            .ok_or(Failure {
                offset: self.input.len(),
                kind: MsgpackErrorKind::UnexpectedEnd,
            })?;
        self.offset += length;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], Failure> {
        let offset = self.offset;
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| Failure {
            offset,
            kind: MsgpackErrorKind::UnexpectedEnd,
        })
    }

    fn u8(&mut self) -> Result<u8, Failure> {
        let [byte] = self.take_array::<1>()?;
        Ok(byte)
    }

    fn u16(&mut self) -> Result<usize, Failure> {
        Ok(usize::from(u16::from_be_bytes(self.take_array()?)))
    }

    fn u32(&mut self) -> Result<usize, Failure> {
        let value = u32::from_be_bytes(self.take_array()?);
        // A length that does not fit in usize cannot fit in the input either.
        Ok(usize::try_from(value).unwrap_or(usize::MAX))
    }

    fn read_root(&mut self) -> Result<Value, Failure> {
        let mut open: Vec<OpenContainer> = Vec::new();
        loop {
            let item_offset = self.offset;
            let expects_key = open.last().is_some_and(OpenContainer::expects_key);
            let mut finished = match self.read_item()? {
                Item::Complete(value) => value,
                Item::ArrayHeader(_) if expects_key => {
                    return Err(self.key_not_allowed(item_offset, "array"));
                }
                Item::MapHeader(_) if expects_key => {
                    return Err(self.key_not_allowed(item_offset, "map"));
                }
                // Python's unpacker checks its stack before looking at the
                // length, so even an empty container is one level too many.
                Item::ArrayHeader(_) | Item::MapHeader(_) if open.len() >= MAX_NESTING => {
                    return Err(self.fail(
                        item_offset,
                        MsgpackErrorKind::TooDeep { limit: MAX_NESTING },
                    ));
                }
                Item::ArrayHeader(0) => Value::Array(Vec::new()),
                Item::MapHeader(0) => Value::Map(Vec::new()),
                Item::ArrayHeader(length) => {
                    // Every element takes at least one byte, so this caps what a
                    // forged length can make us reserve.
                    open.push(OpenContainer::Array {
                        items: Vec::with_capacity(length.min(self.remaining())),
                        remaining: length,
                    });
                    continue;
                }
                Item::MapHeader(length) => {
                    open.push(OpenContainer::Map {
                        entries: Vec::with_capacity(length.min(self.remaining() / 2)),
                        remaining: length,
                        pending_key: None,
                    });
                    continue;
                }
            };
            if expects_key && !matches!(finished, Value::String(_) | Value::Binary(_)) {
                return Err(self.key_not_allowed(item_offset, value_kind(&finished)));
            }

            // Hand the finished value to its parent; when that completes the
            // parent, keep climbing.
            loop {
                let Some(mut parent) = open.pop() else {
                    return Ok(finished);
                };
                if parent.accept(finished) {
                    finished = parent.into_value();
                } else {
                    open.push(parent);
                    break;
                }
            }
        }
    }

    fn key_not_allowed(&self, offset: usize, found: &'static str) -> Failure {
        self.fail(offset, MsgpackErrorKind::KeyNotAllowed { found })
    }

    fn read_item(&mut self) -> Result<Item, Failure> {
        let marker_offset = self.offset;
        let marker = self.u8()?;
        let value = match marker {
            0x00..=0x7f => Value::from(marker),
            0x80..=0x8f => return Ok(Item::MapHeader(usize::from(marker & 0x0f))),
            0x90..=0x9f => return Ok(Item::ArrayHeader(usize::from(marker & 0x0f))),
            0xa0..=0xbf => self.read_str(usize::from(marker & 0x1f))?,
            0xc0 => Value::Nil,
            0xc1 => return Err(self.fail(marker_offset, MsgpackErrorKind::ReservedMarker)),
            0xc2 => Value::Boolean(false),
            0xc3 => Value::Boolean(true),
            0xc4 => {
                let length = usize::from(self.u8()?);
                self.read_bin(length)?
            }
            0xc5 => {
                let length = self.u16()?;
                self.read_bin(length)?
            }
            0xc6 => {
                let length = self.u32()?;
                self.read_bin(length)?
            }
            0xc7 => {
                let length = usize::from(self.u8()?);
                self.read_ext(length, marker_offset)?
            }
            0xc8 => {
                let length = self.u16()?;
                self.read_ext(length, marker_offset)?
            }
            0xc9 => {
                let length = self.u32()?;
                self.read_ext(length, marker_offset)?
            }
            // Python has no single-precision float: unpackb widens it, and
            // packb would write it back as float64.
            0xca => Value::F64(f64::from(f32::from_be_bytes(self.take_array()?))),
            0xcb => Value::F64(f64::from_be_bytes(self.take_array()?)),
            0xcc => Value::from(self.u8()?),
            0xcd => Value::from(u16::from_be_bytes(self.take_array()?)),
            0xce => Value::from(u32::from_be_bytes(self.take_array()?)),
            0xcf => Value::from(u64::from_be_bytes(self.take_array()?)),
            0xd0 => Value::from(i8::from_be_bytes(self.take_array()?)),
            0xd1 => Value::from(i16::from_be_bytes(self.take_array()?)),
            0xd2 => Value::from(i32::from_be_bytes(self.take_array()?)),
            0xd3 => Value::from(i64::from_be_bytes(self.take_array()?)),
            0xd4 => self.read_ext(1, marker_offset)?,
            0xd5 => self.read_ext(2, marker_offset)?,
            0xd6 => self.read_ext(4, marker_offset)?,
            0xd7 => self.read_ext(8, marker_offset)?,
            0xd8 => self.read_ext(16, marker_offset)?,
            0xd9 => {
                let length = usize::from(self.u8()?);
                self.read_str(length)?
            }
            0xda => {
                let length = self.u16()?;
                self.read_str(length)?
            }
            0xdb => {
                let length = self.u32()?;
                self.read_str(length)?
            }
            0xdc => return Ok(Item::ArrayHeader(self.u16()?)),
            0xdd => return Ok(Item::ArrayHeader(self.u32()?)),
            0xde => return Ok(Item::MapHeader(self.u16()?)),
            0xdf => return Ok(Item::MapHeader(self.u32()?)),
            0xe0..=0xff => Value::from(i8::from_be_bytes([marker])),
        };
        Ok(Item::Complete(value))
    }

    fn read_str(&mut self, length: usize) -> Result<Value, Failure> {
        let start = self.offset;
        let bytes = self.take(length)?;
        let text = std::str::from_utf8(bytes).map_err(|error| Failure {
            offset: start + error.valid_up_to(),
            kind: MsgpackErrorKind::InvalidUtf8,
        })?;
        Ok(Value::from(text))
    }

    fn read_bin(&mut self, length: usize) -> Result<Value, Failure> {
        Ok(Value::Binary(self.take(length)?.to_vec()))
    }

    fn read_ext(&mut self, length: usize, marker_offset: usize) -> Result<Value, Failure> {
        let [code_byte] = self.take_array::<1>()?;
        let code = i8::from_be_bytes([code_byte]);
        let data = self.take(length)?;
        if code == TIMESTAMP_EXT_CODE {
            if !is_valid_timestamp(data) {
                return Err(self.fail(marker_offset, MsgpackErrorKind::InvalidTimestamp));
            }
        } else if code < 0 {
            return Err(self.fail(marker_offset, MsgpackErrorKind::ExtCodeNotAllowed { code }));
        }
        Ok(Value::Ext(code, data.to_vec()))
    }
}

/// The three layouts of the msgpack timestamp extension, as Python's
/// `Timestamp.from_bytes` validates them.
pub(super) fn is_valid_timestamp(data: &[u8]) -> bool {
    match data.len() {
        4 => true,
        8 => {
            let packed = data.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
            (packed >> 34) <= MAX_TIMESTAMP_NANOS
        }
        12 => {
            let nanos = data
                .get(..4)
                .and_then(|head| head.try_into().ok())
                .map(u32::from_be_bytes)
                .unwrap_or(u32::MAX);
            u64::from(nanos) <= MAX_TIMESTAMP_NANOS
        }
        _ => false,
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
