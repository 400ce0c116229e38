//! A lean client WebSocket for the load generator: the opening handshake and
//! the frame reader written out by hand over a `TcpStream` (plain, or TLS
//! with rustls for `wss://`: [`LeanStream`]), with one reusable read buffer
//! per socket and no allocation per frame.
//!
//! It exists so the load generator's own cost per received frame stays small
//! next to the server's: with tungstenite each frame was copied into a fresh
//! allocation and went through its message layer, and on a 2-core machine that
//! cost is taken from the server under test. It reads what servers send to
//! browsers (unfragmented text, ping, close) and answers pings; it is not a
//! conforming client and must not be used where the protocol itself is under
//! test (tests use [`crate::ws_client`]).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Room for the handshake answer and the frames of one read.
const INITIAL_BUFFER: usize = 4096;
/// The largest frame it accepts; larger ones end the socket.
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// The largest handshake answer it accepts.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

const OPCODE_CONTINUATION: u8 = 0x0;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;

#[derive(Debug, thiserror::Error)]
pub enum LeanWsError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("the server refused the upgrade: {0}")]
    Refused(String),
    #[error("the server answered with a bad Sec-WebSocket-Accept")]
    BadAccept,
    #[error("the connection closed during the handshake")]
    ClosedInHandshake,
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

/// The connection under a [`LeanWs`]: plain TCP (`ws://`) or TLS (`wss://`).
pub enum LeanStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl From<TcpStream> for LeanStream {
    fn from(stream: TcpStream) -> LeanStream {
        LeanStream::Plain(stream)
    }
}

impl LeanStream {
    /// TLS over `tcp` with `connector`, checking the server's certificate
    /// for `server_name` (an IP address for the test certificates).
    pub async fn tls(
        connector: &TlsConnector,
        server_name: &str,
        tcp: TcpStream,
    ) -> Result<LeanStream, LeanWsError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| LeanWsError::Protocol("not a server name"))?;
        let stream = connector.connect(name, tcp).await?;
        Ok(LeanStream::Tls(Box::new(stream)))
    }
}

/// A TLS client (ring, TLS 1.2 and 1.3) that trusts only the CA
/// certificates in the PEM file `ca_file` (the tests' own CA).
pub fn tls_connector(ca_file: &Path) -> Result<TlsConnector, LeanWsError> {
    Ok(TlsConnector::from(tls_client_config(ca_file)?))
}

/// [`tls_connector`]'s rustls configuration, for blocking clients.
pub fn tls_client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, LeanWsError> {
    tls_client_config_with(ca_file, rustls::DEFAULT_VERSIONS)
}

/// [`tls_client_config`] offering only the protocol `versions` (e.g.
/// `&[&rustls::version::TLS12]`).
pub fn tls_client_config_with(
    ca_file: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<rustls::ClientConfig>, LeanWsError> {
    let bad = |what: String| LeanWsError::Io(io::Error::new(io::ErrorKind::InvalidData, what));
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(ca_file)
        .map_err(|error| bad(format!("{}: {error}", ca_file.display())))?;
    for certificate in certificates {
        let certificate = certificate.map_err(|error| bad(error.to_string()))?;
        roots
            .add(certificate)
            .map_err(|error| bad(error.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|error| bad(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl AsyncRead for LeanStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LeanStream::Plain(stream) => Pin::new(stream).poll_read(cx, buffer),
            LeanStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buffer),
        }
    }
}

impl AsyncWrite for LeanStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LeanStream::Plain(stream) => Pin::new(stream).poll_write(cx, bytes),
            LeanStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, bytes),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LeanStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            LeanStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LeanStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            LeanStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

pub struct LeanWs {
    stream: LeanStream,
    buffer: Vec<u8>,
    /// Unread bytes are `buffer[start..end]`.
    start: usize,
    end: usize,
    mask_state: u32,
    /// This side's close frame went out; the server's is not answered again.
    close_sent: bool,
}

impl LeanWs {
    /// Sends the opening handshake for `path_and_query` and reads the 101
    /// answer, checking its `Sec-WebSocket-Accept`.
    pub async fn handshake(
        stream: impl Into<LeanStream>,
        host: &str,
        path_and_query: &str,
    ) -> Result<LeanWs, LeanWsError> {
        let mut stream = stream.into();
        let nonce: [u8; 16] = rand::random();
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let mut socket = LeanWs {
            stream,
            buffer: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            mask_state: u32::from_le_bytes([nonce[0], nonce[1], nonce[2], nonce[3]]) | 1,
            close_sent: false,
        };
        let head_end = loop {
            if let Some(at) = find(&socket.buffer[..socket.end], b"\r\n\r\n") {
                break at + 4;
            }
            if socket.end >= MAX_RESPONSE_HEAD {
                return Err(LeanWsError::Protocol("handshake answer too long"));
            }
            if socket.fill().await? == 0 {
                return Err(LeanWsError::ClosedInHandshake);
            }
        };
        let head = String::from_utf8_lossy(&socket.buffer[..head_end]).into_owned();
        let status_line = head.lines().next().unwrap_or_default();
        if status_line.split_whitespace().nth(1) != Some("101") {
            return Err(LeanWsError::Refused(status_line.to_string()));
        }
        let expected = accept_for(&key);
        let accepted = head.lines().any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == expected
            })
        });
        if !accepted {
            return Err(LeanWsError::BadAccept);
        }
        socket.start = head_end;
        Ok(socket)
    }

    /// The payload of the next text frame, or `None` once the server closed
    /// (its close is answered) or the connection ended. Pings are answered on
    /// the way. Cancel-safe between frames: unread bytes stay buffered.
    pub async fn next_text(&mut self) -> Result<Option<&[u8]>, LeanWsError> {
        loop {
            match parse_header(&self.buffer[self.start..self.end])? {
                Some(header) if header.total() <= self.end - self.start => {
                    let payload = self.start + header.header_len..self.start + header.total();
                    self.start += header.total();
                    match header.opcode {
                        OPCODE_TEXT => return Ok(Some(&self.buffer[payload])),
                        OPCODE_PING => {
                            let data = self.buffer[payload].to_vec();
                            self.send(OPCODE_PONG, &data).await?;
                        }
                        OPCODE_CLOSE => {
                            if !self.close_sent {
                                let code = self.buffer[payload].get(..2).map(<[u8]>::to_vec);
                                self.close_sent = true;
                                self.send(OPCODE_CLOSE, &code.unwrap_or_default()).await?;
                            }
                            return Ok(None);
                        }
                        OPCODE_PONG | OPCODE_BINARY => {}
                        _ => return Err(LeanWsError::Protocol("unexpected opcode")),
                    }
                }
                incomplete => {
                    let needed = incomplete.map_or(14, |header| header.total());
                    if needed > MAX_FRAME {
                        return Err(LeanWsError::Protocol("frame too large"));
                    }
                    self.make_room(needed);
                    if self.fill().await? == 0 {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Starts the closing handshake (1000) and waits for the server's close
    /// or the end of the connection.
    pub async fn close(&mut self) -> Result<(), LeanWsError> {
        self.close_sent = true;
        self.send(OPCODE_CLOSE, &1000u16.to_be_bytes()).await?;
        while self.next_text().await?.is_some() {}
        Ok(())
    }

    /// Reads more bytes after the unread ones; 0 means the peer is gone.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.end == self.buffer.len() {
            self.make_room(self.buffer.len() - self.start + INITIAL_BUFFER);
        }
        let read = self.stream.read(&mut self.buffer[self.end..]).await?;
        self.end += read;
        Ok(read)
    }

    /// Moves the unread bytes to the front and grows the buffer so that
    /// `needed` unread bytes fit.
    fn make_room(&mut self, needed: usize) {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buffer.len() < needed {
            self.buffer.resize(needed, 0);
        }
    }

    /// Writes one masked frame (clients must mask).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        // xorshift: masks need not be secret from this client's own server.
        self.mask_state ^= self.mask_state << 13;
        self.mask_state ^= self.mask_state >> 17;
        self.mask_state ^= self.mask_state << 5;
        let mask = self.mask_state.to_be_bytes();
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=65535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[i % 4]),
        );
        self.stream.write_all(&frame).await?;
        self.stream.flush().await
    }
}

