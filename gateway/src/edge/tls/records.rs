//! The record layer of an established TLS connection: seals plaintext into
//! TLS 1.2 or 1.3 application-data records and opens the client's records,
//! with the traffic keys rustls derived in the handshake and handed over
//! (`dangerous_into_kernel_connection`).
//!
//! Each direction keeps its raw key, IV and sequence number (64 bytes);
//! ring's expanded AEAD key (544 bytes) is built on the stack for each
//! record and dropped with it, so an idle connection holds no expanded
//! key. TLS 1.3 key updates go both ways: rustls'
//! `KernelConnection` keeps the traffic secrets and derives the next keys;
//! a TLS 1.2 connection drops it (it has no key updates).
//! It must not do I/O or hold a buffer (callers pass the record's bytes),
//! and it must not open another record after one failed: the connection is
//! over then.

use ring::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite};

/// A record header: content type, legacy version, length.
pub(crate) const HEADER: usize = 5;
/// The AEAD tag of every suite rustls offers here (AES-GCM, ChaCha20-Poly1305).
const TAG: usize = 16;
/// The most plaintext one record may carry (RFC 8446 §5.1, RFC 5246 §6.2.1).
pub(crate) const MAX_PLAINTEXT: usize = 16 * 1024;
/// The longest TLS 1.3 record body: plaintext, content type and padding,
/// tag (RFC 8446 §5.2).
const MAX_BODY_TLS13: usize = MAX_PLAINTEXT + 256;
/// The longest TLS 1.2 record body (RFC 5246 §6.2.3).
const MAX_BODY_TLS12: usize = MAX_PLAINTEXT + 2048;
/// The explicit part of a TLS 1.2 AES-GCM nonce, sent in front of each
/// record (RFC 5288 §3).
const GCM_EXPLICIT_NONCE: usize = 8;
/// The most a sealed record adds to its plaintext (TLS 1.2 AES-GCM).
pub(crate) const MAX_OVERHEAD: usize = HEADER + GCM_EXPLICIT_NONCE + TAG;
/// Room for the KeyUpdate record that may go in front of a sealed record.
pub(crate) const KEY_UPDATE_ROOM: usize = HEADER + KEY_UPDATE_MESSAGE + 1 + TAG;
/// Room for a sealed alert.
pub(crate) const ALERT_ROOM: usize = MAX_OVERHEAD + 2;
/// A sequence number is never used past this, whatever the suite allows:
/// it must not wrap.
const SEQUENCE_CEILING: u64 = u64::MAX - 1;
/// Records left below a suite's confidentiality limit when a TLS 1.3
/// connection updates its sending key (a TLS 1.2 one ends).
const LIMIT_MARGIN: u64 = 16;

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// HandshakeType key_update (RFC 8446 §4).
const KEY_UPDATE: u8 = 24;
/// A KeyUpdate message: type, 24-bit length (1), request_update.
const KEY_UPDATE_MESSAGE: usize = 5;
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;

/// Alert descriptions (RFC 8446 §6).
pub(crate) mod alert {
    pub(crate) const CLOSE_NOTIFY: u8 = 0;
    pub(crate) const UNEXPECTED_MESSAGE: u8 = 10;
    pub(crate) const BAD_RECORD_MAC: u8 = 20;
    pub(crate) const RECORD_OVERFLOW: u8 = 22;
    pub(crate) const ILLEGAL_PARAMETER: u8 = 47;
    pub(crate) const DECODE_ERROR: u8 = 50;
    pub(crate) const INTERNAL_ERROR: u8 = 80;
    pub(crate) const USER_CANCELED: u8 = 90;
}
const WARNING: u8 = 1;
const FATAL: u8 = 2;

