//! TLS: the public listener's `wss://` connections. rustls performs the
//! handshake (its unbuffered API, `handshake`); then it hands the traffic
//! keys over and this connection's own record layer (`records`) seals and
//! opens every record.
//!
//! [`accept`] performs the handshake (TLS 1.2 and 1.3, whatever the server
//! configuration allows; no ALPN, so HTTP/1.1 only); the [`TlsStream`] it
//! returns is the tokio `AsyncRead` + `AsyncWrite` that actix-http's HTTP/1
//! dispatcher reads the upgrade request from and the socket's
//! `DirectTransport` keeps afterwards. It owns the only buffers TLS needs,
//! which exist only while a record is in flight: received bytes are read
//! into a stack array and decrypted there, and only a partial record is
//! kept (`incoming`); plaintext is encrypted into a stack array and written
//! at once, and only what the kernel did not take is kept (`outgoing`); a
//! decrypted record larger than the reader's buffer keeps its rest
//! (`plaintext`). Each is freed as soon as it is empty, so an idle `wss://`
//! socket holds its record layer's keys and sequence numbers (and, on TLS
//! 1.3, the secrets its key updates derive from) and nothing else: no
//! buffer, no expanded key, none of rustls' handshake state.
//! It must not parse HTTP or WebSocket frames or choose a protocol, and
//! after a TLS error it reads and writes nothing more on the connection
//! (it is over; the client got the alert that says why, if the kernel took
//! it): the reader gets the data of the records before the bad one, then
//! the error.

mod handshake;
mod records;

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::EncodeError;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::ConfigError;
use handshake::Step;
use records::{alert, Opened, RecordError, RecordLayer};

/// Bytes read from the connection per read call; on the stack, never in the
/// connection's state.
const READ_SCRATCH: usize = 8 * 1024;
/// Room for the records one write seals: a record of plaintext, and the
/// key update that may go in front of it.
const RECORD_ROOM: usize =
    records::MAX_PLAINTEXT + records::MAX_OVERHEAD + records::KEY_UPDATE_ROOM;

/// Why a TLS connection ended (wrapped in an `io::Error` for the I/O traits).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("tls: {0}")]
    Protocol(#[from] rustls::Error),
    #[error("tls: cannot encode a handshake record: {0}")]
    Encode(#[from] EncodeError),
    #[error("tls: {0}")]
    Record(#[from] RecordError),
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
/// only: no client can pick h2). rustls hands each connection's traffic
/// keys over once its handshake is done (`enable_secret_extraction`): the
/// record layer here uses them, and they leave the process no other way.
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
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(invalid)?;
    config.enable_secret_extraction = true;
    Ok(config)
}

/// Performs the server side of a TLS handshake on `tcp` with `config`; the
/// caller bounds how long it may take.
pub(crate) async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(TlsError::from)?;
    let mut buffers = Buffers::default();
    poll_fn(|cx| poll_handshake(&tcp, &mut conn, &mut buffers, cx)).await?;
    let (secrets, key_schedule) = conn
        .dangerous_into_kernel_connection()
        .map_err(TlsError::from)?;
    let records = RecordLayer::new(secrets, key_schedule).map_err(TlsError::from)?;
    Ok(TlsStream {
        tcp,
        state: Box::new(TlsState {
            records,
            buffers,
            peer_closed: false,
            close_sent: false,
            failed: false,
            deferred_error: None,
        }),
    })
}

/// Drives the handshake until it is done and all of our flight is written.
fn poll_handshake(
    tcp: &TcpStream,
    conn: &mut UnbufferedServerConnection,
    buffers: &mut Buffers,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        // Our flight goes out before we wait for the client's.
        ready!(buffers.poll_send_outgoing(tcp, cx))?;
        let mut incoming = std::mem::take(&mut buffers.incoming);
        let advanced = handshake::advance(
            conn,
            &mut incoming,
            &mut buffers.outgoing,
            &mut buffers.plaintext,
        );
        let done = advanced.as_ref().map_or(0, |(done, _)| *done);
        buffers.incoming = keep_unprocessed(incoming, done);
        match advanced?.1 {
            Step::Done if buffers.outgoing_is_empty() => return Poll::Ready(Ok(())),
            // Session tickets or the last flight: sent at the loop's top.
            Step::Done => {}
            Step::Closed => return Poll::Ready(Err(TlsError::ClosedInHandshake.into())),
            Step::NeedInput if !buffers.outgoing_is_empty() => {}
            Step::NeedInput => {
                let mut scratch = [0u8; READ_SCRATCH];
                let read = ready!(poll_read_tcp(tcp, cx, &mut scratch))?;
                if read == 0 {
                    return Poll::Ready(Err(TlsError::ClosedInHandshake.into()));
                }
                buffers.incoming.extend_from_slice(&scratch[..read]);
            }
        }
    }
}

