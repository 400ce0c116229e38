//! A native `group_send` for the core layer: writes into Redis what the Python
//! `channels_redis.core.RedisChannelLayer.group_send` writes, for publish
//! rates the Python library cannot reach (benchmarks, the load generator).
//!
//! It owns the command sequence of one `group_send` — trim and read the group
//! set, bucket the members by queue key (the non-local part of the channel
//! name), build ONE payload per queue key whose `__asgi_channel__` lists that
//! key's channels, trim each queue key in a MULTI/EXEC pipeline, then one EVAL
//! that adds each payload under its capacity and refreshes the key's TTL — and
//! the capacity lookup (`capacity` plus `channel_capacity` globs). Payload bytes
//! come from `shared_proto::PayloadCodec::encode`; this module does no wire
//! encoding of messages itself. It must never be the only publisher of an
//! interop test (the real Python library stays the truth; `tests/native_publisher.rs`
//! checks this module against it), must not receive or join, and talks only to
//! Redis servers the caller started.
//!
//! Where it knowingly differs from the Python library (all invisible in the data
//! Redis ends up holding): the EVAL script text is this project's own (same
//! KEYS/ARGV layout, same effect and the same commands; it returns
//! channels_redis' value, how many keys were full, followed by which, so a
//! refusal into a replay key is told apart from one into a consumer's); in
//! [`NativePublisher::group_send_many`] the commands of many sends are
//! pipelined together, all queue trims of a batch before its EVALs; Python
//! reads `time.time()` once per command, this module once per phase (and once
//! per send for the score, kept strictly increasing within a batch so that
//! same-score members cannot reorder).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rmpv::Value;
use shared_proto::{names, render_float, shard_index, Message, PayloadCodec};

use crate::resp::{RespClient, RespValue};

/// The field channels_redis sets to the destination channel list.
const ASGI_CHANNEL: &str = "__asgi_channel__";

/// Adds one payload per queue key unless the key already holds its capacity.
/// `KEYS` = queue keys; `ARGV` = one payload per key, one capacity per key,
/// the send time, the key TTL. Returns how many keys were full (what
/// channels_redis' script returns), then the 1-based index of each full key.
pub const GROUP_SEND_SCRIPT: &str = "\
local n = #KEYS
local score = ARGV[2 * n + 1]
local ttl = ARGV[2 * n + 2]
local full = {0}
for k = 1, n do
  if redis.call('ZCOUNT', KEYS[k], '-inf', '+inf') < tonumber(ARGV[n + k]) then
    redis.call('ZADD', KEYS[k], score, ARGV[k])
    redis.call('EXPIRE', KEYS[k], ttl)
  else
    full[1] = full[1] + 1
    full[#full + 1] = k
  end
end
return full
";

/// The sender-side settings of a core layer (`CHANNEL_LAYERS[...]["CONFIG"]`).
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// `prefix` (default `asgi`).
    pub prefix: String,
    /// `expiry` in seconds (default 60).
    pub expiry: u64,
    /// `group_expiry` in seconds (default 86400).
    pub group_expiry: u64,
    /// `capacity` (default 100).
    pub capacity: u64,
    /// `channel_capacity`: glob on the full channel name → capacity, first
    /// match wins. Globs support `*` and `?`; character classes are refused.
    pub channel_capacity: Vec<(String, u64)>,
    /// Serializer format and random prefix length.
    pub codec: PayloadCodec,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            prefix: "asgi".to_string(),
            expiry: 60,
            group_expiry: 86400,
            capacity: 100,
            channel_capacity: Vec::new(),
            codec: PayloadCodec::default(),
        }
    }
}

impl PublisherConfig {
    /// `get_capacity(channel)`: the first matching `channel_capacity` glob,
    /// else `capacity`.
    pub fn capacity_for(&self, channel: &str) -> u64 {
        self.channel_capacity
            .iter()
            .find(|(glob, _)| glob_matches(glob.as_bytes(), channel.as_bytes()))
            .map(|(_, capacity)| *capacity)
            .unwrap_or(self.capacity)
    }

    fn validate(&self) -> Result<()> {
        for (glob, _) in &self.channel_capacity {
            if glob.contains('[') {
                bail!("channel_capacity glob {glob:?}: character classes are not supported");
            }
        }
        Ok(())
    }
}

