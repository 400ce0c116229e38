//! The one msgpack lexer of this crate: every decision about msgpack bytes
//! that Python's `msgpack.unpackb` makes with its defaults (`raw=False`,
//! `strict_map_key=True`, `timestamp=0`, no `ext_hook`) is made here, and
//! both readers of a body — the tree reader ([`super::msgpack_read`]) and the
//! routing scan ([`super::route`]) — take their tokens from it, so they
//! cannot disagree on what a body is.
//!
//! It owns marker bytes; declared lengths (a str, bin or ext is taken only
//! when all its bytes are present; a container's length is reported, and
//! callers cap what they reserve for it by [`Lexer::remaining`]); the UTF-8
//! check of every str; ext codes and timestamp layouts; which values may be
//! map keys; the nesting limit [`MAX_NESTING`], kept on an inline stack that
//! spills to the heap, never by recursion; trailing bytes; and the exact
//! [`DecodeError::Msgpack`] offset and kind of every refusal. [`Cursor`]
//! reads one token at a time and knows no structure; [`Lexer`] reads a whole
//! body, one [`Event`] at a time, with the structure checked.
//!
//! It builds no values and decides nothing about what a body means (the
//! top-level map, repeated keys, channel names): that is its callers' work.
//! It must not do I/O, must never panic on any bytes, and must not allocate
//! beyond what the input justifies: tokens borrow the input, and the only
//! allocation is the open-container stack of inputs nested deeper than its
//! inline part.

use super::inline_vec::InlineVec;
use super::{DecodeError, MsgpackErrorKind};
use crate::MAX_NESTING;

/// Ext type code of the msgpack timestamp extension.
const TIMESTAMP_EXT_CODE: i8 = -1;

/// Python's `Timestamp` refuses nanosecond fields at or above one second.
const MAX_TIMESTAMP_NANOS: u64 = 999_999_999;

/// Open containers the [`Lexer`] tracks without a heap allocation.
const INLINE_DEPTH: usize = 16;

/// One marker's worth of msgpack: a complete scalar borrowed from the input,
/// or the header of a container whose contents follow.
#[derive(Debug, Clone, Copy)]
pub(super) enum Token<'a> {
    Nil,
    Bool(bool),
    /// A positive fixint or a uint of any width.
    Unsigned(u64),
    /// A negative fixint or an int of any width (which may hold a
    /// non-negative value).
    Signed(i64),
    /// Python has no single-precision float: float32 arrives widened.
    Float(f64),
    /// A str, checked to be UTF-8.
    Str(&'a str),
    Bin(&'a [u8]),
    /// An ext with an allowed code (0..=127, or a valid timestamp at -1).
    Ext {
        code: i8,
        data: &'a [u8],
    },
    /// An array header with its declared length (not yet checked against
    /// the input: the elements follow).
    ArrayStart(usize),
    /// A map header with its declared number of entries.
    MapStart(usize),
}

impl Token<'_> {
    /// The name [`crate::value_kind`] gives the decoded value.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Token::Nil => "nil",
            Token::Bool(_) => "bool",
            Token::Unsigned(_) | Token::Signed(_) => "int",
            Token::Float(_) => "float",
            Token::Str(_) => "str",
            Token::Bin(_) => "bin",
            Token::Ext { .. } => "ext",
            Token::ArrayStart(_) => "array",
            Token::MapStart(_) => "map",
        }
    }
}

/// Where reading stopped and why: the offset and kind of
/// [`DecodeError::Msgpack`].
#[derive(Debug, Clone, Copy)]
pub(super) struct LexError {
    offset: usize,
    kind: MsgpackErrorKind,
}

impl From<LexError> for DecodeError {
    fn from(error: LexError) -> Self {
        DecodeError::Msgpack {
            offset: error.offset,
            kind: error.kind,
        }
    }
}

