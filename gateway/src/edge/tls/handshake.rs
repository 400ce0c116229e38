//! The TLS handshake, driven through rustls' unbuffered API: what rustls
//! makes of the client's bytes, step by step, until the connection may
//! carry application data.
//!
//! [`advance`] turns received bytes into the records rustls asks to send
//! (appended to the caller's outgoing buffer); it stops at the client's
//! Finished, so rustls decrypts no application data (whatever its traffic
//! state yields would go to the caller's plaintext buffer). It must not do
//! I/O (the stream in `super` does), and nothing may call rustls for a
//! connection after it reported an error.

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};

use super::records::HEADER;
use super::TlsError;

/// Where a handshake step stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// A complete record is needed before anything else can happen.
    NeedInput,
    /// The handshake is over: the records layer takes the keys.
    Done,
    /// The client closed before the handshake ended.
    Closed,
}

/// Drives `conn` over `input`: returns how many of its bytes are done with
/// (to drop from its front) and where it stopped.
///
/// rustls sees one whole record at a time (the next one too only while it
/// waits for the rest of a message spanning records), so it stops where
/// the handshake ends and every record after the client's Finished is the
/// record layer's. Given more, rustls would handle what a client sends
/// right behind its Finished itself, and a key update among it would leave
/// rustls' answer queued where the hand-over of the keys loses it.
pub(super) fn advance(
    conn: &mut UnbufferedServerConnection,
    input: &mut [u8],
    outgoing: &mut Vec<u8>,
    plaintext: &mut Vec<u8>,
) -> Result<(usize, Step), TlsError> {
    let mut done = 0;
    // The end of what rustls may see: one more record each time it waits
    // for more, never while it is still busy with what it was shown (the
    // session tickets it sends after the client's Finished, say).
    let mut shown = next_record(input);
    loop {
        let after = next_record(input.get(shown..).unwrap_or_default());
        let UnbufferedStatus { discard, state } =
            conn.process_tls_records(input.get_mut(done..shown).unwrap_or_default());
        let mut taken = discard;
        let step = match state? {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record?;
                    taken += record.discard;
                    plaintext.extend_from_slice(record.payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(outgoing, |room| encode.encode(room))?;
                None
            }
            ConnectionState::TransmitTlsData(transmit) => {
                // Queued in `outgoing`, which is written before anything
                // sent later: as good as sent, in order.
                transmit.done();
                None
            }
            ConnectionState::BlockedHandshake if after > 0 => {
                // It needs more than it was shown: the next record.
                shown += after;
                None
            }
            ConnectionState::BlockedHandshake => Some(Step::NeedInput),
            ConnectionState::WriteTraffic(_) => Some(Step::Done),
            ConnectionState::PeerClosed | ConnectionState::Closed => Some(Step::Closed),
            ConnectionState::ReadEarlyData(_) => return Err(TlsError::EarlyData),
            _ => return Err(TlsError::State("continue the handshake (unknown state)")),
        };
        done += taken;
        if let Some(step) = step {
            return Ok((done, step));
        }
    }
}

/// The length of the first whole record in `input`, or all of `input`
/// when it holds no whole record (rustls then judges the header it has).
fn next_record(input: &[u8]) -> usize {
    match input {
        [_, _, _, high, low, body @ ..] => {
            let length = usize::from(u16::from_be_bytes([*high, *low]));
            if body.len() >= length {
                HEADER + length
            } else {
                input.len()
            }
        }
        _ => input.len(),
    }
}

/// Appends what `encode` writes to `outgoing`, grown to the size it asks for.
fn encode_into(
    outgoing: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), EncodeError> {
    let required = match encode(&mut []) {
        // An empty record: nothing to send.
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(short)) => short.required_size,
        Err(error) => return Err(error),
    };
    let start = outgoing.len();
    outgoing.resize(start + required, 0);
    match encode(outgoing.get_mut(start..).unwrap_or_default()) {
        Ok(written) => {
            outgoing.truncate(start + written);
            Ok(())
        }
        Err(error) => {
            outgoing.truncate(start);
            Err(error)
        }
    }
}