/// Why a record could not be opened or sealed; the connection is over.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub(crate) enum RecordError {
    #[error("a record failed authentication (wrong key, or changed on the way)")]
    BadRecordMac,
    #[error("a record longer than TLS allows")]
    RecordOverflow,
    #[error("unexpected after the handshake: {0}")]
    UnexpectedMessage(&'static str),
    #[error("a malformed {0}")]
    Decode(&'static str),
    #[error("a value out of range in {0}")]
    IllegalParameter(&'static str),
    #[error("the client sent alert {0}")]
    PeerAlert(u8),
    #[error("the connection used its keys for as many records as its cipher suite allows (TLS 1.2 cannot update keys)")]
    KeyLimit,
    #[error("the negotiated cipher suite has no record layer here")]
    UnsupportedSuite,
    #[error("updating traffic keys: {0}")]
    KeySchedule(rustls::Error),
    #[error("no room for a sealed record (a bug)")]
    NoRoom,
}

impl RecordError {
    /// The fatal alert that tells the client why; none for its own alert.
    pub(crate) fn alert(&self) -> Option<u8> {
        Some(match self {
            RecordError::BadRecordMac => alert::BAD_RECORD_MAC,
            RecordError::RecordOverflow => alert::RECORD_OVERFLOW,
            RecordError::UnexpectedMessage(_) => alert::UNEXPECTED_MESSAGE,
            RecordError::Decode(_) => alert::DECODE_ERROR,
            RecordError::IllegalParameter(_) => alert::ILLEGAL_PARAMETER,
            RecordError::PeerAlert(_) => return None,
            RecordError::KeyLimit
            | RecordError::UnsupportedSuite
            | RecordError::KeySchedule(_)
            | RecordError::NoRoom => alert::INTERNAL_ERROR,
        })
    }
}

/// What an opened record held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened<'a> {
    /// Application data (possibly empty), decrypted in place.
    Data(&'a [u8]),
    /// The client's close_notify: nothing after it is read.
    Closed,
    /// A record for the layer itself (a key update, a warning).
    Nothing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Tls12,
    Tls13,
}

/// One direction's keys and its next record's sequence number.
struct Traffic {
    secrets: ConnectionTrafficSecrets,
    seq: u64,
}

impl Traffic {
    /// The expanded AEAD key (built for this record only) and the IV.
    fn key(&self) -> Result<(LessSafeKey, [u8; 12]), RecordError> {
        let (algorithm, key, iv) = match &self.secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(RecordError::UnsupportedSuite),
        };
        let key =
            UnboundKey::new(algorithm, key.as_ref()).map_err(|_| RecordError::UnsupportedSuite)?;
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::UnsupportedSuite)?;
        Ok((LessSafeKey::new(key), iv))
    }

    /// True for TLS 1.2's AES-GCM, whose records carry an explicit nonce.
    fn explicit_nonce(&self, version: Version) -> bool {
        version == Version::Tls12
            && !matches!(
                self.secrets,
                ConnectionTrafficSecrets::Chacha20Poly1305 { .. }
            )
    }

    /// This record's sequence number, and the next one's.
    fn advance(&mut self) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        seq
    }
}

/// `iv` XOR the sequence number as a 96-bit big-endian integer (RFC 8446
/// §5.3; RFC 7905 §2 and rustls' TLS 1.2 AES-GCM sending side likewise).
fn nonce_bytes(iv: &[u8; 12], seq: u64) -> [u8; 12] {
    let mut nonce = *iv;
    for (byte, seq_byte) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *byte ^= seq_byte;
    }
    nonce
}

/// TLS 1.2's additional data: sequence number, type, version, plaintext
/// length (RFC 5246 §6.2.3.3).
fn tls12_aad(seq: u64, typ: u8, version: [u8; 2], length: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&version);
    aad[11..].copy_from_slice(&(length as u16).to_be_bytes());
    aad
}

/// One connection's record layer (module docs).
pub(crate) struct RecordLayer {
    version: Version,
    send: Traffic,
    receive: Traffic,
    /// TLS 1.3: derives the next keys at a key update. Boxed: 560 bytes.
    key_schedule: Option<Box<KernelConnection<ServerConnectionData>>>,
    /// The client asked for our key update (or the sending key is near its
    /// limit): a KeyUpdate goes out in front of the next record.
    update_sending_key: bool,
    /// The sequence number at which the sending key is used up.
    send_limit: u64,
}