/// A server frame's header: opcode and lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    opcode: u8,
    header_len: usize,
    payload_len: usize,
}

impl Header {
    fn total(&self) -> usize {
        self.header_len.saturating_add(self.payload_len)
    }
}

/// The header at the start of `bytes`, `None` if more bytes are needed.
fn parse_header(bytes: &[u8]) -> Result<Option<Header>, LeanWsError> {
    let [first, second, rest @ ..] = bytes else {
        return Ok(None);
    };
    if first & 0x80 == 0 || first & 0x0F == OPCODE_CONTINUATION {
        return Err(LeanWsError::Protocol("fragmented frames are not read"));
    }
    if first & 0x70 != 0 {
        return Err(LeanWsError::Protocol(
            "reserved bits set (no extension was agreed)",
        ));
    }
    if second & 0x80 != 0 {
        return Err(LeanWsError::Protocol("server frames must not be masked"));
    }
    let (header_len, payload_len) = match second & 0x7F {
        126 => match rest {
            [a, b, ..] => (4, usize::from(u16::from_be_bytes([*a, *b]))),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(length) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(length);
                let length = usize::try_from(u64::from_be_bytes(be)).unwrap_or(usize::MAX);
                (10, length)
            }
            None => return Ok(None),
        },
        short => (2, usize::from(short)),
    };
    Ok(Some(Header {
        opcode: first & 0x0F,
        header_len,
        payload_len,
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// RFC 6455's `Sec-WebSocket-Accept` for a key.
pub fn accept_for(key: &str) -> String {
    actix_http::ws::hash_key(key.as_bytes())
        .iter()
        .map(|&byte| byte as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_every_length_form() {
        assert_eq!(parse_header(&[0x81]).ok().flatten(), None);
        let short = parse_header(&[0x81, 5]).ok().flatten();
        assert_eq!(
            short,
            Some(Header {
                opcode: OPCODE_TEXT,
                header_len: 2,
                payload_len: 5
            })
        );
        assert_eq!(parse_header(&[0x81, 126, 1]).ok().flatten(), None);
        let medium = parse_header(&[0x81, 126, 1, 0]).ok().flatten();
        assert_eq!(
            medium.map(|h| (h.header_len, h.payload_len)),
            Some((4, 256))
        );
        let long = parse_header(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0])
            .ok()
            .flatten();
        assert_eq!(
            long.map(|h| (h.header_len, h.payload_len)),
            Some((10, 65536))
        );
        assert!(parse_header(&[0x01, 1]).is_err(), "fragment");
        assert!(parse_header(&[0x81, 0x81]).is_err(), "masked server frame");
        assert!(parse_header(&[0xC1, 1]).is_err(), "reserved bit");
    }

    #[test]
    fn accept_matches_the_rfc_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
