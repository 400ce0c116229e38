//! TLS: the public listener's `wss://` connections, on rustls' unbuffered
//! API (`UnbufferedServerConnection`).
//!
//! [`accept`] performs the handshake itself (TLS 1.2 and 1.3, whatever the
//! server configuration allows; no ALPN, so HTTP/1.1 only); the
//! [`TlsStream`] it returns is the tokio `AsyncRead` + `AsyncWrite` that
//! actix-http's HTTP/1 dispatcher reads the upgrade request from and the
//! socket's `DirectTransport` keeps afterwards. It owns one connection's
//! record layer and the only buffers TLS needs, which exist only while a
//! record is in flight: received bytes are read into a stack array and
//! decrypted there, and only a partial record is kept (`incoming`);
//! plaintext is encrypted into a stack array and written at once, and only
//! what the kernel did not take is kept (`outgoing`); a decrypted record
//! larger than the reader's buffer keeps its rest (`plaintext`). Each is
//! freed as soon as it is empty, so an idle `wss://` socket holds rustls'
//! connection state and nothing else (a buffered `ServerConnection` keeps a
//! receive buffer of at least 4 KiB for the connection's life).
//! It must not parse HTTP or WebSocket frames, choose a protocol, or call
//! rustls again once rustls reported an error (the connection is over).

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::ConfigError;

/// Bytes read from the connection per read call; on the stack, never in the
/// connection's state.
const READ_SCRATCH: usize = 8 * 1024;
/// The most plaintext one TLS record carries.
const RECORD_PLAINTEXT: usize = 16 * 1024;
/// Room for one encrypted record: its plaintext, header, content type, tag,
/// and a TLS 1.3 key update rustls may put in front of it.
const RECORD_ROOM: usize = RECORD_PLAINTEXT + 256;
/// Room for an encrypted close_notify alert.
const ALERT_ROOM: usize = 64;

/// Why a TLS connection ended (wrapped in an `io::Error` for the I/O traits).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("tls: {0}")]
    Protocol(#[from] rustls::Error),
    #[error("tls: cannot encode a handshake record: {0}")]
    Encode(#[from] EncodeError),
    #[error("tls: cannot encrypt: {0}")]
    Encrypt(#[from] EncryptError),
    #[error("tls: early data is not accepted")]
    EarlyData,
    #[error("tls: the connection is not in a state to {0}")]
    State(&'static str),
    #[error("tls: the connection ended during the handshake")]
    ClosedInHandshake,
    #[error("tls: the connection failed earlier")]
    Failed,
}

impl From<TlsError> for io::Error {
    fn from(error: TlsError) -> io::Error {
        match error {
            TlsError::ClosedInHandshake => io::Error::new(io::ErrorKind::UnexpectedEof, error),
            TlsError::State(_) | TlsError::Failed => {
                io::Error::new(io::ErrorKind::NotConnected, error)
            }
            _ => io::Error::new(io::ErrorKind::InvalidData, error),
        }
    }
}

/// The rustls configuration of the public listener: ring, TLS 1.2 and 1.3,
/// the certificate chain and key of `server.tls_cert_file` and
/// `server.tls_key_file`, no client certificates and no ALPN (HTTP/1.1
/// only: no client can pick h2).
pub(crate) fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<ServerConfig, ConfigError> {
    let unreadable =
        |key: &'static str, file: &Path, error: &dyn std::fmt::Display| ConfigError::Invalid {
            key,
            reason: format!("cannot read {}: {error}", file.display()),
        };
    let certificates = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| unreadable("server.tls_cert_file", cert_file, &error))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|error| unreadable("server.tls_key_file", key_file, &error))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let invalid = |error: rustls::Error| ConfigError::Invalid {
        key: "server.tls_cert_file",
        reason: format!("with server.tls_key_file, not a usable pair: {error}"),
    };
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(invalid)
}

