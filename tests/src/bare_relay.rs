//! The bare relay: the least work any server relaying channels_redis
//! messages to WebSocket clients must do on this machine, as the benchmark's
//! floor to measure the gateway against in the same run. It accepts a
//! socket, reads the handshake, checks the token, joins the user's group
//! (joins pipelined, `ZADD` + `EXPIRE` as channels_redis' `group_add`) and
//! only then answers 101; it pops its process's queue key (a blocking pop with a
//! batched pop pipelined behind it), reads each payload once, renders the
//! frame once and writes it to the socket of each listed channel with one
//! system call. All of it runs on one thread, in a process of its own
//! (`tests/src/bin/bare-relay.rs`), which the load generator measures like
//! any server.
//!
//! It is a measuring tool, not a server, and must stay bare: no limits,
//! pings, timeouts, reconnects, membership refresh or clean-up, no
//! encryption, msgpack only, the HS256 secret of the load generator's own
//! tokens; it serves loopback clients of the benchmark and joins groups in
//! the benchmark's own Redis only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use shared_proto::{names, PayloadCodec, SerializerFormat};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::resp::{RespClient, RespValue};

/// The made-up process name whose queue key the relay pops.
const PROCESS: &str = "bare";
/// Payloads popped per round trip at most (the gateway's default too).
const POP_BATCH: usize = 512;
/// Longest handshake request head read.
const HEAD_MAX: usize = 8192;
/// The gateway's listen backlog too: a burst of connects must not overflow
/// the accept queue (SYNs dropped there come back only after a second).
const LISTEN_BACKLOG: i32 = 4096;
/// channels_redis' default `group_expiry`, set on every join as it does.
const GROUP_EXPIRY_SECS: &str = "86400";

/// Where and for whom the relay serves.
pub struct RelayOptions {
    /// Loopback address to accept WebSocket clients on.
    pub listen: SocketAddr,
    /// The channel layer's Redis, `HOST:PORT`.
    pub redis: String,
    /// The layer's key prefix.
    pub prefix: String,
    /// HS256 secret of the clients' tokens.
    pub secret: String,
}

/// What the relay did, printed when it stops.
#[derive(Default, Debug, Serialize)]
pub struct RelayCounts {
    /// Sockets that completed the handshake and joined their group.
    pub joined: u64,
    /// Payloads popped from the queue key.
    pub popped: u64,
    /// Frames written to a socket.
    pub written: u64,
    /// Payloads that did not read as a notification, channels with no
    /// socket here, failed writes and failed joins.
    pub dropped: u64,
}

/// Sockets by connection number (the part after `!` in their channel name).
type Sockets = Rc<RefCell<HashMap<u64, Rc<TcpStream>>>>;

/// A socket whose handshake checked out, waiting for its group join.
struct PendingJoin {
    conn: u64,
    stream: TcpStream,
    /// The 101 answer, sent once the join is written.
    answer: String,
    group: String,
    channel: String,
}

/// Joins not yet written to Redis.
#[derive(Default)]
struct PendingJoins {
    joins: RefCell<Vec<PendingJoin>>,
    added: Notify,
}

struct Relay {
    prefix: String,
    secret: String,
    /// One thread: a plain `RefCell`, never borrowed across an await.
    counts: RefCell<RelayCounts>,
    sockets: Sockets,
    pending: PendingJoins,
}

/// Serves on the current thread until `stop` completes, then returns what
/// it did. Must run inside a `tokio::task::LocalSet`. The listener is bound
/// only once both Redis connections are up, so a client that can connect is
/// served.
pub async fn serve(options: RelayOptions, stop: impl Future<Output = ()>) -> Result<RelayCounts> {
    let joiner = RespClient::connect(&options.redis).await?;
    let popper = RespClient::connect(&options.redis).await?;
    let listener = bind(options.listen)?;
    let relay = Rc::new(Relay {
        prefix: options.prefix,
        secret: options.secret,
        counts: RefCell::default(),
        sockets: Rc::default(),
        pending: PendingJoins::default(),
    });
    let pops = tokio::task::spawn_local(pop_and_write(popper, Rc::clone(&relay)));
    let joins = tokio::task::spawn_local(write_joins(joiner, Rc::clone(&relay)));
    let accepting = async {
        let mut next_conn = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, say: wait rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            next_conn += 1;
            tokio::task::spawn_local(admit(stream, next_conn, Rc::clone(&relay)));
        }
    };
    tokio::select! {
        () = stop => {}
        () = accepting => {}
    }
    pops.abort();
    joins.abort();
    Ok(relay.counts.take())
}

fn bind(listen: SocketAddr) -> Result<TcpListener> {
    if !listen.ip().is_loopback() {
        bail!("the bare relay listens on loopback only, not {listen}");
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .context("socket")?;
    socket.set_reuse_address(true).context("SO_REUSEADDR")?;
    socket.set_nonblocking(true).context("nonblocking")?;
    socket
        .bind(&listen.into())
        .with_context(|| format!("bind {listen}"))?;
    socket.listen(LISTEN_BACKLOG).context("listen")?;
    TcpListener::from_std(socket.into()).context("listener")
}

/// Reads one handshake and queues the socket for its join.
async fn admit(mut stream: TcpStream, conn: u64, relay: Rc<Relay>) {
    let Ok((user, key)) = read_handshake(&mut stream, &relay.secret).await else {
        return;
    };
    stream.set_nodelay(true).ok();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        crate::lean_ws::accept_for(&key)
    );
    relay.pending.joins.borrow_mut().push(PendingJoin {
        conn,
        stream,
        answer,
        group: names::group_key(&relay.prefix, &format!("user_{user}")),
        channel: names::specific_channel(PROCESS, &conn.to_string()),
    });
    relay.pending.added.notify_one();
}

