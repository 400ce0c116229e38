//! `echo-server`: a WebSocket echo server made of the gateway's own frame
//! code, for the Autobahn|Testsuite fuzzing client (`tests/autobahn/run`).
//!
//! It answers the upgrade on loopback, then runs the gateway's
//! `DirectTransport` over the gateway's `SharedTcp`, as the gateway's
//! direct driver does: every frame goes through `edge::frames`, so what the
//! suite judges is the gateway's reading of RFC 6455. It echoes every text
//! and binary message, answers pings, echoes a client's close code and
//! closes a connection that breaks the protocol with the code the frame
//! reader gives. It owns nothing else: no auth, no Redis, no limits but
//! `--max-message`. It stops when killed or after `--max-connections`.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use clap::Parser;
use gateway::edge::frames::{Inbound, InboundError};
use gateway::edge::transport::{DirectTransport, SharedTcp, Transport};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "WebSocket echo server on the gateway's frame code, for conformance runs")]
struct Args {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// The largest message (a frame, or all fragments of one) it takes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_message: usize,
    /// Stop after this many connections (0: never).
    #[arg(long, default_value_t = 0)]
    max_connections: u64,
}

/// A handshake request larger than this is refused.
const MAX_REQUEST: usize = 16 * 1024;

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        bail!(
            "the echo server listens on loopback only, not {}",
            args.listen
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    eprintln!("echo-server listening on {}", listener.local_addr()?);
    let mut accepted = 0u64;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = listener.accept().await.context("accept")?;
        accepted += 1;
        let max_message = args.max_message;
        connections.spawn_local(async move {
            if let Err(error) = echo(stream, max_message).await {
                eprintln!("connection ended: {error:#}");
            }
        });
        if args.max_connections != 0 && accepted >= args.max_connections {
            while connections.join_next().await.is_some() {}
            return Ok(());
        }
    }
}

/// Answers the upgrade, then echoes until the connection ends.
async fn echo(mut stream: TcpStream, max_message: usize) -> Result<()> {
    stream.set_nodelay(true).ok();
    let (key, already_read) = read_upgrade(&mut stream).await?;
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        tests::lean_ws::accept_for(&key)
    );
    stream
        .write_all(answer.as_bytes())
        .await
        .context("answer")?;
    let mut transport = DirectTransport::new(SharedTcp::new(stream), already_read, max_message);
    loop {
        let Some(message) = transport.recv().await else {
            return Ok(());
        };
        match message {
            Ok(Inbound::Text(text)) => transport.send_text(&text).await?,
            Ok(Inbound::Binary(bytes)) => transport.send_binary(&bytes).await?,
            Ok(Inbound::Ping(bytes)) => transport.pong(&bytes).await?,
            Ok(Inbound::Pong(_)) => {}
            Ok(Inbound::Close(frame)) => {
                let echo = frame.map(|frame| actix_http::ws::CloseReason {
                    code: actix_http::ws::CloseCode::Other(frame.code),
                    description: None,
                });
                transport.close(echo).await;
                return Ok(());
            }
            Err(InboundError::Violation(violation)) => {
                let code = violation.close_code();
                transport
                    .close(Some(actix_http::ws::CloseReason {
                        code: actix_http::ws::CloseCode::Other(code.as_u16()),
                        description: Some(code.reason().to_string()),
                    }))
                    .await;
                return Ok(());
            }
            Err(InboundError::Lost(error)) => return Err(error.into()),
        }
    }
}

/// Reads the upgrade request: its `Sec-WebSocket-Key` and whatever the
/// client sent after the request.
async fn read_upgrade(stream: &mut TcpStream) -> Result<(String, BytesMut)> {
    let mut request = BytesMut::new();
    let end = loop {
        if let Some(end) = request.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        if request.len() > MAX_REQUEST {
            bail!("handshake request over {MAX_REQUEST} bytes");
        }
        if stream
            .read_buf(&mut request)
            .await
            .context("read handshake")?
            == 0
        {
            bail!("the client left during the handshake");
        }
    };
    let head = std::str::from_utf8(&request[..end]).context("handshake is not UTF-8")?;
    let key = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, value)| value.trim().to_string())
        .context("no Sec-WebSocket-Key")?;
    let already_read = request.split_off(end);
    Ok((key, already_read))
}