/// Performs the server side of a TLS handshake on `tcp` with `config`; the
/// caller bounds how long it may take.
pub(crate) async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(TlsError::from)?;
    let mut stream = TlsStream {
        tcp,
        state: Box::new(TlsState {
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            outgoing_sent: 0,
            plaintext: Vec::new(),
            plaintext_read: 0,
            peer_closed: false,
            close_sent: false,
            failed: false,
        }),
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// A server-side TLS connection over TCP whose buffers exist only while a
/// record is in flight (module docs).
pub(crate) struct TlsStream {
    tcp: TcpStream,
    /// Boxed: rustls' state is 1 KiB, and a future holding the stream (the
    /// socket task's keeps its transport in more than one of its states)
    /// would hold it inline, once per state.
    state: Box<TlsState>,
}

/// Everything of a [`TlsStream`] but its TCP connection.
struct TlsState {
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed: a partial record (or, in a
    /// handshake, a message spanning records). Unallocated when empty.
    incoming: Vec<u8>,
    /// Encrypted bytes not yet written, from `outgoing_sent` on.
    /// Unallocated when all are written.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// Decrypted bytes no reader has taken yet, from `plaintext_read` on.
    /// Unallocated when all are taken.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// The peer sent close_notify or closed its side: reads end.
    peer_closed: bool,
    /// Our close_notify is queued: writes end.
    close_sent: bool,
    /// rustls reported an error: it is never called again.
    failed: bool,
}

impl TlsStream {
    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    /// Bytes held for this connection outside rustls (what an idle socket
    /// must hold none of).
    #[cfg(test)]
    fn held_capacity(&self) -> usize {
        self.state.incoming.capacity()
            + self.state.outgoing.capacity()
            + self.state.plaintext.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Our flight goes out before we wait for the client's.
            ready!(self.poll_send_outgoing(cx))?;
            match self.process_held(Goal::Handshake)? {
                Reached::Writable if self.outgoing_is_empty() => return Poll::Ready(Ok(())),
                // Session tickets or the last flight: sent at the loop's top.
                Reached::Writable => {}
                Reached::Closed => return Poll::Ready(Err(TlsError::ClosedInHandshake.into())),
                Reached::NeedInput if !self.outgoing_is_empty() => {}
                Reached::NeedInput | Reached::Delivered | Reached::Encrypted(_) => {
                    let mut scratch = [0u8; READ_SCRATCH];
                    let read = ready!(self.poll_read_tcp(cx, &mut scratch))?;
                    if read == 0 {
                        return Poll::Ready(Err(TlsError::ClosedInHandshake.into()));
                    }
                    self.state.incoming.extend_from_slice(&scratch[..read]);
                }
            }
        }
    }

    /// One read of the TCP connection into `scratch`: the bytes read, 0 at
    /// its end.
    fn poll_read_tcp(&self, cx: &mut Context<'_>, scratch: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read(scratch) {
                // Readiness was stale; `try_read` cleared it.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                read => return Poll::Ready(read),
            }
        }
    }

    fn outgoing_is_empty(&self) -> bool {
        self.state.outgoing_sent >= self.state.outgoing.len()
    }

    /// Writes what `outgoing` holds; ready once all of it is written (and
    /// the buffer freed).
    fn poll_send_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(unsent) = self
            .state
            .outgoing
            .get(self.state.outgoing_sent..)
            .filter(|b| !b.is_empty())
        {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(unsent) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => self.state.outgoing_sent += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        if self.state.outgoing.capacity() > 0 {
            self.state.outgoing = Vec::new();
        }
        self.state.outgoing_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes one encrypted record after whatever `outgoing` holds; what the
    /// kernel does not take now is kept in `outgoing`.
    fn send_record(&mut self, record: &[u8]) -> io::Result<()> {
        let written = if self.outgoing_is_empty() {
            match self.tcp.try_write(record) {
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
                Err(error) => return Err(error),
            }
        } else {
            0
        };
        if let Some(rest) = record.get(written..).filter(|rest| !rest.is_empty()) {
            self.state.outgoing.extend_from_slice(rest);
        }
        Ok(())
    }

    /// Processes the TLS bytes held in `incoming` toward `goal`, dropping
    /// those done with.
    fn process_held(&mut self, goal: Goal<'_, '_>) -> io::Result<Reached> {
        let mut incoming = std::mem::take(&mut self.state.incoming);
        let result = self.process(&mut incoming, goal);
        let done = result.as_ref().map_or(0, |(done, _)| *done);
        self.state.incoming = keep_unprocessed(incoming, done);
        result.map(|(_, reached)| reached)
    }

    /// Processes the TLS bytes in `input` toward `goal`: how many of them
    /// are done with (to drop from its front) and what was reached.
    fn process(
        &mut self,
        input: &mut [u8],
        mut goal: Goal<'_, '_>,
    ) -> io::Result<(usize, Reached)> {
        if self.state.failed {
            return Err(TlsError::Failed.into());
        }
        let outcome = process(
            &mut self.state.conn,
            input,
            &mut Held {
                outgoing: &mut self.state.outgoing,
                plaintext: &mut self.state.plaintext,
                peer_closed: &mut self.state.peer_closed,
            },
            &mut goal,
        );
        if outcome.is_err() {
            self.state.failed = true;
        }
        Ok(outcome?)
    }

    /// Hands the reader what an earlier record left; true if there was any.
    fn take_plaintext(&mut self, buffer: &mut ReadBuf<'_>) -> bool {
        let Some(left) = self
            .state
            .plaintext
            .get(self.state.plaintext_read..)
            .filter(|left| !left.is_empty())
        else {
            return false;
        };
        let taken = left.len().min(buffer.remaining());
        buffer.put_slice(&left[..taken]);
        self.state.plaintext_read += taken;
        if self.state.plaintext_read >= self.state.plaintext.len() {
            self.state.plaintext = Vec::new();
            self.state.plaintext_read = 0;
        }
        true
    }
}

