//! Renders validated msgpack bytes — a [`super::RouteView`]'s field values —
//! as [`crate::pyjson`] renders the decoded value (`json.dumps` with
//! Python's defaults), without building the value. It reads only bytes the
//! scan has accepted; should they somehow not read, it refuses to render
//! rather than panic or guess. No I/O.

use std::fmt::Write as _;

use super::{Cursor, Item, Key, INLINE_DEPTH};
use crate::payload::inline_vec::InlineVec;
use crate::pyjson::{render_float, render_str, RenderError};
use crate::MAX_NESTING;

/// An array or map whose elements are being written.
#[derive(Debug, Clone, Copy, Default)]
struct OpenRender {
    remaining: usize,
    is_map: bool,
    started: bool,
}

/// Writes the value at the start of `bytes` as [`crate::pyjson`] writes the
/// decoded value; `depth` is how many containers enclose it.
pub(super) fn write_packed_value(
    bytes: &[u8],
    out: &mut String,
    depth: usize,
) -> Result<(), RenderError> {
    let mut cursor = Cursor::new(bytes);
    // Open containers live on an inline stack that spills to the heap, so
    // shallow values allocate nothing and deep ones cannot exhaust the
    // thread's stack.
    let mut open: InlineVec<OpenRender, INLINE_DEPTH> = InlineVec::new();
    let mut next = Some(read_for_render(&mut cursor)?);
    loop {
        if let Some(item) = next.take() {
            match item {
                Item::Array(length) | Item::Map(length) => {
                    if depth + open.len() + 1 > MAX_NESTING {
                        return Err(RenderError::TooDeep { limit: MAX_NESTING });
                    }
                    let is_map = matches!(item, Item::Map(_));
                    out.push(if is_map { '{' } else { '[' });
                    open.push(OpenRender {
                        remaining: length,
                        is_map,
                        started: false,
                    });
                }
                scalar => write_scalar(scalar, out)?,
            }
        }
        let Some(container) = open.last_mut() else {
            return Ok(());
        };
        if container.remaining == 0 {
            out.push(if container.is_map { '}' } else { ']' });
            open.pop();
            continue;
        }
        container.remaining -= 1;
        if container.started {
            out.push_str(", ");
        }
        container.started = true;
        if container.is_map {
            match read_for_render(&mut cursor)? {
                Item::Str(text) => render_str(text, out),
                other => {
                    return Err(RenderError::UnsupportedKey {
                        found: other.kind(),
                    })
                }
            }
            out.push_str(": ");
        }
        next = Some(read_for_render(&mut cursor)?);
    }
}

/// Validated bytes always read; if they somehow do not, refuse to render
/// rather than panic or guess.
fn read_for_render<'a>(cursor: &mut Cursor<'a>) -> Result<Item<'a>, RenderError> {
    cursor
        .item()
        .ok_or(RenderError::UnsupportedValue { found: "invalid" })
}

fn write_scalar(item: Item<'_>, out: &mut String) -> Result<(), RenderError> {
    match item {
        Item::Nil => out.push_str("null"),
        Item::Bool(true) => out.push_str("true"),
        Item::Bool(false) => out.push_str("false"),
        Item::Unsigned(number) => {
            let _ = write!(out, "{number}");
        }
        Item::Signed(number) => {
            let _ = write!(out, "{number}");
        }
        Item::Float(number) => render_float(number, out),
        Item::Str(text) => render_str(text, out),
        Item::Bin(_) | Item::Ext | Item::Array(_) | Item::Map(_) => {
            return Err(RenderError::UnsupportedValue { found: item.kind() })
        }
    }
    Ok(())
}

/// Top-level keys: str as a JSON string, bin refused as Python refuses bytes.
pub(super) fn write_key(key: Key<'_>, out: &mut String) -> Result<(), RenderError> {
    match key {
        Key::Str(text) => {
            render_str(text, out);
            Ok(())
        }
        Key::Bin(_) => Err(RenderError::UnsupportedKey { found: "bin" }),
    }
}

pub(super) fn with_rollback(
    out: &mut String,
    render: impl FnOnce(&mut String) -> Result<(), RenderError>,
) -> Result<(), RenderError> {
    let start = out.len();
    let result = render(out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}