impl RecordLayer {
    /// The record layer of a connection whose handshake rustls finished.
    pub(crate) fn new(
        secrets: rustls::ExtractedSecrets,
        key_schedule: KernelConnection<ServerConnectionData>,
    ) -> Result<RecordLayer, RecordError> {
        let (version, limit) = match key_schedule.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(suite) => {
                (Version::Tls13, suite.common.confidentiality_limit)
            }
            SupportedCipherSuite::Tls12(suite) => {
                (Version::Tls12, suite.common.confidentiality_limit)
            }
            #[allow(unreachable_patterns)]
            _ => return Err(RecordError::UnsupportedSuite),
        };
        if !matches!(
            (version, key_schedule.protocol_version()),
            (Version::Tls13, ProtocolVersion::TLSv1_3) | (Version::Tls12, ProtocolVersion::TLSv1_2)
        ) {
            return Err(RecordError::UnsupportedSuite);
        }
        let layer = RecordLayer {
            version,
            send: Traffic {
                secrets: secrets.tx.1,
                seq: secrets.tx.0,
            },
            receive: Traffic {
                secrets: secrets.rx.1,
                seq: secrets.rx.0,
            },
            key_schedule: (version == Version::Tls13).then(|| Box::new(key_schedule)),
            update_sending_key: false,
            send_limit: limit.saturating_sub(LIMIT_MARGIN).min(SEQUENCE_CEILING),
        };
        // Both keys must be usable before the first record needs them.
        layer.send.key()?;
        layer.receive.key()?;
        Ok(layer)
    }

    /// Uses each sending key for `records` records at most (tests reach
    /// the limit quickly with it).
    #[cfg(test)]
    pub(crate) fn limit_sending_key(&mut self, records: u64) {
        self.send_limit = records;
    }

    /// Records sealed under the current sending key.
    #[cfg(test)]
    pub(crate) fn records_under_sending_key(&self) -> u64 {
        self.send.seq
    }

    /// The length of the first whole record in `input`; `None` if it has
    /// not all arrived. A length over what TLS allows is an error at once.
    pub(crate) fn next_record(&self, input: &[u8]) -> Result<Option<usize>, RecordError> {
        let Some(header) = input.get(..HEADER) else {
            return Ok(None);
        };
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let most = match self.version {
            Version::Tls13 => MAX_BODY_TLS13,
            Version::Tls12 => MAX_BODY_TLS12,
        };
        if length > most {
            return Err(RecordError::RecordOverflow);
        }
        Ok((input.len() >= HEADER + length).then_some(HEADER + length))
    }

    /// Opens one whole record (as `next_record` measured it), decrypting it
    /// in place.
    pub(crate) fn open<'a>(&mut self, record: &'a mut [u8]) -> Result<Opened<'a>, RecordError> {
        if record.len() < HEADER {
            return Err(RecordError::Decode("record header"));
        }
        let (header, body) = record.split_at_mut(HEADER);
        let header: [u8; HEADER] = [header[0], header[1], header[2], header[3], header[4]];
        if self.receive.seq >= SEQUENCE_CEILING {
            return Err(RecordError::KeyLimit);
        }
        let (key, iv) = self.receive.key()?;
        let (typ, content) = match self.version {
            Version::Tls13 => {
                if header[0] != APPLICATION_DATA {
                    return Err(RecordError::UnexpectedMessage(
                        "an unprotected record (TLS 1.3 protects every record after the handshake)",
                    ));
                }
                let seq = self.receive.advance();
                let nonce = Nonce::assume_unique_for_key(nonce_bytes(&iv, seq));
                let plaintext = key
                    .open_in_place(nonce, Aad::from(header), body)
                    .map_err(|_| RecordError::BadRecordMac)?;
                // The real content type is the last byte that is not padding.
                let Some(end) = plaintext.iter().rposition(|&byte| byte != 0) else {
                    return Err(RecordError::UnexpectedMessage(
                        "a record without a content type",
                    ));
                };
                let typ = plaintext[end];
                (typ, &plaintext[..end])
            }
            Version::Tls12 => {
                let explicit = self.receive.explicit_nonce(self.version);
                let prefix = if explicit { GCM_EXPLICIT_NONCE } else { 0 };
                let Some(length) = body.len().checked_sub(prefix + TAG) else {
                    return Err(RecordError::BadRecordMac);
                };
                let seq = self.receive.advance();
                let nonce = if explicit {
                    let mut nonce = iv;
                    nonce[4..].copy_from_slice(&body[..GCM_EXPLICIT_NONCE]);
                    nonce
                } else {
                    nonce_bytes(&iv, seq)
                };
                let aad = tls12_aad(seq, header[0], [header[1], header[2]], length);
                let plaintext = key
                    .open_within(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        body,
                        prefix..,
                    )
                    .map_err(|_| RecordError::BadRecordMac)?;
                (header[0], &*plaintext)
            }
        };
        if content.len() > MAX_PLAINTEXT {
            return Err(RecordError::RecordOverflow);
        }
        match typ {
            APPLICATION_DATA => Ok(Opened::Data(content)),
            ALERT => self.alert_received(content),
            HANDSHAKE => self.handshake_received(content),
            CHANGE_CIPHER_SPEC => Err(RecordError::UnexpectedMessage("change_cipher_spec")),
            _ => Err(RecordError::UnexpectedMessage(
                "a record of an unknown content type",
            )),
        }
    }

    fn alert_received(&self, content: &[u8]) -> Result<Opened<'static>, RecordError> {
        let [level, description] = content else {
            return Err(RecordError::Decode("alert"));
        };
        match (*description, self.version) {
            (alert::CLOSE_NOTIFY, _) => Ok(Opened::Closed),
            // A close_notify follows (RFC 8446 §6.1).
            (alert::USER_CANCELED, _) => Ok(Opened::Nothing),
            // TLS 1.3 makes every other alert fatal (RFC 8446 §6); TLS 1.2
            // lets warnings pass.
            (_, Version::Tls12) if *level == WARNING => Ok(Opened::Nothing),
            (description, _) => Err(RecordError::PeerAlert(description)),
        }
    }

    /// A handshake message after the handshake: a TLS 1.3 KeyUpdate is the
    /// only one a server accepts (no post-handshake authentication is ever
    /// requested, TLS 1.2 renegotiation is not supported).
    fn handshake_received(&mut self, content: &[u8]) -> Result<Opened<'static>, RecordError> {
        let Some(key_schedule) = self.key_schedule.as_mut() else {
            return Err(RecordError::UnexpectedMessage(
                "renegotiation (not supported)",
            ));
        };
        let request = match content {
            [KEY_UPDATE, 0, 0, 1, request] => *request,
            // A KeyUpdate must end its record: the next one uses the new key.
            [KEY_UPDATE, ..] => return Err(RecordError::Decode("key_update")),
            _ => {
                return Err(RecordError::UnexpectedMessage(
                    "a handshake message other than key_update",
                ))
            }
        };
        if request != UPDATE_NOT_REQUESTED && request != UPDATE_REQUESTED {
            return Err(RecordError::IllegalParameter("key_update"));
        }
        let (seq, secrets) = key_schedule
            .update_rx_secret()
            .map_err(RecordError::KeySchedule)?;
        self.receive = Traffic { secrets, seq };
        // Many requests while we are silent get one answer (RFC 8446 §4.6.3).
        self.update_sending_key |= request == UPDATE_REQUESTED;
        Ok(Opened::Nothing)
    }

    /// Seals `plaintext` (at most `MAX_PLAINTEXT` bytes) into one
    /// application-data record at the start of `into`, after the KeyUpdate
    /// record a key update puts in front of it; returns the bytes written.
    pub(crate) fn seal(&mut self, plaintext: &[u8], into: &mut [u8]) -> Result<usize, RecordError> {
        let mut written = 0;
        if self.update_sending_key || self.send.seq >= self.send_limit {
            written = self.update_sending_key(into)?;
        }
        let rest = into.get_mut(written..).ok_or(RecordError::NoRoom)?;
        Ok(written + self.seal_record(APPLICATION_DATA, plaintext, rest)?)
    }

    /// Seals an alert: close_notify as a warning, anything else fatal.
    pub(crate) fn seal_alert(
        &mut self,
        description: u8,
        into: &mut [u8],
    ) -> Result<usize, RecordError> {
        let level = if description == alert::CLOSE_NOTIFY {
            WARNING
        } else {
            FATAL
        };
        self.seal_record(ALERT, &[level, description], into)
    }

    /// Sends a KeyUpdate under the current key, then switches to the next
    /// (TLS 1.3); a TLS 1.2 connection at its limit can only end.
    fn update_sending_key(&mut self, into: &mut [u8]) -> Result<usize, RecordError> {
        if self.key_schedule.is_none() {
            return Err(RecordError::KeyLimit);
        }
        let message = [KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED];
        let written = self.seal_record(HANDSHAKE, &message, into)?;
        let key_schedule = self.key_schedule.as_mut().ok_or(RecordError::KeyLimit)?;
        let (seq, secrets) = key_schedule
            .update_tx_secret()
            .map_err(RecordError::KeySchedule)?;
        self.send = Traffic { secrets, seq };
        self.update_sending_key = false;
        Ok(written)
    }

    fn seal_record(
        &mut self,
        typ: u8,
        content: &[u8],
        into: &mut [u8],
    ) -> Result<usize, RecordError> {
        if content.len() > MAX_PLAINTEXT {
            return Err(RecordError::RecordOverflow);
        }
        if self.send.seq >= SEQUENCE_CEILING {
            return Err(RecordError::KeyLimit);
        }
        let explicit = self.send.explicit_nonce(self.version);
        let (outer_type, inner, prefix) = match self.version {
            // The real type goes after the content (RFC 8446 §5.2).
            Version::Tls13 => (APPLICATION_DATA, 1, 0),
            Version::Tls12 if explicit => (typ, 0, GCM_EXPLICIT_NONCE),
            Version::Tls12 => (typ, 0, 0),
        };
        let sealed = content.len() + inner;
        let body = prefix + sealed + TAG;
        let total = HEADER + body;
        let record = into.get_mut(..total).ok_or(RecordError::NoRoom)?;
        let (key, iv) = self.send.key()?;
        let seq = self.send.advance();
        let nonce = nonce_bytes(&iv, seq);
        let [length_high, length_low] = (body as u16).to_be_bytes();
        let header = [outer_type, 3, 3, length_high, length_low];
        record[..HEADER].copy_from_slice(&header);
        if explicit {
            record[HEADER..HEADER + prefix].copy_from_slice(&nonce[4..]);
        }
        let payload_start = HEADER + prefix;
        record[payload_start..payload_start + content.len()].copy_from_slice(content);
        if inner == 1 {
            record[payload_start + content.len()] = typ;
        }
        let payload = &mut record[payload_start..payload_start + sealed];
        let nonce = Nonce::assume_unique_for_key(nonce);
        let tag = match self.version {
            Version::Tls13 => key.seal_in_place_separate_tag(nonce, Aad::from(header), payload),
            Version::Tls12 => {
                let aad = tls12_aad(seq, typ, [3, 3], content.len());
                key.seal_in_place_separate_tag(nonce, Aad::from(aad), payload)
            }
        }
        .map_err(|_| RecordError::NoRoom)?;
        record[payload_start + sealed..].copy_from_slice(tag.as_ref());
        Ok(total)
    }
}
