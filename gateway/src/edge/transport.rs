//! Transport: how WebSocket frames go on and off the wire for one socket.
//!
//! Two drivers speak RFC 6455 for the socket loop (`socket::run`), chosen by
//! `server.websocket_driver`:
//!
//! - [`DirectTransport`] (the default) owns the connection after the
//!   upgrade hook took it from actix-http's HTTP/1 dispatcher. It keeps no
//!   buffer while the socket is idle: reads land in a scratch array on the
//!   stack and only a partial frame is kept; text frames are written straight
//!   from the shared frame bytes with one vectored write per batch. On plain
//!   TCP the connection is shared ([`SharedTcp`]) with the socket's outbox
//!   as a [`Wire`], so the receiver writes a run's frames to a waiting
//!   socket itself; the outbox decides who writes when.
//! - [`ActixWsTransport`] is actix-ws's session and message stream, behind the
//!   dispatcher's two 8 KiB buffers, actix-ws's channel and its body task.
//!
//! Both parse and encode frames with actix-http's `ws` codec. Of the outbox
//! it knows only the [`Wire`] it implements for a shared connection; it must
//! not queue frames, nor know about groups, tokens or close-code policy.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use actix_http::ws::{CloseReason, Item, Message, OpCode, Parser};
use actix_ws::{MessageStream, Session};
use bytes::BytesMut;
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::edge::frames::{close_frame, Assembler, Inbound, InboundError, Violation};
use crate::relay::outbox::{Wire, WrittenNow};

/// The frame operations the socket loop needs, whichever driver runs them.
/// `recv` must be cancel-safe: the loop polls it inside `select!`.
// Public for the conformance echo server (`tests`), which runs on one
// thread: no caller needs its futures to be `Send`-bounded by name.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// Sends text frames in order, as few writes as the driver can manage;
    /// the first `first_sent` bytes of the first frame's wire form are
    /// on the wire already (written through the [`Wire`]).
    async fn send_texts(&mut self, frames: &[ByteString], first_sent: usize) -> io::Result<()>;
    async fn send_text(&mut self, text: &str) -> io::Result<()>;
    async fn ping(&mut self) -> io::Result<()>;
    async fn pong(&mut self, payload: &[u8]) -> io::Result<()>;
    /// Sends a close frame; the socket is finished after it either way.
    async fn close(&mut self, reason: Option<CloseReason>);
    /// The client's next message (fragments reassembled, every frame
    /// checked: `frames`); `None` once the connection is gone.
    async fn recv(&mut self) -> Option<Result<Inbound, InboundError>>;
    /// The connection as a [`Wire`] the receiver may write frames to, if the
    /// driver can share it.
    fn wire(&self) -> Option<Arc<dyn Wire>> {
        None
    }
}

fn disconnected() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "socket closed")
}

/// actix-ws's session (outbound) and message stream (inbound).
pub(crate) struct ActixWsTransport {
    session: Session,
    messages: MessageStream,
    assembler: Assembler,
    max_frame: usize,
}

impl ActixWsTransport {
    pub(crate) fn new(session: Session, messages: MessageStream, max_frame: usize) -> Self {
        ActixWsTransport {
            session,
            messages: messages.max_frame_size(max_frame),
            assembler: Assembler::default(),
            max_frame,
        }
    }

    /// actix-ws's message as the frame it was, for the assembler.
    fn message(&mut self, message: Message) -> Result<Option<Inbound>, InboundError> {
        let (fin, opcode, payload) = match message {
            Message::Text(text) => (true, OpCode::Text, text.into_bytes()),
            Message::Binary(bytes) => (true, OpCode::Binary, bytes),
            Message::Continuation(Item::FirstText(bytes)) => (false, OpCode::Text, bytes),
            Message::Continuation(Item::FirstBinary(bytes)) => (false, OpCode::Binary, bytes),
            Message::Continuation(Item::Continue(bytes)) => (false, OpCode::Continue, bytes),
            Message::Continuation(Item::Last(bytes)) => (true, OpCode::Continue, bytes),
            Message::Ping(bytes) => (true, OpCode::Ping, bytes),
            Message::Pong(bytes) => (true, OpCode::Pong, bytes),
            Message::Close(reason) => {
                // actix-http parsed it already; its code is checked again
                // by the one rule for close frames.
                let mut payload = Vec::new();
                if let Some(reason) = reason {
                    payload.extend_from_slice(&u16::from(reason.code).to_be_bytes());
                    payload.extend_from_slice(reason.description.unwrap_or_default().as_bytes());
                }
                return Ok(Some(Inbound::Close(close_frame(&payload)?)));
            }
            Message::Nop => return Ok(None),
        };
        Ok(self.assembler.frame(fin, opcode, payload, self.max_frame)?)
    }
}

