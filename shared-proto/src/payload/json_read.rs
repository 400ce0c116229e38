//! Reads a JSON body the way Python's `json.loads(bytes)` does with its
//! defaults, into `rmpv::Value`s: objects keep key order (a repeated key keeps
//! its first position and last value), integers stay integers, numbers with a
//! fraction or exponent become f64, and `NaN`, `Infinity` and `-Infinity` are
//! accepted because `json.dumps` writes them.
//!
//! It owns only that text grammar. Where Python would produce something an
//! `rmpv::Value` cannot hold (integers beyond 64 bits, lone surrogates) it
//! returns a typed error instead of approximating. It must never panic, must
//! refuse nesting beyond [`MAX_NESTING`], and keeps open containers on a heap
//! stack so no input can exhaust the thread's stack.

use rmpv::Value;

use super::{DecodeError, JsonErrorKind};
use crate::message::{dedupe_keys, value_kind};
use crate::MAX_NESTING;

/// `json.loads` of bytes decodes with `utf-8-sig` when this is present.
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

pub(super) fn read_message(body: &[u8]) -> Result<Vec<(Value, Value)>, DecodeError> {
    let (base, unmarked) = match body.strip_prefix(UTF8_BOM) {
        Some(rest) => (UTF8_BOM.len(), rest),
        None => (0, body),
    };
    let text = std::str::from_utf8(unmarked).map_err(|error| DecodeError::Json {
        offset: base + error.valid_up_to(),
        kind: JsonErrorKind::InvalidUtf8,
    })?;
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        position: 0,
    };
    let to_error = |failure: Failure| DecodeError::Json {
        offset: base + failure.position,
        kind: failure.kind,
    };
    parser.skip_whitespace();
    let value = parser.value().map_err(to_error)?;
    parser.skip_whitespace();
    if parser.position != parser.bytes.len() {
        return Err(to_error(parser.fail(JsonErrorKind::TrailingCharacters)));
    }
    match value {
        Value::Map(entries) => Ok(entries),
        other => Err(DecodeError::NotAMap {
            found: value_kind(&other),
        }),
    }
}

/// A container whose closing bracket has not been read yet.
enum OpenContainer {
    Array {
        items: Vec<Value>,
    },
    Object {
        entries: Vec<(Value, Value)>,
        /// The key whose value is being read.
        pending_key: String,
    },
}

impl OpenContainer {
    fn accept(&mut self, value: Value) {
        match self {
            OpenContainer::Array { items } => items.push(value),
            OpenContainer::Object {
                entries,
                pending_key,
            } => entries.push((Value::from(std::mem::take(pending_key)), value)),
        }
    }

    fn closing_byte(&self) -> u8 {
        match self {
            OpenContainer::Array { .. } => b']',
            OpenContainer::Object { .. } => b'}',
        }
    }

    fn into_value(self) -> Value {
        match self {
            OpenContainer::Array { items } => Value::Array(items),
            OpenContainer::Object { mut entries, .. } => {
                dedupe_keys(&mut entries);
                Value::Map(entries)
            }
        }
    }
}

struct Failure {
    position: usize,
    kind: JsonErrorKind,
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Parser<'a> {
    fn fail(&self, kind: JsonErrorKind) -> Failure {
        Failure {
            position: self.position,
            kind,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.position += 1;
        }
    }

    fn eat_literal(&mut self, literal: &[u8]) -> bool {
        let matched = self
            .bytes
            .get(self.position..)
            .is_some_and(|rest| rest.starts_with(literal));
        if matched {
            self.position += literal.len();
        }
        matched
    }

