//! Upgrade: the direct WebSocket driver's way in (`server.websocket_driver =
//! "direct"`).
//!
//! actix-http's HTTP/1 dispatcher hands every request that asks for a
//! connection upgrade to this hook, with the connection itself. The hook
//! judges the handshake with the same `http::decide` the actix-ws route uses,
//! writes the refusal or the 101 answer with actix-http's codec, then keeps
//! the bare connection, drops the dispatcher's two 8 KiB buffers and serves
//! the socket on a task of its own, sized for the socket loop alone (the
//! connection's task, with the request and the handshake's state, ends): an
//! idle socket then costs what its own state costs. A plain TCP connection
//! is kept shared, so pushes can write to it at once (`transport::SharedTcp`);
//! a TLS one is not (its record state belongs to one writer). It must not
//! judge handshakes itself (that is `http`) or frame WebSocket messages
//! (that is `transport`).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;

use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::h1::{Codec, Message};
use actix_http::{Request, Response};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::edge::http::{decide, switching_protocols, Gateway, Refused, Verdict};
use crate::edge::tls::TlsStream;
use crate::edge::transport::{DirectTransport, SharedTcp, WireSource};

/// A connection the direct driver accepts, and how its socket keeps it
/// once upgraded.
pub(crate) trait Connection: AsyncRead + AsyncWrite + Unpin + 'static {
    type Kept: AsyncRead + AsyncWrite + Unpin + WireSource + 'static;
    /// `already_read`: bytes the HTTP parser read past the handshake.
    fn keep(self, already_read: BytesMut, max_frame: usize) -> DirectTransport<Self::Kept>;
}

impl Connection for TcpStream {
    type Kept = SharedTcp;
    fn keep(self, already_read: BytesMut, max_frame: usize) -> DirectTransport<SharedTcp> {
        DirectTransport::new(SharedTcp::new(self), already_read, max_frame)
    }
}

impl Connection for TlsStream {
    type Kept = Self;
    fn keep(self, already_read: BytesMut, max_frame: usize) -> DirectTransport<Self> {
        DirectTransport::new(self, already_read, max_frame)
    }
}

/// The paths a WebSocket may open on, with or without the trailing slash.
pub(crate) fn is_socket_path(path: &str) -> bool {
    matches!(path, "/ws/notifications/" | "/ws/notifications")
}

/// Takes over one upgrade request: answers it and, once upgraded, hands the
/// socket to a task of its own. That task holds only the socket's state;
/// this one (with the request, the handshake's futures and the dispatcher
/// around them) ends here. Errors only mean the client went away mid-answer.
pub(crate) async fn take_over<IO: Connection>(
    gateway: &Arc<Gateway>,
    request: Request,
    mut framed: Framed<IO, Codec>,
) -> std::io::Result<()> {
    let head = request.head();
    if !is_socket_path(request.path()) {
        return refuse(&mut framed, Refused::not_found()).await;
    }
    match decide(gateway, head).await {
        Verdict::Refuse(refused) => refuse(&mut framed, refused).await,
        Verdict::Upgrade(admitted) => {
            let transport = upgrade(framed, switching_protocols(head), gateway).await?;
            admitted.spawn(transport, gateway.clone());
            Ok(())
        }
    }
}

/// Sends the 101 answer and keeps the bare connection plus whatever the
/// client sent after its handshake; the codec's buffers are dropped here.
async fn upgrade<IO: Connection>(
    mut framed: Framed<IO, Codec>,
    answer: Response<()>,
    gateway: &Gateway,
) -> std::io::Result<DirectTransport<IO::Kept>> {
    send(&mut framed, Message::Item((answer, BodySize::None))).await?;
    let parts = framed.into_parts();
    Ok(parts.io.keep(parts.read_buf, gateway.max_inbound_frame))
}

async fn refuse<IO>(framed: &mut Framed<IO, Codec>, refused: Refused) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let body = Bytes::from(refused.body());
    let answer = refused.head();
    let length = body.len() as u64;
    Pin::new(&mut *framed).write(Message::Item((answer, BodySize::Sized(length))))?;
    Pin::new(&mut *framed).write(Message::Chunk(Some(body)))?;
    send(framed, Message::Chunk(None)).await?;
    poll_fn(|cx| Pin::new(framed.io_mut()).poll_shutdown(cx)).await
}

async fn send<IO>(
    framed: &mut Framed<IO, Codec>,
    message: Message<(Response<()>, BodySize)>,
) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    Pin::new(&mut *framed).write(message)?;
    poll_fn(|cx| Pin::new(&mut *framed).flush(cx)).await
}