/// The fields `process` writes to besides rustls' connection.
struct Held<'a> {
    outgoing: &'a mut Vec<u8>,
    plaintext: &'a mut Vec<u8>,
    peer_closed: &'a mut bool,
}

/// What processing is for.
enum Goal<'a, 'b> {
    /// Until the connection may carry application data.
    Handshake,
    /// Until the reader's buffer got plaintext (or more input is needed).
    Read(&'a mut ReadBuf<'b>),
    /// Encrypt `plaintext` (at most one record) into `into`.
    Encrypt {
        plaintext: &'a [u8],
        into: &'a mut [u8],
    },
    /// Encrypt a close_notify alert into `into`.
    CloseNotify { into: &'a mut [u8] },
}

/// Where processing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reached {
    /// A complete record is needed before anything else can happen.
    NeedInput,
    /// The reader's buffer got plaintext.
    Delivered,
    /// The goal's record is in its buffer, this long.
    Encrypted(usize),
    /// The handshake is over.
    Writable,
    /// The peer closed (reads end).
    Closed,
}

/// Drives `conn` over `input` toward `goal`: handshake records it asks to
/// send are appended to `held.outgoing`, application data goes to the
/// reader (or `held.plaintext` when the reader has no room or is not
/// reading). Returns how many bytes of `input` are done with.
fn process(
    conn: &mut UnbufferedServerConnection,
    input: &mut [u8],
    held: &mut Held<'_>,
    goal: &mut Goal<'_, '_>,
) -> Result<(usize, Reached), TlsError> {
    let mut done = 0;
    let mut delivered = false;
    loop {
        let UnbufferedStatus { discard, state } =
            conn.process_tls_records(input.get_mut(done..).unwrap_or_default());
        let mut taken = discard;
        let reached = match state? {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record?;
                    taken += record.discard;
                    delivered |= deliver(record.payload, goal, held.plaintext);
                }
                match goal {
                    Goal::Read(buffer) if buffer.remaining() == 0 || !held.plaintext.is_empty() => {
                        Some(Reached::Delivered)
                    }
                    _ => None,
                }
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(held.outgoing, |room| encode.encode(room))?;
                None
            }
            ConnectionState::TransmitTlsData(transmit) => {
                // Queued in `outgoing`, which is written before anything
                // encrypted later: as good as sent, in order.
                transmit.done();
                None
            }
            ConnectionState::BlockedHandshake => Some(Reached::NeedInput),
            ConnectionState::WriteTraffic(mut traffic) => Some(match goal {
                Goal::Handshake => Reached::Writable,
                Goal::Read(_) if delivered => Reached::Delivered,
                Goal::Read(_) if *held.peer_closed => Reached::Closed,
                Goal::Read(_) => Reached::NeedInput,
                Goal::Encrypt { plaintext, into } => {
                    Reached::Encrypted(traffic.encrypt(plaintext, into)?)
                }
                Goal::CloseNotify { into } => Reached::Encrypted(traffic.queue_close_notify(into)?),
            }),
            ConnectionState::PeerClosed => {
                *held.peer_closed = true;
                match goal {
                    Goal::Read(_) if delivered => Some(Reached::Delivered),
                    Goal::Read(_) | Goal::Handshake => Some(Reached::Closed),
                    // One may still write after the peer's close_notify.
                    Goal::Encrypt { .. } | Goal::CloseNotify { .. } => None,
                }
            }
            ConnectionState::Closed => Some(match goal {
                Goal::Read(_) if delivered => Reached::Delivered,
                Goal::Read(_) | Goal::Handshake => Reached::Closed,
                Goal::Encrypt { .. } | Goal::CloseNotify { .. } => {
                    return Err(TlsError::State("write after both sides closed"))
                }
            }),
            ConnectionState::ReadEarlyData(_) => return Err(TlsError::EarlyData),
            _ => return Err(TlsError::State("continue (unknown state)")),
        };
        done += taken;
        match reached {
            // Whatever else happened, a reader that got bytes must be told.
            Some(Reached::NeedInput | Reached::Closed) if delivered => {
                return Ok((done, Reached::Delivered))
            }
            Some(reached) => return Ok((done, reached)),
            None => {}
        }
    }
}

