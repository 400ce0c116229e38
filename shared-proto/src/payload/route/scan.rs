//! The validating scan of a msgpack body for [`super::RouteView`]: one pass
//! that enforces everything the tree reader enforces (same errors, same
//! offsets), records where each top-level field's value lies, and notices
//! any map that repeats a key. It must not do I/O, must never panic on any
//! bytes, and keeps its bookkeeping inline for a typical payload.

use super::{Cursor, Failure, Field, Item, Key, INLINE_DEPTH, INLINE_FIELDS};
use crate::payload::inline_vec::InlineVec;
use crate::payload::{DecodeError, MsgpackErrorKind};
use crate::MAX_NESTING;

/// Keys of nested maps kept without a heap allocation for duplicate checks.
const INLINE_KEYS: usize = 16;
/// Up to this many keys a map is checked pairwise; beyond, by sorting.
const PAIRWISE_KEYS_MAX: usize = 16;

// Large for the same reason as `Repr`, and as short-lived.
#[allow(clippy::large_enum_variant)]
pub(super) enum Scanned<'a> {
    Unique(InlineVec<Field<'a>, INLINE_FIELDS>),
    /// Some map repeats a key: the tree path decides what Python would see.
    RepeatedKey,
}

/// A container whose contents are still being read.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    remaining: usize,
    is_map: bool,
    /// In a map: a key has been read and its value comes next.
    has_key: bool,
    /// In a nested map: where its keys start in the key stack.
    keys_start: usize,
}

impl Frame {
    fn expects_key(&self) -> bool {
        self.is_map && !self.has_key
    }
}

/// Mirrors `msgpack_read::Reader::read_root` decision for decision, so each
/// input gets the same verdict and the same error offset, and records the
/// top-level fields on the way.
pub(super) fn scan(body: &[u8]) -> Result<Scanned<'_>, DecodeError> {
    let to_error = |failure: Failure| DecodeError::Msgpack {
        offset: failure.offset,
        kind: failure.kind,
    };
    let mut cursor = Cursor::new(body);
    let mut open: InlineVec<Frame, INLINE_DEPTH> = InlineVec::new();
    let mut fields: InlineVec<Field<'_>, INLINE_FIELDS> = InlineVec::new();
    let mut nested_keys: InlineVec<Key<'_>, INLINE_KEYS> = InlineVec::new();
    let mut pending_top_key = Key::default();
    let mut pending_value_start = 0;
    let mut repeated = false;
    let root_is_map = matches!(body.first(), Some(0x80..=0x8f | 0xde | 0xdf));

    let root_kind = loop {
        // A broadcast's channel list is thousands of strings in one array:
        // read all but the last of a run of them in a tight loop. Strings in
        // an array are never keys and never open a container, so nothing
        // but the count changes; the last one takes the general path, which
        // closes the array.
        if let Some(frame) = open.last_mut() {
            if !frame.is_map {
                while frame.remaining > 1 && cursor.next_is_str() {
                    cursor.read_item().map_err(to_error)?;
                    frame.remaining -= 1;
                }
            }
        }
        let item_offset = cursor.offset;
        let expects_key = open.last().is_some_and(Frame::expects_key);
        let item = cursor.read_item().map_err(to_error)?;
        let key_not_allowed = |found| {
            to_error(Failure {
                offset: item_offset,
                kind: MsgpackErrorKind::KeyNotAllowed { found },
            })
        };
        match item {
            Item::Array(_) | Item::Map(_) if expects_key => {
                return Err(key_not_allowed(item.kind()));
            }
            // Python's unpacker checks its stack before the length, so even
            // an empty container is one level too many.
            Item::Array(_) | Item::Map(_) if open.len() >= MAX_NESTING => {
                return Err(to_error(Failure {
                    offset: item_offset,
                    kind: MsgpackErrorKind::TooDeep { limit: MAX_NESTING },
                }));
            }
            Item::Array(length) | Item::Map(length) if length > 0 => {
                open.push(Frame {
                    remaining: length,
                    is_map: matches!(item, Item::Map(_)),
                    has_key: false,
                    keys_start: nested_keys.len(),
                });
                continue;
            }
            Item::Str(_) | Item::Bin(_) => {}
            _ if expects_key => return Err(key_not_allowed(item.kind())),
            _ => {}
        }

        // Hand the finished item to its parent; when that completes the
        // parent, keep climbing.
        let mut finished_kind = item.kind();
        let mut finished_item = Some(item);
        loop {
            let depth = open.len();
            let Some(parent) = open.last_mut() else {
                break;
            };
            if parent.expects_key() {
                parent.has_key = true;
                let key = match finished_item {
                    Some(Item::Str(text)) => Key::Str(text),
                    Some(Item::Bin(bytes)) => Key::Bin(bytes),
                    // Containers and other scalars were refused above.
                    _ => Key::default(),
                };
                if depth == 1 && root_is_map {
                    pending_top_key = key;
                    // A top-level value starts right after its key.
                    pending_value_start = cursor.offset;
                } else {
                    nested_keys.push(key);
                }
                break;
            }
            if parent.is_map {
                parent.has_key = false;
            }
            parent.remaining = parent.remaining.saturating_sub(1);
            if depth == 1 && root_is_map {
                fields.push(Field {
                    key: pending_top_key,
                    value: body
                        .get(pending_value_start..cursor.offset)
                        .unwrap_or_default(),
                });
            }
            if parent.remaining > 0 {
                break;
            }
            let closed = *parent;
            open.pop();
            if closed.is_map && depth > 1 {
                repeated |= has_repeated_key(nested_keys.as_slice().get(closed.keys_start..));
                nested_keys.truncate(closed.keys_start);
            }
            finished_kind = if closed.is_map { "map" } else { "array" };
            finished_item = None;
        }
        if open.is_empty() {
            break finished_kind;
        }
    };

    if cursor.offset != body.len() {
        return Err(to_error(Failure {
            offset: cursor.offset,
            kind: MsgpackErrorKind::TrailingBytes,
        }));
    }
    if root_kind != "map" {
        return Err(DecodeError::NotAMap { found: root_kind });
    }
    let top_keys_repeat = {
        let keys: InlineVec<Key<'_>, INLINE_FIELDS> =
            fields.as_slice().iter().map(|field| field.key).collect();
        has_repeated_key(Some(keys.as_slice()))
    };
    if repeated || top_keys_repeat {
        return Ok(Scanned::RepeatedKey);
    }
    Ok(Scanned::Unique(fields))
}

fn has_repeated_key(keys: Option<&[Key<'_>]>) -> bool {
    let Some(keys) = keys else {
        return false;
    };
    if keys.len() < 2 {
        return false;
    }
    if keys.len() <= PAIRWISE_KEYS_MAX {
        return keys
            .iter()
            .enumerate()
            .any(|(position, key)| keys.iter().take(position).any(|earlier| earlier == key));
    }
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|pair| pair.first() == pair.get(1))
}
