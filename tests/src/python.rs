//! The Python side of the interop tests: makes sure the repository venv exists
//! (`tests/py/ensure_venv.py`, once per test process) and drives the REAL
//! `channels_redis` library through a long-lived `tests/py/layer_driver.py`
//! child speaking JSON lines.
//!
//! Every interop test publishes through [`LayerDriver`]; this module must not
//! re-implement the channels_redis wire format (a native encoder belongs to the
//! gateway and is checked *against* [`LayerDriver::serialize`]). The driver
//! child is ended by its PID when the handle is dropped.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::procs::{self, Signal};

/// How long the driver may take to import Django/channels and build the layer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound on one request.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Driver stderr lines kept for error messages and [`LayerDriver::stderr_text`].
const STDERR_KEEP: usize = 5000;

static PYTHON: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// `<repo>/tests/py`
pub fn py_dir() -> PathBuf {
    procs::repo_root().join("tests").join("py")
}

/// The venv python, creating/refreshing the venv once per process with
/// `python3 tests/py/ensure_venv.py`. The result (or error) is cached.
pub fn try_python_bin() -> Result<PathBuf> {
    PYTHON
        .get_or_init(|| run_ensure_venv().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

/// [`try_python_bin`], panicking with the reason when the venv cannot be made
/// (test infrastructure is unusable then).
pub fn python_bin() -> PathBuf {
    match try_python_bin() {
        Ok(path) => path,
        Err(err) => panic!("the test venv is unavailable: {err:#}"),
    }
}

fn run_ensure_venv() -> Result<PathBuf> {
    let script = py_dir().join("ensure_venv.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .context("running python3 tests/py/ensure_venv.py (is python3 on PATH?)")?;
    if !out.status.success() {
        bail!(
            "ensure_venv.py failed ({}):\n{}",
            out.status,
            procs::tail(&String::from_utf8_lossy(&out.stderr), 40)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| anyhow!("ensure_venv.py printed no path"))?;
    let path = PathBuf::from(line.trim());
    if !path.exists() {
        bail!("ensure_venv.py printed {path:?}, which does not exist");
    }
    Ok(path)
}

/// A JSON value for the driver. `serde_json::Value` does not keep object key
/// order in this workspace (the `preserve_order` feature is deliberately off:
/// enabling it would change serde_json for the gateway crates in test builds
/// through feature unification), so where key order matters pass [`JsonText`],
/// which is sent verbatim.
pub trait ToDriverJson {
    /// JSON text on one line.
    fn to_driver_json(&self) -> Result<String>;
}

impl ToDriverJson for Value {
    fn to_driver_json(&self) -> Result<String> {
        serde_json::to_string(self).context("encoding JSON for the driver")
    }
}

impl<T: ToDriverJson + ?Sized> ToDriverJson for &T {
    fn to_driver_json(&self) -> Result<String> {
        (**self).to_driver_json()
    }
}

/// JSON text passed to Python byte for byte (key order, `1.0` vs `1`, big
/// integers all kept). Validated before sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonText(pub String);

impl JsonText {
    pub fn new(text: impl Into<String>) -> JsonText {
        JsonText(text.into())
    }
}

impl From<&str> for JsonText {
    fn from(text: &str) -> JsonText {
        JsonText(text.to_string())
    }
}

impl ToDriverJson for JsonText {
    fn to_driver_json(&self) -> Result<String> {
        serde_json::from_str::<serde::de::IgnoredAny>(&self.0)
            .with_context(|| format!("not valid JSON text: {:?}", self.0))?;
        // Raw newlines can only be insignificant whitespace in valid JSON
        // (inside strings they must be escaped); the protocol is line based.
        Ok(self.0.replace(['\n', '\r'], " "))
    }
}

/// A pair from simplejwt's `RefreshToken.for_user(user)` / `.access_token`.
#[derive(Clone, Debug)]
pub struct SimpleJwtPair {
    pub access: String,
    pub refresh: String,
    /// The access token's payload as simplejwt built it.
    pub access_claims: Value,
}

/// A running `layer_driver.py` bound to one channels_redis layer instance.
pub struct LayerDriver {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    layer: String,
    greeting: Value,
    request_timeout: Duration,
    next_id: u64,
    broken: Option<String>,
}

impl LayerDriver {
    /// Spawns the driver for `layer` (`"core"` or `"pubsub"`) with `config`
    /// (the CHANNEL_LAYERS `CONFIG` dict as JSON) and waits for its greeting.
    pub async fn start(layer: &str, config: impl ToDriverJson) -> Result<LayerDriver> {
        let python = try_python_bin()?;
        let script = py_dir().join("layer_driver.py");
        let config_json = config.to_driver_json()?;
        let mut child = Command::new(&python)
            .arg(&script)
            .arg("--layer")
            .arg(layer)
            .arg("--config")
            .arg(&config_json)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {} {}", python.display(), script.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("layer driver exited immediately"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no driver stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no driver stdout"))?;
        let stderr_pipe = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("no driver stderr"))?;

        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr_pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut buf) = sink.lock() {
                    if buf.len() >= STDERR_KEEP {
                        buf.pop_front();
                    }
                    buf.push_back(line);
                }
            }
        });

        let mut driver = LayerDriver {
            child,
            pid,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            stderr,
            layer: layer.to_string(),
            greeting: Value::Null,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            next_id: 1,
            broken: None,
        };
        let greeting = driver
            .read_reply(START_TIMEOUT)
            .await
            .context("waiting for the layer driver's greeting")?;
        if greeting.get("ok") != Some(&Value::Bool(true)) {
            bail!(
                "layer driver refused {layer} config {config_json}: {}\n{}",
                greeting.get("error").and_then(Value::as_str).unwrap_or("?"),
                greeting
                    .get("traceback")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
        }
        driver.greeting = greeting;
        Ok(driver)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `"core"` or `"pubsub"`.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// Library versions reported by the driver (`versions` of its greeting).
    pub fn versions(&self) -> Value {
        self.greeting
            .get("versions")
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Bound on each later request (default 120 s).
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// What the driver wrote to stderr so far (logging of channels_redis,
    /// warnings, tracebacks), last lines only.
    pub fn stderr_text(&self) -> String {
        match self.stderr.lock() {
            Ok(buf) => buf.iter().cloned().collect::<Vec<_>>().join("\n"),
            Err(_) => String::new(),
        }
    }

    /// Sends one request object and returns the reply; `ok: false` replies
    /// become `Err` carrying the driver's error text.
    pub async fn request(&mut self, request: Value) -> Result<Value> {
        let timeout = self.request_timeout;
        self.request_fields(request, &[], timeout).await
    }

    /// [`request`](Self::request) with an explicit bound.
    pub async fn request_with_timeout(
        &mut self,
        request: Value,
        timeout: Duration,
    ) -> Result<Value> {
        self.request_fields(request, &[], timeout).await
    }

    /// Sends `base` (an object with "op") plus fields whose values are JSON
    /// text spliced in verbatim (see [`JsonText`]).
    pub async fn request_fields(
        &mut self,
        mut base: Value,
        raw_fields: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Value> {
        if let Some(why) = &self.broken {
            bail!("layer driver unusable: {why}");
        }
        let id = self.next_id;
        self.next_id += 1;
        let op = base
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        match base.as_object_mut() {
            Some(obj) => {
                obj.insert("id".to_string(), json!(id));
            }
            None => bail!("a driver request must be a JSON object"),
        }
        let mut line = serde_json::to_string(&base).context("encoding request")?;
        for (key, raw) in raw_fields {
            // `line` is an object with at least "id": replace its closing
            // brace with `,"key":raw}`.
            line.pop();
            line.push(',');
            line.push_str(&serde_json::to_string(key).context("encoding key")?);
            line.push(':');
            line.push_str(raw);
            line.push('}');
        }
        line.push('\n');
        if let Err(err) = self.write_line(&line).await {
            self.broken = Some(format!("{err:#}"));
            return Err(err);
        }
        let reply = match self.read_reply(timeout).await {
            Ok(reply) => reply,
            Err(err) => {
                // The stream is out of step now (or the child died).
                self.broken = Some(format!("{err:#}"));
                return Err(err.context(format!("driver op {op}")));
            }
        };
        if reply.get("id") != Some(&json!(id)) {
            let why = format!("reply out of step: sent id {id}, got {reply}");
            self.broken = Some(why.clone());
            bail!(why);
        }
        if reply.get("ok") == Some(&Value::Bool(true)) {
            // Tokens minted by Python count as issued for the leak check.
            for field in ["token", "access", "refresh"] {
                if let Some(token) = reply.get(field).and_then(Value::as_str) {
                    crate::tokens::record_issued(token);
                }
            }
            Ok(reply)
        } else {
            let error = reply
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("driver replied ok=false without error");
            let tb = reply.get("traceback").and_then(Value::as_str).unwrap_or("");
            Err(anyhow!("driver op {op} failed: {error}\n{tb}"))
        }
    }

    async fn op_with(&mut self, base: Value, raw_fields: &[(&str, String)]) -> Result<Value> {
        let timeout = self.request_timeout;
        self.request_fields(base, raw_fields, timeout).await
    }

    async fn write_line(&mut self, line: &str) -> Result<()> {
        self.stdin
            .write_all(line.as_bytes())
            .await
            .context("writing to the layer driver")?;
        self.stdin
            .flush()
            .await
            .context("flushing the layer driver")?;
        Ok(())
    }

    async fn read_reply(&mut self, timeout: Duration) -> Result<Value> {
        let next = tokio::time::timeout(timeout, self.stdout.next_line()).await;
        let line = match next {
            Err(_) => bail!(
                "layer driver gave no reply within {timeout:?}; stderr tail:\n{}",
                procs::tail(&self.stderr_text(), 30)
            ),
            Ok(Err(err)) => return Err(anyhow!(err).context("reading the layer driver")),
            Ok(Ok(None)) => {
                let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait())
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown status".to_string());
                // Give the stderr task a moment to collect the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                bail!(
                    "layer driver exited ({status}); stderr tail:\n{}",
                    procs::tail(&self.stderr_text(), 30)
                )
            }
            Ok(Ok(Some(line))) => line,
        };
        serde_json::from_str(&line).with_context(|| format!("driver wrote non-JSON line {line:?}"))
    }

    /// `channel_layer.group_send(group, message)`; `message` must contain "type".
    pub async fn group_send(&mut self, group: &str, message: impl ToDriverJson) -> Result<()> {
        let raw = message.to_driver_json()?;
        self.op_with(
            json!({"op": "group_send", "group": group}),
            &[("message", raw)],
        )
        .await
        .map(drop)
    }

    /// `count` group_sends back to back of copies of `message`; when
    /// `message["message"]` is an object its `index_field` is set to 0..count,
    /// otherwise it becomes `"<message> #<i>"`. Returns the driver's reply
    /// (`count`, `elapsed_s`) once all are sent.
    pub async fn group_send_seq(
        &mut self,
        group: &str,
        count: u64,
        message: impl ToDriverJson,
        index_field: &str,
    ) -> Result<Value> {
        self.group_send_rounds(&[group.to_string()], count, message, index_field)
            .await
    }

    /// [`group_send_seq`](Self::group_send_seq) to several groups in turn:
    /// message `i` goes to every group before message `i + 1` goes to any.
    pub async fn group_send_rounds(
        &mut self,
        groups: &[String],
        count: u64,
        message: impl ToDriverJson,
        index_field: &str,
    ) -> Result<Value> {
        self.group_send_rounds_from(groups, 0, count, message, index_field)
            .await
    }

    /// [`group_send_rounds`](Self::group_send_rounds) numbering from
    /// `start` instead of 0.
    pub async fn group_send_rounds_from(
        &mut self,
        groups: &[String],
        start: u64,
        count: u64,
        message: impl ToDriverJson,
        index_field: &str,
    ) -> Result<Value> {
        let raw = message.to_driver_json()?;
        self.op_with(
            json!({
                "op": "group_send_seq",
                "groups": groups,
                "start": start,
                "count": count,
                "index_field": index_field,
            }),
            &[("message", raw)],
        )
        .await
    }

    /// Like [`group_send_seq`](Self::group_send_seq), also stamping
    /// `time.time()` (float seconds) into `timestamp_field` of each message.
    pub async fn group_send_seq_timed(
        &mut self,
        group: &str,
        count: u64,
        message: impl ToDriverJson,
        index_field: &str,
        timestamp_field: &str,
    ) -> Result<Value> {
        let raw = message.to_driver_json()?;
        self.op_with(
            json!({
                "op": "group_send_seq",
                "group": group,
                "count": count,
                "index_field": index_field,
                "timestamp_field": timestamp_field,
            }),
            &[("message", raw)],
        )
        .await
    }

    /// `channel_layer.send(channel, message)`.
    pub async fn send(&mut self, channel: &str, message: impl ToDriverJson) -> Result<()> {
        let raw = message.to_driver_json()?;
        self.op_with(
            json!({"op": "send", "channel": channel}),
            &[("message", raw)],
        )
        .await
        .map(drop)
    }

    /// `channel_layer.group_add(group, channel)`. The core layer accepts any
    /// valid channel name (also the gateway's); the pubsub layer only channels
    /// made by this driver's [`new_channel`](Self::new_channel).
    pub async fn group_add(&mut self, group: &str, channel: &str) -> Result<()> {
        self.request(json!({"op": "group_add", "group": group, "channel": channel}))
            .await
            .map(drop)
    }

    /// `channel_layer.group_discard(group, channel)`.
    pub async fn group_discard(&mut self, group: &str, channel: &str) -> Result<()> {
        self.request(json!({"op": "group_discard", "group": group, "channel": channel}))
            .await
            .map(drop)
    }

    /// Defines Python `code` (e.g. a snippet from the docs) and returns what
    /// `await function(channel_layer, *args)` gives.
    pub async fn run_snippet(&mut self, code: &str, function: &str, args: Value) -> Result<Value> {
        let mut reply = self
            .request(json!({"op": "run_snippet", "code": code, "function": function, "args": args}))
            .await?;
        Ok(reply
            .get_mut("result")
            .map(Value::take)
            .unwrap_or(Value::Null))
    }

    /// `channel_layer.new_channel()`.
    pub async fn new_channel(&mut self) -> Result<String> {
        let reply = self.request(json!({"op": "new_channel"})).await?;
        str_field(&reply, "channel")
    }

    /// `channel_layer.receive(channel)` bounded by `timeout`; `None` on timeout.
    /// Pubsub layer: a timed-out receive makes the library unsubscribe the
    /// channel, so messages published until the next receive are lost.
    pub async fn receive(&mut self, channel: &str, timeout: Duration) -> Result<Option<Value>> {
        Ok(self
            .receive_reply(channel, timeout)
            .await?
            .and_then(|mut r| r.get_mut("message").map(Value::take)))
    }

    /// [`receive`](Self::receive) returning Python's `json.dumps` of the
    /// message (key order kept).
    pub async fn receive_text(
        &mut self,
        channel: &str,
        timeout: Duration,
    ) -> Result<Option<String>> {
        match self.receive_reply(channel, timeout).await? {
            None => Ok(None),
            Some(reply) => str_field(&reply, "message_json").map(Some),
        }
    }

    async fn receive_reply(&mut self, channel: &str, timeout: Duration) -> Result<Option<Value>> {
        let bound = timeout + Duration::from_secs(30);
        let reply = self
            .request_with_timeout(
                json!({"op": "receive", "channel": channel, "timeout": timeout.as_secs_f64()}),
                bound,
            )
            .await?;
        if reply.get("timeout") == Some(&Value::Bool(true)) {
            return Ok(None);
        }
        if reply.get("message").is_none() {
            bail!("receive reply without message: {reply}");
        }
        Ok(Some(reply))
    }

    /// `channel_layer.flush()` (core: deletes every `<prefix>*` key).
    pub async fn flush(&mut self) -> Result<()> {
        self.request(json!({"op": "flush"})).await.map(drop)
    }

    /// The exact text frame the replaced Django consumer sends for a
    /// `send_notification` event carrying `value`:
    /// `json.dumps({"message": value})` after the layer's serialise round trip.
    /// Pass [`JsonText`] when key order matters.
    pub async fn expected_frame(&mut self, value: impl ToDriverJson) -> Result<String> {
        let raw = value.to_driver_json()?;
        let reply = self
            .op_with(json!({"op": "expected_frame"}), &[("message", raw)])
            .await?;
        str_field(&reply, "frame")
    }

    /// `layer.serialize(message)` — the bytes the library would store/publish
    /// (core layer: starts with `random_prefix_length` random bytes).
    pub async fn serialize(&mut self, message: impl ToDriverJson) -> Result<Vec<u8>> {
        let raw = message.to_driver_json()?;
        let reply = self
            .op_with(json!({"op": "serialize"}), &[("message", raw)])
            .await?;
        base64_decode(&str_field(&reply, "payload_b64")?)
    }

    /// `layer.deserialize(payload)` (bytes values come back as
    /// `{"$bytes_b64": ...}`).
    pub async fn deserialize(&mut self, payload: &[u8]) -> Result<Value> {
        let mut reply = self.deserialize_reply(payload).await?;
        reply
            .get_mut("message")
            .map(Value::take)
            .ok_or_else(|| anyhow!("deserialize reply without message"))
    }

    /// [`deserialize`](Self::deserialize) as Python's `json.dumps` text (key
    /// order kept).
    pub async fn deserialize_text(&mut self, payload: &[u8]) -> Result<String> {
        let reply = self.deserialize_reply(payload).await?;
        str_field(&reply, "message_json")
    }

    async fn deserialize_reply(&mut self, payload: &[u8]) -> Result<Value> {
        self.request(json!({"op": "deserialize", "payload_b64": base64_encode(payload)}))
            .await
    }

    /// `jwt.encode(claims, key, algorithm=algorithm, headers=headers)` (PyJWT).
    pub async fn mint_jwt(
        &mut self,
        claims: impl ToDriverJson,
        key: &str,
        algorithm: &str,
        headers: Option<Value>,
    ) -> Result<String> {
        let mut base = json!({"op": "mint_jwt", "key": key, "algorithm": algorithm});
        if let (Some(headers), Some(obj)) = (headers, base.as_object_mut()) {
            obj.insert("headers".to_string(), headers);
        }
        let raw = claims.to_driver_json()?;
        let reply = self.op_with(base, &[("claims", raw)]).await?;
        str_field(&reply, "token")
    }

    /// djangorestframework-simplejwt `RefreshToken.for_user(user)` for a stub
    /// user with `id = user_id`, signed with `signing_key`/`algorithm`, access
    /// lifetime `lifetime` (refresh: 1 day). simplejwt 5.5 writes `user_id` as
    /// a STRING (`str(user.id)`).
    pub async fn simplejwt(
        &mut self,
        user_id: Value,
        signing_key: &str,
        algorithm: &str,
        lifetime: Duration,
    ) -> Result<SimpleJwtPair> {
        let reply = self
            .request(json!({
                "op": "simplejwt",
                "user_id": user_id,
                "signing_key": signing_key,
                "algorithm": algorithm,
                "lifetime_s": lifetime.as_secs_f64(),
            }))
            .await?;
        Ok(SimpleJwtPair {
            access: str_field(&reply, "access")?,
            refresh: str_field(&reply, "refresh")?,
            access_claims: reply.get("access_claims").cloned().unwrap_or(Value::Null),
        })
    }

    /// Asks the driver to exit and waits for it (bounded).
    pub async fn quit(mut self) -> Result<()> {
        self.request_with_timeout(json!({"op": "quit"}), Duration::from_secs(10))
            .await?;
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| anyhow!("layer driver did not exit after quit"))?
            .context("waiting for the layer driver")?;
        if !status.success() {
            bail!("layer driver exited with {status}");
        }
        Ok(())
    }
}

fn str_field(reply: &Value, name: &str) -> Result<String> {
    reply
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("driver reply without string {name:?}: {reply}"))
}

impl Drop for LayerDriver {
    fn drop(&mut self) {
        // Only while the child is unreaped, so the PID is still ours.
        if let Ok(None) = self.child.try_wait() {
            let _ = procs::send_signal(self.pid, Signal::Kill);
            // tokio reaps the dropped child in the background.
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (with padding).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 decoding (padding optional, no whitespace).
pub fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("invalid base64 character {:?}", char::from(c)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xFF) as u8);
        }
    }
    Ok(out)
}
