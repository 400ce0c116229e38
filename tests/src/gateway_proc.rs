//! Runs the gateway binary under test as a child process: generates its TOML
//! config ([`GatewayConfig`]), starts `gateway-under-test --config <file> serve`
//! with `RUST_LOG`/`GATEWAY_LOG_FORMAT` (+ extra env; inherited `GATEWAY_*`
//! variables are removed, the gateway reads them as config), captures stdout+stderr to
//! `target/test-logs/<test-name>-<pid>.log` (tests grep these, e.g. for leaked
//! tokens), waits for `GET /readyz` = 200 on the admin listener, and signals /
//! waits / kills it **by its PID**.
//!
//! The binary is this package's `gateway-under-test` bin (same one-line main
//! as the shipped `gateway`); locate it with [`gateway_bin!`] from an
//! integration test or let [`GatewayLauncher::new`] find it next to the test
//! executable. This module holds no gateway logic and must not start anything
//! but that binary.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::procs::{self, Signal};

/// How long the gateway may take to answer `/readyz` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the `gateway-under-test` binary, from an integration test
/// (`CARGO_BIN_EXE_*` is only set when compiling tests of this package).
#[macro_export]
macro_rules! gateway_bin {
    () => {
        ::std::path::PathBuf::from(env!("CARGO_BIN_EXE_gateway-under-test"))
    };
}

/// Gateway configuration with test defaults, rendered by [`to_toml`](Self::to_toml).
/// Field names mirror the TOML keys; every field is public and has a
/// chainable setter.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub listen: String,
    pub admin_listen: String,
    pub ping_interval: String,
    pub pong_timeout: String,
    pub jwt_secret: String,
    pub jwt_algorithm: String,
    pub token_cookie: String,
    pub backend: String,
    pub hosts: Vec<String>,
    pub prefix: String,
    pub expiry: u64,
    pub group_expiry: u64,
    pub capacity: u64,
    pub passthrough_types: Vec<String>,
    pub log_format: String,
    /// Raw lines to add inside a section (`(section, line)`); a section not
    /// among the standard ones is appended as a new table.
    pub extra_lines: Vec<(String, String)>,
    /// Raw TOML appended at the very end.
    pub extra_toml: String,
}

/// The standard sections, in output order.
const SECTIONS: [&str; 5] = ["server", "auth", "layer", "events", "log"];

impl GatewayConfig {
    /// Defaults: free loopback ports for `listen`/`admin_listen`, core layer on
    /// `redis_url`, prefix `asgi`, expiry 60, group_expiry 86400, capacity 100,
    /// HS256 secret `test-secret`, no token cookie, JSON logs.
    pub fn new(redis_url: &str) -> Result<GatewayConfig> {
        let mut cfg = GatewayConfig {
            listen: String::new(),
            admin_listen: String::new(),
            ping_interval: "25s".into(),
            pong_timeout: "60s".into(),
            jwt_secret: "test-secret".into(),
            jwt_algorithm: "HS256".into(),
            token_cookie: String::new(),
            backend: "core".into(),
            hosts: vec![redis_url.to_string()],
            prefix: "asgi".into(),
            expiry: 60,
            group_expiry: 86400,
            capacity: 100,
            passthrough_types: Vec::new(),
            log_format: "json".into(),
            extra_lines: Vec::new(),
            extra_toml: String::new(),
        };
        cfg.repick_ports()?;
        Ok(cfg)
    }

