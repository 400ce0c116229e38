//! Frames: what a client's WebSocket frames mean (RFC 6455 §5), whichever
//! driver read them.
//!
//! A driver hands every frame it parsed to an [`Assembler`], which answers
//! with the client's messages: a text or binary message reassembled from
//! its fragments (bounded as a whole by `server.max_inbound_frame`), and the
//! control frames a client may send between fragments. Whatever breaks the
//! protocol is a [`Violation`] carrying the close code RFC 6455 §7.4.1 gives
//! it: 1002 for a protocol error (a fragmented or oversized control frame, a
//! reserved opcode or bit, a continuation out of place, a bad close frame),
//! 1007 for invalid UTF-8 (in a text message, found as soon as a fragment
//! shows it, or in a close reason), 1009 for a message too big. This module
//! owns that reading and the close frame's validation; it does no I/O and
//! decides no policy (binary data is a message here; the gateway's socket
//! refuses it with 1003, the conformance echo server echoes it).

use std::io;

use actix_http::ws::{OpCode, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use shared_proto::close::CloseCode;

/// Control frames carry at most this many payload bytes (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// A close frame, with its status code and reason if it carried them.
    Close(Option<CloseFrame>),
}

/// What a client's close frame said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    pub reason: ByteString,
}

/// Why the connection must fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("invalid UTF-8 in a text message or a close reason")]
    InvalidUtf8,
    #[error("message larger than the server accepts")]
    TooBig,
}

impl Violation {
    /// The close code the RFC gives this failure.
    pub fn close_code(self) -> CloseCode {
        match self {
            Violation::Protocol(_) => CloseCode::ProtocolError,
            Violation::InvalidUtf8 => CloseCode::InvalidPayload,
            Violation::TooBig => CloseCode::MessageTooBig,
        }
    }
}

/// Why no message came: the client broke the protocol, or the connection
/// is gone.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error(transparent)]
    Violation(#[from] Violation),
    #[error("connection lost: {0}")]
    Lost(io::Error),
}

impl From<ProtocolError> for InboundError {
    /// actix-http's frame parser reports what it refuses as a
    /// `ProtocolError`; a few of those are really I/O errors.
    fn from(error: ProtocolError) -> InboundError {
        let violation = match error {
            ProtocolError::Io(error) if error.kind() == io::ErrorKind::InvalidData => {
                // actix marks both reserved bits and (actix-ws) invalid
                // UTF-8 text as invalid data; the UTF-8 one wraps the cause.
                if error
                    .get_ref()
                    .is_some_and(|inner| inner.is::<std::str::Utf8Error>())
                {
                    Violation::InvalidUtf8
                } else {
                    Violation::Protocol("reserved bits set without an extension")
                }
            }
            ProtocolError::Io(error) => return InboundError::Lost(error),
            ProtocolError::Overflow => Violation::TooBig,
            ProtocolError::UnmaskedFrame => Violation::Protocol("unmasked client frame"),
            ProtocolError::InvalidOpcode(_) | ProtocolError::BadOpCode => {
                Violation::Protocol("reserved opcode or bad close frame")
            }
            ProtocolError::InvalidLength(_) => {
                Violation::Protocol("control frame over 125 bytes or one-byte close payload")
            }
            ProtocolError::ContinuationNotStarted => {
                Violation::Protocol("continuation without a message to continue")
            }
            ProtocolError::ContinuationStarted | ProtocolError::ContinuationFragment(_) => {
                Violation::Protocol("new message before the last one's final fragment")
            }
            _ => Violation::Protocol("malformed frame"),
        };
        InboundError::Violation(violation)
    }
}

/// Reassembles a client's fragmented messages and checks every frame.
/// One pointer per socket; nothing allocated between messages.
#[derive(Debug, Default)]
pub struct Assembler {
    partial: Option<Box<Partial>>,
}

/// A fragmented message still arriving.
#[derive(Debug)]
struct Partial {
    text: bool,
    bytes: BytesMut,
    /// How many leading bytes of a text message are known valid UTF-8.
    checked: usize,
}

