//! Renders `rmpv::Value`s exactly as Python's `json.dumps(value)` does with
//! its defaults: separators `", "` and `": "`, `ensure_ascii=True`,
//! `allow_nan=True`, keys in insertion order, floats as `repr(float)`.
//!
//! Browsers were written against the text the Django consumer sent, so the
//! gateway must reproduce it byte for byte. This module owns that text form
//! only. It writes into a caller-supplied `String` (nothing is allocated per
//! node; a value with containers costs one small stack of open containers),
//! and it must not panic: values Python cannot serialize (bytes, ext types,
//! unsupported key types) come back as a [`RenderError`] and leave the buffer
//! as it was.

use std::fmt::Write as _;

use rmpv::Value;

use crate::message::{value_kind, Message};
use crate::MAX_NESTING;

mod float_repr;

/// Why a value has no `json.dumps` rendering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Python raises `TypeError: Object of type bytes is not JSON serializable`.
    #[error("a {found} value is not JSON serializable")]
    UnsupportedValue {
        /// Kind of the value (see [`value_kind`]).
        found: &'static str,
    },
    /// Python raises `TypeError: keys must be str, int, float, bool or None`.
    #[error("keys must be str, int, float, bool or nil, not {found}")]
    UnsupportedKey {
        /// Kind of the key (see [`value_kind`]).
        found: &'static str,
    },
    /// An `rmpv` string holding bytes that are not UTF-8.
    #[error("a string is not valid UTF-8")]
    InvalidUtf8,
    /// Deeper than [`MAX_NESTING`] (Python would hit its recursion limit).
    #[error("value is nested deeper than {limit} containers")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// A frame needs a field the message does not have.
    #[error("the message has no {field:?} field")]
    MissingField {
        /// The field's name.
        field: &'static str,
    },
}

/// Appends `json.dumps(value)` to `out`. On error `out` is left unchanged.
pub fn render_value(value: &Value, out: &mut String) -> Result<(), RenderError> {
    with_rollback(out, |out| write_value(value, out, 0))
}

/// Appends `json.dumps(message)` (the whole dict) to `out`. On error `out` is
/// left unchanged.
pub fn render_message(message: &Message, out: &mut String) -> Result<(), RenderError> {
    with_rollback(out, |out| {
        out.push('{');
        for (index, (key, value)) in message.entries().iter().enumerate() {
            if index > 0 {
                out.push_str(", ");
            }
            write_entry(key, value, out, 1)?;
        }
        out.push('}');
        Ok(())
    })
}

/// Runs `render`, truncating `out` back to where it was if `render` fails.
pub(crate) fn with_rollback(
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

/// `key: value` of one map entry inside a container at nesting level `depth`.
pub(crate) fn write_entry(
    key: &Value,
    value: &Value,
    out: &mut String,
    depth: usize,
) -> Result<(), RenderError> {
    write_key(key, out)?;
    out.push_str(": ");
    write_value(value, out, depth)
}

/// An array or map whose elements are being written.
enum OpenContainer<'a> {
    Array {
        items: std::slice::Iter<'a, Value>,
        started: bool,
    },
    Map {
        entries: std::slice::Iter<'a, (Value, Value)>,
        started: bool,
    },
}

/// `depth`: how many containers enclose `root`.
pub(crate) fn write_value(root: &Value, out: &mut String, depth: usize) -> Result<(), RenderError> {
    if let Some(done) = write_scalar(root, out) {
        return done;
    }
    // Open containers live on a heap stack instead of the call stack, so deep
    // nesting cannot exhaust the thread's stack.
    let mut open: Vec<OpenContainer<'_>> = Vec::with_capacity(8);
    let mut next = Some(root);
    loop {
        if let Some(value) = next.take() {
            if let Some(done) = write_scalar(value, out) {
                done?;
            } else {
                enter(depth + open.len())?;
                match value {
                    Value::Array(items) => {
                        out.push('[');
                        open.push(OpenContainer::Array {
                            items: items.iter(),
                            started: false,
                        });
                    }
                    Value::Map(entries) => {
                        out.push('{');
                        open.push(OpenContainer::Map {
                            entries: entries.iter(),
                            started: false,
                        });
                    }
                    _ => {}
                }
            }
        }
        let Some(container) = open.last_mut() else {
            return Ok(());
        };
        match container {
            OpenContainer::Array { items, started } => match items.next() {
                Some(item) => {
                    if *started {
                        out.push_str(", ");
                    }
                    *started = true;
                    next = Some(item);
                }
                None => {
                    out.push(']');
                    open.pop();
                }
            },
            OpenContainer::Map { entries, started } => match entries.next() {
                Some((key, item)) => {
                    if *started {
                        out.push_str(", ");
                    }
                    *started = true;
                    write_key(key, out)?;
                    out.push_str(": ");
                    next = Some(item);
                }
                None => {
                    out.push('}');
                    open.pop();
                }
            },
        }
    }
}