/// One read of the TCP connection into `scratch`: the bytes read, 0 at its
/// end.
fn poll_read_tcp(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    scratch: &mut [u8],
) -> Poll<io::Result<usize>> {
    loop {
        ready!(tcp.poll_read_ready(cx))?;
        match tcp.try_read(scratch) {
            // Readiness was stale; `try_read` cleared it.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            read => return Poll::Ready(read),
        }
    }
}

/// A connection's bytes in flight; each buffer is unallocated when empty.
#[derive(Default)]
struct Buffers {
    /// Received TLS bytes not yet processed: a partial record (or, in a
    /// handshake, a message spanning records).
    incoming: Vec<u8>,
    /// Encrypted bytes not yet written, from `outgoing_sent` on.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// Decrypted bytes no reader has taken yet, from `plaintext_read` on.
    plaintext: Vec<u8>,
    plaintext_read: usize,
}

impl Buffers {
    fn outgoing_is_empty(&self) -> bool {
        self.outgoing_sent >= self.outgoing.len()
    }

    /// Writes what `outgoing` holds; ready once all of it is written (and
    /// the buffer freed).
    fn poll_send_outgoing(
        &mut self,
        tcp: &TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while let Some(unsent) = self
            .outgoing
            .get(self.outgoing_sent..)
            .filter(|unsent| !unsent.is_empty())
        {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write(unsent) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => self.outgoing_sent += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
        }
        self.outgoing_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes sealed records after whatever `outgoing` holds; what the
    /// kernel does not take now is kept in `outgoing`.
    fn send(&mut self, tcp: &TcpStream, records: &[u8]) -> io::Result<()> {
        let written = if self.outgoing_is_empty() {
            match tcp.try_write(records) {
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
                Err(error) => return Err(error),
            }
        } else {
            0
        };
        if let Some(rest) = records.get(written..).filter(|rest| !rest.is_empty()) {
            self.outgoing.extend_from_slice(rest);
        }
        Ok(())
    }

    /// Hands the reader what an earlier record left; true if there was any.
    fn take_plaintext(&mut self, buffer: &mut ReadBuf<'_>) -> bool {
        let Some(left) = self
            .plaintext
            .get(self.plaintext_read..)
            .filter(|left| !left.is_empty())
        else {
            return false;
        };
        let taken = left.len().min(buffer.remaining());
        buffer.put_slice(&left[..taken]);
        self.plaintext_read += taken;
        if self.plaintext_read >= self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plaintext_read = 0;
        }
        true
    }

    /// Bytes held (what an idle connection must hold none of).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.plaintext.capacity()
    }
}

/// A server-side TLS connection over TCP whose buffers exist only while a
/// record is in flight (module docs).
pub(crate) struct TlsStream {
    tcp: TcpStream,
    /// Boxed: a future holding the stream (the socket task's keeps its
    /// transport in more than one of its states) would hold it inline,
    /// once per state.
    state: Box<TlsState>,
}

/// Everything of a [`TlsStream`] but its TCP connection.
struct TlsState {
    records: RecordLayer,
    buffers: Buffers,
    /// The peer sent close_notify or closed its side: reads end.
    peer_closed: bool,
    /// Our close_notify is queued: writes end.
    close_sent: bool,
    /// A record failed: nothing more is read or written.
    failed: bool,
    /// The error of a record that failed behind records the reader got
    /// data from: the reader gets that data first, then this.
    deferred_error: Option<RecordError>,
}

impl TlsStream {
    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    /// Bytes held for this connection's records in flight (what an idle
    /// socket must hold none of).
    #[cfg(test)]
    fn held_capacity(&self) -> usize {
        self.state.buffers.capacity()
    }

    /// Ends the connection for `error`: the client is told why with a
    /// fatal alert (if the kernel takes it now), nothing is read or
    /// written after it.
    fn fail(&mut self, error: RecordError) -> io::Error {
        let state = &mut *self.state;
        if !state.failed {
            state.failed = true;
            if let Some(description) = error.alert() {
                let mut sealed = [0u8; records::ALERT_ROOM];
                if let Ok(length) = state.records.seal_alert(description, &mut sealed) {
                    let _ = state.buffers.send(&self.tcp, &sealed[..length]);
                    state.buffers.outgoing = Vec::new();
                }
            }
        }
        TlsError::Record(error).into()
    }

