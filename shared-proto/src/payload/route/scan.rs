//! The validating scan of a msgpack body for [`super::RouteView`]: one pass
//! over the [`Lexer`]'s events that records where each top-level field's
//! value lies and notices any map that repeats a key.
//!
//! Whether the bytes are msgpack Python would accept — and the error and
//! offset when they are not — is the lexer's decision, the same one the
//! tree reader gets, so a body scans exactly when it deserializes. This
//! module adds only what routing needs on top: the top-level map's fields as
//! spans of the body, and the repeated-key check that sends a body to the
//! tree path. It must not do I/O, must never panic on any bytes, and keeps
//! its bookkeeping inline for a typical payload (it allocates only for
//! inputs with many fields, deep nesting or big maps).

use super::{Field, Key, INLINE_DEPTH, INLINE_FIELDS};
use crate::payload::inline_vec::InlineVec;
use crate::payload::msgpack_lex::{Event, Lexer, Token};
use crate::payload::DecodeError;

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

/// Reads the whole body with the lexer the tree reader uses, so each input
/// gets the same verdict and the same error offset, and records the
/// top-level fields on the way.
pub(super) fn scan(body: &[u8]) -> Result<Scanned<'_>, DecodeError> {
    let mut lexer = Lexer::new(body);
    let mut fields: InlineVec<Field<'_>, INLINE_FIELDS> = InlineVec::new();
    let mut nested_keys: InlineVec<Key<'_>, INLINE_KEYS> = InlineVec::new();
    // For each open map below the root: where its keys start in
    // `nested_keys`.
    let mut nested_maps: InlineVec<usize, INLINE_DEPTH> = InlineVec::new();
    let mut pending_top_key = Key::default();
    let mut root_kind = "";
    let mut root_is_map = false;
    let mut repeated = false;

    while let Some(event) = lexer.next()? {
        match event {
            Event::Token {
                token,
                start,
                depth,
                is_key,
            } => {
                if depth == 0 {
                    root_kind = token.kind();
                    root_is_map = matches!(token, Token::MapStart(_));
                }
                let top_level = depth == 1 && root_is_map;
                match token {
                    Token::MapStart(_) if depth > 0 => nested_maps.push(nested_keys.len()),
                    // A container's span is recorded when it ends.
                    Token::ArrayStart(_) | Token::MapStart(_) => {}
                    _ if is_key => {
                        let key = match token {
                            Token::Str(text) => Key::Str(text),
                            Token::Bin(bytes) => Key::Bin(bytes),
                            // The lexer lets only str and bin be keys.
                            _ => Key::default(),
                        };
                        if top_level {
                            pending_top_key = key;
                        } else {
                            nested_keys.push(key);
                        }
                    }
                    _ if top_level => fields.push(Field {
                        key: pending_top_key,
                        value: body.get(start..lexer.offset()).unwrap_or_default(),
                    }),
                    _ => {}
                }
            }
            Event::End {
                is_map,
                start,
                depth,
            } => {
                if is_map && depth > 0 {
                    if let Some(keys_start) = nested_maps.pop() {
                        repeated |= has_repeated_key(nested_keys.as_slice().get(keys_start..));
                        nested_keys.truncate(keys_start);
                    }
                }
                if depth == 1 && root_is_map {
                    fields.push(Field {
                        key: pending_top_key,
                        value: body.get(start..lexer.offset()).unwrap_or_default(),
                    });
                }
            }
        }
    }

    if !root_is_map {
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

/// Whether any two keys are equal (`None`: no keys).
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
