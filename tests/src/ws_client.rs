//! A thin tokio-tungstenite WebSocket client standing in for a browser: connect
//! with the token in the query string, an `Authorization: Bearer` header, a
//! cookie or not at all; read text frames with timeouts; assert silence; see the
//! server's close code.
//!
//! Pings from the server are answered automatically by tungstenite **while the
//! client is reading** (a client that stops reading stops answering, which is
//! how pong-timeout tests stall). It holds no gateway logic and no assertions on
//! frame contents.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default bound on the opening handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the client puts its token.
#[derive(Clone, Debug)]
pub enum TokenIn {
    /// No credentials at all.
    None,
    /// `?token=<jwt>` appended to the URL.
    Query(String),
    /// `?<name>=<jwt>` appended to the URL.
    QueryNamed { name: String, token: String },
    /// `Authorization: Bearer <jwt>`.
    Header(String),
    /// `Cookie: <name>=<jwt>`.
    Cookie { name: String, token: String },
    /// `Sec-WebSocket-Protocol: bearer, <jwt>`, as a browser's
    /// `new WebSocket(url, ["bearer", jwt])` sends it. tungstenite, like a
    /// browser, fails the handshake unless the server selects one of them.
    Subprotocol(String),
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade with a non-101 HTTP response.
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Anything else (refused TCP connection, timeout, protocol error, ...).
    Other(anyhow::Error),
}

impl ConnectError {
    /// The HTTP status of a refused upgrade.
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectError::Http { status, .. } => Some(*status),
            ConnectError::Other(_) => None,
        }
    }

    /// A response header of a refused upgrade (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            ConnectError::Http { headers, .. } => headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
            ConnectError::Other(_) => None,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Http { status, body, .. } => {
                write!(f, "upgrade refused with HTTP {status}: {body}")
            }
            ConnectError::Other(err) => write!(f, "connect failed: {err:#}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// One client WebSocket.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    close: Option<Option<CloseFrame>>,
    response_headers: Vec<(String, String)>,
}

impl WsClient {
    /// Opens `url` (`ws://127.0.0.1:PORT/path`) presenting `token`.
    pub async fn connect(url: &str, token: TokenIn) -> Result<WsClient, ConnectError> {
        WsClient::connect_with(url, token, &[], CONNECT_TIMEOUT).await
    }