    /// The error a read gets once a record failed: the failed record's,
    /// the first time it was deferred, later a plain "failed earlier".
    fn failure(&mut self) -> io::Error {
        match self.state.deferred_error.take() {
            Some(error) => TlsError::Record(error).into(),
            None => TlsError::Failed.into(),
        }
    }

    /// Opens the whole records at the front of `input`, handing application
    /// data to the reader (the rest of a record it has no room for goes to
    /// `plaintext`): how many bytes of `input` are done with, and whether
    /// the reader got any.
    fn open_records(
        &mut self,
        input: &mut [u8],
        buffer: &mut ReadBuf<'_>,
    ) -> io::Result<(usize, bool)> {
        let mut done = 0;
        let mut delivered = false;
        let state = &mut *self.state;
        let error = loop {
            let rest = input.get_mut(done..).unwrap_or_default();
            let length = match state.records.next_record(rest) {
                Ok(Some(length)) => length,
                Ok(None) => return Ok((done, delivered)),
                Err(error) => break error,
            };
            let record = rest.get_mut(..length).unwrap_or_default();
            done += length;
            match state.records.open(record) {
                Ok(Opened::Data(payload)) => {
                    delivered |= deliver(payload, buffer, &mut state.buffers.plaintext);
                }
                Ok(Opened::Nothing) => {}
                Ok(Opened::Closed) => {
                    // Nothing after close_notify is read.
                    state.peer_closed = true;
                    return Ok((input.len(), delivered));
                }
                Err(error) => break error,
            }
        };
        if !delivered {
            return Err(self.fail(error));
        }
        // A read that got data must not fail (the data would be lost):
        // the error waits for the next read.
        let _ = self.fail(error.clone());
        self.state.deferred_error = Some(error);
        Ok((input.len(), true))
    }
}