/// Writes the queued joins, all that queued up during the previous round
/// trip in one pipeline. Like a Channels consumer (`group_add` before
/// `accept`) and the gateway, a socket is answered 101 only once its join
/// is written, so whatever is sent to its group after the client sees the
/// socket open reaches it. The answer goes out and the socket becomes
/// reachable in one step of this one thread, so no frame can precede it.
async fn write_joins(mut redis: RespClient, relay: Rc<Relay>) {
    loop {
        relay.pending.added.notified().await;
        let batch = std::mem::take(&mut *relay.pending.joins.borrow_mut());
        if batch.is_empty() {
            continue;
        }
        let now = crate::tokens::now_secs().to_string();
        let commands: Vec<Vec<&str>> = batch
            .iter()
            .flat_map(|join| {
                [
                    vec![
                        "ZADD",
                        join.group.as_str(),
                        now.as_str(),
                        join.channel.as_str(),
                    ],
                    vec!["EXPIRE", join.group.as_str(), GROUP_EXPIRY_SECS],
                ]
            })
            .collect();
        let Ok(replies) = redis.pipeline(&commands).await else {
            return;
        };
        for (join, replies) in batch.into_iter().zip(replies.chunks(2)) {
            let written = replies
                .iter()
                .all(|reply| !matches!(reply, RespValue::Error(_)));
            // A fresh socket's send buffer takes the short answer whole.
            let answered = written
                && join.stream.try_write(join.answer.as_bytes()).ok() == Some(join.answer.len());
            if answered {
                relay
                    .sockets
                    .borrow_mut()
                    .insert(join.conn, Rc::new(join.stream));
                relay.counts.borrow_mut().joined += 1;
            } else {
                relay.counts.borrow_mut().dropped += 1;
            }
        }
    }
}

/// Reads the request head; returns the token's user and the WebSocket key.
async fn read_handshake(stream: &mut TcpStream, secret: &str) -> Result<(String, String)> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > HEAD_MAX {
            bail!("request head too long");
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed during the handshake");
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let head = std::str::from_utf8(&head).context("request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .context("no request line")?;
    let token = target
        .split_once('?')
        .and_then(|(_, query)| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("token="))
        })
        .context("no token")?;
    let key = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, value)| value.trim().to_string())
        .context("no Sec-WebSocket-Key")?;
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .context("token")?
    .claims;
    let user = match claims.get("user_id") {
        Some(serde_json::Value::String(id)) => id.clone(),
        Some(serde_json::Value::Number(id)) => id.to_string(),
        _ => bail!("no user_id claim"),
    };
    Ok((user, key))
}

/// The relay's whole delivery path.
async fn pop_and_write(mut redis: RespClient, relay: Rc<Relay>) {
    let queue = names::queue_key(&relay.prefix, &names::specific_channel(PROCESS, ""));
    let codec = PayloadCodec::core_layer(SerializerFormat::Msgpack);
    let counts = &relay.counts;
    let mut rendered = String::new();
    let mut frame = Vec::new();
    loop {
        let Ok(payloads) = redis.pop_queue(&queue, POP_BATCH).await else {
            return;
        };
        counts.borrow_mut().popped += payloads.len() as u64;
        for (payload, _score) in &payloads {
            let Ok(view) = codec
                .strip_random_prefix(payload)
                .and_then(|body| codec.route_view(body))
            else {
                counts.borrow_mut().dropped += 1;
                continue;
            };
            rendered.clear();
            let Ok(channels) = view.channels() else {
                counts.borrow_mut().dropped += 1;
                continue;
            };
            if view.render_notification(&mut rendered).is_err() {
                counts.borrow_mut().dropped += 1;
                continue;
            }
            frame.clear();
            text_frame_header(rendered.len(), &mut frame);
            frame.extend_from_slice(rendered.as_bytes());
            for channel in channels {
                let socket = channel
                    .ok()
                    .and_then(|name| name.rsplit_once('!'))
                    .and_then(|(_, conn)| conn.parse::<u64>().ok())
                    .and_then(|conn| relay.sockets.borrow().get(&conn).cloned());
                let written = match socket {
                    Some(socket) => write_all(&socket, &frame).await.is_ok(),
                    None => false,
                };
                let mut counts = counts.borrow_mut();
                if written {
                    counts.written += 1;
                } else {
                    counts.dropped += 1;
                }
            }
        }
    }
}

/// One `write` when the socket takes it all (the usual case); waits for
/// room only when its buffer is full.
async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                stream.writable().await?;
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// An unmasked, final text frame's header (RFC 6455 § 5.2).
fn text_frame_header(len: usize, out: &mut Vec<u8>) {
    out.push(0x81);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_of_every_length_form() {
        for (len, header) in [
            (5usize, vec![0x81, 5]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (70_000, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]),
        ] {
            let mut out = Vec::new();
            text_frame_header(len, &mut out);
            assert_eq!(out, header, "length {len}");
        }
    }
}
