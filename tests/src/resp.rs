//! A minimal async RESP2 client over a tokio `TcpStream`, for test assertions
//! and for poking Redis directly (ZRANGE a queue key, SUBSCRIBE to a pub/sub
//! channel, DEBUG SLEEP, ...), with plain pipelining for the native publisher
//! ([`crate::publisher`]).
//!
//! It parses exactly what tests need: simple strings, errors, integers, bulk
//! strings, arrays and nil. It is not a Redis client for the product (the
//! gateway uses its own), has no pooling, reconnects or RESP3, and must never be
//! pointed at a server the test or benchmark did not start.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest bulk string accepted (Redis' own proto-max-bulk-len default).
const MAX_BULK: i64 = 512 * 1024 * 1024;

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespValue {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Array(Vec<RespValue>),
    /// A nil bulk string (`$-1`) or nil array (`*-1`).
    Nil,
}

impl RespValue {
    /// Flattens the reply to strings: an error becomes `Err`, nil becomes no
    /// element, bulk strings are decoded lossily as UTF-8, integers are
    /// formatted, nested arrays are flattened in order.
    pub fn into_strings(self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.flatten_into(&mut out)?;
        Ok(out)
    }

    fn flatten_into(self, out: &mut Vec<String>) -> Result<()> {
        match self {
            RespValue::Simple(s) => out.push(s),
            RespValue::Error(e) => bail!("redis error: {e}"),
            RespValue::Integer(i) => out.push(i.to_string()),
            RespValue::Bulk(b) => out.push(String::from_utf8_lossy(&b).into_owned()),
            RespValue::Array(items) => {
                for item in items {
                    item.flatten_into(out)?;
                }
            }
            RespValue::Nil => {}
        }
        Ok(())
    }

    /// Like [`into_strings`](Self::into_strings) but keeps the raw bytes (for
    /// binary payloads such as msgpack members of a queue ZSET).
    pub fn into_bytes_list(self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.flatten_bytes_into(&mut out)?;
        Ok(out)
    }

    fn flatten_bytes_into(self, out: &mut Vec<Vec<u8>>) -> Result<()> {
        match self {
            RespValue::Simple(s) => out.push(s.into_bytes()),
            RespValue::Error(e) => bail!("redis error: {e}"),
            RespValue::Integer(i) => out.push(i.to_string().into_bytes()),
            RespValue::Bulk(b) => out.push(b),
            RespValue::Array(items) => {
                for item in items {
                    item.flatten_bytes_into(out)?;
                }
            }
            RespValue::Nil => {}
        }
        Ok(())
    }

    /// The integer of an `Integer` reply (or a numeric simple/bulk string).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            RespValue::Integer(i) => Some(*i),
            RespValue::Simple(s) => s.parse().ok(),
            RespValue::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, RespValue::Nil)
    }

    /// `Err` for an error reply, the value otherwise.
    pub fn check(self) -> Result<RespValue> {
        match self {
            RespValue::Error(e) => Err(anyhow!("redis error: {e}")),
            other => Ok(other),
        }
    }
}

/// `HOST:PORT` of a `redis://HOST:PORT` URL (a bare `HOST:PORT` as is).
pub fn host_port(url: &str) -> &str {
    url.strip_prefix("redis://")
        .unwrap_or(url)
        .trim_end_matches('/')
}

/// One connection speaking RESP2.
pub struct RespClient {
    stream: BufReader<TcpStream>,
}