/// Copies a decrypted record to the reader as far as its buffer goes, the
/// rest (or all of it, when nobody is reading) to `plaintext`. True if the
/// reader got any.
fn deliver(payload: &[u8], goal: &mut Goal<'_, '_>, plaintext: &mut Vec<u8>) -> bool {
    match goal {
        // Bytes waiting in `plaintext` come first.
        Goal::Read(buffer) if plaintext.is_empty() => {
            let now = payload.len().min(buffer.remaining());
            buffer.put_slice(&payload[..now]);
            plaintext.extend_from_slice(&payload[now..]);
            now > 0
        }
        _ => {
            plaintext.extend_from_slice(payload);
            false
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

/// `buffer` without its first `done` bytes; unallocated when nothing is
/// left, and shrunk when most of its room is unused.
fn keep_unprocessed(mut buffer: Vec<u8>, done: usize) -> Vec<u8> {
    if done >= buffer.len() {
        return Vec::new();
    }
    buffer.drain(..done);
    if buffer.capacity() > READ_SCRATCH && buffer.len() < buffer.capacity() / 4 {
        buffer.shrink_to_fit();
    }
    buffer
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buffer.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.take_plaintext(buffer) {
                return Poll::Ready(Ok(()));
            }
            // What rustls asked to send while reading (a key update's
            // answer): on its way now if the kernel takes it, else the next
            // write or flush sends it first.
            if let Poll::Ready(Err(error)) = this.poll_send_outgoing(cx) {
                return Poll::Ready(Err(error));
            }
            if !this.state.incoming.is_empty() {
                match this.process_held(Goal::Read(buffer))? {
                    Reached::Delivered | Reached::Closed => return Poll::Ready(Ok(())),
                    Reached::NeedInput | Reached::Writable | Reached::Encrypted(_) => {}
                }
            }
            if this.state.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; READ_SCRATCH];
            let read = ready!(this.poll_read_tcp(cx, &mut scratch))?;
            if read == 0 {
                // An end without close_notify: the layers above see an end
                // either way, and nothing here is worth a different error.
                this.state.peer_closed = true;
                return Poll::Ready(Ok(()));
            }
            if !this.state.incoming.is_empty() {
                this.state.incoming.extend_from_slice(&scratch[..read]);
                continue;
            }
            // Nothing held: the records are decrypted in the stack array,
            // and only a partial one is copied out.
            let input = &mut scratch[..read];
            let (done, reached) = this.process(input, Goal::Read(buffer))?;
            if let Some(rest) = input.get(done..).filter(|rest| !rest.is_empty()) {
                this.state.incoming.extend_from_slice(rest);
            }
            match reached {
                Reached::Delivered | Reached::Closed => return Poll::Ready(Ok(())),
                Reached::NeedInput | Reached::Writable | Reached::Encrypted(_) => {}
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(bytes)])
    }

    /// Encrypts up to one record of `slices` and writes it.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Earlier records first; and nothing is encrypted that could not
        // leave now, so `outgoing` holds at most one record.
        ready!(this.poll_send_outgoing(cx))?;
        if this.state.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let total: usize = slices.iter().map(|slice| slice.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        ready!(this.tcp.poll_write_ready(cx))?;
        let mut staging = [0u8; RECORD_PLAINTEXT];
        let plaintext: &[u8] = match slices.iter().find(|slice| !slice.is_empty()) {
            // One slice fills a record: encrypted from where it is.
            Some(first) if first.len() >= RECORD_PLAINTEXT || first.len() == total => {
                &first[..first.len().min(RECORD_PLAINTEXT)]
            }
            _ => {
                let mut gathered = 0;
                for slice in slices {
                    let room = &mut staging[gathered..];
                    let now = slice.len().min(room.len());
                    room[..now].copy_from_slice(&slice[..now]);
                    gathered += now;
                    if gathered == RECORD_PLAINTEXT {
                        break;
                    }
                }
                &staging[..gathered]
            }
        };
        let mut record = [0u8; RECORD_ROOM];
        let reached = this.process_held(Goal::Encrypt {
            plaintext,
            into: &mut record,
        })?;
        let Reached::Encrypted(length) = reached else {
            return Poll::Ready(Err(TlsError::State("write").into()));
        };
        this.send_record(record.get(..length).unwrap_or_default())?;
        Poll::Ready(Ok(plaintext.len()))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send_outgoing(cx)
    }

    /// Sends close_notify (once), then ends the TCP connection's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.state.close_sent && !this.state.failed {
            this.state.close_sent = true;
            let mut alert = [0u8; ALERT_ROOM];
            if let Ok(Reached::Encrypted(length)) =
                this.process_held(Goal::CloseNotify { into: &mut alert })
            {
                this.state
                    .outgoing
                    .extend_from_slice(alert.get(..length).unwrap_or_default());
            }
        }
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::path::PathBuf;
    use std::process::Command;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A CA and a server certificate for 127.0.0.1 (openssl, EC keys: quick),
    /// in a directory of its own: (ca.pem, server.pem, server.key).
    fn certificates(name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("gw-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = |file: &str| dir.join(file);
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(output.status.success(), "{args:?}: {output:?}");
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=test-ca",
                ],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-nodes", "-subj", "/CN=127.0.0.1"],
                &ec[..],
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat(),
        );
        std::fs::write(path("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ]);
        (path("ca.pem"), path("server.pem"), path("server.key"))
    }

    struct Pair {
        client: Arc<rustls::ClientConfig>,
        server: Arc<ServerConfig>,
    }

    fn configs(name: &str, version: &'static rustls::SupportedProtocolVersion) -> Pair {
        let (ca, cert, key) = certificates(name);
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Pair {
            client: Arc::new(client),
            server: Arc::new(server_config(&cert, &key).unwrap()),
        }
    }

    /// A blocking rustls client on a thread of its own, connected to a
    /// listener whose first connection the caller accepts.
    async fn listen() -> (tokio::net::TcpListener, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        (listener, address)
    }

    fn client_stream(
        config: Arc<rustls::ClientConfig>,
        address: SocketAddr,
    ) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let tcp = std::net::TcpStream::connect(address).unwrap();
        tcp.set_nodelay(true).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    }

    /// Both protocol versions: a handshake, a request and an answer far
    /// larger than a record each way, and nothing held once they are done.
    #[tokio::test]
    async fn large_data_crosses_many_records_and_nothing_stays_held() {
        for (name, version) in [
            ("v13", &rustls::version::TLS13),
            ("v12", &rustls::version::TLS12),
        ] {
            let pair = configs(name, version);
            let (listener, address) = listen().await;
            let request: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let answer: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
            let (sent, expected) = (request.clone(), answer.clone());
            let client = std::thread::spawn(move || {
                let mut stream = client_stream(pair.client, address);
                stream.write_all(&sent).unwrap();
                let mut got = vec![0u8; expected.len()];
                stream.read_exact(&mut got).unwrap();
                assert!(got == expected, "the answer arrived intact");
                stream.conn.send_close_notify();
                stream.flush().unwrap();
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let mut server = accept(tcp, pair.server).await.unwrap();
            let mut got = vec![0u8; request.len()];
            server.read_exact(&mut got).await.unwrap();
            assert!(got == request, "{name}: the request arrived intact");
            assert_eq!(
                server.held_capacity(),
                0,
                "{name}: nothing held after reading"
            );
            // Writes the way DirectTransport does: vectored, many slices.
            let mut written = 0;
            while written < answer.len() {
                let rest: Vec<IoSlice<'_>> =
                    answer[written..].chunks(1000).map(IoSlice::new).collect();
                written += server.write_vectored(&rest).await.unwrap();
                assert!(
                    server.state.outgoing.len() <= RECORD_ROOM,
                    "{name}: at most one record held"
                );
            }
            server.flush().await.unwrap();
            assert_eq!(
                server.held_capacity(),
                0,
                "{name}: nothing held after writing"
            );
            // The client's close_notify ends reads.
            let mut end = [0u8; 16];
            assert_eq!(server.read(&mut end).await.unwrap(), 0);
            server.shutdown().await.unwrap();
            client.join().unwrap();
        }
    }

    /// A client whose every TLS byte comes in a TCP segment of its own:
    /// partial records are kept until whole, then freed.
    #[tokio::test]
    async fn a_record_arriving_byte_by_byte_is_read_whole() {
        let pair = configs("slow", &rustls::version::TLS13);
        let (listener, address) = listen().await;
        let (go_on, wait) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut conn = rustls::ClientConnection::new(pair.client, name).unwrap();
            let mut tcp = std::net::TcpStream::connect(address).unwrap();
            tcp.set_nodelay(true).unwrap();
            conn.complete_io(&mut tcp).unwrap();
            conn.writer().write_all(b"hello over a slow link").unwrap();
            let mut wire = Vec::new();
            conn.write_tls(&mut wire).unwrap();
            for byte in wire {
                tcp.write_all(&[byte]).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            wait.recv().unwrap();
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut server = accept(tcp, pair.server).await.unwrap();
        let mut got = [0u8; 22];
        let mut read = 0;
        while read < got.len() {
            read += server.read(&mut got[read..]).await.unwrap();
        }
        assert_eq!(&got, b"hello over a slow link");
        assert_eq!(server.held_capacity(), 0, "the partial record was freed");
        go_on.send(()).unwrap();
        client.join().unwrap();
    }

    /// A client that does not read: the server's writes stop (pending)
    /// with at most one record of its own held, never an unbounded queue.
    #[tokio::test]
    async fn a_client_that_does_not_read_holds_at_most_one_record() {
        let pair = configs("stall", &rustls::version::TLS13);
        let (listener, address) = listen().await;
        let (go_on, wait) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let mut stream = client_stream(pair.client, address);
            stream.conn.complete_io(&mut stream.sock).unwrap();
            wait.recv().unwrap();
            let mut all = Vec::new();
            let _ = stream.read_to_end(&mut all);
            all.len()
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut server = accept(tcp, pair.server).await.unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        loop {
            let write = server.write(&chunk);
            match tokio::time::timeout(std::time::Duration::from_millis(300), write).await {
                Ok(result) => written += result.unwrap(),
                Err(_) => break,
            }
            assert!(server.held_capacity() <= RECORD_ROOM, "one record at most");
            assert!(written < 1 << 30, "the kernel's buffers never fill");
        }
        go_on.send(()).unwrap();
        server.shutdown().await.unwrap();
        let received = client.join().unwrap();
        assert_eq!(received, written, "every accepted byte arrived");
    }

    /// Bad input: garbage instead of a ClientHello, and a ClientHello cut
    /// short by the client closing; the handshake fails, nothing panics.
    #[tokio::test]
    async fn garbage_and_a_half_handshake_fail_cleanly() {
        let pair = configs("bad", &rustls::version::TLS13);
        let (listener, address) = listen().await;
        let garbage = std::thread::spawn(move || {
            let mut tcp = std::net::TcpStream::connect(address).unwrap();
            let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01\xff\xff");
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest);
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let error = accept(tcp, pair.server.clone())
            .await
            .err()
            .expect("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        garbage.join().unwrap();

        let client_config = pair.client.clone();
        let half = std::thread::spawn(move || {
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut conn = rustls::ClientConnection::new(client_config, name).unwrap();
            let mut hello = Vec::new();
            conn.write_tls(&mut hello).unwrap();
            let mut tcp = std::net::TcpStream::connect(address).unwrap();
            tcp.write_all(&hello[..hello.len() / 2]).unwrap();
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let error = accept(tcp, pair.server).await.err().expect("refused");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
        half.join().unwrap();
    }

    /// What `accept` makes of `bytes` sent in `chunks` pieces and then the
    /// client's end: it must end (with an error) and never panic.
    fn handshake_with(server: Arc<ServerConfig>, bytes: Vec<u8>, chunks: usize) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (listener, address) = listen().await;
            let client = tokio::spawn(async move {
                let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
                let size = bytes.len().div_ceil(chunks.max(1)).max(1);
                for piece in bytes.chunks(size) {
                    if tcp.write_all(piece).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = tcp.shutdown().await;
                let mut rest = Vec::new();
                let _ = tcp.read_to_end(&mut rest).await;
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let accepted =
                tokio::time::timeout(std::time::Duration::from_secs(5), accept(tcp, server))
                    .await
                    .expect("the handshake ends by itself");
            assert!(accepted.is_err(), "no handshake out of these bytes");
            client.await.unwrap();
        });
    }

    /// A real ClientHello, for the mutation test.
    fn client_hello(config: Arc<rustls::ClientConfig>) -> Vec<u8> {
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        hello
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Arbitrary bytes in place of a handshake end in an error.
        #[test]
        fn arbitrary_bytes_end_the_handshake_without_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            chunks in 1usize..8,
        ) {
            handshake_with(fuzz_pair().server.clone(), bytes, chunks);
        }

        /// A real ClientHello with bytes changed, cut short or not: an
        /// error at most, never a panic.
        #[test]
        fn a_damaged_client_hello_ends_the_handshake_without_panic(
            flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8),
            cut in 0usize..4096,
            chunks in 1usize..8,
        ) {
            let pair = fuzz_pair();
            let mut hello = client_hello(pair.client.clone());
            for (at, value) in flips {
                let at = at % hello.len();
                hello[at] ^= value.max(1);
            }
            hello.truncate(cut.max(1).min(hello.len()));
            handshake_with(pair.server.clone(), hello, chunks);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// After a good handshake and one good record, arbitrary bytes on
        /// the wire: reads end with an error (or the end), never a panic,
        /// and a write after that fails cleanly.
        #[test]
        fn arbitrary_bytes_after_the_handshake_end_the_connection_without_panic(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..3000),
            chunks in 1usize..6,
        ) {
            let pair = fuzz_pair();
            let (client_config, server_config) = (pair.client.clone(), pair.server.clone());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let (listener, address) = listen().await;
                let (go, wait) = std::sync::mpsc::channel::<()>();
                let client = std::thread::spawn(move || {
                    let mut stream = client_stream(client_config, address);
                    stream.write_all(b"good").unwrap();
                    stream.flush().unwrap();
                    // The garbage comes once the server has read "good".
                    wait.recv().unwrap();
                    let size = garbage.len().div_ceil(chunks).max(1);
                    for piece in garbage.chunks(size) {
                        if stream.sock.write_all(piece).is_err() {
                            break;
                        }
                    }
                    let _ = stream.sock.shutdown(std::net::Shutdown::Write);
                    let mut rest = Vec::new();
                    let _ = stream.sock.read_to_end(&mut rest);
                });
                let (tcp, _) = listener.accept().await.unwrap();
                let mut server = accept(tcp, server_config).await.unwrap();
                let mut good = [0u8; 4];
                server.read_exact(&mut good).await.unwrap();
                assert_eq!(&good, b"good");
                go.send(()).unwrap();
                let mut buffer = [0u8; 64];
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    server.read(&mut buffer),
                )
                .await
                .expect("reads end by themselves");
                // Garbage cannot be a record of ours (it would need our
                // keys): nothing is read, the connection ends.
                assert!(matches!(read, Ok(0) | Err(_)), "read out of garbage: {read:?}");
                let _ = server.write_all(b"after").await;
                let _ = server.shutdown().await;
                drop(server);
                client.join().unwrap();
            });
        }
    }

    /// One certificate pair for every fuzz case (openssl runs once).
    fn fuzz_pair() -> &'static Pair {
        static PAIR: std::sync::OnceLock<Pair> = std::sync::OnceLock::new();
        PAIR.get_or_init(|| configs("fuzz", &rustls::version::TLS13))
    }

    #[test]
    fn unprocessed_bytes_keep_their_order_and_empty_buffers_are_freed() {
        let kept = keep_unprocessed(vec![1, 2, 3, 4], 1);
        assert_eq!(kept, [2, 3, 4]);
        let freed = keep_unprocessed(vec![1, 2, 3], 3);
        assert_eq!(freed.capacity(), 0);
        let mut big = Vec::with_capacity(64 * 1024);
        big.extend_from_slice(&[0u8; 40 * 1024]);
        let shrunk = keep_unprocessed(big, 39 * 1024);
        assert_eq!(shrunk.len(), 1024);
        assert!(
            shrunk.capacity() < 4 * 1024,
            "most of the room was returned"
        );
    }
}