impl Assembler {
    /// One frame as parsed (`fin`, opcode, unmasked payload): the message it
    /// completes, if any. `max_message` bounds a whole message, however
    /// many fragments.
    pub fn frame(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: Bytes,
        max_message: usize,
    ) -> Result<Option<Inbound>, Violation> {
        match opcode {
            OpCode::Ping | OpCode::Pong | OpCode::Close => {
                if !fin {
                    return Err(Violation::Protocol("fragmented control frame"));
                }
                if payload.len() > MAX_CONTROL_PAYLOAD {
                    return Err(Violation::Protocol("control frame over 125 bytes"));
                }
                Ok(Some(match opcode {
                    OpCode::Ping => Inbound::Ping(payload),
                    OpCode::Pong => Inbound::Pong(payload),
                    _ => Inbound::Close(close_frame(&payload)?),
                }))
            }
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(Violation::Protocol(
                        "new message before the last one's final fragment",
                    ));
                }
                if payload.len() > max_message {
                    return Err(Violation::TooBig);
                }
                let text = opcode == OpCode::Text;
                if fin {
                    return whole(text, payload).map(Some);
                }
                let mut partial = Box::new(Partial {
                    text,
                    bytes: BytesMut::from(&payload[..]),
                    checked: 0,
                });
                partial.check_utf8(false)?;
                self.partial = Some(partial);
                Ok(None)
            }
            OpCode::Continue => {
                // Taken out while it grows: whatever fails below leaves
                // nothing half-assembled behind.
                let Some(mut partial) = self.partial.take() else {
                    return Err(Violation::Protocol(
                        "continuation without a message to continue",
                    ));
                };
                if partial.bytes.len() + payload.len() > max_message {
                    return Err(Violation::TooBig);
                }
                partial.bytes.extend_from_slice(&payload);
                partial.check_utf8(fin)?;
                if !fin {
                    self.partial = Some(partial);
                    return Ok(None);
                }
                whole(partial.text, partial.bytes.freeze()).map(Some)
            }
            OpCode::Bad => Err(Violation::Protocol("reserved opcode")),
        }
    }
}

impl Partial {
    /// Fails as soon as the bytes so far cannot begin valid UTF-8; a
    /// character cut by a fragment boundary may still complete, unless the
    /// message ends here.
    fn check_utf8(&mut self, last: bool) -> Result<(), Violation> {
        if !self.text {
            return Ok(());
        }
        let unchecked = self.bytes.get(self.checked..).unwrap_or_default();
        match std::str::from_utf8(unchecked) {
            Ok(_) => self.checked = self.bytes.len(),
            Err(error) if error.error_len().is_none() && !last => {
                self.checked += error.valid_up_to();
            }
            Err(_) => return Err(Violation::InvalidUtf8),
        }
        Ok(())
    }
}

/// A complete message's bytes as the message.
fn whole(text: bool, bytes: Bytes) -> Result<Inbound, Violation> {
    if text {
        ByteString::try_from(bytes)
            .map(Inbound::Text)
            .map_err(|_| Violation::InvalidUtf8)
    } else {
        Ok(Inbound::Binary(bytes))
    }
}

/// A close frame's payload (RFC 6455 §5.5.1, §7.4): empty, or a status code
/// a peer may send followed by a UTF-8 reason.
pub fn close_frame(payload: &[u8]) -> Result<Option<CloseFrame>, Violation> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(Violation::Protocol("close payload of one byte")),
        [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), reason),
    };
    if !may_be_sent(code) {
        return Err(Violation::Protocol("close code a peer may not send"));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
    Ok(Some(CloseFrame {
        code,
        reason: ByteString::from(reason),
    }))
}

