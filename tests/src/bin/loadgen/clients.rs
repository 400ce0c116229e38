//! The sockets: opening each from its own source address with its token
//! (and, with recovery, its position), in bounded concurrency with retries
//! until a deadline, starting its reader task, and closing or dropping them
//! all at once ([`Fleet`]); over TLS with `--tls-ca`. It must not connect anywhere but the loopback
//! target it is given, and it leaves reading frames to `reader`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tests::lean_ws::{tls_connector, LeanStream, LeanWs};
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::args::Args;
use crate::reader::{run_socket, Shared, SocketSlot};

/// Opens socket `index`: its source address, its token and, with
/// recovery, the position to recover from.
pub(crate) struct Connector {
    target: SocketAddr,
    path: String,
    /// Each socket's token, by socket index, minted before any measured step.
    tokens: Vec<String>,
    src_first: u8,
    src_count: usize,
    timeout: Duration,
    /// Sockets ask for recovery, from the position their slot holds.
    recover_from: Option<Arc<Shared>>,
    /// `wss://`: TLS trusting `--tls-ca`.
    tls: Option<TlsConnector>,
}

impl Connector {
    /// Opens sockets to `--target` as `--path` with `tokens` (by socket
    /// index); with `recover_from`, each asks for recovery from its slot.
    pub(crate) fn new(
        args: &Args,
        tokens: Vec<String>,
        recover_from: Option<Arc<Shared>>,
    ) -> Result<Connector> {
        let tls = match &args.tls_ca {
            Some(ca) => {
                Some(tls_connector(ca).with_context(|| format!("--tls-ca {}", ca.display()))?)
            }
            None => None,
        };
        Ok(Connector {
            target: args.target,
            path: args.path.clone(),
            tokens,
            src_first: args.src_first,
            src_count: usize::from(args.src_last - args.src_first) + 1,
            timeout: Duration::from_secs_f64(args.connect_timeout_secs),
            recover_from,
            tls,
        })
    }

    /// TCP from 127.0.0.X (port chosen at connect time), then the handshake.
    async fn open(&self, index: usize) -> Result<LeanWs> {
        let octet = u8::try_from(usize::from(self.src_first) + index % self.src_count)
            .context("source address octet")?;
        let src = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, octet), 0));
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .context("socket")?;
        let one: libc::c_int = 1;
        // SAFETY: a valid fd we own, a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("IP_BIND_ADDRESS_NO_PORT");
        }
        socket.set_nonblocking(true).context("nonblocking")?;
        socket
            .bind(&src.into())
            .with_context(|| format!("bind {src}"))?;
        let socket = TcpSocket::from_std_stream(socket.into());
        let tcp = socket
            .connect(self.target)
            .await
            .with_context(|| format!("connect {} from {src}", self.target))?;
        tcp.set_nodelay(true).ok();
        let token = self
            .tokens
            .get(index)
            .with_context(|| format!("no token minted for socket {index}"))?;
        let path = match &self.recover_from {
            Some(shared) => {
                let recover = shared
                    .sockets
                    .get(index)
                    .map_or_else(|| "recover=".to_string(), SocketSlot::recover_query);
                format!("{}?token={token}&{recover}", self.path)
            }
            None => format!("{}?token={token}", self.path),
        };
        let stream = match &self.tls {
            Some(connector) => LeanStream::tls(connector, &self.target.ip().to_string(), tcp)
                .await
                .context("TLS handshake")?,
            None => LeanStream::from(tcp),
        };
        LeanWs::handshake(stream, &self.target.to_string(), &path)
            .await
            .context("websocket handshake")
    }

    async fn open_retrying(&self, index: usize, deadline: Instant) -> Result<(LeanWs, u32)> {
        let mut failures = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                bail!("socket {index}: no connection before the deadline ({failures} failures)");
            }
            match tokio::time::timeout(remaining.min(self.timeout), self.open(index)).await {
                Ok(Ok(ws)) => return Ok((ws, failures)),
                Ok(Err(_)) | Err(_) => {
                    failures += 1;
                    let backoff = 20u64 * u64::from(failures.min(10));
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
    }
}

pub(crate) struct Fleet {
    pub(crate) tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

pub(crate) struct ConnectReport {
    pub(crate) ok: usize,
    pub(crate) failed: usize,
    retries: u64,
    elapsed: Duration,
}

impl ConnectReport {
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let secs = self.elapsed.as_secs_f64();
        json!({
            "ok": self.ok,
            "failed": self.failed,
            "retries": self.retries,
            "elapsed_s": secs,
            "rate_per_s": if secs > 0.0 { self.ok as f64 / secs } else { 0.0 },
        })
    }
}

/// Opens `count` sockets (user of socket i = `user_of(i)`) and starts their
/// reader tasks.
pub(crate) async fn connect_fleet(
    connector: Arc<Connector>,
    count: usize,
    user_of: impl Fn(usize) -> u64,
    concurrency: usize,
    shared: Arc<Shared>,
) -> Result<(Fleet, ConnectReport)> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let retries = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut handshakes = Vec::with_capacity(count);
    for index in 0..count {
        let user = user_of(index);
        let connector = Arc::clone(&connector);
        let limit = Arc::clone(&limit);
        let retries = Arc::clone(&retries);
        handshakes.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.ok()?;
            match connector.open_retrying(index, deadline).await {
                Ok((ws, failures)) => {
                    retries.fetch_add(u64::from(failures), Ordering::Relaxed);
                    Some((ws, index, user))
                }
                Err(_) => None,
            }
        }));
    }
    let mut tasks = Vec::with_capacity(count);
    let mut failed = 0;
    for handshake in handshakes {
        match handshake.await {
            Ok(Some((ws, index, user))) => tasks.push(tokio::spawn(run_socket(
                ws,
                index,
                user,
                Arc::clone(&shared),
                stop_rx.clone(),
            ))),
            _ => failed += 1,
        }
    }
    let elapsed = started.elapsed();
    let report = ConnectReport {
        ok: tasks.len(),
        failed,
        retries: retries.load(Ordering::Relaxed),
        elapsed,
    };
    Ok((
        Fleet {
            tasks,
            stop: stop_tx,
        },
        report,
    ))
}

impl Fleet {
    /// Clean close of every socket.
    pub(crate) async fn close(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Drops every socket at once (no close handshake).
    pub(crate) async fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