/// Reads msgpack one token at a time, with no notion of structure.
/// [`Cursor::read_token`] validates each token exactly as Python does;
/// [`Cursor::token`] is the same read for bytes a [`Lexer`] has already
/// accepted.
#[derive(Debug, Clone)]
pub(super) struct Cursor<'a> {
    input: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(input: &'a [u8]) -> Self {
        Cursor { input, offset: 0 }
    }

    /// Where the next token starts.
    fn offset(&self) -> usize {
        self.offset
    }

    /// Input bytes not yet read.
    fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.offset)
    }

    /// The next token of bytes already validated; `None` where they do not
    /// read, for callers to refuse rather than panic or guess.
    #[inline]
    pub(super) fn token(&mut self) -> Option<Token<'a>> {
        self.read_token().ok()
    }

    /// Skips what follows a container header (nothing for a scalar). Needs
    /// no stack: a count of tokens still to skip is enough.
    pub(super) fn skip_contents(&mut self, token: Token<'a>) -> Option<()> {
        let mut pending = contents_count(token)?;
        while pending > 0 {
            pending -= 1;
            let next = self.token()?;
            pending = pending.checked_add(contents_count(next)?)?;
        }
        Some(())
    }

    fn end_error(&self) -> LexError {
        LexError {
            offset: self.input.len(),
            kind: MsgpackErrorKind::UnexpectedEnd,
        }
    }

    #[inline]
    fn take(&mut self, length: usize) -> Result<&'a [u8], LexError> {
        let bytes = self
            .offset
            .checked_add(length)
            .and_then(|end| self.input.get(self.offset..end))
            .ok_or_else(|| self.end_error())?;
        self.offset += length;
        Ok(bytes)
    }

    #[inline]
    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], LexError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.end_error())
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, LexError> {
        let [byte] = self.take_array::<1>()?;
        Ok(byte)
    }

    fn u16(&mut self) -> Result<usize, LexError> {
        Ok(usize::from(u16::from_be_bytes(self.take_array()?)))
    }

    fn u32(&mut self) -> Result<usize, LexError> {
        let value = u32::from_be_bytes(self.take_array()?);
        // A length that does not fit in usize cannot fit in the input either.
        Ok(usize::try_from(value).unwrap_or(usize::MAX))
    }

    /// Reads one token: the marker and, for a scalar, its data. Refuses
    /// what Python refuses within a single token (reserved marker, input
    /// ending early, str not UTF-8, ext code or timestamp not allowed).
    // Always inlined: returned through memory, the token's narrow fields
    // (a `bool`, an ext code) were copied back in pieces too wide for the
    // stores that wrote them, and the stalls made the scan half again as
    // slow.
    #[inline(always)]
    fn read_token(&mut self) -> Result<Token<'a>, LexError> {
        let marker_offset = self.offset;
        let marker = self.u8()?;
        let token = match marker {
            0x00..=0x7f => Token::Unsigned(u64::from(marker)),
            0x80..=0x8f => Token::MapStart(usize::from(marker & 0x0f)),
            0x90..=0x9f => Token::ArrayStart(usize::from(marker & 0x0f)),
            0xa0..=0xbf => self.read_str(usize::from(marker & 0x1f))?,
            0xc0 => Token::Nil,
            0xc1 => {
                return Err(LexError {
                    offset: marker_offset,
                    kind: MsgpackErrorKind::ReservedMarker,
                })
            }
            0xc2 => Token::Bool(false),
            0xc3 => Token::Bool(true),
            0xc4 => {
                let length = usize::from(self.u8()?);
                Token::Bin(self.take(length)?)
            }
            0xc5 => {
                let length = self.u16()?;
                Token::Bin(self.take(length)?)
            }
            0xc6 => {
                let length = self.u32()?;
                Token::Bin(self.take(length)?)
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
            0xca => Token::Float(f64::from(f32::from_be_bytes(self.take_array()?))),
            0xcb => Token::Float(f64::from_be_bytes(self.take_array()?)),
            0xcc => Token::Unsigned(u64::from(self.u8()?)),
            0xcd => Token::Unsigned(u64::from(u16::from_be_bytes(self.take_array()?))),
            0xce => Token::Unsigned(u64::from(u32::from_be_bytes(self.take_array()?))),
            0xcf => Token::Unsigned(u64::from_be_bytes(self.take_array()?)),
            0xd0 => Token::Signed(i64::from(i8::from_be_bytes(self.take_array()?))),
            0xd1 => Token::Signed(i64::from(i16::from_be_bytes(self.take_array()?))),
            0xd2 => Token::Signed(i64::from(i32::from_be_bytes(self.take_array()?))),
            0xd3 => Token::Signed(i64::from_be_bytes(self.take_array()?)),
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
            0xdc => Token::ArrayStart(self.u16()?),
            0xdd => Token::ArrayStart(self.u32()?),
            0xde => Token::MapStart(self.u16()?),
            0xdf => Token::MapStart(self.u32()?),
            0xe0..=0xff => Token::Signed(i64::from(i8::from_be_bytes([marker]))),
        };
        Ok(token)
    }

    #[inline]
    fn read_str(&mut self, length: usize) -> Result<Token<'a>, LexError> {
        let start = self.offset;
        let bytes = self.take(length)?;
        let text = std::str::from_utf8(bytes).map_err(|error| LexError {
            offset: start + error.valid_up_to(),
            kind: MsgpackErrorKind::InvalidUtf8,
        })?;
        Ok(Token::Str(text))
    }

    fn read_ext(&mut self, length: usize, marker_offset: usize) -> Result<Token<'a>, LexError> {
        let [code_byte] = self.take_array::<1>()?;
        let code = i8::from_be_bytes([code_byte]);
        let data = self.take(length)?;
        if code == TIMESTAMP_EXT_CODE {
            if !is_valid_timestamp(data) {
                return Err(LexError {
                    offset: marker_offset,
                    kind: MsgpackErrorKind::InvalidTimestamp,
                });
            }
        } else if code < 0 {
            return Err(LexError {
                offset: marker_offset,
                kind: MsgpackErrorKind::ExtCodeNotAllowed { code },
            });
        }
        Ok(Token::Ext { code, data })
    }
}