/// Status codes a peer may put in a close frame: the ones RFC 6455 defines
/// for that (1004, 1005, 1006 and 1015 must never be sent; 1012–1014 were
/// registered later for servers and are refused from clients, as the
/// Autobahn test suite expects), and the 3000–4999 ranges for libraries,
/// frameworks and applications.
fn may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(fin: bool, bytes: &[u8]) -> (bool, OpCode, Bytes) {
        (fin, OpCode::Text, Bytes::copy_from_slice(bytes))
    }

    const MAX: usize = 1024;

    fn feed(
        assembler: &mut Assembler,
        frames: Vec<(bool, OpCode, Bytes)>,
    ) -> Vec<Result<Option<Inbound>, Violation>> {
        feed_up_to(assembler, frames, MAX)
    }

    fn feed_up_to(
        assembler: &mut Assembler,
        frames: Vec<(bool, OpCode, Bytes)>,
        max: usize,
    ) -> Vec<Result<Option<Inbound>, Violation>> {
        frames
            .into_iter()
            .map(|(fin, opcode, payload)| assembler.frame(fin, opcode, payload, max))
            .collect()
    }

    #[test]
    fn fragments_make_one_message_with_control_frames_between() {
        let mut assembler = Assembler::default();
        let results = feed(
            &mut assembler,
            vec![
                text(false, b"fra"),
                (true, OpCode::Ping, Bytes::from_static(b"p")),
                (false, OpCode::Continue, Bytes::from_static(b"gm")),
                (true, OpCode::Continue, Bytes::from_static(b"ent")),
            ],
        );
        assert_eq!(
            results,
            vec![
                Ok(None),
                Ok(Some(Inbound::Ping(Bytes::from_static(b"p")))),
                Ok(None),
                Ok(Some(Inbound::Text(ByteString::from("fragment")))),
            ]
        );
        assert!(assembler.partial.is_none(), "nothing held between messages");
    }

    #[test]
    fn protocol_errors_say_1002() {
        let cases: Vec<Vec<(bool, OpCode, Bytes)>> = vec![
            vec![(false, OpCode::Ping, Bytes::new())],
            vec![(true, OpCode::Ping, Bytes::from(vec![0; 126]))],
            vec![(true, OpCode::Continue, Bytes::from_static(b"x"))],
            vec![text(false, b"a"), text(true, b"b")],
            vec![(true, OpCode::Bad, Bytes::new())],
            vec![(true, OpCode::Close, Bytes::from_static(b"\x03"))],
            vec![(true, OpCode::Close, Bytes::from_static(b"\x03\xed"))],
            vec![(true, OpCode::Close, Bytes::from_static(b"\x03\xee"))],
            vec![(true, OpCode::Close, Bytes::from_static(b"\x03\xf4"))],
        ];
        for frames in cases {
            let results = feed(&mut Assembler::default(), frames.clone());
            let last = results.last().cloned().expect("a result");
            assert_eq!(
                last.map_err(Violation::close_code),
                Err(CloseCode::ProtocolError),
                "{frames:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_says_1007_as_soon_as_it_shows() {
        // "κόσμε" cut inside a character is fine until the message ends.
        let word = "κόσμε".as_bytes();
        let mut assembler = Assembler::default();
        let results = feed(
            &mut assembler,
            vec![
                text(false, &word[..3]),
                (true, OpCode::Continue, Bytes::copy_from_slice(&word[3..])),
            ],
        );
        assert_eq!(
            results[1],
            Ok(Some(Inbound::Text(ByteString::from("κόσμε"))))
        );
        // An impossible byte fails on the fragment that carries it.
        let results = feed(
            &mut Assembler::default(),
            vec![text(false, b"ok \xff"), text(true, b"never read")],
        );
        assert_eq!(results[0], Err(Violation::InvalidUtf8));
        // A character the last fragment leaves cut fails then.
        let results = feed(
            &mut Assembler::default(),
            vec![
                text(false, &word[..3]),
                (true, OpCode::Continue, Bytes::new()),
            ],
        );
        assert_eq!(results[1], Err(Violation::InvalidUtf8));
        let results = feed(&mut Assembler::default(), vec![text(true, b"\xce")]);
        assert_eq!(results[0], Err(Violation::InvalidUtf8));
        assert_eq!(
            close_frame(b"\x03\xe8\xff").map_err(Violation::close_code),
            Err(CloseCode::InvalidPayload)
        );
    }

    #[test]
    fn the_bound_is_the_whole_message() {
        let mut assembler = Assembler::default();
        let results = feed_up_to(
            &mut assembler,
            vec![
                text(false, b"12345"),
                (true, OpCode::Continue, Bytes::from_static(b"6789")),
            ],
            8,
        );
        assert_eq!(results[1], Err(Violation::TooBig));
        assert_eq!(Violation::TooBig.close_code(), CloseCode::MessageTooBig);
        assert!(assembler.partial.is_none());
    }

    #[test]
    fn close_frames_carry_their_code_and_reason() {
        assert_eq!(close_frame(b""), Ok(None));
        assert_eq!(
            close_frame(b"\x03\xe8bye"),
            Ok(Some(CloseFrame {
                code: 1000,
                reason: ByteString::from("bye")
            }))
        );
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(close_frame(&code.to_be_bytes()).is_ok(), "{code}");
        }
        for code in [
            0u16, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000,
            65535,
        ] {
            assert_eq!(
                close_frame(&code.to_be_bytes()),
                Err(Violation::Protocol("close code a peer may not send")),
                "{code}"
            );
        }
    }
}