/// Writes anything but an array or a map; `None` for those two.
fn write_scalar(value: &Value, out: &mut String) -> Option<Result<(), RenderError>> {
    match value {
        Value::Nil => out.push_str("null"),
        Value::Boolean(true) => out.push_str("true"),
        Value::Boolean(false) => out.push_str("false"),
        Value::Integer(integer) => {
            let _ = write!(out, "{integer}");
        }
        Value::F32(number) => render_float(f64::from(*number), out),
        Value::F64(number) => render_float(*number, out),
        Value::String(text) => match text.as_str() {
            Some(text) => render_str(text, out),
            None => return Some(Err(RenderError::InvalidUtf8)),
        },
        Value::Binary(_) | Value::Ext(_, _) => {
            return Some(Err(RenderError::UnsupportedValue {
                found: value_kind(value),
            }))
        }
        Value::Array(_) | Value::Map(_) => return None,
    }
    Some(Ok(()))
}

fn enter(depth: usize) -> Result<usize, RenderError> {
    let inner = depth + 1;
    if inner > MAX_NESTING {
        return Err(RenderError::TooDeep { limit: MAX_NESTING });
    }
    Ok(inner)
}

/// Python converts int, float, bool and None keys to strings (`str(1)`,
/// `repr(1.5)`, `"true"`, `"null"`) and refuses every other non-str key.
fn write_key(key: &Value, out: &mut String) -> Result<(), RenderError> {
    match key {
        Value::String(text) => render_str(text.as_str().ok_or(RenderError::InvalidUtf8)?, out),
        Value::Integer(integer) => {
            let _ = write!(out, "\"{integer}\"");
        }
        Value::F32(number) => quoted(out, |out| render_float(f64::from(*number), out)),
        Value::F64(number) => quoted(out, |out| render_float(*number, out)),
        Value::Boolean(true) => out.push_str("\"true\""),
        Value::Boolean(false) => out.push_str("\"false\""),
        Value::Nil => out.push_str("\"null\""),
        Value::Binary(_) | Value::Array(_) | Value::Map(_) | Value::Ext(_, _) => {
            return Err(RenderError::UnsupportedKey {
                found: value_kind(key),
            })
        }
    }
    Ok(())
}

fn quoted(out: &mut String, render: impl FnOnce(&mut String)) {
    out.push('"');
    render(out);
    out.push('"');
}

/// Appends the `ensure_ascii=True` JSON string literal of `text`: printable
/// ASCII stays, `"` `\` and the five short escapes use their short form,
/// everything else becomes lowercase `\uXXXX` (UTF-16 surrogate pairs for
/// characters beyond the BMP).
pub fn render_str(text: &str, out: &mut String) {
    out.reserve(text.len() + 2);
    out.push('"');
    // Scans bytes, not chars: most text is printable ASCII copied in runs,
    // and only a byte that needs escaping (every byte of a non-ASCII
    // character does) stops the run.
    let bytes = text.as_bytes();
    let mut run_start = 0;
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if is_printable_unescaped_byte(byte) {
            index += 1;
            continue;
        }
        if let Some(run) = text.get(run_start..index) {
            out.push_str(run);
        }
        let Some(character) = text.get(index..).and_then(|rest| rest.chars().next()) else {
            // Unreachable: `index` is always on a char boundary here.
            break;
        };
        index += character.len_utf8();
        run_start = index;
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            _ => {
                let mut units = [0u16; 2];
                for unit in character.encode_utf16(&mut units) {
                    write_unicode_escape(*unit, out);
                }
            }
        }
    }
    if let Some(run) = text.get(run_start..) {
        out.push_str(run);
    }
    out.push('"');
}