    /// [`connect`](Self::connect) with extra request headers and a timeout.
    pub async fn connect_with(
        url: &str,
        token: TokenIn,
        extra_headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<WsClient, ConnectError> {
        let url = match &token {
            TokenIn::Query(t) => with_query(url, "token", t),
            TokenIn::QueryNamed { name, token } => with_query(url, name, token),
            _ => url.to_string(),
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Other(anyhow!(e).context(format!("bad ws url {url}"))))?;
        let mut headers: Vec<(String, String)> = extra_headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match &token {
            TokenIn::Header(t) => headers.push(("Authorization".into(), format!("Bearer {t}"))),
            TokenIn::Cookie { name, token } => {
                headers.push(("Cookie".into(), format!("{name}={token}")))
            }
            TokenIn::Subprotocol(t) => {
                headers.push(("Sec-WebSocket-Protocol".into(), format!("bearer, {t}")))
            }
            _ => {}
        }
        for (name, value) in headers {
            let value = HeaderValue::from_str(&value)
                .map_err(|e| ConnectError::Other(anyhow!(e).context(format!("header {name}"))))?;
            let name = tokio_tungstenite::tungstenite::http::header::HeaderName::from_bytes(
                name.as_bytes(),
            )
            .map_err(|e| ConnectError::Other(anyhow!(e).context(format!("header name {name}"))))?;
            request.headers_mut().append(name, value);
        }
        let attempt =
            tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request)).await;
        match attempt {
            Err(_) => Err(ConnectError::Other(anyhow!(
                "websocket handshake timed out after {timeout:?}"
            ))),
            Ok(Err(WsError::Http(response))) => {
                let status = response.status().as_u16();
                let headers = header_pairs(response.headers());
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(ConnectError::Http {
                    status,
                    headers,
                    body,
                })
            }
            Ok(Err(err)) => Err(ConnectError::Other(
                anyhow!(err).context(format!("connecting to {url}")),
            )),
            Ok(Ok((stream, response))) => Ok(WsClient {
                stream,
                close: None,
                response_headers: header_pairs(response.headers()),
            }),
        }
    }

    /// Headers of the 101 response.
    pub fn response_headers(&self) -> &[(String, String)] {
        &self.response_headers
    }

    /// The next text frame within `timeout`. Pings are answered on the way;
    /// a binary frame, a close or a timeout is an error.
    pub async fn recv_text(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_message(deadline).await? {
                Some(Message::Text(text)) => return Ok(text.to_string()),
                Some(Message::Binary(data)) => {
                    bail!("unexpected binary frame of {} bytes", data.len())
                }
                Some(Message::Close(frame)) => {
                    bail!("server closed the socket: {}", describe_close(&frame))
                }
                Some(_) => continue, // ping / pong / raw frame
                None => bail!("no text frame within {timeout:?}"),
            }
        }
    }

    /// [`recv_text`](Self::recv_text) parsed as JSON.
    pub async fn recv_json(&mut self, timeout: Duration) -> Result<serde_json::Value> {
        let text = self.recv_text(timeout).await?;
        serde_json::from_str(&text).with_context(|| format!("frame is not JSON: {text:?}"))
    }

    /// Reads for `duration` and fails if any data frame or a close arrives.
    pub async fn expect_silence(&mut self, duration: Duration) -> Result<()> {
        let deadline = Instant::now() + duration;
        loop {
            match self.next_message(deadline).await? {
                None => return Ok(()),
                Some(Message::Text(text)) => {
                    bail!("expected silence, got text frame {:?}", text.as_str())
                }
                Some(Message::Binary(data)) => {
                    bail!("expected silence, got {} binary bytes", data.len())
                }
                Some(Message::Close(frame)) => bail!(
                    "expected silence, server closed: {}",
                    describe_close(&frame)
                ),
                Some(_) => continue,
            }
        }
    }

    /// The close code the server sent, once a close was seen by a read
    /// (`Some(1005)` for a close frame without code).
    pub fn close_code(&self) -> Option<u16> {
        self.close
            .as_ref()
            .map(|f| f.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005))
    }

    /// The close reason the server sent, if any.
    pub fn close_reason(&self) -> Option<String> {
        self.close
            .as_ref()
            .and_then(|f| f.as_ref().map(|f| f.reason.to_string()))
    }

    /// Reads (discarding data frames) until the server closes or `timeout`
    /// passes; returns the close code (`1006` when the TCP stream just ended).
    pub async fn wait_close(&mut self, timeout: Duration) -> Result<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.close_code() {
                return Ok(code);
            }
            match self.next_message(deadline).await? {
                None => bail!("server did not close within {timeout:?}"),
                Some(_) => continue,
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.stream
            .send(Message::text(text))
            .await
            .context("sending text frame")
    }

    /// A binary frame (browsers' clients of this gateway never send one).
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<()> {
        self.stream
            .send(Message::Binary(data.to_vec().into()))
            .await
            .context("sending binary frame")
    }

    /// One raw frame, as given (`opcode` is RFC 6455's four bits): a
    /// fragment, invalid UTF-8 or a reserved opcode, for protocol tests.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> Result<()> {
        let header = FrameHeader {
            is_final: fin,
            opcode: OpCode::from(opcode),
            ..FrameHeader::default()
        };
        let frame = Frame::from_payload(header, payload.to_vec().into());
        self.stream
            .send(Message::Frame(frame))
            .await
            .context("sending a raw frame")
    }

    /// Sends a ping with `payload` (the server's pong is swallowed by reads).
    pub async fn send_ping(&mut self, payload: &[u8]) -> Result<()> {
        self.stream
            .send(Message::Ping(payload.to_vec().into()))
            .await
            .context("sending ping")
    }

    /// Client-initiated close (1000) and a bounded wait for the server's reply.
    pub async fn close(&mut self) -> Result<()> {
        self.close_with(1000, "").await
    }

    /// Client-initiated close with `code`/`reason`.
    pub async fn close_with(&mut self, code: u16, reason: &str) -> Result<()> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        };
        match self.stream.close(Some(frame)).await {
            Ok(()) | Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {}
            Err(err) => return Err(anyhow!(err).context("sending close frame")),
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.close.is_none() {
            if self.next_message(deadline).await?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Next message before `deadline`; `Ok(None)` on timeout. A close frame is
    /// recorded and returned; an ended stream is recorded as 1006.
    async fn next_message(&mut self, deadline: Instant) -> Result<Option<Message>> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Some(frame) = &self.close {
            // Already closed: nothing more will come.
            if remaining.is_zero() {
                return Ok(None);
            }
            bail!("socket already closed: {}", describe_close(frame));
        }
        match tokio::time::timeout(remaining, self.stream.next()).await {
            Err(_) => Ok(None),
            Ok(None)
            | Ok(Some(Err(WsError::ConnectionClosed)))
            | Ok(Some(Err(WsError::AlreadyClosed))) => {
                self.close = Some(Some(CloseFrame {
                    code: CloseCode::from(1006),
                    reason: "".into(),
                }));
                Ok(Some(Message::Close(None)))
            }
            Ok(Some(Err(WsError::Protocol(p)))) => {
                // e.g. ResetWithoutClosingHandshake: treat as abnormal closure.
                self.close = Some(Some(CloseFrame {
                    code: CloseCode::from(1006),
                    reason: p.to_string().into(),
                }));
                Ok(Some(Message::Close(None)))
            }
            Ok(Some(Err(WsError::Io(e)))) => {
                self.close = Some(Some(CloseFrame {
                    code: CloseCode::from(1006),
                    reason: e.to_string().into(),
                }));
                Ok(Some(Message::Close(None)))
            }
            Ok(Some(Err(err))) => Err(anyhow!(err).context("reading websocket")),
            Ok(Some(Ok(Message::Close(frame)))) => {
                self.close = Some(frame.clone());
                Ok(Some(Message::Close(frame)))
            }
            Ok(Some(Ok(msg))) => Ok(Some(msg)),
        }
    }
}

fn describe_close(frame: &Option<CloseFrame>) -> String {
    match frame {
        Some(f) => format!("code {} reason {:?}", u16::from(f.code), f.reason.as_str()),
        None => "no close frame".to_string(),
    }
}

fn header_pairs(map: &tokio_tungstenite::tungstenite::http::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn with_query(url: &str, name: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{sep}{}={}",
        percent_encode(name),
        percent_encode(value)
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