impl Transport for ActixWsTransport {
    async fn send_texts(&mut self, frames: &[ByteString], _first_sent: usize) -> io::Result<()> {
        // actix-ws's connection has no wire: nothing is ever partly sent.
        for frame in frames {
            self.session
                .text(frame.clone())
                .await
                .map_err(|_| disconnected())?;
        }
        Ok(())
    }

    async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.session
            .text(text.to_string())
            .await
            .map_err(|_| disconnected())
    }

    async fn ping(&mut self) -> io::Result<()> {
        self.session.ping(b"").await.map_err(|_| disconnected())
    }

    async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.session.pong(payload).await.map_err(|_| disconnected())
    }

    async fn close(&mut self, reason: Option<CloseReason>) {
        // actix-ws's close consumes a session; its clones share one sender.
        let _ = self.session.clone().close(reason).await;
    }

    async fn recv(&mut self) -> Option<Result<Inbound, InboundError>> {
        loop {
            let message = match self.messages.recv().await? {
                Ok(message) => self.message(message),
                Err(error) => Err(InboundError::from(error)),
            };
            match message {
                Ok(None) => {}
                Ok(Some(inbound)) => return Some(Ok(inbound)),
                Err(error) => return Some(Err(error)),
            }
        }
    }
}

/// Bytes read from the connection per read call; lives on the stack only
/// for the duration of one poll, never in the socket's state.
const READ_SCRATCH: usize = 4096;
/// Frames written by one vectored write (two slices each: header, payload).
const FRAMES_PER_WRITE: usize = 64;

