//! The bare relay: the least work any server relaying channels_redis
//! messages to WebSocket clients must do on this machine, as the benchmark's
//! floor to measure the gateway against in the same run. It pops its
//! process's queue key (a blocking pop with a batched pop pipelined behind
//! it), reads each payload once, renders the frame once and writes it to the
//! socket of each listed channel with one system call, all on one thread of
//! its own (the load generator accounts that thread's CPU as the server's).
//!
//! It is a measuring tool, not a server, and must stay bare: no limits,
//! pings, timeouts, reconnects, membership refresh or clean-up, no
//! encryption, msgpack only, the HS256 secret of the load generator's own
//! tokens; it serves loopback clients of the benchmark and joins groups in
//! the benchmark's own Redis only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use shared_proto::{names, PayloadCodec, SerializerFormat};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Mutex};

use crate::resp::{RespClient, RespValue};

/// The made-up process name whose queue key the relay pops.
const PROCESS: &str = "bare";
/// Payloads popped per round trip at most (the gateway's default too).
const POP_BATCH: usize = 512;
/// Longest handshake request head read.
const HEAD_MAX: usize = 8192;

/// A running bare relay; stops when dropped.
pub struct BareRelay {
    addr: SocketAddr,
    thread_id: libc::pid_t,
    counts: Arc<RelayCounts>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the relay did so far.
#[derive(Default, Debug)]
pub struct RelayCounts {
    /// Sockets that completed the handshake and joined their group.
    pub joined: AtomicU64,
    /// Payloads popped from the queue key.
    pub popped: AtomicU64,
    /// Frames written to a socket.
    pub written: AtomicU64,
    /// Payloads that did not read as a notification, channels with no
    /// socket here, and failed writes.
    pub dropped: AtomicU64,
}

impl BareRelay {
    /// Starts listening on 127.0.0.1 (a free port) with its own thread.
    /// `redis` is `HOST:PORT`; `prefix` the layer's key prefix.
    pub fn start(redis: &str, prefix: &str, secret: &str) -> Result<BareRelay> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind bare relay")?;
        listener.set_nonblocking(true).context("nonblocking")?;
        let addr = listener.local_addr().context("local address")?;
        let counts = Arc::new(RelayCounts::default());
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let config = Setup {
            redis: redis.to_string(),
            prefix: prefix.to_string(),
            secret: secret.to_string(),
            counts: Arc::clone(&counts),
        };
        let thread = std::thread::Builder::new()
            .name("bare-relay".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let thread_id = unsafe { libc::gettid() };
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready_tx.send(Err(anyhow!("runtime: {err}")));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    match serve(listener, config, stopped).await {
                        Ok(serving) => {
                            let _ = ready_tx.send(Ok(thread_id));
                            serving.await;
                        }
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                        }
                    }
                });
            })
            .context("spawning the bare relay thread")?;
        let thread_id = ready_rx
            .recv()
            .map_err(|_| anyhow!("the bare relay thread ended before it was ready"))??;
        Ok(BareRelay {
            addr,
            thread_id,
            counts,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay thread's id, for its CPU time under `/proc/self/task`.
    pub fn thread_id(&self) -> libc::pid_t {
        self.thread_id
    }

    pub fn counts(&self) -> &RelayCounts {
        &self.counts
    }
}

impl Drop for BareRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Setup {
    redis: String,
    prefix: String,
    secret: String,
    counts: Arc<RelayCounts>,
}

/// Sockets by connection number (the part after `!` in their channel name).
type Sockets = Rc<RefCell<HashMap<u64, Rc<TcpStream>>>>;

/// Connects to Redis, then returns the future that serves until `stopped`.
async fn serve(
    listener: std::net::TcpListener,
    setup: Setup,
    stopped: oneshot::Receiver<()>,
) -> Result<impl std::future::Future<Output = ()>> {
    let listener = TcpListener::from_std(listener).context("listener")?;
    let joins = Rc::new(Mutex::new(RespClient::connect(&setup.redis).await?));
    let popper = RespClient::connect(&setup.redis).await?;
    let sockets: Sockets = Rc::default();
    let setup = Rc::new(setup);
    let pops = tokio::task::spawn_local(pop_and_write(
        popper,
        Rc::clone(&setup),
        Rc::clone(&sockets),
    ));
    Ok(async move {
        let accepting = async {
            let mut next_conn = 0u64;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: wait rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                next_conn += 1;
                tokio::task::spawn_local(admit(
                    stream,
                    next_conn,
                    Rc::clone(&setup),
                    Rc::clone(&joins),
                    Rc::clone(&sockets),
                ));
            }
        };
        tokio::select! {
            _ = stopped => {}
            () = accepting => {}
        }
        pops.abort();
    })
}

/// Answers one handshake, joins the user's group, keeps the socket.
async fn admit(
    mut stream: TcpStream,
    conn: u64,
    setup: Rc<Setup>,
    joins: Rc<Mutex<RespClient>>,
    sockets: Sockets,
) {
    let Ok((user, key)) = read_handshake(&mut stream, &setup.secret).await else {
        return;
    };
    stream.set_nodelay(true).ok();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        crate::lean_ws::accept_for(&key)
    );
    if write_all(&stream, answer.as_bytes()).await.is_err() {
        return;
    }
    // Kept before the join, so no message to it can arrive first.
    sockets.borrow_mut().insert(conn, Rc::new(stream));
    let channel = names::specific_channel(PROCESS, &conn.to_string());
    let group = names::group_key(&setup.prefix, &format!("user_{user}"));
    let now = crate::tokens::now_secs().to_string();
    let joined = joins
        .lock()
        .await
        .command(&["ZADD", group.as_str(), now.as_str(), channel.as_str()])
        .await
        .and_then(RespValue::check);
    if joined.is_ok() {
        setup.counts.joined.fetch_add(1, Ordering::Relaxed);
    } else {
        sockets.borrow_mut().remove(&conn);
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
async fn pop_and_write(mut redis: RespClient, setup: Rc<Setup>, sockets: Sockets) {
    let queue = names::queue_key(&setup.prefix, &names::specific_channel(PROCESS, ""));
    let codec = PayloadCodec::core_layer(SerializerFormat::Msgpack);
    let counts = &setup.counts;
    let mut rendered = String::new();
    let mut frame = Vec::new();
    loop {
        let Ok(payloads) = redis.pop_queue(&queue, POP_BATCH).await else {
            return;
        };
        counts
            .popped
            .fetch_add(payloads.len() as u64, Ordering::Relaxed);
        for (payload, _score) in &payloads {
            let Ok(view) = codec
                .strip_random_prefix(payload)
                .and_then(|body| codec.route_view(body))
            else {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            rendered.clear();
            let Ok(channels) = view.channels() else {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if view.render_notification(&mut rendered).is_err() {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
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
                    .and_then(|conn| sockets.borrow().get(&conn).cloned());
                let written = match socket {
                    Some(socket) => write_all(&socket, &frame).await.is_ok(),
                    None => false,
                };
                let counter = if written {
                    &counts.written
                } else {
                    &counts.dropped
                };
                counter.fetch_add(1, Ordering::Relaxed);
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