impl RespClient {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Result<RespClient> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to redis at {addr}"))?;
        stream.set_nodelay(true).ok();
        Ok(RespClient {
            stream: BufReader::new(stream),
        })
    }

    /// Sends one command and reads one reply (an error reply is returned as
    /// `RespValue::Error`, not as `Err`).
    pub async fn command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<RespValue> {
        self.send(args).await?;
        self.read_value().await
    }

    /// [`command`](Self::command) with string arguments, error replies as `Err`.
    pub async fn cmd(&mut self, args: &[&str]) -> Result<RespValue> {
        self.command(args).await?.check()
    }

    /// Writes one command without reading its reply (for SUBSCRIBE and
    /// pipelining); read replies with [`read_value`](Self::read_value).
    pub async fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<()> {
        if args.is_empty() {
            bail!("empty redis command");
        }
        let mut buf = Vec::with_capacity(64);
        encode_command(args, &mut buf);
        let stream = self.stream.get_mut();
        stream.write_all(&buf).await.context("writing to redis")?;
        stream.flush().await.context("flushing to redis")?;
        Ok(())
    }

    /// Pipelining: writes every command of `commands` in ONE write, then reads
    /// exactly one reply per command, in order (error replies are returned as
    /// `RespValue::Error`, not as `Err`). An empty command is refused before
    /// anything is written.
    pub async fn pipeline<C, A>(&mut self, commands: &[C]) -> Result<Vec<RespValue>>
    where
        C: AsRef<[A]>,
        A: AsRef<[u8]>,
    {
        let mut buf = Vec::with_capacity(256 * commands.len().max(1));
        for command in commands {
            let args = command.as_ref();
            if args.is_empty() {
                bail!("empty redis command in pipeline");
            }
            encode_command(args, &mut buf);
        }
        let stream = self.stream.get_mut();
        stream.write_all(&buf).await.context("writing to redis")?;
        stream.flush().await.context("flushing to redis")?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.read_value().await?);
        }
        Ok(replies)
    }

    /// Pops up to `max` members of the sorted set `key` the way a
    /// gateway's receiver drains its queue key: a blocking pop (1 s at most)
    /// with a batched pop pipelined behind it. Returns (member, score) pairs
    /// in pop order; none when the wait ran out.
    pub async fn pop_queue(&mut self, key: &str, max: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let rest = max.saturating_sub(1).to_string();
        let replies = self
            .pipeline(&[
                vec!["BZPOPMIN", key, "1"],
                vec!["ZPOPMIN", key, rest.as_str()],
            ])
            .await?;
        let mut popped = Vec::new();
        let mut replies = replies.into_iter();
        // [key, member, score] (nil on timeout), then [member, score, …].
        if let Some(Ok(triple)) = replies.next().map(RespValue::into_bytes_list) {
            if let Ok([_, member, score]) = <[Vec<u8>; 3]>::try_from(triple) {
                popped.push((member, score));
            }
        }
        if let Some(Ok(pairs)) = replies.next().map(RespValue::into_bytes_list) {
            let mut pairs = pairs.into_iter();
            while let (Some(member), Some(score)) = (pairs.next(), pairs.next()) {
                popped.push((member, score));
            }
        }
        Ok(popped)
    }

    /// Reads the next reply (or pushed pub/sub message).
    pub fn read_value(&mut self) -> Pin<Box<dyn Future<Output = Result<RespValue>> + Send + '_>> {
        Box::pin(async move {
            let line = self.read_line().await?;
            let (kind, rest) = match line.split_first() {
                Some((kind, rest)) => (*kind, rest),
                None => bail!("empty line from redis"),
            };
            let text = String::from_utf8_lossy(rest).into_owned();
            match kind {
                b'+' => Ok(RespValue::Simple(text)),
                b'-' => Ok(RespValue::Error(text)),
                b':' => Ok(RespValue::Integer(parse_int(&text)?)),
                b'$' => {
                    let len = parse_int(&text)?;
                    if len < 0 {
                        return Ok(RespValue::Nil);
                    }
                    if len > MAX_BULK {
                        bail!("bulk string of {len} bytes refused");
                    }
                    let len = usize::try_from(len).context("bulk length")?;
                    let mut data = vec![0u8; len + 2];
                    self.stream
                        .read_exact(&mut data)
                        .await
                        .context("reading bulk string from redis")?;
                    if !data.ends_with(b"\r\n") {
                        bail!("bulk string not terminated by CRLF");
                    }
                    data.truncate(len);
                    Ok(RespValue::Bulk(data))
                }
                b'*' => {
                    let len = parse_int(&text)?;
                    if len < 0 {
                        return Ok(RespValue::Nil);
                    }
                    let len = usize::try_from(len).context("array length")?;
                    let mut items = Vec::with_capacity(len.min(4096));
                    for _ in 0..len {
                        items.push(self.read_value().await?);
                    }
                    Ok(RespValue::Array(items))
                }
                other => bail!(
                    "unexpected RESP type byte {:?} in line {:?}",
                    other as char,
                    String::from_utf8_lossy(&line)
                ),
            }
        })
    }

    /// [`read_value`](Self::read_value) bounded by `timeout`.
    pub async fn read_value_timeout(&mut self, timeout: Duration) -> Result<RespValue> {
        tokio::time::timeout(timeout, self.read_value())
            .await
            .map_err(|_| anyhow!("no reply from redis within {timeout:?}"))?
    }

    async fn read_line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        let n = self
            .stream
            .read_until(b'\n', &mut line)
            .await
            .context("reading from redis")?;
        if n == 0 {
            bail!("redis closed the connection");
        }
        if !line.ends_with(b"\r\n") {
            bail!("truncated line from redis");
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }
}

/// Appends one command in RESP2 (an array of bulk strings) to `buf`.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], buf: &mut Vec<u8>) {
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        let arg = arg.as_ref();
        buf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        buf.extend_from_slice(arg);
        buf.extend_from_slice(b"\r\n");
    }
}

fn parse_int(text: &str) -> Result<i64> {
    text.parse::<i64>()
        .with_context(|| format!("bad integer {text:?} from redis"))
}