    fn slice(&self, start: usize, end: usize) -> Result<&'a str, Failure> {
        // Only ever called on ASCII boundaries, so this cannot fail; the
        // check keeps a logic slip from becoming a panic.
        self.text.get(start..end).ok_or(Failure {
            position: start,
            kind: JsonErrorKind::InvalidUtf8,
        })
    }

    /// Reads one complete value. Containers are kept on a heap stack rather
    /// than by recursion, so nesting depth never touches the thread's stack.
    fn value(&mut self) -> Result<Value, Failure> {
        let mut open: Vec<OpenContainer> = Vec::new();
        loop {
            let mut finished = match self.peek() {
                None => return Err(self.fail(JsonErrorKind::UnexpectedEnd)),
                Some(opening @ (b'{' | b'[')) => {
                    if open.len() >= MAX_NESTING {
                        return Err(self.fail(JsonErrorKind::TooDeep { limit: MAX_NESTING }));
                    }
                    self.position += 1;
                    self.skip_whitespace();
                    match (opening, self.peek()) {
                        (b'{', Some(b'}')) => {
                            self.position += 1;
                            Value::Map(Vec::new())
                        }
                        (b'[', Some(b']')) => {
                            self.position += 1;
                            Value::Array(Vec::new())
                        }
                        (b'{', _) => {
                            let key = self.object_key()?;
                            open.push(OpenContainer::Object {
                                entries: Vec::new(),
                                pending_key: key,
                            });
                            continue;
                        }
                        _ => {
                            open.push(OpenContainer::Array { items: Vec::new() });
                            continue;
                        }
                    }
                }
                Some(b'"') => Value::from(self.string()?),
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(_) => self.constant()?,
            };

            // Hand the finished value to its parent; when the parent closes
            // right after it, keep climbing.
            loop {
                let Some(mut parent) = open.pop() else {
                    return Ok(finished);
                };
                parent.accept(finished);
                self.skip_whitespace();
                let closing = parent.closing_byte();
                match self.peek() {
                    Some(b',') => {
                        self.position += 1;
                        self.skip_whitespace();
                        if let OpenContainer::Object { pending_key, .. } = &mut parent {
                            *pending_key = self.object_key()?;
                        }
                        open.push(parent);
                        break;
                    }
                    Some(byte) if byte == closing => {
                        self.position += 1;
                        finished = parent.into_value();
                    }
                    None => return Err(self.fail(JsonErrorKind::UnexpectedEnd)),
                    Some(_) => return Err(self.fail(JsonErrorKind::ExpectedCommaOrClose)),
                }
            }
        }
    }

    /// `"key"` then `:`, leaving the position at the value.
    fn object_key(&mut self) -> Result<String, Failure> {
        if self.peek() != Some(b'"') {
            return Err(self.fail(JsonErrorKind::ExpectedKey));
        }
        let key = self.string()?;
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return Err(self.fail(JsonErrorKind::ExpectedColon));
        }
        self.position += 1;
        self.skip_whitespace();
        Ok(key)
    }

    fn constant(&mut self) -> Result<Value, Failure> {
        const CONSTANTS: [(&[u8], Value); 5] = [
            (b"null", Value::Nil),
            (b"true", Value::Boolean(true)),
            (b"false", Value::Boolean(false)),
            (b"NaN", Value::F64(f64::NAN)),
            (b"Infinity", Value::F64(f64::INFINITY)),
        ];
        for (literal, value) in CONSTANTS {
            if self.eat_literal(literal) {
                return Ok(value);
            }
        }
        Err(self.fail(JsonErrorKind::ExpectedValue))
    }

    fn digits(&mut self) -> usize {
        let start = self.position;
        while let Some(b'0'..=b'9') = self.peek() {
            self.position += 1;
        }
        self.position - start
    }

    fn number(&mut self) -> Result<Value, Failure> {
        let start = self.position;
        if self.peek() == Some(b'-') {
            self.position += 1;
            if self.eat_literal(b"Infinity") {
                return Ok(Value::F64(f64::NEG_INFINITY));
            }
        }
        match self.peek() {
            Some(b'0') => self.position += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.fail(JsonErrorKind::InvalidNumber)),
        }

        // Python's scanner only takes a fraction or exponent that is well
        // formed; anything else ends the number and fails as the next token.
        let mut is_float = false;
        if self.peek() == Some(b'.')
            && matches!(self.bytes.get(self.position + 1), Some(b'0'..=b'9'))
        {
            self.position += 1;
            self.digits();
            is_float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            let mark = self.position;
            self.position += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.position += 1;
            }
            if self.digits() == 0 {
                self.position = mark;
            } else {
                is_float = true;
            }
        }

        let literal = self.slice(start, self.position)?;
        let invalid = Failure {
            position: start,
            kind: JsonErrorKind::InvalidNumber,
        };
        if is_float {
            // Rust's parser rounds correctly, like Python's float(); both
            // overflow to infinity and underflow to (signed) zero.
            return literal.parse::<f64>().map(Value::F64).map_err(|_| invalid);
        }
        if let Ok(signed) = literal.parse::<i64>() {
            return Ok(Value::from(signed));
        }
        if let Ok(unsigned) = literal.parse::<u64>() {
            return Ok(Value::from(unsigned));
        }
        Err(Failure {
            position: start,
            kind: JsonErrorKind::IntegerOutOfRange,
        })
    }

    /// Reads a string whose opening quote is at the current position.
    fn string(&mut self) -> Result<String, Failure> {
        self.position += 1;
        let start = self.position;
        loop {
            match self.peek() {
                None => return Err(self.fail(JsonErrorKind::UnexpectedEnd)),
                Some(b'"') => {
                    let text = self.slice(start, self.position)?;
                    self.position += 1;
                    return Ok(text.to_owned());
                }
                Some(b'\\') => break,
                Some(0x00..=0x1f) => return Err(self.fail(JsonErrorKind::ControlCharacter)),
                Some(_) => self.position += 1,
            }
        }

        let mut decoded = String::with_capacity(self.position - start + 16);
        decoded.push_str(self.slice(start, self.position)?);
        loop {
            let run_start = self.position;
            while let Some(byte) = self.peek() {
                if byte == b'"' || byte == b'\\' || byte < 0x20 {
                    break;
                }
                self.position += 1;
            }
            decoded.push_str(self.slice(run_start, self.position)?);
            match self.peek() {
                None => return Err(self.fail(JsonErrorKind::UnexpectedEnd)),
                Some(b'"') => {
                    self.position += 1;
                    return Ok(decoded);
                }
                Some(b'\\') => self.escape(&mut decoded)?,
                Some(_) => return Err(self.fail(JsonErrorKind::ControlCharacter)),
            }
        }
    }

    /// Decodes the escape at the current backslash.
    fn escape(&mut self, decoded: &mut String) -> Result<(), Failure> {
        let escape_start = self.position;
        self.position += 1;
        let Some(kind) = self.peek() else {
            return Err(self.fail(JsonErrorKind::UnexpectedEnd));
        };
        self.position += 1;
        let simple = match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4(escape_start)?;
                let character = match unit {
                    0xd800..=0xdbff => {
                        let low_start = self.position;
                        let low = if self.eat_literal(b"\\u") {
                            self.hex4(low_start)?
                        } else {
                            0
                        };
                        if !(0xdc00..=0xdfff).contains(&low) {
                            return Err(Failure {
                                position: escape_start,
                                kind: JsonErrorKind::LoneSurrogate,
                            });
                        }
                        0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                    }
                    0xdc00..=0xdfff => {
                        return Err(Failure {
                            position: escape_start,
                            kind: JsonErrorKind::LoneSurrogate,
                        })
                    }
                    other => other,
                };
                char::from_u32(character).ok_or(Failure {
                    position: escape_start,
                    kind: JsonErrorKind::InvalidEscape,
                })?
            }
            _ => {
                return Err(Failure {
                    position: escape_start,
                    kind: JsonErrorKind::InvalidEscape,
                })
            }
        };
        decoded.push(simple);
        Ok(())
    }

    fn hex4(&mut self, escape_start: usize) -> Result<u32, Failure> {
        let invalid = Failure {
            position: escape_start,
            kind: JsonErrorKind::InvalidEscape,
        };
        let digits = self
            .bytes
            .get(self.position..self.position + 4)
            .ok_or(invalid)?;
        let mut unit = 0;
        for digit in digits {
            let nibble = char::from(*digit).to_digit(16).ok_or(Failure {
                position: escape_start,
                kind: JsonErrorKind::InvalidEscape,
            })?;
            unit = unit * 16 + nibble;
        }
        self.position += 4;
        Ok(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(body: &[u8]) -> JsonErrorKind {
        match read_message(body) {
            Err(DecodeError::Json { kind, .. }) => kind,
            other => panic!("expected a JSON error, got {other:?}"),
        }
    }

    #[test]
    fn surrogate_pairs_combine() {
        let entries = read_message(br#"{"e": "\ud83d\ude00\u00E9"}"#).unwrap();
        assert_eq!(entries, vec![(Value::from("e"), Value::from("😀é"))]);
    }

    #[test]
    fn high_surrogate_followed_by_non_low_escape_is_lone() {
        assert_eq!(
            kind_of(br#"{"e": "\ud83d\u0041"}"#),
            JsonErrorKind::LoneSurrogate
        );
        assert_eq!(kind_of(br#"{"e": "\ud83d"}"#), JsonErrorKind::LoneSurrogate);
    }

    #[test]
    fn number_forms() {
        let entries = read_message(br#"{"n": [-0, 0.5, -1E2, 1e-400, -1e-400, 123]}"#).unwrap();
        let Value::Array(items) = &entries[0].1 else {
            panic!("not an array")
        };
        assert_eq!(items[0], Value::from(0));
        assert_eq!(items[1], Value::F64(0.5));
        assert_eq!(items[2], Value::F64(-100.0));
        assert!(matches!(items[3], Value::F64(zero) if zero == 0.0 && zero.is_sign_positive()));
        assert!(matches!(items[4], Value::F64(zero) if zero == 0.0 && zero.is_sign_negative()));
        assert_eq!(items[5], Value::from(123));
    }

    #[test]
    fn nesting_limit() {
        let mut ok = b"{\"a\":".repeat(MAX_NESTING - 1);
        ok.extend_from_slice(b"[]");
        ok.extend_from_slice(&b"}".repeat(MAX_NESTING - 1));
        assert!(read_message(&ok).is_ok());
        let mut deep = b"{\"a\":".repeat(MAX_NESTING);
        deep.extend_from_slice(b"[]");
        deep.extend_from_slice(&b"}".repeat(MAX_NESTING));
        assert_eq!(
            kind_of(&deep),
            JsonErrorKind::TooDeep { limit: MAX_NESTING }
        );
    }

    #[test]
    fn error_offsets_count_the_bom() {
        assert_eq!(
            read_message(b"\xef\xbb\xbf{\"a\": 1}x"),
            Err(DecodeError::Json {
                offset: 11,
                kind: JsonErrorKind::TrailingCharacters
            })
        );
    }
}