/// Copies a decrypted record to the reader as far as its buffer goes, the
/// rest to `plaintext`. True if the reader got any.
fn deliver(payload: &[u8], buffer: &mut ReadBuf<'_>, plaintext: &mut Vec<u8>) -> bool {
    // Bytes waiting in `plaintext` come first.
    let now = if plaintext.is_empty() {
        payload.len().min(buffer.remaining())
    } else {
        0
    };
    buffer.put_slice(&payload[..now]);
    plaintext.extend_from_slice(&payload[now..]);
    now > 0
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
            if this.state.buffers.take_plaintext(buffer) {
                return Poll::Ready(Ok(()));
            }
            if this.state.failed {
                return Poll::Ready(Err(this.failure()));
            }
            if !this.state.buffers.incoming.is_empty() {
                let mut incoming = std::mem::take(&mut this.state.buffers.incoming);
                let opened = this.open_records(&mut incoming, buffer);
                let done = opened.as_ref().map_or(0, |(done, _)| *done);
                this.state.buffers.incoming = keep_unprocessed(incoming, done);
                if opened?.1 {
                    return Poll::Ready(Ok(()));
                }
            }
            if this.state.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; READ_SCRATCH];
            let read = ready!(poll_read_tcp(&this.tcp, cx, &mut scratch))?;
            if read == 0 {
                // An end without close_notify: the layers above see an end
                // either way, and nothing here is worth a different error.
                this.state.peer_closed = true;
                return Poll::Ready(Ok(()));
            }
            if !this.state.buffers.incoming.is_empty() {
                this.state
                    .buffers
                    .incoming
                    .extend_from_slice(&scratch[..read]);
                continue;
            }
            // Nothing held: the records are decrypted in the stack array,
            // and only a partial one is copied out.
            let input = &mut scratch[..read];
            let (done, delivered) = this.open_records(input, buffer)?;
            if let Some(rest) = input.get(done..).filter(|rest| !rest.is_empty()) {
                this.state.buffers.incoming.extend_from_slice(rest);
            }
            if delivered || this.state.peer_closed {
                return Poll::Ready(Ok(()));
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

    /// Seals up to one record of `slices` and writes it.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Earlier records first; and nothing is sealed that could not leave
        // now, so `outgoing` holds at most one write's records.
        ready!(this.state.buffers.poll_send_outgoing(&this.tcp, cx))?;
        if this.state.failed {
            return Poll::Ready(Err(TlsError::Failed.into()));
        }
        if this.state.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let total: usize = slices.iter().map(|slice| slice.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        ready!(this.tcp.poll_write_ready(cx))?;
        let mut staging = [0u8; records::MAX_PLAINTEXT];
        let plaintext: &[u8] = match slices.iter().find(|slice| !slice.is_empty()) {
            // One slice fills a record: sealed from where it is.
            Some(first) if first.len() >= records::MAX_PLAINTEXT || first.len() == total => {
                &first[..first.len().min(records::MAX_PLAINTEXT)]
            }
            _ => {
                let mut gathered = 0;
                for slice in slices {
                    let room = &mut staging[gathered..];
                    let now = slice.len().min(room.len());
                    room[..now].copy_from_slice(&slice[..now]);
                    gathered += now;
                    if gathered == records::MAX_PLAINTEXT {
                        break;
                    }
                }
                &staging[..gathered]
            }
        };
        let mut sealed = [0u8; RECORD_ROOM];
        let length = match this.state.records.seal(plaintext, &mut sealed) {
            Ok(length) => length,
            Err(error) => return Poll::Ready(Err(this.fail(error))),
        };
        this.state
            .buffers
            .send(&this.tcp, sealed.get(..length).unwrap_or_default())?;
        Poll::Ready(Ok(plaintext.len()))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.state.buffers.poll_send_outgoing(&this.tcp, cx)
    }

    /// Sends close_notify (once), then ends the TCP connection's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let state = &mut *this.state;
        if !state.close_sent && !state.failed {
            state.close_sent = true;
            let mut sealed = [0u8; records::ALERT_ROOM];
            if let Ok(length) = state.records.seal_alert(alert::CLOSE_NOTIFY, &mut sealed) {
                state.buffers.outgoing.extend_from_slice(&sealed[..length]);
            }
        }
        ready!(state.buffers.poll_send_outgoing(&this.tcp, cx))?;
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
        let suites = rustls::crypto::ring::default_provider().cipher_suites;
        configs_with(name, version, suites)
    }

    /// A client offering `suites` of `version` only, and the server.
    fn configs_with(
        name: &str,
        version: &'static rustls::SupportedProtocolVersion,
        suites: Vec<rustls::SupportedCipherSuite>,
    ) -> Pair {
        let (ca, cert, key) = certificates(name);
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: suites,
            ..rustls::crypto::ring::default_provider()
        });
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // The raw-record tests seal with the client's keys.
        client.enable_secret_extraction = true;
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
                    server.state.buffers.outgoing.len() <= RECORD_ROOM,
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

    /// Every suite the server offers, both protocol versions: data both
    /// ways, sealed and opened by the record layer, and close_notify.
    #[tokio::test]
    async fn every_suite_of_both_versions_carries_data_both_ways() {
        // The test certificate is ECDSA: TLS 1.2's RSA suites cannot be used.
        let suites = rustls::crypto::ring::default_provider()
            .cipher_suites
            .into_iter()
            .filter(|suite| !format!("{:?}", suite.suite()).contains("_RSA_"));
        let mut negotiated = Vec::new();
        for suite in suites {
            let version = suite.version();
            let pair = configs_with("suite", version, vec![suite]);
            let (listener, address) = listen().await;
            let request: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
            let sent = request.clone();
            let client = std::thread::spawn(move || {
                let mut stream = client_stream(pair.client, address);
                stream.write_all(&sent).unwrap();
                let mut got = vec![0u8; sent.len()];
                stream.read_exact(&mut got).unwrap();
                assert!(got == sent, "the echo arrived intact");
                let suite = stream.conn.negotiated_cipher_suite().unwrap().suite();
                stream.conn.send_close_notify();
                stream.flush().unwrap();
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
                suite
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let mut server = accept(tcp, pair.server).await.unwrap();
            let mut got = vec![0u8; request.len()];
            server.read_exact(&mut got).await.unwrap();
            assert!(got == request, "{suite:?}: the request arrived intact");
            server.write_all(&got).await.unwrap();
            server.flush().await.unwrap();
            let mut end = [0u8; 16];
            assert_eq!(
                server.read(&mut end).await.unwrap(),
                0,
                "{suite:?}: close_notify ends reads"
            );
            server.shutdown().await.unwrap();
            assert_eq!(client.join().unwrap(), suite.suite());
            negotiated.push(suite.suite());
        }
        assert_eq!(
            negotiated.len(),
            6,
            "three suites of each version: {negotiated:?}"
        );
    }

    /// TLS 1.3 key updates: the client's (asking for ours), which the
    /// reader follows and answers before its next record, and ours at the
    /// sending key's limit, which the client follows.
    #[tokio::test]
    async fn key_updates_both_ways_keep_the_data_flowing() {
        let pair = configs("keyupdate", &rustls::version::TLS13);
        let (listener, address) = listen().await;
        let client = std::thread::spawn(move || {
            let mut stream = client_stream(pair.client, address);
            stream.write_all(b"before").unwrap();
            stream.conn.refresh_traffic_keys().unwrap();
            stream.write_all(b"after!").unwrap();
            stream.flush().unwrap();
            let mut got = vec![0u8; 5 * 11];
            stream.read_exact(&mut got).unwrap();
            got
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut server = accept(tcp, pair.server).await.unwrap();
        let mut got = [0u8; 12];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"beforeafter!", "read across the client's key update");
        server.write_all(b"reply").await.unwrap();
        assert_eq!(
            server.state.records.records_under_sending_key(),
            1,
            "the reply went under a new key"
        );
        server.state.records.limit_sending_key(2);
        for _ in 0..10 {
            server.write_all(b"count").await.unwrap();
            assert!(server.state.records.records_under_sending_key() <= 2);
        }
        server.flush().await.unwrap();
        let got = client.join().unwrap();
        assert_eq!(&got[..5], b"reply");
        assert!(got[5..].chunks(5).all(|chunk| chunk == b"count"));
    }

    /// A client whose Finished, data, a key update asking for ours and
    /// more data leave in one write: rustls stops at the Finished, and the
    /// record layer follows the key update and answers it.
    #[tokio::test]
    async fn a_key_update_right_behind_the_clients_finished_is_answered() {
        let pair = configs("keyupdate-finished", &rustls::version::TLS13);
        let (listener, address) = listen().await;
        let client = std::thread::spawn(move || {
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut conn = rustls::ClientConnection::new(pair.client, name).unwrap();
            let mut tcp = std::net::TcpStream::connect(address).unwrap();
            tcp.set_nodelay(true).unwrap();
            // The ClientHello; then the server's flight, until the client
            // has queued its Finished (and stops handshaking).
            conn.write_tls(&mut tcp).unwrap();
            while conn.is_handshaking() {
                conn.read_tls(&mut tcp).unwrap();
                conn.process_new_packets().unwrap();
            }
            conn.writer().write_all(b"before").unwrap();
            conn.refresh_traffic_keys().unwrap();
            conn.writer().write_all(b"after!").unwrap();
            let mut wire = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut wire).unwrap();
            }
            tcp.write_all(&wire).unwrap();
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            let mut reply = [0u8; 5];
            stream.read_exact(&mut reply).unwrap();
            reply
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut server = accept(tcp, pair.server).await.unwrap();
        let mut got = [0u8; 12];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"beforeafter!");
        server.write_all(b"reply").await.unwrap();
        assert_eq!(
            server.state.records.records_under_sending_key(),
            1,
            "the reply went under a new key"
        );
        assert_eq!(&client.join().unwrap(), b"reply");
    }

    /// TLS 1.2 has no key update: at the sending key's limit the
    /// connection ends, and the client is told so.
    #[tokio::test]
    async fn a_tls12_connection_ends_at_its_key_limit() {
        let pair = configs("limit12", &rustls::version::TLS12);
        let (listener, address) = listen().await;
        let client = std::thread::spawn(move || {
            let mut stream = client_stream(pair.client, address);
            stream.write_all(b"go").unwrap();
            let mut first = [0u8; 5];
            stream.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"first");
            // Read before the server writes again: rustls fails a read at
            // an alert even with data in front of it.
            stream.write_all(b"k").unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).unwrap_err().to_string()
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut server = accept(tcp, pair.server).await.unwrap();
        let mut go = [0u8; 2];
        server.read_exact(&mut go).await.unwrap();
        // One more record under this key.
        let sealed = server.state.records.records_under_sending_key();
        server.state.records.limit_sending_key(sealed + 1);
        server.write_all(b"first").await.unwrap();
        server.read_exact(&mut go[..1]).await.unwrap();
        let error = server.write_all(b"second").await.unwrap_err();
        assert!(error.to_string().contains("as many records"), "{error}");
        drop(server);
        let told = client.join().unwrap();
        assert!(told.contains("InternalError"), "{told}");
    }

    /// The client's end of a TLS 1.3 AES-128-GCM connection whose keys the
    /// test holds: it seals and opens records itself, to send what no
    /// well-behaved client library would.
    struct RawClient {
        tcp: std::net::TcpStream,
        send: (u64, Vec<u8>, [u8; 12]),
        receive: (u64, Vec<u8>, [u8; 12]),
    }

    fn aes_128_gcm(key: &[u8]) -> ring::aead::LessSafeKey {
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, key).unwrap();
        ring::aead::LessSafeKey::new(key)
    }

    fn tls13_nonce(iv: &[u8; 12], seq: u64) -> ring::aead::Nonce {
        let mut nonce = *iv;
        for (byte, seq_byte) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *byte ^= seq_byte;
        }
        ring::aead::Nonce::assume_unique_for_key(nonce)
    }

    /// A client offering TLS 1.3 AES-128-GCM alone, and a server sending
    /// no session tickets (the raw client's first record from the server
    /// is then the one under test).
    fn raw_pair() -> &'static Pair {
        static PAIR: std::sync::OnceLock<Pair> = std::sync::OnceLock::new();
        PAIR.get_or_init(|| {
            let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
            let pair = configs_with("raw", &rustls::version::TLS13, vec![suite]);
            let mut server = (*pair.server).clone();
            server.send_tls13_tickets = 0;
            Pair {
                client: pair.client,
                server: Arc::new(server),
            }
        })
    }

    impl RawClient {
        fn connect(address: SocketAddr) -> RawClient {
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut conn = rustls::ClientConnection::new(raw_pair().client.clone(), name).unwrap();
            let mut tcp = std::net::TcpStream::connect(address).unwrap();
            while conn.is_handshaking() || conn.wants_write() {
                conn.complete_io(&mut tcp).unwrap();
            }
            let secrets = conn.dangerous_extract_secrets().unwrap();
            let split = |(seq, secrets): (u64, rustls::ConnectionTrafficSecrets)| match secrets {
                rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                    (seq, key.as_ref().to_vec(), iv.as_ref().try_into().unwrap())
                }
                _ => panic!("AES-128-GCM was offered alone"),
            };
            RawClient {
                tcp,
                send: split(secrets.tx),
                receive: split(secrets.rx),
            }
        }

        /// One TLS 1.3 record holding `content` of type `typ` (`padding`
        /// zeros after the type), as a client would seal it.
        fn seal(&mut self, typ: u8, content: &[u8], padding: usize) -> Vec<u8> {
            let (seq, key, iv) = &mut self.send;
            let mut payload = content.to_vec();
            payload.push(typ);
            payload.resize(payload.len() + padding, 0);
            let [high, low] = ((payload.len() + 16) as u16).to_be_bytes();
            let header = [23, 3, 3, high, low];
            aes_128_gcm(key)
                .seal_in_place_append_tag(
                    tls13_nonce(iv, *seq),
                    ring::aead::Aad::from(header),
                    &mut payload,
                )
                .unwrap();
            *seq += 1;
            [&header[..], &payload].concat()
        }

        /// Everything the server sends until it closes, opened: each
        /// record's type and content.
        fn receive_all(&mut self) -> Vec<(u8, Vec<u8>)> {
            let mut wire = Vec::new();
            let _ = self.tcp.read_to_end(&mut wire);
            let mut records = Vec::new();
            let mut at = 0;
            while at + 5 <= wire.len() {
                let header: [u8; 5] = wire[at..at + 5].try_into().unwrap();
                let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
                let mut body = wire[at + 5..at + 5 + length].to_vec();
                let (seq, key, iv) = &mut self.receive;
                let plain = aes_128_gcm(key)
                    .open_in_place(
                        tls13_nonce(iv, *seq),
                        ring::aead::Aad::from(header),
                        &mut body,
                    )
                    .unwrap();
                *seq += 1;
                let end = plain.iter().rposition(|&byte| byte != 0).unwrap();
                records.push((plain[end], plain[..end].to_vec()));
                at += 5 + length;
            }
            records
        }
    }

    /// A raw client on a thread of its own and the server's end of its
    /// connection: the client's `send` runs once the server's handshake is
    /// over (so its records reach the record layer; rustls would judge
    /// those that come with the client's Finished), then the client takes
    /// what the server sends until it closes.
    async fn raw_connection(
        send: impl FnOnce(&mut RawClient) + Send + 'static,
    ) -> (TlsStream, std::thread::JoinHandle<Vec<(u8, Vec<u8>)>>) {
        let (listener, address) = listen().await;
        let (handshake_done, wait) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let mut client = RawClient::connect(address);
            wait.recv().unwrap();
            send(&mut client);
            client.receive_all()
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let server = accept(tcp, raw_pair().server.clone()).await.unwrap();
        handshake_done.send(()).unwrap();
        (server, client)
    }

    /// What the server must make of a raw client's records.
    #[derive(Debug)]
    enum Expect {
        /// These bytes are read.
        Read(&'static [u8]),
        /// The read fails and the client gets this fatal alert (none: the
        /// connection just ends).
        Alert(Option<u8>),
    }

    type Records = fn(&mut RawClient) -> Vec<u8>;

    /// Records no client library sends, each on a connection of its own:
    /// the ones TLS allows are read, the others end the connection with
    /// the alert RFC 8446 names, sealed under the connection's key.
    #[tokio::test]
    async fn records_no_client_library_sends_get_the_alert_tls_names() {
        let cases: Vec<(&str, Records, Expect)> = vec![
            (
                "application data, padded",
                |client| client.seal(23, b"hello", 40),
                Expect::Read(b"hello"),
            ),
            (
                "user_canceled, then data",
                |client| [client.seal(21, &[1, 90], 0), client.seal(23, b"after", 0)].concat(),
                Expect::Read(b"after"),
            ),
            (
                "an empty record, then data",
                |client| [client.seal(23, b"", 0), client.seal(23, b"data", 0)].concat(),
                Expect::Read(b"data"),
            ),
            (
                "a changed byte",
                |client| {
                    let mut record = client.seal(23, b"hello", 0);
                    record[7] ^= 1;
                    record
                },
                Expect::Alert(Some(alert::BAD_RECORD_MAC)),
            ),
            (
                // The data before the bad record is read, then the error.
                "data, then a changed byte",
                |client| {
                    let good = client.seal(23, b"good", 0);
                    let mut bad = client.seal(23, b"hello", 0);
                    bad[7] ^= 1;
                    [good, bad].concat()
                },
                Expect::Alert(Some(alert::BAD_RECORD_MAC)),
            ),
            (
                "a ClientHello after the handshake",
                |client| client.seal(22, &[1, 0, 0, 0], 0),
                Expect::Alert(Some(alert::UNEXPECTED_MESSAGE)),
            ),
            (
                "key_update asking 7",
                |client| client.seal(22, &[24, 0, 0, 1, 7], 0),
                Expect::Alert(Some(alert::ILLEGAL_PARAMETER)),
            ),
            (
                "key_update with a byte after it",
                |client| client.seal(22, &[24, 0, 0, 1, 0, 24], 0),
                Expect::Alert(Some(alert::DECODE_ERROR)),
            ),
            (
                "padding only",
                |client| client.seal(0, b"", 8),
                Expect::Alert(Some(alert::UNEXPECTED_MESSAGE)),
            ),
            (
                "an inner change_cipher_spec",
                |client| client.seal(20, &[1], 0),
                Expect::Alert(Some(alert::UNEXPECTED_MESSAGE)),
            ),
            (
                "an unknown content type",
                |client| client.seal(99, b"x", 0),
                Expect::Alert(Some(alert::UNEXPECTED_MESSAGE)),
            ),
            (
                "an unprotected change_cipher_spec",
                |_| vec![20, 3, 3, 0, 1, 1],
                Expect::Alert(Some(alert::UNEXPECTED_MESSAGE)),
            ),
            (
                "a record too long",
                |_| vec![23, 3, 3, 0x48, 0x01],
                Expect::Alert(Some(alert::RECORD_OVERFLOW)),
            ),
            (
                "plaintext too long",
                |client| client.seal(23, &[7u8; 16 * 1024 + 1], 0),
                Expect::Alert(Some(alert::RECORD_OVERFLOW)),
            ),
            (
                "a short alert",
                |client| client.seal(21, &[2], 0),
                Expect::Alert(Some(alert::DECODE_ERROR)),
            ),
            (
                "a fatal alert of its own",
                |client| client.seal(21, &[2, 40], 0),
                Expect::Alert(None),
            ),
        ];
        for (name, records, expect) in cases {
            let (mut server, client) = raw_connection(move |client| {
                let wire = records(client);
                client.tcp.write_all(&wire).unwrap();
            })
            .await;
            match expect {
                Expect::Read(expected) => {
                    let mut got = vec![0u8; expected.len()];
                    server.read_exact(&mut got).await.unwrap();
                    assert_eq!(got, expected, "{name}");
                    drop(server);
                    assert_eq!(client.join().unwrap(), vec![], "{name}: nothing sent back");
                }
                Expect::Alert(alert) => {
                    let mut buffer = [0u8; 64];
                    let mut read = Vec::new();
                    let error = loop {
                        match server.read(&mut buffer).await {
                            Ok(0) => panic!("{name}: the read ended without an error"),
                            Ok(got) => read.extend_from_slice(&buffer[..got]),
                            Err(error) => break error,
                        }
                    };
                    let before = if name.starts_with("data") {
                        &b"good"[..]
                    } else {
                        b""
                    };
                    assert_eq!(read, before, "{name}: what came before the bad record");
                    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{name}: {error}");
                    let again = server.write_all(b"more").await;
                    assert!(again.is_err(), "{name}: nothing is written after a failure");
                    drop(server);
                    let sent_back = client.join().unwrap();
                    let expected: Vec<(u8, Vec<u8>)> = alert
                        .into_iter()
                        .map(|alert| (21, vec![2, alert]))
                        .collect();
                    assert_eq!(sent_back, expected, "{name}: {error}");
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Records sealed under the right key but holding anything (any
        /// content type, content and padding): what is read is a prefix of
        /// the application data sent, reads end by themselves, nothing
        /// panics.
        #[test]
        fn any_sealed_records_read_as_a_prefix_of_their_data_or_end_the_connection(
            records in proptest::collection::vec(
                (
                    proptest::sample::select(vec![20u8, 21, 22, 23, 23, 23, 24, 99]),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
                    0usize..8,
                ),
                1..12,
            ),
        ) {
            let data: Vec<u8> = records
                .iter()
                .filter(|(typ, _, _)| *typ == 23)
                .flat_map(|(_, content, _)| content.clone())
                .collect();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let (mut server, client) = raw_connection(move |client| {
                    let mut wire = Vec::new();
                    for (typ, content, padding) in &records {
                        wire.extend(client.seal(*typ, content, *padding));
                    }
                    client.tcp.write_all(&wire).unwrap();
                    let _ = client.tcp.shutdown(std::net::Shutdown::Write);
                })
                .await;
                let mut read = Vec::new();
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    server.read_to_end(&mut read),
                )
                .await
                .expect("reads end by themselves");
                assert!(data.starts_with(&read), "read {read:?} of {data:?}");
                drop(server);
                client.join().unwrap();
            });
        }
    }

    /// Another TLS implementation against the record layer: OpenSSL's
    /// s_client over TLS 1.3 (AES-GCM and ChaCha20, with a key update of
    /// its own and one asking for ours) and TLS 1.2 (AES-GCM and ChaCha20),
    /// talking to an echo.
    #[tokio::test]
    async fn openssl_s_client_talks_to_the_record_layer() {
        let runs: [(&str, &[&str], bool); 4] = [
            ("ossl13", &["-tls1_3"], true),
            (
                "ossl13-chacha",
                &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
                true,
            ),
            (
                "ossl12-gcm",
                &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
                false,
            ),
            (
                "ossl12-chacha",
                &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
                false,
            ),
        ];
        for (name, flags, key_updates) in runs {
            let (ca, cert, key) = certificates(name);
            let config = Arc::new(server_config(&cert, &key).unwrap());
            let (listener, address) = listen().await;
            let mut child = Command::new("openssl")
                .args([
                    "s_client",
                    "-no_ign_eof",
                    "-verify_return_error",
                    "-connect",
                ])
                .arg(address.to_string())
                .arg("-CAfile")
                .arg(&ca)
                .args(flags)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // Both of its outputs: the echoes come on stdout, the
            // KEYUPDATE of each key update on stderr.
            let output = Arc::new(std::sync::Mutex::new(String::new()));
            let readers: Vec<_> = [
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                Box::new(child.stderr.take().unwrap()),
            ]
            .into_iter()
            .map(|mut stream| {
                let collected = output.clone();
                std::thread::spawn(move || {
                    let mut chunk = [0u8; 4096];
                    while let Ok(read @ 1..) = stream.read(&mut chunk) {
                        collected
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&chunk[..read]));
                    }
                })
            })
            .collect();
            let (tcp, _) = listener.accept().await.unwrap();
            let mut server = accept(tcp, config).await.unwrap();
            let echo = tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                loop {
                    let read = server.read(&mut buffer).await?;
                    if read == 0 {
                        return server.shutdown().await;
                    }
                    server.write_all(&buffer[..read]).await?;
                    server.flush().await?;
                }
            });
            let mut stdin = child.stdin.take().unwrap();
            let mut lines = vec!["echo one"];
            if key_updates {
                // Lines of one command letter: a key update of its own, then
                // one asking for ours.
                lines.extend(["k", "echo two", "K", "echo three"]);
            }
            let mut key_updates_sent = 0;
            for line in &lines {
                stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
                stdin.flush().unwrap();
                // s_client takes a command from the start of what it read
                // and drops the rest: each line waits for the last one's
                // effect (its echo, or one more KEYUPDATE).
                let (awaited, count) = if line.starts_with("echo") {
                    (format!("{line}\n"), 1)
                } else {
                    key_updates_sent += 1;
                    ("KEYUPDATE\n".to_string(), key_updates_sent)
                };
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while output.lock().unwrap().matches(&awaited).count() < count {
                    let seen = output.lock().unwrap().clone();
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{name}: no {awaited:?} after {line}: {seen}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            drop(stdin);
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .unwrap()
                .unwrap();
            for reader in readers {
                reader.join().unwrap();
            }
            let output = output.lock().unwrap().clone();
            if key_updates {
                assert_eq!(output.matches("KEYUPDATE").count(), 2, "{name}: {output}");
            }
            assert!(status.success(), "{name}: {output}");
            echo.await.unwrap().unwrap();
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