/// `fnmatch`-style full match with `*` (any run) and `?` (one character).
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// What one `group_send` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Members of the group after the expiry trim.
    pub channels: usize,
    /// Queue keys written to (one payload each).
    pub queue_keys: usize,
    /// Queue keys that were full (payload dropped, as channels_redis does).
    pub over_capacity: u64,
    /// Of those, the keys of replay members (`gw.replay.<group>`, recovery):
    /// a refusal there is not a message a connected socket misses.
    pub replay_over_capacity: u64,
}

/// A connection per configured host (in the backend's `hosts` order) and the
/// layer settings.
pub struct NativePublisher {
    hosts: Vec<RespClient>,
    config: PublisherConfig,
    rng: StdRng,
}

/// One queue key of one send: its channels, capacity and host.
struct Bucket {
    key: String,
    channels: Vec<String>,
    capacity: u64,
    host: usize,
}

impl NativePublisher {
    /// Connects to every host (`host:port` or `redis://host:port`).
    pub async fn connect(hosts: &[String], config: PublisherConfig) -> Result<NativePublisher> {
        if hosts.is_empty() {
            bail!("the native publisher needs at least one host");
        }
        config.validate()?;
        let mut clients = Vec::with_capacity(hosts.len());
        for host in hosts {
            let addr = host
                .strip_prefix("redis://")
                .unwrap_or(host)
                .trim_end_matches('/');
            clients.push(RespClient::connect(addr).await?);
        }
        Ok(NativePublisher {
            hosts: clients,
            config,
            rng: StdRng::from_os_rng(),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &PublisherConfig {
        &self.config
    }

    /// `group_send(group, message)`.
    pub async fn group_send(&mut self, group: &str, message: &Message) -> Result<SendOutcome> {
        let mut outcomes = self.group_send_many(&[(group, message)]).await?;
        outcomes
            .pop()
            .ok_or_else(|| anyhow!("group_send produced no outcome"))
    }

    /// Several `group_send`s with their commands pipelined: one round trip per
    /// host for the group reads, one for the queue trims, one for the EVALs.
    /// Each send's own command sequence is channels_redis'; outcomes are in
    /// input order.
    pub async fn group_send_many<G, M>(&mut self, sends: &[(G, M)]) -> Result<Vec<SendOutcome>>
    where
        G: AsRef<str>,
        M: std::borrow::Borrow<Message>,
    {
        let ring = self.hosts.len();
        let prefix = self.config.prefix.clone();

        // 1. Trim and read every group set.
        let cutoff = unix_secs_int() - i64::try_from(self.config.group_expiry).unwrap_or(i64::MAX);
        let mut reads: Vec<Vec<Vec<Vec<u8>>>> = vec![Vec::new(); ring];
        let mut read_slot = Vec::with_capacity(sends.len());
        for (group, _) in sends {
            let group = group.as_ref();
            if !names::is_valid_group_name(group) {
                bail!("group name {group:?} is not valid for Channels");
            }
            let host = shard_index(group, ring);
            let key = names::group_key(&prefix, group).into_bytes();
            reads[host].push(vec![
                b"ZREMRANGEBYSCORE".to_vec(),
                key.clone(),
                b"0".to_vec(),
                cutoff.to_string().into_bytes(),
            ]);
            reads[host].push(vec![b"ZRANGE".to_vec(), key, b"0".to_vec(), b"-1".to_vec()]);
            read_slot.push((host, reads[host].len() - 1));
        }
        let mut read_replies = Vec::with_capacity(ring);
        for (host, commands) in reads.iter().enumerate() {
            read_replies.push(if commands.is_empty() {
                Vec::new()
            } else {
                self.hosts[host].pipeline(commands).await?
            });
        }

        // 2. Bucket members by queue key and build one payload per key.
        let mut plans: Vec<(usize, Vec<Bucket>)> = Vec::with_capacity(sends.len());
        for ((group, _), (host, slot)) in sends.iter().zip(&read_slot) {
            let reply = read_replies[*host]
                .get(*slot)
                .cloned()
                .ok_or_else(|| anyhow!("missing ZRANGE reply"))?;
            let members = reply
                .check()
                .and_then(RespValue::into_bytes_list)
                .with_context(|| format!("reading group {}", group.as_ref()))?;
            let mut buckets: Vec<Bucket> = Vec::new();
            for raw in members {
                let channel = String::from_utf8(raw).context("group member is not UTF-8")?;
                let non_local = names::non_local_part(&channel).to_string();
                let key = names::queue_key(&prefix, &non_local);
                match buckets.iter_mut().find(|b| b.key == key) {
                    Some(bucket) => bucket.channels.push(channel),
                    None => buckets.push(Bucket {
                        key,
                        capacity: self.config.capacity_for(&channel),
                        host: shard_index(&non_local, ring),
                        channels: vec![channel],
                    }),
                }
            }
            plans.push((*host, buckets));
        }

        // 3. Trim every queue key (MULTI/EXEC pipelines), grouped per host the
        // way channels_redis does it: the first pipeline of a send goes to
        // the group's host, each later one to the previous EVAL's host.
        let trim_to = unix_secs_int() - i64::try_from(self.config.expiry).unwrap_or(i64::MAX);
        let mut trims: Vec<Vec<Vec<Vec<u8>>>> = vec![Vec::new(); ring];
        for (group_host, buckets) in &plans {
            let mut pipe_host = *group_host;
            for eval_host in distinct_hosts(buckets) {
                let commands = &mut trims[pipe_host];
                commands.push(vec![b"MULTI".to_vec()]);
                for bucket in buckets.iter().filter(|b| b.host == eval_host) {
                    commands.push(vec![
                        b"ZREMRANGEBYSCORE".to_vec(),
                        bucket.key.clone().into_bytes(),
                        b"0".to_vec(),
                        trim_to.to_string().into_bytes(),
                    ]);
                }
                commands.push(vec![b"EXEC".to_vec()]);
                pipe_host = eval_host;
            }
        }
        for (host, commands) in trims.iter().enumerate() {
            if commands.is_empty() {
                continue;
            }
            for reply in self.hosts[host].pipeline(commands).await? {
                reply.check().context("trimming queue keys")?;
            }
        }

        // 4. One EVAL per (send, host) with every payload of that host. Each
        // send reads the clock, as each Python `group_send` does; within a
        // batch the scores strictly increase so the batch keeps its order.
        let expiry = self.config.expiry.to_string();
        let mut last_score = 0.0f64;
        let mut evals: Vec<Vec<Vec<Vec<u8>>>> = vec![Vec::new(); ring];
        let mut eval_slots: Vec<Vec<(usize, usize)>> = Vec::with_capacity(plans.len());
        for ((_, message), (_, buckets)) in sends.iter().zip(&plans) {
            let mut slots = Vec::new();
            let mut score = unix_secs_float();
            if score <= last_score {
                score = last_score.next_up();
            }
            last_score = score;
            let mut now = String::new();
            render_float(score, &mut now);
            for host in distinct_hosts(buckets) {
                let mine: Vec<&Bucket> = buckets.iter().filter(|b| b.host == host).collect();
                let mut command: Vec<Vec<u8>> = Vec::with_capacity(3 + 3 * mine.len() + 2);
                command.push(b"EVAL".to_vec());
                command.push(GROUP_SEND_SCRIPT.as_bytes().to_vec());
                command.push(mine.len().to_string().into_bytes());
                for bucket in &mine {
                    command.push(bucket.key.clone().into_bytes());
                }
                for bucket in &mine {
                    let addressed = with_channels(message.borrow(), &bucket.channels)?;
                    let payload = self
                        .config
                        .codec
                        .encode(&addressed, &mut self.rng)
                        .context("encoding payload")?;
                    command.push(payload);
                }
                for bucket in &mine {
                    command.push(bucket.capacity.to_string().into_bytes());
                }
                command.push(now.clone().into_bytes());
                command.push(expiry.clone().into_bytes());
                evals[host].push(command);
                slots.push((host, evals[host].len() - 1));
            }
            eval_slots.push(slots);
        }
        let mut eval_replies = Vec::with_capacity(ring);
        for (host, commands) in evals.iter().enumerate() {
            eval_replies.push(if commands.is_empty() {
                Vec::new()
            } else {
                self.hosts[host].pipeline(commands).await?
            });
        }

        let mut outcomes = Vec::with_capacity(sends.len());
        for ((_, buckets), slots) in plans.iter().zip(&eval_slots) {
            let mut over_capacity = 0u64;
            let mut replay_over_capacity = 0u64;
            for (host, slot) in slots {
                let reply = eval_replies[*host]
                    .get(*slot)
                    .cloned()
                    .ok_or_else(|| anyhow!("missing EVAL reply"))?
                    .check()
                    .context("group_send EVAL")?;
                let RespValue::Array(items) = reply else {
                    bail!("EVAL returned {reply:?}, not an array");
                };
                let mut items = items.iter().map(RespValue::as_int);
                let full = items
                    .next()
                    .flatten()
                    .ok_or_else(|| anyhow!("EVAL returned no count of full keys"))?;
                over_capacity += u64::try_from(full).unwrap_or(0);
                // The script's KEYS are this host's buckets, in order.
                let mine: Vec<&Bucket> = buckets.iter().filter(|b| b.host == *host).collect();
                for index in items {
                    let bucket = index
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| i.checked_sub(1))
                        .and_then(|i| mine.get(i))
                        .ok_or_else(|| anyhow!("EVAL named a full key it was not given"))?;
                    if bucket.channels.iter().all(|c| names::is_replay_channel(c)) {
                        replay_over_capacity += 1;
                    }
                }
            }
            outcomes.push(SendOutcome {
                channels: buckets.iter().map(|b| b.channels.len()).sum(),
                queue_keys: buckets.len(),
                over_capacity,
                replay_over_capacity,
            });
        }
        Ok(outcomes)
    }
}

/// Hosts of `buckets` in first-seen order.
fn distinct_hosts(buckets: &[Bucket]) -> Vec<usize> {
    let mut hosts = Vec::new();
    for bucket in buckets {
        if !hosts.contains(&bucket.host) {
            hosts.push(bucket.host);
        }
    }
    hosts
}

/// A copy of `message` with `__asgi_channel__` set to `channels` (a list);
/// an existing field keeps its position, as a Python dict assignment does.
pub fn with_channels(message: &Message, channels: &[String]) -> Result<Message> {
    let list = Value::Array(channels.iter().map(|c| Value::from(c.as_str())).collect());
    let mut entries: Vec<(Value, Value)> = message.entries().to_vec();
    match entries
        .iter_mut()
        .find(|(key, _)| key.as_str() == Some(ASGI_CHANNEL))
    {
        Some((_, value)) => *value = list,
        None => entries.push((Value::from(ASGI_CHANNEL), list)),
    }
    Message::from_value(Value::Map(entries)).context("building the addressed message")
}

/// `{"type": "send_notification", "message": value}`.
pub fn notification(value: Value) -> Result<Message> {
    Message::from_value(Value::Map(vec![
        (Value::from("type"), Value::from("send_notification")),
        (Value::from("message"), value),
    ]))
    .context("building a notification")
}

/// `json` (any JSON value) as a msgpack value the way Python's `json.loads`
/// then `msgpack.packb` would see it (objects keep their order only when the
/// caller's `serde_json` does; use explicit maps where order matters).
pub fn value_from_json(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => {
            Value::Array(items.iter().map(value_from_json).collect())
        }
        serde_json::Value::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| (Value::from(k.as_str()), value_from_json(v)))
                .collect(),
        ),
    }
}

