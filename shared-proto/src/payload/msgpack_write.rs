//! Writes a [`Message`] byte-for-byte as Python's `msgpack.packb` (defaults:
//! `use_bin_type=True`, `use_single_float=False`) writes the equivalent dict:
//! always the smallest int, str, bin, array, map and ext header, str for
//! text, bin for bytes, float64 for floats.
//!
//! It owns only that byte layout and must not reorder, dedupe or validate
//! anything: [`Message`] already guarantees valid UTF-8, unique keys and
//! bounded nesting.

use rmpv::{Integer, Value};

use super::EncodeError;
use crate::message::Message;

pub(super) fn write_message(message: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let entries = message.entries();
    write_container_header(entries.len(), 0x80, 0xde, 0xdf, "map", out)?;
    // Values still to write, next one last. A heap stack instead of recursion
    // keeps deep nesting off the thread's stack.
    let mut pending: Vec<&Value> = Vec::with_capacity(entries.len() * 2);
    push_entries(entries, &mut pending);
    while let Some(value) = pending.pop() {
        match value {
            Value::Array(items) => {
                write_container_header(items.len(), 0x90, 0xdc, 0xdd, "array", out)?;
                pending.extend(items.iter().rev());
            }
            Value::Map(entries) => {
                write_container_header(entries.len(), 0x80, 0xde, 0xdf, "map", out)?;
                push_entries(entries, &mut pending);
            }
            scalar => write_scalar(scalar, out)?,
        }
    }
    Ok(())
}

fn push_entries<'a>(entries: &'a [(Value, Value)], pending: &mut Vec<&'a Value>) {
    for (key, value) in entries.iter().rev() {
        pending.push(value);
        pending.push(key);
    }
}

/// Everything but arrays and maps.
fn write_scalar(value: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match value {
        Value::Nil => out.push(0xc0),
        Value::Boolean(false) => out.push(0xc2),
        Value::Boolean(true) => out.push(0xc3),
        Value::Integer(integer) => write_integer(*integer, out),
        // Python never produces float32; keeping the width preserves the value
        // of a message built in Rust with an explicit F32.
        Value::F32(number) => {
            out.push(0xca);
            out.extend_from_slice(&number.to_be_bytes());
        }
        Value::F64(number) => {
            out.push(0xcb);
            out.extend_from_slice(&number.to_be_bytes());
        }
        Value::String(text) => {
            let bytes = text.as_bytes();
            write_str_header(bytes.len(), out)?;
            out.extend_from_slice(bytes);
        }
        Value::Binary(bytes) => {
            write_bin_header(bytes.len(), out)?;
            out.extend_from_slice(bytes);
        }
        Value::Ext(code, data) => {
            write_ext_header(*code, data.len(), out)?;
            out.extend_from_slice(data);
        }
        Value::Array(_) | Value::Map(_) => {}
    }
    Ok(())
}

fn write_integer(integer: Integer, out: &mut Vec<u8>) {
    if let Some(unsigned) = integer.as_u64() {
        if let Ok(small) = u8::try_from(unsigned) {
            if small < 0x80 {
                out.push(small);
            } else {
                out.extend_from_slice(&[0xcc, small]);
            }
        } else if let Ok(short) = u16::try_from(unsigned) {
            out.push(0xcd);
            out.extend_from_slice(&short.to_be_bytes());
        } else if let Ok(word) = u32::try_from(unsigned) {
            out.push(0xce);
            out.extend_from_slice(&word.to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&unsigned.to_be_bytes());
        }
    } else if let Some(signed) = integer.as_i64() {
        if let Ok(small) = i8::try_from(signed) {
            if small >= -32 {
                out.extend_from_slice(&small.to_be_bytes());
            } else {
                out.push(0xd0);
                out.extend_from_slice(&small.to_be_bytes());
            }
        } else if let Ok(short) = i16::try_from(signed) {
            out.push(0xd1);
            out.extend_from_slice(&short.to_be_bytes());
        } else if let Ok(word) = i32::try_from(signed) {
            out.push(0xd2);
            out.extend_from_slice(&word.to_be_bytes());
        } else {
            out.push(0xd3);
            out.extend_from_slice(&signed.to_be_bytes());
        }
    }
}

fn write_str_header(length: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match u8::try_from(length) {
        Ok(short) if short < 32 => out.push(0xa0 | short),
        Ok(short) => out.extend_from_slice(&[0xd9, short]),
        Err(_) => write_wide_length(length, 0xda, 0xdb, "str", out)?,
    }
    Ok(())
}

fn write_bin_header(length: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match u8::try_from(length) {
        Ok(short) => out.extend_from_slice(&[0xc4, short]),
        Err(_) => write_wide_length(length, 0xc5, 0xc6, "bin", out)?,
    }
    Ok(())
}

/// The 16- and 32-bit length forms shared by str, bin, array and map.
fn write_wide_length(
    length: usize,
    marker16: u8,
    marker32: u8,
    kind: &'static str,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    if let Ok(medium) = u16::try_from(length) {
        out.push(marker16);
        out.extend_from_slice(&medium.to_be_bytes());
    } else if let Ok(long) = u32::try_from(length) {
        out.push(marker32);
        out.extend_from_slice(&long.to_be_bytes());
    } else {
        return Err(EncodeError::TooLong { kind, length });
    }
    Ok(())
}

fn write_container_header(
    length: usize,
    fixed_marker: u8,
    marker16: u8,
    marker32: u8,
    kind: &'static str,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match u8::try_from(length) {
        Ok(short) if short < 16 => out.push(fixed_marker | short),
        _ => write_wide_length(length, marker16, marker32, kind, out)?,
    }
    Ok(())
}

fn write_ext_header(code: i8, length: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let fixed_marker = match length {
        1 => Some(0xd4),
        2 => Some(0xd5),
        4 => Some(0xd6),
        8 => Some(0xd7),
        16 => Some(0xd8),
        _ => None,
    };
    if let Some(marker) = fixed_marker {
        out.push(marker);
    } else if let Ok(short) = u8::try_from(length) {
        out.extend_from_slice(&[0xc7, short]);
    } else if let Ok(medium) = u16::try_from(length) {
        out.push(0xc8);
        out.extend_from_slice(&medium.to_be_bytes());
    } else if let Ok(long) = u32::try_from(length) {
        out.push(0xc9);
        out.extend_from_slice(&long.to_be_bytes());
    } else {
        return Err(EncodeError::TooLong {
            kind: "ext",
            length,
        });
    }
    out.extend_from_slice(&code.to_be_bytes());
    Ok(())
}
