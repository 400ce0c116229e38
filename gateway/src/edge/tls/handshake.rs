//! The TLS handshake, driven through rustls' unbuffered API: what rustls
//! makes of the client's bytes, step by step, until the connection may
//! carry application data.
//!
//! [`advance`] turns received bytes into the records rustls asks to send
//! (appended to the caller's outgoing buffer) and the application data a
//! client sends right behind its Finished (appended to the caller's
//! plaintext buffer). It must not do I/O (the stream in `super` does), and
//! nothing may call rustls for a connection after it reported an error.

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};

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
pub(super) fn advance(
    conn: &mut UnbufferedServerConnection,
    input: &mut [u8],
    outgoing: &mut Vec<u8>,
    plaintext: &mut Vec<u8>,
) -> Result<(usize, Step), TlsError> {
    let mut done = 0;
    loop {
        let UnbufferedStatus { discard, state } =
            conn.process_tls_records(input.get_mut(done..).unwrap_or_default());
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