/// How many tokens follow a header: n for an array, 2n for a map.
fn contents_count(token: Token<'_>) -> Option<usize> {
    match token {
        Token::ArrayStart(length) => Some(length),
        Token::MapStart(length) => length.checked_mul(2),
        _ => Some(0),
    }
}

/// The three layouts of the msgpack timestamp extension, as Python's
/// `Timestamp.from_bytes` validates them.
fn is_valid_timestamp(data: &[u8]) -> bool {
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

/// What [`Lexer::next`] reads: a token, or the end of a container.
#[derive(Debug, Clone, Copy)]
pub(super) enum Event<'a> {
    /// A token lying at `start..` [`Lexer::offset`] (for a container
    /// header, just the header), inside `depth` containers (0: the root).
    /// `is_key` when it is a map key (then a str or bin).
    Token {
        token: Token<'a>,
        start: usize,
        depth: usize,
        is_key: bool,
    },
    /// The innermost open container has all it declared. It lies at
    /// `start..` [`Lexer::offset`], inside `depth` containers, as its
    /// header's [`Event::Token`] said; `is_map` tells which kind it was.
    End {
        is_map: bool,
        start: usize,
        depth: usize,
    },
}

/// A container whose contents are still being read.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    /// Elements (map: entries) still to come.
    remaining: usize,
    /// Where its header starts.
    start: usize,
    is_map: bool,
    /// In a map: a key has been read and its value comes next.
    has_key: bool,
}

impl Frame {
    /// Below every container: a slot for the one root value.
    const ROOT: Frame = Frame {
        remaining: 1,
        start: 0,
        is_map: false,
        has_key: false,
    };

    fn expects_key(&self) -> bool {
        self.is_map && !self.has_key
    }
}

/// Reads one whole body that must hold exactly one value: each token as
/// [`Cursor::read_token`] does, plus the rules across tokens — only str
/// and bin as map keys, at most [`MAX_NESTING`] open containers, nothing
/// after the value. Containers are announced by their header token and
/// closed by an [`Event::End`], so callers keep no counts of their own.
#[derive(Debug)]
pub(super) struct Lexer<'a> {
    cursor: Cursor<'a>,
    /// The innermost open container, or [`Frame::ROOT`] when none is open.
    /// Kept apart from the rest so reading a token touches no stack.
    top: Frame,
    /// The frames under `top`, outermost ([`Frame::ROOT`]) first.
    under: InlineVec<Frame, INLINE_DEPTH>,
    /// Open containers: the length of `under`.
    depth: usize,
}