/// A WebSocket on a connection the gateway owns (server side: client frames
/// must be masked, ours are not).
pub struct DirectTransport<IO> {
    io: IO,
    /// Unparsed bytes of a frame still arriving; empty and unallocated while
    /// the socket is idle.
    partial: BytesMut,
    /// The fragments of a message still arriving (none while idle).
    assembler: Assembler,
    /// `server.max_inbound_frame`: bounds a frame and a whole message.
    max_frame: usize,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> DirectTransport<IO> {
    /// `already_read`: bytes the HTTP parser read past the handshake.
    pub fn new(io: IO, already_read: BytesMut, max_frame: usize) -> Self {
        DirectTransport {
            io,
            partial: if already_read.is_empty() {
                BytesMut::new()
            } else {
                already_read
            },
            assembler: Assembler::default(),
            max_frame,
        }
    }

    /// Sends one binary message. The gateway never does (its clients get
    /// text); the conformance echo server echoes binary messages with it.
    pub async fn send_binary(&mut self, payload: &[u8]) -> io::Result<()> {
        self.write_frames(OpCode::Binary, &[payload], 0).await
    }

    /// Writes whole frames: `frames` payloads, each after its header, the
    /// first one from byte `first_sent` of its wire form on.
    async fn write_frames<F: AsRef<[u8]>>(
        &mut self,
        opcode: OpCode,
        frames: &[F],
        first_sent: usize,
    ) -> io::Result<()> {
        let mut position = FramePosition {
            frame: 0,
            offset: first_sent,
        };
        poll_fn(|cx| self.poll_write_frames(cx, opcode, frames, &mut position)).await
    }

    fn poll_write_frames<F: AsRef<[u8]>>(
        &mut self,
        cx: &mut Context<'_>,
        opcode: OpCode,
        frames: &[F],
        position: &mut FramePosition,
    ) -> Poll<io::Result<()>> {
        while position.frame < frames.len() {
            ready!(write_step(opcode, frames, position, |slices| {
                Pin::new(&mut self.io).poll_write_vectored(cx, slices)
            }))?;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Reads whatever the connection has into `partial` (cancel-safe: the
    /// bytes of one read are stored in the same poll that reads them).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut scratch = [0u8; READ_SCRATCH];
        let mut buffer = ReadBuf::new(&mut scratch);
        match Pin::new(&mut self.io).poll_read(cx, &mut buffer) {
            Poll::Ready(Ok(())) => {
                let filled = buffer.filled();
                self.partial.extend_from_slice(filled);
                Poll::Ready(Ok(filled.len()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next message the frames in `partial` complete, if they do.
    fn parse_message(&mut self) -> Result<Option<Inbound>, InboundError> {
        loop {
            if self.partial.is_empty() {
                return Ok(None);
            }
            // Refused as soon as the header says so, not after buffering it all.
            if declared_payload_len(&self.partial).is_some_and(|len| len > self.max_frame as u64) {
                return Err(Violation::TooBig.into());
            }
            let parsed = Parser::parse(&mut self.partial, true, self.max_frame)?;
            if self.partial.is_empty() && self.partial.capacity() > 0 {
                // Idle sockets hold no read buffer.
                self.partial = BytesMut::new();
            }
            let Some((finished, opcode, payload)) = parsed else {
                return Ok(None);
            };
            let payload = payload.unwrap_or_default().freeze();
            if let Some(message) =
                self.assembler
                    .frame(finished, opcode, payload, self.max_frame)?
            {
                return Ok(Some(message));
            }
        }
    }
}

/// A connection a [`DirectTransport`] can also hand out as a [`Wire`], if
/// it is shared.
pub trait WireSource {
    fn wire(&self) -> Option<Arc<dyn Wire>> {
        None
    }
}

impl WireSource for SharedTcp {
    fn wire(&self) -> Option<Arc<dyn Wire>> {
        Some(self.0.clone())
    }
}

/// A TLS connection's record state (sequence numbers, keys) belongs to one
/// writer, the socket's task: the receiver hands it its frames instead
/// (docs/benchmarks.md, "wss").
impl WireSource for crate::edge::tls::TlsStream {}

#[cfg(test)]
impl WireSource for tokio::io::DuplexStream {}

impl<IO: AsyncRead + AsyncWrite + Unpin + WireSource> Transport for DirectTransport<IO> {
    async fn send_texts(&mut self, frames: &[ByteString], first_sent: usize) -> io::Result<()> {
        self.write_frames(OpCode::Text, frames, first_sent).await
    }

    async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.write_frames(OpCode::Text, &[text], 0).await
    }

    async fn ping(&mut self) -> io::Result<()> {
        self.write_frames(OpCode::Ping, &[b""], 0).await
    }

    async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.write_frames(OpCode::Pong, &[payload], 0).await
    }

    async fn close(&mut self, reason: Option<CloseReason>) {
        let mut payload = Vec::new();
        if let Some(reason) = reason {
            payload.extend_from_slice(&u16::from(reason.code).to_be_bytes());
            if let Some(description) = &reason.description {
                payload.extend_from_slice(description.as_bytes());
            }
        }
        if self
            .write_frames(OpCode::Close, &[&payload], 0)
            .await
            .is_ok()
        {
            let _ = poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
        }
    }

    async fn recv(&mut self) -> Option<Result<Inbound, InboundError>> {
        loop {
            match self.parse_message() {
                Ok(Some(message)) => return Some(Ok(message)),
                Ok(None) => {}
                Err(error) => return Some(Err(error)),
            }
            match poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => return Some(Err(InboundError::Lost(error))),
            }
        }
    }

    fn wire(&self) -> Option<Arc<dyn Wire>> {
        self.io.wire()
    }
}

/// A TCP connection its socket task reads and writes through while the
/// outbox holds it too, as the [`Wire`] the receiver writes to. tokio's
/// readiness calls and `try_*` I/O take `&TcpStream`, so both can use one
/// stream; the outbox makes sure only one of them writes at a time.
pub struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    pub fn new(stream: TcpStream) -> SharedTcp {
        SharedTcp(Arc::new(stream))
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buffer.initialize_unfilled()) {
                Ok(read) => {
                    buffer.advance(read);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; `try_read` cleared it, so the next
                // readiness poll waits for the kernel.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(bytes)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(slices) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                written => return Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(self.0.as_ref()).shutdown(Shutdown::Write))
    }
}

impl Wire for TcpStream {
    fn write_now(&self, frames: &[ByteString], first_sent: usize) -> WrittenNow {
        let mut position = FramePosition {
            frame: 0,
            offset: first_sent,
        };
        while position.frame < frames.len() {
            let step = write_step(OpCode::Text, frames, &mut position, |slices| {
                match self.try_write_vectored(slices) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
                    written => Poll::Ready(written),
                }
            });
            if !matches!(step, Poll::Ready(Ok(()))) {
                break;
            }
        }
        WrittenNow {
            whole: position.frame,
            next_sent: position.offset,
        }
    }
}

/// One vectored write of up to `FRAMES_PER_WRITE` frames from `position`
/// on (`write` does it), moving `position` past what it wrote.
fn write_step<F: AsRef<[u8]>>(
    opcode: OpCode,
    frames: &[F],
    position: &mut FramePosition,
    write: impl FnOnce(&[IoSlice<'_>]) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<()>> {
    let batch_end = frames.len().min(position.frame + FRAMES_PER_WRITE);
    let batch = frames.get(position.frame..batch_end).unwrap_or_default();
    let mut headers = [FrameHeader::EMPTY; FRAMES_PER_WRITE];
    let mut slices = [IoSlice::new(&[]); FRAMES_PER_WRITE * 2];
    for (index, payload) in batch.iter().enumerate() {
        headers[index] = FrameHeader::new(opcode, payload.as_ref().len());
    }
    let mut used = 0;
    for (index, payload) in batch.iter().enumerate() {
        let payload = payload.as_ref();
        let header = headers[index].as_bytes();
        // The first frame may be partly written already.
        let skip = if index == 0 { position.offset } else { 0 };
        if skip < header.len() {
            slices[used] = IoSlice::new(&header[skip..]);
            used += 1;
            slices[used] = IoSlice::new(payload);
            used += 1;
        } else {
            slices[used] = IoSlice::new(&payload[skip - header.len()..]);
            used += 1;
        }
    }
    let written = match ready!(write(&slices[..used])) {
        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        Ok(written) => written,
        Err(error) => return Poll::Ready(Err(error)),
    };
    position.advance(
        written,
        batch
            .iter()
            .enumerate()
            .map(|(index, payload)| headers[index].as_bytes().len() + payload.as_ref().len()),
    );
    Poll::Ready(Ok(()))
}

/// How far a multi-frame write has got: the frame, and bytes into it
/// (its header and payload counted together).
#[derive(Default)]
struct FramePosition {
    frame: usize,
    offset: usize,
}

impl FramePosition {
    fn advance(&mut self, mut written: usize, mut frame_lengths: impl Iterator<Item = usize>) {
        while written > 0 {
            let Some(length) = frame_lengths.next() else {
                return;
            };
            let left = length - self.offset;
            if written >= left {
                written -= left;
                self.frame += 1;
                self.offset = 0;
            } else {
                self.offset += written;
                written = 0;
            }
        }
    }
}

/// An unmasked frame header: FIN, opcode and the payload length.
#[derive(Clone, Copy)]
struct FrameHeader {
    bytes: [u8; 10],
    len: u8,
}

impl FrameHeader {
    const EMPTY: FrameHeader = FrameHeader {
        bytes: [0; 10],
        len: 0,
    };

    fn new(opcode: OpCode, payload_len: usize) -> FrameHeader {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | u8::from(opcode);
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if let Ok(short) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        FrameHeader { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The payload length a frame header announces, once enough of it arrived.
fn declared_payload_len(header: &[u8]) -> Option<u64> {
    match *header.get(1)? & 0x7f {
        126 => Some(u64::from(u16::from_be_bytes(
            header.get(2..4)?.try_into().ok()?,
        ))),
        127 => Some(u64::from_be_bytes(header.get(2..10)?.try_into().ok()?)),
        short => Some(u64::from(short)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x80 | opcode];
        assert!(payload.len() < 126);
        frame.push(0x80 | payload.len() as u8);
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[tokio::test]
    async fn frames_split_across_reads_are_reassembled() {
        let (client, server) = tokio::io::duplex(64);
        let mut transport = DirectTransport::new(server, BytesMut::new(), 4096);
        let mut client = client;
        let frame = masked(0x1, b"{\"type\": \"ping\"}");
        let (first, second) = frame.split_at(5);
        client.write_all(first).await.unwrap();
        let reading = tokio::spawn(async move {
            let message = transport.recv().await;
            (message, transport.partial.capacity())
        });
        tokio::task::yield_now().await;
        client.write_all(second).await.unwrap();
        let (message, capacity) = reading.await.unwrap();
        match message {
            Some(Ok(Inbound::Text(text))) => assert_eq!(text, "{\"type\": \"ping\"}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(capacity, 0, "an idle socket keeps no read buffer");
    }

    #[tokio::test]
    async fn bytes_read_with_the_handshake_come_first() {
        let (_client, server) = tokio::io::duplex(64);
        let early = BytesMut::from(&masked(0x9, b"hi")[..]);
        let mut transport = DirectTransport::new(server, early, 4096);
        match transport.recv().await {
            Some(Ok(Inbound::Ping(payload))) => assert_eq!(&payload[..], b"hi"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn oversized_and_unmasked_frames_are_protocol_errors() {
        let (mut client, server) = tokio::io::duplex(256);
        let mut transport = DirectTransport::new(server, BytesMut::new(), 8);
        client
            .write_all(&masked(0x1, b"far too long"))
            .await
            .unwrap();
        assert!(matches!(
            transport.recv().await,
            Some(Err(InboundError::Violation(Violation::TooBig)))
        ));
        // A header announcing a huge frame is refused before its payload.
        let (mut client, server) = tokio::io::duplex(256);
        let mut transport = DirectTransport::new(server, BytesMut::new(), 4096);
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        client.write_all(&header).await.unwrap();
        assert!(matches!(
            transport.recv().await,
            Some(Err(InboundError::Violation(Violation::TooBig)))
        ));
        let (mut client, server) = tokio::io::duplex(256);
        let mut transport = DirectTransport::new(server, BytesMut::new(), 4096);
        client.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
        assert!(matches!(transport.recv().await, Some(Err(_))));
    }

    #[tokio::test]
    async fn batches_survive_short_writes() {
        // A tiny pipe forces partial vectored writes mid-header and mid-payload.
        let (mut client, server) = tokio::io::duplex(7);
        let mut transport = DirectTransport::new(server, BytesMut::new(), 4096);
        let big = "x".repeat(300);
        let frames: Vec<ByteString> = vec!["a".into(), big.as_str().into(), "bc".into()];
        let writer = tokio::spawn(async move {
            transport.send_texts(&frames, 0).await.unwrap();
        });
        let mut expected = vec![0x81, 1, b'a', 0x81, 126, 1, 44];
        expected.extend_from_slice(big.as_bytes());
        expected.extend_from_slice(&[0x81, 2, b'b', b'c']);
        let mut received = vec![0u8; expected.len()];
        client.read_exact(&mut received).await.unwrap();
        writer.await.unwrap();
        assert_eq!(received, expected);
    }

    /// `bytes` cut at `cuts` (positions, in any order).
    fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut start = 0;
        let mut out = Vec::new();
        for cut in cuts.into_iter().chain([bytes.len()]) {
            out.push(bytes[start..cut].to_vec());
            start = cut;
        }
        out
    }

    /// Everything the transport reads from `chunks` until it stops.
    fn read_all(chunks: Vec<Vec<u8>>, max_frame: usize) -> Vec<Result<Inbound, String>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let total: usize = chunks.iter().map(Vec::len).sum();
            let (mut client, server) = tokio::io::duplex(total + 1);
            for chunk in chunks {
                client.write_all(&chunk).await.unwrap();
            }
            drop(client);
            let mut transport = DirectTransport::new(server, BytesMut::new(), max_frame);
            let mut read = Vec::new();
            // Each frame takes at least two bytes: this bound is never hit.
            for _ in 0..=total {
                match transport.recv().await {
                    None => break,
                    Some(Ok(message)) => read.push(Ok(message)),
                    Some(Err(error)) => {
                        read.push(Err(error.to_string()));
                        break;
                    }
                }
            }
            read
        })
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_cut_anywhere_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..6),
            max_frame in 0usize..300,
        ) {
            read_all(chunks(&bytes, &cuts), max_frame);
        }

        #[test]
        fn masked_text_frames_cut_anywhere_arrive_whole_and_in_order(
            texts in proptest::collection::vec("[a-z\u{e9}\u{1f600}]{0,30}", 1..6),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let wire: Vec<u8> = texts.iter().flat_map(|text| masked(0x1, text.as_bytes())).collect();
            let read = read_all(chunks(&wire, &cuts), 4096);
            let got: Vec<String> = read
                .into_iter()
                .map(|message| match message {
                    Ok(Inbound::Text(text)) => text.to_string(),
                    other => format!("unexpected {other:?}"),
                })
                .collect();
            proptest::prop_assert_eq!(got, texts);
        }
    }

    /// Reads one unmasked frame: (opcode, payload).
    async fn read_server_frame(client: &mut (impl AsyncReadExt + Unpin)) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        let len = match head[1] {
            126 => u64::from(client.read_u16().await.unwrap()),
            127 => client.read_u64().await.unwrap(),
            short => u64::from(short),
        };
        let mut payload = vec![0u8; len as usize];
        client.read_exact(&mut payload).await.unwrap();
        (head[0] & 0x0f, payload)
    }

    #[tokio::test]
    async fn the_wire_and_the_task_share_a_tcp_connection_without_tearing_frames() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut transport = DirectTransport::new(SharedTcp::new(server), BytesMut::new(), 4096);
        let wire = transport.wire().expect("plain TCP is shared");
        let small: Vec<ByteString> = vec!["a".into(), "bc".into()];
        assert_eq!(
            wire.write_now(&small, 0),
            WrittenNow {
                whole: 2,
                next_sent: 0
            }
        );
        // More than the kernel's buffers hold: the wire stops mid-frame.
        let big = ByteString::from("x".repeat(256 * 1024));
        let frames = vec![big.clone(); 64];
        let now = wire.write_now(&frames, 0);
        assert!(now.whole < frames.len(), "the buffers filled up");
        let rest = frames[now.whole..].to_vec();
        let writer = tokio::spawn(async move {
            transport.send_texts(&rest, now.next_sent).await.unwrap();
            transport.ping().await.unwrap();
        });
        assert_eq!(read_server_frame(&mut client).await, (1, b"a".to_vec()));
        assert_eq!(read_server_frame(&mut client).await, (1, b"bc".to_vec()));
        for index in 0..frames.len() {
            let (opcode, payload) = read_server_frame(&mut client).await;
            assert_eq!(opcode, 1, "frame {index}");
            assert!(
                payload[..] == big.as_bytes()[..],
                "frame {index} arrived whole"
            );
        }
        assert_eq!(read_server_frame(&mut client).await, (9, Vec::new()));
        writer.await.unwrap();
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(FrameHeader::new(OpCode::Text, 125).as_bytes(), [0x81, 125]);
        assert_eq!(
            FrameHeader::new(OpCode::Text, 126).as_bytes(),
            [0x81, 126, 0, 126]
        );
        assert_eq!(
            FrameHeader::new(OpCode::Text, 70_000).as_bytes(),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert_eq!(FrameHeader::new(OpCode::Close, 0).as_bytes(), [0x88, 0]);
    }
}
