//! A throw-away `redis-server` per test: started from `PATH` on a free
//! 127.0.0.1 port with no persistence, in its own temp directory with its own
//! log file, and stopped, paused, resumed or restarted **by the PID of the child
//! it spawned**.
//!
//! It must never touch port 6379, a server it did not start, or any process by
//! name. Assertions on Redis contents go through [`RedisServer::cmd`] (the tiny
//! RESP client in [`crate::resp`]); this module holds no product logic.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::procs::{self, Signal};
use crate::resp::{RespClient, RespValue};

/// How long a fresh server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Timeout of one [`RedisServer::cmd`] round trip.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process owned by the test.
pub struct RedisServer {
    child: Option<Child>,
    pid: u32,
    port: u16,
    dir: PathBuf,
    generation: u32,
    extra_args: Vec<String>,
    paused: bool,
}

enum SpawnError {
    /// The port was taken between picking and binding.
    AddrInUse(String),
    Other(anyhow::Error),
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers PING.
    pub fn start() -> Result<RedisServer> {
        RedisServer::start_with_args(&[])
    }

    /// Like [`start`](Self::start), with extra `redis-server` arguments
    /// (e.g. `["--maxmemory", "10mb"]`). `--port`, `--bind`, `--dir`,
    /// `--logfile`, `--save` and `--appendonly` are set by the harness.
    pub fn start_with_args(extra_args: &[&str]) -> Result<RedisServer> {
        let dir = procs::scratch_dir("redis").context("creating redis temp dir")?;
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut last_err = None;
        for _attempt in 0..8 {
            let port = procs::free_port().context("picking a free port")?;
            if port == 6379 {
                continue;
            }
            match spawn_on(port, &dir, 0, &extra_args) {
                Ok(child) => {
                    return Ok(RedisServer {
                        pid: child.id(),
                        child: Some(child),
                        port,
                        dir,
                        generation: 0,
                        extra_args,
                        paused: false,
                    })
                }
                Err(SpawnError::AddrInUse(log)) => {
                    last_err = Some(anyhow!("port collision: {log}"))
                }
                Err(SpawnError::Other(err)) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(err);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last_err.unwrap_or_else(|| anyhow!("no free port found")))
            .context("starting redis-server")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// PID of the current (or, after `stop`, the last) server process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The current server's log file.
    pub fn log_path(&self) -> PathBuf {
        log_path(&self.dir, self.generation)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGTERM (plus SIGCONT in case it is paused), SIGKILL after a grace
    /// period, then reap. A no-op when already stopped.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait().context("polling redis-server")?.is_some() {
            return Ok(());
        }
        let pid = child.id();
        procs::send_signal(pid, Signal::Term).context("SIGTERM redis-server")?;
        if self.paused {
            procs::send_signal(pid, Signal::Cont).ok();
            self.paused = false;
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if child.try_wait().context("polling redis-server")?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        procs::send_signal(pid, Signal::Kill).ok();
        child.wait().context("reaping redis-server")?;
        Ok(())
    }

    /// Stops the server (if running) and starts a fresh, empty one on the same
    /// port, like a Redis restart without persistence. Waits for PING.
    pub fn restart_empty(&mut self) -> Result<()> {
        self.stop()?;
        let mut last = String::new();
        // The old socket may linger a moment; redis sets SO_REUSEADDR, so a
        // few short retries are plenty.
        for _attempt in 0..20 {
            self.generation += 1;
            match spawn_on(self.port, &self.dir, self.generation, &self.extra_args) {
                Ok(child) => {
                    self.pid = child.id();
                    self.child = Some(child);
                    return Ok(());
                }
                Err(SpawnError::AddrInUse(log)) => {
                    last = log;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(SpawnError::Other(err)) => return Err(err),
            }
        }
        bail!("could not restart redis on port {}: {last}", self.port)
    }

    /// SIGSTOP: the server stops answering but keeps its sockets and data.
    pub fn pause(&mut self) -> Result<()> {
        let pid = self.running_pid()?;
        procs::send_signal(pid, Signal::Stop).context("SIGSTOP redis-server")?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) -> Result<()> {
        let pid = self.running_pid()?;
        procs::send_signal(pid, Signal::Cont).context("SIGCONT redis-server")?;
        self.paused = false;
        Ok(())
    }

    fn running_pid(&mut self) -> Result<u32> {
        if !self.is_running() {
            bail!("redis-server is not running");
        }
        Ok(self.pid)
    }

    /// A new RESP connection to this server.
    pub async fn client(&self) -> Result<RespClient> {
        RespClient::connect(&self.addr()).await
    }

    /// Runs one command on a fresh connection and flattens the reply to
    /// strings (see [`RespValue::into_strings`]); an error reply is `Err`.
    /// Example: `redis.cmd(&["ZRANGE", key, "0", "-1", "WITHSCORES"])`.
    pub async fn cmd(&self, args: &[&str]) -> Result<Vec<String>> {
        self.cmd_value(args).await?.into_strings()
    }

    /// Runs one command on a fresh connection and returns the raw reply
    /// (error replies included as `RespValue::Error`).
    pub async fn cmd_value<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<RespValue> {
        let fut = async {
            let mut client = self.client().await?;
            client.command(args).await
        };
        tokio::time::timeout(CMD_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("redis did not answer within {CMD_TIMEOUT:?}"))?
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let pid = child.id();
                let _ = procs::send_signal(pid, Signal::Kill);
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "redis-server files kept for inspection: {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn log_path(dir: &Path, generation: u32) -> PathBuf {
    dir.join(format!("redis-{generation}.log"))
}

fn spawn_on(
    port: u16,
    dir: &Path,
    generation: u32,
    extra_args: &[String],
) -> std::result::Result<Child, SpawnError> {
    if port == 6379 {
        return Err(SpawnError::Other(anyhow!("refusing to use port 6379")));
    }
    let log = log_path(dir, generation);
    let _ = std::fs::remove_file(&log);
    let mut child = Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            SpawnError::Other(anyhow!(e).context("spawning redis-server (is it on PATH?)"))
        })?;

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail = procs::tail(&text, 20);
                if text.contains("Address already in use") {
                    return Err(SpawnError::AddrInUse(tail));
                }
                return Err(SpawnError::Other(anyhow!(
                    "redis-server exited at start ({status}); log tail:\n{tail}"
                )));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(SpawnError::Other(
                    anyhow!(e).context("polling redis-server"),
                ))
            }
        }
        // Check it is OUR server answering (another test may have grabbed the
        // port in the meantime and ours may be about to exit).
        if answers_as(port, child.id()) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let pid = child.id();
            let _ = procs::send_signal(pid, Signal::Kill);
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(SpawnError::Other(anyhow!(
                "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}; log tail:\n{}",
                procs::tail(&text, 20)
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Blocking `INFO server` on loopback (used only while starting): true when
/// the server on `port` answers and reports `process_id:<pid>`.
fn answers_as(port: u16, pid: u32) -> bool {
    let Ok(mut stream) = StdTcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let mut needed: Option<usize> = None;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
        if needed.is_none() {
            if let Some(end) = reply.windows(2).position(|w| w == b"\r\n") {
                // A bulk string `$N\r\n<N bytes>\r\n`; anything else (an error
                // such as -LOADING) means "not ready".
                let header = String::from_utf8_lossy(&reply[..end]).into_owned();
                let Some(len) = header
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    return false;
                };
                needed = Some(end + 2 + len + 2);
            }
        }
        if let Some(total) = needed {
            if reply.len() >= total {
                let want = format!("process_id:{pid}\r\n");
                return String::from_utf8_lossy(&reply).contains(&want);
            }
        }
        if reply.len() > 1024 * 1024 {
            return false;
        }
    }
}