impl<'a> Lexer<'a> {
    pub(super) fn new(input: &'a [u8]) -> Self {
        Lexer {
            cursor: Cursor::new(input),
            top: Frame::ROOT,
            under: InlineVec::new(),
            depth: 0,
        }
    }

    /// Where the next event starts; the end of the one just read.
    pub(super) fn offset(&self) -> usize {
        self.cursor.offset()
    }

    /// Input bytes not yet read: what caps the room a declared length may
    /// reserve, since every element takes at least one byte.
    pub(super) fn remaining(&self) -> usize {
        self.cursor.remaining()
    }

    /// The next event; `Ok(None)` once the root value is complete and the
    /// input ends with it. After an error the lexer is of no further use.
    // Inlined into each reader so the token never goes through memory
    // between lexing and use.
    #[inline(always)]
    pub(super) fn next(&mut self) -> Result<Option<Event<'a>>, LexError> {
        if self.top.remaining == 0 {
            if self.depth == 0 {
                return self.finish().map(|()| None);
            }
            return Ok(Some(self.close()));
        }
        let depth = self.depth;
        let is_key = self.top.expects_key();
        let start = self.cursor.offset;
        let token = self.cursor.read_token()?;
        match token {
            Token::ArrayStart(_) | Token::MapStart(_) if is_key => {
                return Err(key_not_allowed(start, token));
            }
            // Python's unpacker checks its stack before looking at the
            // length, so even an empty container is one level too many.
            Token::ArrayStart(_) | Token::MapStart(_) if depth >= MAX_NESTING => {
                return Err(LexError {
                    offset: start,
                    kind: MsgpackErrorKind::TooDeep { limit: MAX_NESTING },
                });
            }
            Token::ArrayStart(length) | Token::MapStart(length) => self.open(Frame {
                remaining: length,
                start,
                is_map: matches!(token, Token::MapStart(_)),
                has_key: false,
            }),
            Token::Str(_) | Token::Bin(_) => self.count_value(),
            _ if is_key => return Err(key_not_allowed(start, token)),
            _ => self.count_value(),
        }
        Ok(Some(Event::Token {
            token,
            start,
            depth,
            is_key,
        }))
    }

    fn open(&mut self, frame: Frame) {
        self.under.push(self.top);
        self.top = frame;
        self.depth += 1;
    }

    /// Pops the innermost container, which has all it declared, and counts
    /// it as a value of its parent.
    fn close(&mut self) -> Event<'a> {
        let closed = self.top;
        self.top = self.under.pop().unwrap_or(Frame::ROOT);
        self.depth = self.depth.saturating_sub(1);
        self.count_value();
        Event::End {
            is_map: closed.is_map,
            start: closed.start,
            depth: self.depth,
        }
    }

    /// Counts a complete value (scalar or closed container) in the
    /// innermost container: a map's key, a map's value, an array's
    /// element, or the root.
    #[inline(always)]
    fn count_value(&mut self) {
        let top = &mut self.top;
        if top.expects_key() {
            top.has_key = true;
        } else {
            top.has_key = false;
            top.remaining = top.remaining.saturating_sub(1);
        }
    }

    /// `unpackb` raises `ExtraData` when bytes follow the value.
    fn finish(&self) -> Result<(), LexError> {
        if self.cursor.remaining() == 0 {
            return Ok(());
        }
        Err(LexError {
            offset: self.cursor.offset,
            kind: MsgpackErrorKind::TrailingBytes,
        })
    }
}

fn key_not_allowed(offset: usize, token: Token<'_>) -> LexError {
    LexError {
        offset,
        kind: MsgpackErrorKind::KeyNotAllowed {
            found: token.kind(),
        },
    }
}