/// `int(time.time())`.
fn unix_secs_int() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `time.time()`.
fn unix_secs_float() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_fnmatch() {
        assert!(glob_matches(b"specific.gw-*", b"specific.gw-abc!1"));
        assert!(!glob_matches(b"specific.gw-*", b"specific.abc!1"));
        assert!(glob_matches(b"a?c", b"abc"));
        assert!(!glob_matches(b"a?c", b"abbc"));
        assert!(glob_matches(b"*", b""));
        assert!(glob_matches(b"*x*y", b"axbxy"));
        assert!(!glob_matches(b"abc", b"abcd"));
    }

    #[test]
    fn capacity_lookup_first_match_wins() {
        let config = PublisherConfig {
            channel_capacity: vec![("specific.gw-*".into(), 10_000), ("*".into(), 5)],
            ..PublisherConfig::default()
        };
        assert_eq!(config.capacity_for("specific.gw-1!2"), 10_000);
        assert_eq!(config.capacity_for("specific.x!2"), 5);
        assert_eq!(PublisherConfig::default().capacity_for("x"), 100);
    }

    #[test]
    fn an_existing_channel_field_keeps_its_position() {
        let message = Message::from_value(Value::Map(vec![
            (Value::from(ASGI_CHANNEL), Value::from("old")),
            (Value::from("type"), Value::from("t")),
        ]))
        .expect("message");
        let out = with_channels(&message, &["a!1".to_string()]).expect("addressed");
        assert_eq!(out.entries()[0].0.as_str(), Some(ASGI_CHANNEL));
        assert_eq!(out.entries().len(), 2);
    }
}