    /// Picks new free ports for both listeners.
    pub fn repick_ports(&mut self) -> Result<()> {
        let a = procs::free_port().context("picking a free port")?;
        let mut b = procs::free_port().context("picking a free port")?;
        while b == a {
            b = procs::free_port().context("picking a free port")?;
        }
        self.listen = format!("127.0.0.1:{a}");
        self.admin_listen = format!("127.0.0.1:{b}");
        Ok(())
    }

    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }
    pub fn admin_listen(mut self, addr: impl Into<String>) -> Self {
        self.admin_listen = addr.into();
        self
    }
    pub fn ping_interval(mut self, humantime: impl Into<String>) -> Self {
        self.ping_interval = humantime.into();
        self
    }
    pub fn pong_timeout(mut self, humantime: impl Into<String>) -> Self {
        self.pong_timeout = humantime.into();
        self
    }
    pub fn jwt_secret(mut self, secret: impl Into<String>) -> Self {
        self.jwt_secret = secret.into();
        self
    }
    pub fn jwt_algorithm(mut self, alg: impl Into<String>) -> Self {
        self.jwt_algorithm = alg.into();
        self
    }
    /// Serves the public listener over TLS with `cert` and `key` (PEM).
    pub fn tls(self, cert: &std::path::Path, key: &std::path::Path) -> Self {
        self.line(
            "server",
            format!("tls_cert_file = {}", toml_str(&cert.to_string_lossy())),
        )
        .line(
            "server",
            format!("tls_key_file = {}", toml_str(&key.to_string_lossy())),
        )
    }
    /// Turns the cookie transport on (it is off by default); the gateway
    /// then also needs `allowed_origins` (or the explicit waiver).
    pub fn token_cookie(mut self, name: impl Into<String>) -> Self {
        self.token_cookie = name.into();
        self
    }
    /// `"core"` or `"pubsub"`.
    pub fn backend(mut self, backend: impl Into<String>) -> Self {
        self.backend = backend.into();
        self
    }
    pub fn hosts(mut self, hosts: Vec<String>) -> Self {
        self.hosts = hosts;
        self
    }
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    pub fn expiry(mut self, secs: u64) -> Self {
        self.expiry = secs;
        self
    }
    pub fn group_expiry(mut self, secs: u64) -> Self {
        self.group_expiry = secs;
        self
    }
    pub fn capacity(mut self, n: u64) -> Self {
        self.capacity = n;
        self
    }
    pub fn passthrough_types(mut self, types: Vec<String>) -> Self {
        self.passthrough_types = types;
        self
    }
    pub fn log_format(mut self, format: impl Into<String>) -> Self {
        self.log_format = format.into();
        self
    }
    /// Adds a raw `key = value` line inside `[section]` (e.g.
    /// `.line("server", "max_connections = 10")`).
    pub fn line(mut self, section: impl Into<String>, line: impl Into<String>) -> Self {
        self.extra_lines.push((section.into(), line.into()));
        self
    }
    /// Appends raw TOML (new tables, arrays of tables) at the end.
    pub fn extra_toml(mut self, toml: impl AsRef<str>) -> Self {
        self.extra_toml.push_str(toml.as_ref());
        if !self.extra_toml.ends_with('\n') {
            self.extra_toml.push('\n');
        }
        self
    }

    /// `ws://<listen><path>`
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.listen, path)
    }

    /// `http://<admin_listen><path>`
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_listen, path)
    }

    /// Renders the config file.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let std_lines = |section: &str| -> Vec<String> {
            match section {
                "server" => vec![
                    format!("listen = {}", toml_str(&self.listen)),
                    format!("admin_listen = {}", toml_str(&self.admin_listen)),
                    format!("ping_interval = {}", toml_str(&self.ping_interval)),
                    format!("pong_timeout = {}", toml_str(&self.pong_timeout)),
                ],
                "auth" => vec![
                    format!("jwt_secret = {}", toml_str(&self.jwt_secret)),
                    format!("jwt_algorithm = {}", toml_str(&self.jwt_algorithm)),
                    if self.token_cookie.is_empty() {
                        String::new()
                    } else {
                        format!("token_cookie = {}", toml_str(&self.token_cookie))
                    },
                ],
                "layer" => vec![
                    format!("backend = {}", toml_str(&self.backend)),
                    // No `hosts` here when a test writes its own (tables).
                    if self.hosts.is_empty() {
                        String::new()
                    } else {
                        format!("hosts = {}", toml_str_array(&self.hosts))
                    },
                    format!("prefix = {}", toml_str(&self.prefix)),
                    format!("expiry = {}", self.expiry),
                    format!("group_expiry = {}", self.group_expiry),
                    format!("capacity = {}", self.capacity),
                ],
                "events" => vec![format!(
                    "passthrough_types = {}",
                    toml_str_array(&self.passthrough_types)
                )],
                "log" => vec![format!("format = {}", toml_str(&self.log_format))],
                _ => Vec::new(),
            }
        };
        let mut sections: Vec<String> = SECTIONS.iter().map(|s| s.to_string()).collect();
        for (section, _) in &self.extra_lines {
            if !sections.contains(section) {
                sections.push(section.clone());
            }
        }
        for section in &sections {
            out.push_str(&format!("[{section}]\n"));
            for line in std_lines(section) {
                out.push_str(&line);
                out.push('\n');
            }
            for (s, line) in &self.extra_lines {
                if s == section {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            out.push('\n');
        }
        out.push_str(&self.extra_toml);
        out
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_str_array(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// How to start the gateway: binary, extra env, test name for the log file.
#[derive(Clone, Debug)]
pub struct GatewayLauncher {
    bin: PathBuf,
    env: Vec<(String, String)>,
    test_name: String,
    ready_timeout: Duration,
    extra_args: Vec<String>,
}

impl Default for GatewayLauncher {
    fn default() -> Self {
        GatewayLauncher::new()
    }
}

impl GatewayLauncher {
    /// Binary from `HARNESS_GATEWAY_BIN` if set, else `gateway-under-test`
    /// in the directory above the running test executable (`target/<profile>/`);
    /// prefer [`bin`](Self::bin)`(gateway_bin!())` from integration tests.
    /// The test name defaults to the current libtest thread name.
    pub fn new() -> GatewayLauncher {
        GatewayLauncher {
            bin: default_bin(),
            env: Vec::new(),
            test_name: procs::current_test_name(),
            ready_timeout: READY_TIMEOUT,
            extra_args: Vec::new(),
        }
    }

    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = bin.into();
        self
    }

    /// Extra environment variable for the child (after the harness defaults,
    /// so it can override `RUST_LOG` too).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn test_name(mut self, name: &str) -> Self {
        self.test_name = procs::sanitize(name);
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Arguments placed before `--config <file> serve` (global CLI flags).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Starts with a raw TOML config and waits for readiness.
    pub async fn start(&self, config_toml: &str) -> Result<GatewayProcess> {
        let (listen, admin_listen) = listen_addrs(config_toml)?;
        let mut proc = self.spawn(config_toml, listen, admin_listen)?;
        proc.wait_ready(self.ready_timeout).await?;
        Ok(proc)
    }

    /// Starts from a [`GatewayConfig`]; if a listener port was taken in the
    /// meantime, picks new ports and tries again (the config is updated).
    pub async fn start_config(&self, config: &mut GatewayConfig) -> Result<GatewayProcess> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let toml = config.to_toml();
            let mut proc = self.spawn(&toml, config.listen.clone(), config.admin_listen.clone())?;
            match proc.wait_ready(self.ready_timeout).await {
                Ok(()) => return Ok(proc),
                Err(err) => {
                    let log = proc.log_text();
                    let collided =
                        log.contains("Address already in use") || log.contains("os error 98");
                    if collided && attempt < 4 {
                        drop(proc);
                        config.repick_ports()?;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Spawns without waiting for readiness (for tests of start-up failures).
    pub fn spawn_only(&self, config_toml: &str) -> Result<GatewayProcess> {
        let (listen, admin_listen) = listen_addrs(config_toml).unwrap_or_default();
        self.spawn(config_toml, listen, admin_listen)
    }

    fn spawn(
        &self,
        config_toml: &str,
        listen: String,
        admin_listen: String,
    ) -> Result<GatewayProcess> {
        if !self.bin.exists() {
            bail!(
                "gateway binary {} not found (build it with `cargo test -p tests`, or set HARNESS_GATEWAY_BIN)",
                self.bin.display()
            );
        }
        let log_dir = procs::target_dir().join("test-logs");
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let serial = procs::next_serial();
        let stem = format!(
            "{}-spawning-{}-{serial}",
            self.test_name,
            std::process::id()
        );
        let tmp_log = log_dir.join(format!("{stem}.log"));
        // The config keeps its name: the child opens it after the spawn.
        let config_path = log_dir.join(format!(
            "{}-{}-{serial}.toml",
            self.test_name,
            std::process::id()
        ));
        std::fs::write(&config_path, config_toml)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log =
            File::create(&tmp_log).with_context(|| format!("creating {}", tmp_log.display()))?;
        let log_err = log.try_clone().context("cloning log file handle")?;

        let mut cmd = Command::new(&self.bin);
        // The gateway reads every `GATEWAY_*` variable as configuration: do not
        // let the test runner's environment leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GATEWAY_") {
                cmd.env_remove(&key);
            }
        }
        cmd.args(&self.extra_args)
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .env("RUST_LOG", "info")
            .env("GATEWAY_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("gateway exited immediately"))?;

        // Name the log after the gateway's PID (the child's handles stay valid).
        let log_path = log_dir.join(format!("{}-{pid}.log", self.test_name));
        let log_path = match std::fs::rename(&tmp_log, &log_path) {
            Ok(()) => log_path,
            Err(_) => tmp_log,
        };
        Ok(GatewayProcess {
            child,
            pid,
            listen,
            admin_listen,
            log_path,
            config_path,
            exit: None,
        })
    }
}

fn default_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("HARNESS_GATEWAY_BIN") {
        return PathBuf::from(path);
    }
    let name = format!("gateway-under-test{}", std::env::consts::EXE_SUFFIX);
    // target/<profile>/deps/<test-exe> -> target/<profile>/gateway-under-test
    if let Ok(exe) = std::env::current_exe() {
        if let Some(deps) = exe.parent() {
            let up = if deps.file_name().is_some_and(|n| n == "deps") {
                deps.parent()
            } else {
                Some(deps)
            };
            if let Some(dir) = up {
                return dir.join(name);
            }
        }
    }
    procs::target_dir().join("debug").join(name)
}

/// Reads `server.listen` and `server.admin_listen` from a config file text.
fn listen_addrs(config_toml: &str) -> Result<(String, String)> {
    let doc: toml::Table =
        toml::from_str(config_toml).context("the gateway config is not valid TOML")?;
    let server = doc
        .get("server")
        .and_then(|v| v.as_table())
        .ok_or_else(|| anyhow!("config has no [server] table"))?;
    let get = |key: &str| -> Result<String> {
        server
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("config has no server.{key} string"))
    };
    Ok((get("listen")?, get("admin_listen")?))
}

/// A running gateway child.
pub struct GatewayProcess {
    child: Child,
    pid: u32,
    listen: String,
    admin_listen: String,
    log_path: PathBuf,
    config_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl GatewayProcess {
    /// [`GatewayLauncher::new`]`().start(config_toml)`.
    pub async fn start(config_toml: &str) -> Result<GatewayProcess> {
        GatewayLauncher::new().start(config_toml).await
    }

    /// [`GatewayLauncher::new`]`().start_config(config)`.
    pub async fn start_config(config: &mut GatewayConfig) -> Result<GatewayProcess> {
        GatewayLauncher::new().start_config(config).await
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `ws://<listen><path>`
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.listen, path)
    }

    /// `http://<admin_listen><path>`
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_listen, path)
    }

    pub fn listen_addr(&self) -> &str {
        &self.listen
    }

    pub fn admin_addr(&self) -> &str {
        &self.admin_listen
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Polls the log until it contains `needle` (true) or `timeout` passes.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET <path>` on the admin listener: `(status, body)`.
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(&self.admin_listen, path, Duration::from_secs(10)).await
    }

    /// Sends `signal` to the gateway's PID (only while it is unreaped).
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.exit.is_some() || !matches!(self.child.try_wait(), Ok(None)) {
            bail!("gateway (pid {}) is no longer running", self.pid);
        }
        procs::send_signal(self.pid, signal)
            .with_context(|| format!("signal {signal:?} to pid {}", self.pid))
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| anyhow!("gateway (pid {}) did not exit within {timeout:?}", self.pid))?
            .context("waiting for the gateway")?;
        self.exit = Some(status);
        Ok(status)
    }

    /// `Some(status)` once it has exited (non-blocking).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        if self.try_exit_status().is_none() {
            procs::send_signal(self.pid, Signal::Kill).ok();
        }
        self.wait_exit(Duration::from_secs(10)).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                bail!(
                    "gateway exited before becoming ready ({status}); log {}:\n{}",
                    self.log_path.display(),
                    procs::tail(&self.log_text(), 40)
                );
            }
            let last = match http_get(&self.admin_listen, "/readyz", Duration::from_secs(2)).await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                let _ = self.kill().await;
                bail!(
                    "gateway not ready within {timeout:?} (last /readyz: {last}); log {}:\n{}",
                    self.log_path.display(),
                    procs::tail(&self.log_text(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // Unreaped, so the PID is still our child's.
            if let Ok(None) = self.child.try_wait() {
                let _ = procs::send_signal(self.pid, Signal::Kill);
            }
        }
    }
}

/// A plain HTTP/1.1 `GET` over a fresh TCP connection (`Connection: close`):
/// `(status, body)`. Handles `Content-Length`, chunked and read-to-EOF bodies.
pub async fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let fut = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .context("sending request")?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .context("reading response")?;
        parse_http_response(&raw)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("GET http://{addr}{path} timed out after {timeout:?}"))?
}

fn parse_http_response(raw: &[u8]) -> Result<(u16, String)> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("incomplete HTTP response ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k.eq_ignore_ascii_case("content-length") {
                length = v.parse().ok();
            }
        }
    }
    let body = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body[..n.min(body.len())].to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunked body"))?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA";
        assert_eq!(
            parse_http_response(plain).expect("plain"),
            (200, "ok".to_string())
        );
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(chunked).expect("chunked"),
            (503, "not ready".to_string())
        );
    }

    #[test]
    fn config_round_trips_through_toml() {
        let cfg = GatewayConfig::new("redis://127.0.0.1:7000")
            .expect("config")
            .backend("pubsub")
            .jwt_secret("we\"ird\\secret")
            .passthrough_types(vec!["chat.message".into()])
            .line("server", "max_connections = 10")
            .line("metrics", "enabled = true")
            .extra_toml("[[extra.list]]\nname = \"a\"");
        let text = cfg.to_toml();
        let doc: toml::Table = toml::from_str(&text).expect("valid toml");
        assert_eq!(doc["server"]["max_connections"].as_integer(), Some(10));
        assert_eq!(doc["auth"]["jwt_secret"].as_str(), Some("we\"ird\\secret"));
        assert_eq!(doc["layer"]["backend"].as_str(), Some("pubsub"));
        assert_eq!(
            doc["layer"]["hosts"][0].as_str(),
            Some("redis://127.0.0.1:7000")
        );
        assert_eq!(doc["layer"]["capacity"].as_integer(), Some(100));
        assert_eq!(
            doc["events"]["passthrough_types"][0].as_str(),
            Some("chat.message")
        );
        assert_eq!(doc["metrics"]["enabled"].as_bool(), Some(true));
        assert_eq!(doc["extra"]["list"][0]["name"].as_str(), Some("a"));
        let (listen, admin) = listen_addrs(&text).expect("addrs");
        assert_eq!(listen, cfg.listen);
        assert_eq!(admin, cfg.admin_listen);
        assert_ne!(listen, admin);
    }
}
