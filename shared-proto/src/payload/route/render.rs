//! Renders validated msgpack bytes — a [`super::RouteView`]'s field values —
//! as [`crate::pyjson`] renders the decoded value (`json.dumps` with
//! Python's defaults), without building the value.
//!
//! It reads bytes the [`crate::payload::msgpack_lex::Lexer`] has already
//! accepted, token by token through the lexer's [`Cursor`]; should they
//! somehow not read, it refuses to render rather than panic or guess. It
//! owns only the JSON side: what Python would render, and what it would
//! refuse (bin, ext, non-str keys, nesting beyond [`MAX_NESTING`]). No I/O;
//! open containers live on an inline stack that spills to the heap, so
//! shallow values allocate nothing and deep ones cannot exhaust the thread's
//! stack.

use std::fmt::Write as _;

use super::{Key, INLINE_DEPTH};
use crate::payload::inline_vec::InlineVec;
use crate::payload::msgpack_lex::{Cursor, Token};
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
                Token::ArrayStart(length) | Token::MapStart(length) => {
                    if depth + open.len() + 1 > MAX_NESTING {
                        return Err(RenderError::TooDeep { limit: MAX_NESTING });
                    }
                    let is_map = matches!(item, Token::MapStart(_));
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
                Token::Str(text) => render_str(text, out),
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
fn read_for_render<'a>(cursor: &mut Cursor<'a>) -> Result<Token<'a>, RenderError> {
    cursor
        .token()
        .ok_or(RenderError::UnsupportedValue { found: "invalid" })
}

fn write_scalar(item: Token<'_>, out: &mut String) -> Result<(), RenderError> {
    match item {
        Token::Nil => out.push_str("null"),
        Token::Bool(true) => out.push_str("true"),
        Token::Bool(false) => out.push_str("false"),
        Token::Unsigned(number) => {
            let _ = write!(out, "{number}");
        }
        Token::Signed(number) => {
            let _ = write!(out, "{number}");
        }
        Token::Float(number) => render_float(number, out),
        Token::Str(text) => render_str(text, out),
        Token::Bin(_) | Token::Ext { .. } | Token::ArrayStart(_) | Token::MapStart(_) => {
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