/// `\uXXXX` with lowercase hex, as Python writes it.
fn write_unicode_escape(unit: u16, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\u");
    for shift in [12, 8, 4, 0] {
        let digit = usize::from((unit >> shift) & 0xf);
        out.push(char::from(HEX[digit]));
    }
}

fn is_printable_unescaped_byte(byte: u8) -> bool {
    matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\'
}

/// Appends a float as `json.dumps` writes it: `NaN`, `Infinity`, `-Infinity`,
/// or Python's `repr(float)` — the shortest digits that round-trip (an exact
/// tie between two such candidates goes to the even one), in fixed notation
/// with at least one fractional digit (`1.0`, `-0.0`, `0.0001`) when the
/// decimal exponent is in -4..16, otherwise scientific with a signed,
/// at-least-two-digit exponent (`1e+16`, `1.5e-05`, `5e-324`).
pub fn render_float(number: f64, out: &mut String) {
    float_repr::write_float_repr(number, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(number: f64) -> String {
        let mut out = String::new();
        render_float(number, &mut out);
        out
    }

    #[test]
    fn float_layouts() {
        assert_eq!(float(0.1), "0.1");
        assert_eq!(float(1e16), "1e+16");
        assert_eq!(float(1e15), "1000000000000000.0");
        assert_eq!(float(1e-5), "1e-05");
        assert_eq!(float(1.5e-5), "1.5e-05");
        assert_eq!(float(1e-4), "0.0001");
        assert_eq!(float(123456789.123), "123456789.123");
        assert_eq!(float(5e-324), "5e-324");
        assert_eq!(float(1.7976931348623157e308), "1.7976931348623157e+308");
        assert_eq!(float(-0.0), "-0.0");
        assert_eq!(float(100.0), "100.0");
        assert_eq!(float(-2.5), "-2.5");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn strings_escape_like_ensure_ascii() {
        let mut out = String::new();
        render_str("a\"b\\c\n\u{1}\u{7f}é😀", &mut out);
        assert_eq!(out, r#""a\"b\\c\n\u0001\u007f\u00e9\ud83d\ude00""#);
    }

    #[test]
    fn errors_roll_back_the_buffer() {
        let mut out = String::from("kept");
        let value = Value::Array(vec![Value::from(1), Value::Binary(vec![])]);
        assert_eq!(
            render_value(&value, &mut out),
            Err(RenderError::UnsupportedValue { found: "bin" })
        );
        assert_eq!(out, "kept");
    }

    #[test]
    fn key_conversions() {
        let value = Value::Map(vec![
            (Value::from(-3), Value::Nil),
            (Value::F64(1e16), Value::Nil),
            (Value::Boolean(false), Value::Nil),
            (Value::Nil, Value::Nil),
        ]);
        let mut out = String::new();
        render_value(&value, &mut out).unwrap();
        assert_eq!(
            out,
            r#"{"-3": null, "1e+16": null, "false": null, "null": null}"#
        );
        let bad = Value::Map(vec![(Value::Array(vec![]), Value::Nil)]);
        assert_eq!(
            render_value(&bad, &mut out),
            Err(RenderError::UnsupportedKey { found: "array" })
        );
    }

    #[test]
    fn nesting_limit() {
        let mut value = Value::Nil;
        for _ in 0..MAX_NESTING {
            value = Value::Array(vec![value]);
        }
        let mut out = String::new();
        assert!(render_value(&value, &mut out).is_ok());
        let deeper = Value::Array(vec![value]);
        out.clear();
        assert_eq!(
            render_value(&deeper, &mut out),
            Err(RenderError::TooDeep { limit: MAX_NESTING })
        );
    }
}
