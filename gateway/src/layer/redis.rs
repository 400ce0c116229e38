//! Redis access: the only module that talks to the Redis client library (fred).
//!
//! Owns connecting (with reconnects, backoff and jitter), the few commands the
//! layers need, and turning replies into plain Rust values. It knows key names
//! only as strings handed in by the layers and must not decide what to write or
//! when; swapping fred for another client should touch this file alone
//! (clippy.toml keeps fred's types out of every other module).
#![allow(clippy::disallowed_types)]

use std::time::Duration;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use fred::error::ErrorKind;
use fred::prelude::{
    ClientLike, Config as FredConfig, Error as FredError, EventInterface, Expiration,
    KeysInterface, LuaInterface, PubsubInterface, ReconnectPolicy, SetsInterface,
    SortedSetsInterface, TcpConfig, Value,
};
use fred::types::config::{Server, ServerConfig, TlsConfig, TlsConnector};
use fred::types::Builder;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::broadcast;

use crate::config::{HostSetting, HostTarget};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid Redis URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("Redis command failed on {host}: {source}")]
    Command {
        host: String,
        #[source]
        source: FredError,
    },
    #[error("unexpected Redis reply on {host}: {what}")]
    Reply { host: String, what: &'static str },
    #[error("no Redis host configured")]
    NoHost,
}

/// One payload taken off a channels_redis queue key, with the score the
/// sender gave it (its UNIX send time).
#[derive(Debug, Clone)]
pub struct QueuedPayload {
    pub payload: Bytes,
    pub sent_at: f64,
}

/// What a replay key held when a recovering socket read it.
#[derive(Debug, Clone, Default)]
pub struct ReplayKeyContents {
    /// Payloads in the key (channels_redis refuses more than its `capacity`).
    pub count: u64,
    /// The oldest payload's score.
    pub oldest: Option<f64>,
    /// The payloads read, in score order: those scored at or after the
    /// time asked for, at most the limit; or the newest alone.
    pub entries: Vec<QueuedPayload>,
}

/// The replay keys of one socket's groups, read in one round trip, with
/// Redis' clock at the time.
#[derive(Debug, Clone, Default)]
pub struct ReplaySnapshot {
    /// Redis' `TIME`, UNIX seconds.
    pub now: f64,
    pub keys: Vec<ReplayKeyContents>,
}

/// Membership writes for one Redis host, sent as one pipeline.
#[derive(Debug, Default)]
pub struct MembershipWrites {
    /// Group key → channels to add with the batch's score.
    pub adds: Vec<(String, Vec<String>)>,
    /// Group key → channels to remove.
    pub removes: Vec<(String, Vec<String>)>,
    /// The same changes to the process's record of what it joined, in the
    /// same pipeline: its adds go before the `ZADD`s and its removes after
    /// the `ZREM`s, so the record never misses a membership that exists.
    pub record: Option<RecordWrites>,
    /// Entries to add to an idle set with the batch's score (the replay
    /// members of groups this process left: `layer::replay`).
    pub idle: Option<(String, Vec<String>)>,
}

/// Entries to add to and remove from a set key (the record of a process).
#[derive(Debug, Default)]
pub struct RecordWrites {
    pub key: String,
    /// Seconds the record lives after this write.
    pub expiry: i64,
    /// Entries to add, one command per inner list.
    pub adds: Vec<Vec<String>>,
    /// Entries to remove, one command per inner list.
    pub removes: Vec<Vec<String>>,
}

/// One liveness refresh of a process on one host, as one pipeline.
#[derive(Debug)]
pub struct Heartbeat<'a> {
    /// Refreshed to live `ttl` more (Redis' own clock decides expiry).
    pub alive_key: &'a str,
    pub ttl: Duration,
    /// The set of process ids on this host that reapers look at.
    pub processes_key: &'a str,
    pub process_id: &'a str,
    /// The process's record, and entries to (re)add to it.
    pub record_key: &'a str,
    pub record_entries: &'a [String],
    /// Seconds the processes set and the record live after this beat.
    pub record_expiry: i64,
}

impl MembershipWrites {
    pub fn is_empty(&self) -> bool {
        self.adds.is_empty() && self.removes.is_empty() && self.idle.is_none()
    }
}

fn as_strs(entries: &[String]) -> Vec<&str> {
    entries.iter().map(String::as_str).collect()
}

fn bad_url(label: &str, error: &FredError) -> RedisError {
    RedisError::BadUrl {
        url: label.to_string(),
        reason: error.details().to_string(),
    }
}

/// The client configuration for one `hosts` entry: a URL (`redis://`,
/// `rediss://`, `unix://`, with user, password and database as redis-py
/// reads them) or a Sentinel master.
fn fred_config(host: &HostSetting) -> Result<FredConfig, RedisError> {
    let label = host.label();
    let bad = |reason: String| RedisError::BadUrl {
        url: label.clone(),
        reason,
    };
    let target = host.target().map_err(bad)?;
    let config = match target {
        HostTarget::Url { url, .. } if url.starts_with("unix://") => {
            unix_socket_config(&url).map_err(bad)?
        }
        HostTarget::Url { url, ca_file } => {
            let mut config =
                FredConfig::from_url(&url).map_err(|error| bad(error.details().to_string()))?;
            if url.starts_with("rediss://") || ca_file.is_some() {
                config.tls = Some(tls_config(ca_file).map_err(bad)?);
            }
            config
        }
        HostTarget::Sentinel {
            sentinels,
            master_name,
            table,
        } => FredConfig {
            server: ServerConfig::Sentinel {
                hosts: sentinels
                    .iter()
                    .map(|(host, port)| Server::new(host.as_str(), *port))
                    .collect(),
                service_name: master_name.to_string(),
                username: None,
                password: None,
            },
            username: table.username.clone(),
            password: table
                .password
                .as_ref()
                .map(|secret| secret.expose().to_string()),
            database: table.db,
            tls: match &table.ssl_ca_certs {
                Some(path) => Some(tls_config(Some(path)).map_err(bad)?),
                None => None,
            },
            ..FredConfig::default()
        },
    };
    Ok(config)
}

/// redis-py's `unix://[[user]:[password]@]/path/redis.sock[?db=N]`.
fn unix_socket_config(url: &str) -> Result<FredConfig, String> {
    let rest = url.strip_prefix("unix://").unwrap_or(url);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (userinfo, path) = match rest.rsplit_once('@') {
        Some((userinfo, path)) => (Some(userinfo), path),
        None => (None, rest),
    };
    if !path.starts_with('/') {
        return Err("a unix:// URL needs an absolute socket path".into());
    }
    let (username, password) = match userinfo.map(|info| info.split_once(':')) {
        Some(Some((user, password))) => (
            (!user.is_empty()).then(|| user.to_string()),
            Some(password.to_string()),
        ),
        Some(None) => (None, userinfo.map(str::to_string)),
        None => (None, None),
    };
    let database = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("db="))
        .map(|db| {
            db.parse::<u8>()
                .map_err(|_| format!("db={db} is not a database number"))
        })
        .transpose()?;
    Ok(FredConfig {
        server: ServerConfig::Unix { path: path.into() },
        username,
        password,
        database,
        ..FredConfig::default()
    })
}

/// TLS trusting the system's CAs, or only those in `ca_file` (PEM).
fn tls_config(ca_file: Option<&Path>) -> Result<TlsConfig, String> {
    let Some(path) = ca_file else {
        return TlsConnector::default_rustls()
            .map(TlsConfig::from)
            .map_err(|error| error.details().to_string());
    };
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|error| format!("bad PEM in {}: {error}", path.display()))?;
        roots
            .add(certificate)
            .map_err(|error| format!("bad CA certificate in {}: {error}", path.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfig::from(TlsConnector::from(client)))
}

/// Client settings shared by every connection: reconnect forever with
/// jittered exponential backoff (50 ms to 1 s), bounded command timeouts,
/// and detection of connections that stop answering.
fn builder(host: &HostSetting) -> Result<Builder, RedisError> {
    let mut config = fred_config(host)?;
    // Never give up: a gateway without Redis is unready, not dead.
    config.fail_fast = false;
    let mut policy = ReconnectPolicy::new_exponential(0, 50, 1_000, 2);
    policy.set_jitter(100);
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(policy)
        .with_connection_config(|connection| {
            connection.connection_timeout = Duration::from_secs(3);
            connection.internal_command_timeout = Duration::from_secs(3);
            connection.max_command_attempts = 3;
            connection.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            };
            connection.unresponsive.max_timeout = Some(Duration::from_secs(10));
            connection.unresponsive.interval = Duration::from_secs(1);
        })
        .with_performance_config(|performance| {
            performance.default_command_timeout = Duration::from_secs(5);
            // Published messages wait here until the router takes them; a
            // burst larger than this is counted as lost, not buffered forever.
            performance.broadcast_channel_capacity = PUBLISHED_BACKLOG;
        });
    Ok(builder)
}

/// Moves the lanes' payloads (scores kept) towards the merged key `KEYS[1]`
/// the receiver pops, in the order they came:
/// - an empty merged key takes the oldest spill slot waiting in the list
///   `KEYS[2]` (a `RENAME`), or, when none waits, everything the lanes hold;
/// - while the merged key holds a backlog, the lanes (`KEYS[3..]`) are
///   emptied into the next free spill slot (`ARGV[4]` and its number, 1 to
///   `ARGV[2]`) as soon as one of them holds `ARGV[3]` payloads, so no lane
///   sits full, and channels_redis refuses nothing, while an old backlog is
///   popped.
///
/// The slots are named from `ARGV[4]` rather than listed in `KEYS`, which
/// would send every slot's name with every pop: they are the process's own
/// keys, created by this script on its host (channels_redis has no cluster
/// mode, so nothing routes by key). Every payload is moved by C-level
/// `ZUNIONSTORE` or `RENAME`, once: a backlog is never copied again. Every
/// key gets `ARGV[1]` seconds to live, like a queue key. Replies `{payloads
/// in the merged key, slots waiting}`.
static TAKE_LANES: std::sync::LazyLock<fred::types::scripts::Script> =
    std::sync::LazyLock::new(|| {
        fred::types::scripts::Script::from_lua(
            "local merged, spilled = KEYS[1], KEYS[2] \
             local slots = tonumber(ARGV[2]) \
             local lanes = {} \
             for i = 3, #KEYS do lanes[#lanes + 1] = KEYS[i] end \
             local held = redis.call('ZCARD', merged) \
             while held == 0 do \
               local oldest = redis.call('RPOP', spilled) \
               if not oldest then break end \
               local slot = ARGV[4] .. oldest \
               if redis.call('EXISTS', slot) == 1 then \
                 redis.call('RENAME', slot, merged) \
                 redis.call('EXPIRE', merged, ARGV[1]) \
                 held = redis.call('ZCARD', merged) \
               end \
             end \
             if held == 0 then \
               local moved = redis.call('ZUNIONSTORE', merged, #lanes, unpack(lanes)) \
               if moved > 0 then \
                 redis.call('DEL', unpack(lanes)) \
                 redis.call('EXPIRE', merged, ARGV[1]) \
               end \
               return {moved, 0} \
             end \
             local waiting = redis.call('LLEN', spilled) \
             if waiting < slots then \
               local fullest = 0 \
               for _, lane in ipairs(lanes) do \
                 local held_there = redis.call('ZCARD', lane) \
                 if held_there > fullest then fullest = held_there end \
               end \
               if fullest >= tonumber(ARGV[3]) then \
                 local newest = redis.call('LINDEX', spilled, 0) \
                 local slot = 1 \
                 if newest then slot = tonumber(newest) % slots + 1 end \
                 redis.call('ZUNIONSTORE', ARGV[4] .. slot, #lanes, unpack(lanes)) \
                 redis.call('DEL', unpack(lanes)) \
                 redis.call('EXPIRE', ARGV[4] .. slot, ARGV[1]) \
                 redis.call('LPUSH', spilled, slot) \
                 redis.call('EXPIRE', spilled, ARGV[1]) \
                 waiting = waiting + 1 \
               end \
             end \
             return {held, waiting}",
        )
    });

/// The keys one receiver pops through (see [`RedisHost::pop_queues`]).
#[derive(Debug, Clone)]
pub struct ReceiveKeys {
    /// The process's queue keys, which channels_redis writes.
    pub lanes: Vec<String>,
    /// The key every payload is popped from.
    pub merged: String,
    /// What the names of the slots the lanes are emptied into while
    /// `merged` holds a backlog start with (then the slot's number, from 1).
    pub spill_stem: String,
    /// How many slots there are.
    pub spill_slots: usize,
    /// The list of slots that hold payloads, oldest last.
    pub spilled: String,
    /// Payloads in one lane that make the receiver spill the lanes.
    pub spill_at: usize,
}

/// How long a receiver's pop may wait for its reply. Longer than a pause of
/// this process that does not already cost its memberships (the liveness
/// timeout): the timer would otherwise fire on resumption before the reply
/// already waiting in the socket is read. A Redis that stops answering is
/// noticed sooner by readiness (the receiver's heartbeat).
const RECEIVER_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Pub/sub messages one subscriber connection may hold for the router.
const PUBLISHED_BACKLOG: usize = 16_384;

/// One fred client for one host of the backend's `hosts` list, with the
/// lifecycle every kind of connection shares.
#[derive(Clone)]
pub struct Connection<C> {
    client: C,
    label: String,
}

impl<C: ClientLike + EventInterface> Connection<C> {
    /// Starts connecting in the background; reconnects forever.
    pub fn start(&self) {
        drop(self.client.connect());
    }

    /// The host as logs and metrics name it (no password).
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Fires after every successful (re)connect.
    pub fn reconnects(&self) -> broadcast::Receiver<fred::types::config::Server> {
        self.client.reconnect_rx()
    }

    pub async fn stop(&self) {
        let _ = self.client.quit().await;
    }

    fn command_error(&self, source: FredError) -> RedisError {
        RedisError::Command {
            host: self.label.clone(),
            source,
        }
    }
}

/// A command connection to one Redis host.
pub type RedisHost = Connection<fred::clients::Client>;

impl RedisHost {
    /// Builds the client without connecting.
    pub fn new(host: &HostSetting) -> Result<RedisHost, RedisError> {
        let label = host.label();
        let client = builder(host)?
            .build()
            .map_err(|error| bad_url(&label, &error))?;
        Ok(RedisHost { client, label })
    }

    /// A second connection to the same host, for a receiver: its pops
    /// block the connection, and their replies must survive a stall of
    /// this process (CPU starvation, a pause) that outlasts the usual
    /// command timeout: a pop whose reply arrives after its caller gave up
    /// loses the payloads it took off the queue.
    pub fn twin(&self) -> RedisHost {
        let client = self.client.clone_new();
        let mut performance = client.perf_config();
        performance.default_command_timeout = RECEIVER_COMMAND_TIMEOUT;
        client.update_perf_config(performance);
        RedisHost {
            client,
            label: self.label.clone(),
        }
    }

    /// `ZADD` (+ `EXPIRE`) and `ZREM` in one pipeline, as channels_redis'
    /// group_add / group_discard would, but many at once.
    pub async fn write_memberships(
        &self,
        writes: &MembershipWrites,
        score: f64,
        group_expiry: i64,
    ) -> Result<(), RedisError> {
        if writes.is_empty() {
            return Ok(());
        }
        let pipeline = self.client.pipeline();
        if let Some(record) = &writes.record {
            for entries in &record.adds {
                let () = pipeline
                    .sadd(record.key.as_str(), as_strs(entries))
                    .await
                    .map_err(|error| self.command_error(error))?;
            }
            if !record.adds.is_empty() {
                let () = pipeline
                    .expire(record.key.as_str(), record.expiry, None)
                    .await
                    .map_err(|error| self.command_error(error))?;
            }
        }
        for (key, channels) in &writes.adds {
            let members: Vec<(f64, &str)> = channels.iter().map(|c| (score, c.as_str())).collect();
            let () = pipeline
                .zadd(key.as_str(), None, None, false, false, members)
                .await
                .map_err(|error| self.command_error(error))?;
            let () = pipeline
                .expire(key.as_str(), group_expiry, None)
                .await
                .map_err(|error| self.command_error(error))?;
        }
        for (key, channels) in &writes.removes {
            let members: Vec<&str> = channels.iter().map(String::as_str).collect();
            let () = pipeline
                .zrem(key.as_str(), members)
                .await
                .map_err(|error| self.command_error(error))?;
        }
        if let Some(record) = &writes.record {
            for entries in &record.removes {
                let () = pipeline
                    .srem(record.key.as_str(), as_strs(entries))
                    .await
                    .map_err(|error| self.command_error(error))?;
            }
        }
        if let Some((key, entries)) = &writes.idle {
            let members: Vec<(f64, &str)> = entries.iter().map(|e| (score, e.as_str())).collect();
            let () = pipeline
                .zadd(key.as_str(), None, None, false, false, members)
                .await
                .map_err(|error| self.command_error(error))?;
        }
        let results = pipeline.try_all::<Value>().await;
        match results.into_iter().find_map(Result::err) {
            Some(error) => Err(self.command_error(error)),
            None => Ok(()),
        }
    }

    /// Takes up to `max` payloads of a process's queue keys (`keys.lanes`)
    /// in the order they came, through `keys.merged`: a sorted set of the
    /// process's own that one script refills whenever it is empty, from the
    /// oldest spill slot or else from every lane, and that spills the lanes
    /// into a slot while it holds a backlog ([`TAKE_LANES`]); so a pop is
    /// three commands however many lanes there are, and no lane fills up
    /// behind a backlog. With `block`, first waits up to that long for a
    /// payload of any lane (`BZPOPMIN`); callers must block only while
    /// nothing waits (the last pop said so), or a lane's newer payload would
    /// overtake older ones. Returns the payloads and whether more wait.
    pub async fn pop_queues(
        &self,
        keys: &ReceiveKeys,
        max: usize,
        expiry: u64,
        block: Option<Duration>,
    ) -> Result<(Vec<QueuedPayload>, bool), RedisError> {
        let mut popped = Vec::new();
        let pipeline = self.client.pipeline();
        if let Some(timeout) = block {
            let () = pipeline
                .bzpopmin(keys.lanes.clone(), timeout.as_secs_f64())
                .await
                .map_err(|error| self.command_error(error))?;
        }
        // A pipeline has no EVALSHA of its own: spell it out.
        let key_count = 2 + keys.lanes.len();
        let mut take: Vec<Value> = Vec::with_capacity(key_count + 6);
        take.push(Value::String(TAKE_LANES.sha1().clone()));
        take.push(Value::Integer(key_count as i64));
        take.push(Value::String(keys.merged.as_str().into()));
        take.push(Value::String(keys.spilled.as_str().into()));
        take.extend(
            keys.lanes
                .iter()
                .map(|lane| Value::String(lane.as_str().into())),
        );
        take.push(Value::String(expiry.to_string().into()));
        take.push(Value::Integer(keys.spill_slots.max(1) as i64));
        take.push(Value::Integer(keys.spill_at.max(1) as i64));
        take.push(Value::String(keys.spill_stem.as_str().into()));
        let () = pipeline
            .custom(
                fred::types::CustomCommand::new_static("EVALSHA", None, false),
                take,
            )
            .await
            .map_err(|error| self.command_error(error))?;
        let asked = if block.is_some() {
            max.saturating_sub(1)
        } else {
            max
        }
        .max(1);
        let () = pipeline
            .zpopmin(keys.merged.as_str(), Some(asked))
            .await
            .map_err(|error| self.command_error(error))?;
        let mut replies = pipeline.try_all::<Value>().await.into_iter();
        if block.is_some() {
            match replies.next() {
                Some(Ok(Value::Null)) | None => {}
                Some(Ok(Value::Array(triple))) => {
                    let mut triple = triple.into_iter();
                    let (_key, member, score) = (triple.next(), triple.next(), triple.next());
                    let (Some(member), Some(score)) = (member, score) else {
                        return Err(self.bad_reply("BZPOPMIN reply is not [key, member, score]"));
                    };
                    popped.push(self.queued_payload(member, score)?);
                }
                Some(Ok(_)) => return Err(self.bad_reply("BZPOPMIN reply is not an array")),
                Some(Err(error)) => return Err(self.command_error(error)),
            }
        }
        let slots_waiting = match replies.next() {
            Some(Ok(Value::Array(counts))) => match counts.get(1) {
                Some(Value::Integer(waiting)) => *waiting > 0,
                _ => return Err(self.bad_reply("lane script reply is not [held, waiting]")),
            },
            Some(Ok(_)) | None => return Err(self.bad_reply("lane script reply is not an array")),
            // Not loaded yet (a new or restarted server): the lanes keep
            // their payloads for the next pop, which finds the script.
            Some(Err(error)) if error.details().starts_with("NOSCRIPT") => {
                TAKE_LANES
                    .load(&self.client)
                    .await
                    .map_err(|error| self.command_error(error))?;
                true
            }
            Some(Err(error)) => return Err(self.command_error(error)),
        };
        let before = popped.len();
        match replies.next() {
            Some(Ok(reply)) => self.push_pairs(reply, &mut popped)?,
            Some(Err(error)) => return Err(self.command_error(error)),
            None => {}
        }
        let may_hold_more = slots_waiting || popped.len() - before >= asked;
        Ok((popped, may_hold_more))
    }

    fn bad_reply(&self, what: &'static str) -> RedisError {
        RedisError::Reply {
            host: self.label.clone(),
            what,
        }
    }

    fn queued_payload(&self, member: Value, score: Value) -> Result<QueuedPayload, RedisError> {
        let payload = match member {
            Value::Bytes(bytes) => bytes,
            Value::String(text) => text.into_inner(),
            _ => return Err(self.bad_reply("queue member is not a string")),
        };
        let sent_at = score
            .as_f64()
            .ok_or_else(|| self.bad_reply("queue score is not a number"))?;
        Ok(QueuedPayload { payload, sent_at })
    }

    /// `ZPOPMIN key count` answers a flat `[member, score, …]` array (RESP2)
    /// or an array of pairs (RESP3); accept both.
    fn push_pairs(&self, reply: Value, out: &mut Vec<QueuedPayload>) -> Result<(), RedisError> {
        let items = match reply {
            Value::Null => return Ok(()),
            Value::Array(items) => items,
            _ => return Err(self.bad_reply("ZPOPMIN reply is not an array")),
        };
        let mut items = items.into_iter();
        while let Some(item) = items.next() {
            match item {
                Value::Array(pair) => {
                    let mut pair = pair.into_iter();
                    let (Some(member), Some(score)) = (pair.next(), pair.next()) else {
                        return Err(self.bad_reply("ZPOPMIN pair is incomplete"));
                    };
                    out.push(self.queued_payload(member, score)?);
                }
                member => {
                    let score = items
                        .next()
                        .ok_or_else(|| self.bad_reply("ZPOPMIN reply has an odd length"))?;
                    out.push(self.queued_payload(member, score)?);
                }
            }
        }
        Ok(())
    }

    /// Reads replay keys for a recovering socket in one pipeline: Redis'
    /// clock, then per key its size, its oldest score, and its payloads
    /// scored `from` or later (at most `limit`), or with no `from` its
    /// newest payload alone.
    pub async fn read_replay(
        &self,
        keys: &[String],
        from: Option<f64>,
        limit: usize,
    ) -> Result<ReplaySnapshot, RedisError> {
        let pipeline = self.client.pipeline();
        let command =
            |name: &'static str| fred::types::CustomCommand::new_static(name, None, false);
        let string = |text: String| Value::String(text.into());
        let () = pipeline
            .custom(command("TIME"), Vec::<Value>::new())
            .await
            .map_err(|error| self.command_error(error))?;
        for key in keys {
            let key = || string(key.clone());
            let () = pipeline
                .custom(command("ZCARD"), vec![key()])
                .await
                .map_err(|error| self.command_error(error))?;
            let () = pipeline
                .custom(
                    command("ZRANGE"),
                    vec![
                        key(),
                        Value::Integer(0),
                        Value::Integer(0),
                        string("WITHSCORES".into()),
                    ],
                )
                .await
                .map_err(|error| self.command_error(error))?;
            let read = match from {
                Some(from) => (
                    command("ZRANGEBYSCORE"),
                    vec![
                        key(),
                        string(from.to_string()),
                        string("+inf".into()),
                        string("WITHSCORES".into()),
                        string("LIMIT".into()),
                        Value::Integer(0),
                        Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)),
                    ],
                ),
                None => (
                    command("ZRANGE"),
                    vec![
                        key(),
                        Value::Integer(-1),
                        Value::Integer(-1),
                        string("WITHSCORES".into()),
                    ],
                ),
            };
            let () = pipeline
                .custom(read.0, read.1)
                .await
                .map_err(|error| self.command_error(error))?;
        }
        let mut replies = pipeline.try_all::<Value>().await.into_iter();
        let mut next = || -> Result<Value, RedisError> {
            match replies.next() {
                Some(Ok(value)) => Ok(value),
                Some(Err(error)) => Err(self.command_error(error)),
                None => Err(self.bad_reply("replay read: missing reply")),
            }
        };
        let now = match next()? {
            Value::Array(parts) => {
                let number = |value: Option<&Value>| value.and_then(Value::as_f64);
                match (number(parts.first()), number(parts.get(1))) {
                    (Some(seconds), Some(micros)) => seconds + micros / 1e6,
                    _ => return Err(self.bad_reply("TIME reply is not [seconds, microseconds]")),
                }
            }
            _ => return Err(self.bad_reply("TIME reply is not an array")),
        };
        let mut snapshot = ReplaySnapshot {
            now,
            keys: Vec::with_capacity(keys.len()),
        };
        for _ in keys {
            let count = next()?
                .as_u64()
                .ok_or_else(|| self.bad_reply("ZCARD reply is not a number"))?;
            let mut oldest = Vec::new();
            self.push_pairs(next()?, &mut oldest)?;
            let mut entries = Vec::new();
            self.push_pairs(next()?, &mut entries)?;
            snapshot.keys.push(ReplayKeyContents {
                count,
                oldest: oldest.first().map(|payload| payload.sent_at),
                entries,
            });
        }
        Ok(snapshot)
    }

    /// Refreshes a process's liveness record (and its entry in the processes
    /// set, and the record's own entries and expiry) in one pipeline.
    /// Returns whether the liveness record still existed: `false` after it
    /// expired (the process was stalled past its timeout, and may have been
    /// reaped) or after Redis lost it, and on the very first beat.
    pub async fn beat(&self, beat: &Heartbeat<'_>) -> Result<bool, RedisError> {
        let ttl_ms = i64::try_from(beat.ttl.as_millis()).unwrap_or(i64::MAX);
        let pipeline = self.client.pipeline();
        let command = |error| self.command_error(error);
        let () = pipeline
            .pexpire(beat.alive_key, ttl_ms, None)
            .await
            .map_err(command)?;
        let () = pipeline
            .set(
                beat.alive_key,
                "1",
                Some(Expiration::PX(ttl_ms)),
                None,
                false,
            )
            .await
            .map_err(command)?;
        let () = pipeline
            .sadd(beat.processes_key, beat.process_id)
            .await
            .map_err(command)?;
        let () = pipeline
            .expire(beat.processes_key, beat.record_expiry, None)
            .await
            .map_err(command)?;
        if !beat.record_entries.is_empty() {
            let () = pipeline
                .sadd(beat.record_key, as_strs(beat.record_entries))
                .await
                .map_err(command)?;
        }
        let () = pipeline
            .expire(beat.record_key, beat.record_expiry, None)
            .await
            .map_err(command)?;
        let replies: Vec<Value> = pipeline.all().await.map_err(command)?;
        match replies.first().and_then(Value::as_i64) {
            Some(refreshed) => Ok(refreshed == 1),
            None => Err(self.bad_reply("PEXPIRE reply is not an integer")),
        }
    }

    /// Every member of a set (the process ids a host knows of).
    pub async fn set_members(&self, key: &str) -> Result<Vec<String>, RedisError> {
        self.client
            .smembers(key)
            .await
            .map_err(|error| self.command_error(error))
    }

    /// Which of `keys` exist, in order, in one round trip.
    pub async fn keys_exist(&self, keys: &[String]) -> Result<Vec<bool>, RedisError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for key in keys {
            let () = pipeline
                .exists(key.as_str())
                .await
                .map_err(|error| self.command_error(error))?;
        }
        let replies: Vec<Value> = pipeline
            .all()
            .await
            .map_err(|error| self.command_error(error))?;
        replies
            .iter()
            .map(|reply| {
                reply
                    .as_i64()
                    .map(|count| count > 0)
                    .ok_or_else(|| self.bad_reply("EXISTS reply is not an integer"))
            })
            .collect()
    }

    /// Deletes keys (one command).
    pub async fn delete(&self, keys: Vec<String>) -> Result<(), RedisError> {
        if keys.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .client
            .del(keys)
            .await
            .map_err(|error| self.command_error(error))?;
        Ok(())
    }

    /// Runs a Lua script whose reply is a list of integers.
    pub async fn script_integers(
        &self,
        script: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<i64>, RedisError> {
        let reply: Value = self
            .client
            .eval(script, keys, args)
            .await
            .map_err(|error| self.command_error(error))?;
        let Value::Array(items) = reply else {
            return Err(self.bad_reply("script reply is not an array"));
        };
        items
            .iter()
            .map(|item| {
                item.as_i64()
                    .ok_or_else(|| self.bad_reply("script reply holds a non-integer"))
            })
            .collect()
    }

    /// Every member of a sorted set (a group's channel names).
    pub async fn sorted_set_members(&self, key: &str) -> Result<Vec<String>, RedisError> {
        self.client
            .zrange(key, 0, -1, None, false, None, false)
            .await
            .map_err(|error| self.command_error(error))
    }

    /// Queues one payload the way channels_redis' group_send does (`ZADD`
    /// with the send time as score, then the key's TTL refreshed), in one
    /// round trip, without the sender's capacity check.
    pub async fn queue_payload(
        &self,
        queue_key: &str,
        payload: Bytes,
        expiry: u64,
        sent_at: f64,
    ) -> Result<(), RedisError> {
        let expiry = i64::try_from(expiry).unwrap_or(i64::MAX);
        let pipeline = self.client.pipeline();
        let () = pipeline
            .zadd(
                queue_key,
                None,
                None,
                false,
                false,
                (sent_at, Value::Bytes(payload)),
            )
            .await
            .map_err(|error| self.command_error(error))?;
        let () = pipeline
            .expire(queue_key, expiry, None)
            .await
            .map_err(|error| self.command_error(error))?;
        let results = pipeline.try_all::<Value>().await;
        match results.into_iter().find_map(Result::err) {
            Some(error) => Err(self.command_error(error)),
            None => Ok(()),
        }
    }

    /// `PUBLISH`, as the pub/sub layer's group_send does.
    pub async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), RedisError> {
        let _: i64 = self
            .client
            .publish(channel, Value::Bytes(payload))
            .await
            .map_err(|error| self.command_error(error))?;
        Ok(())
    }

    /// How many channels the connection named `name` is subscribed to, by
    /// Redis' own account (`CLIENT LIST TYPE pubsub`, `sub=`); 0 when it is
    /// subscribed to none (or not connected). `None` when this Redis does
    /// not let the gateway's user run `CLIENT LIST` (an ACL, a managed
    /// service): then nobody can tell.
    pub async fn subscriptions_of(&self, name: &str) -> Result<Option<u64>, RedisError> {
        let listing: Value = match self
            .client
            .custom(
                fred::cmd!("CLIENT"),
                vec!["LIST".to_string(), "TYPE".to_string(), "pubsub".to_string()],
            )
            .await
        {
            Ok(listing) => listing,
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled
                ) =>
            {
                return Err(self.command_error(error));
            }
            // An error reply: the command is refused here.
            Err(_) => return Ok(None),
        };
        let listing = listing
            .as_str()
            .ok_or_else(|| self.bad_reply("CLIENT LIST reply is not text"))?;
        Ok(Some(
            subscriptions_in_client_list(&listing, name).unwrap_or(0),
        ))
    }

    /// Round trip used by readiness to tell "connected" from "answering".
    pub async fn ping(&self) -> Result<(), RedisError> {
        let _: Value = self
            .client
            .ping(None)
            .await
            .map_err(|error| self.command_error(error))?;
        Ok(())
    }
}

/// The `sub=` count of the `CLIENT LIST` line whose `name=` is `name`.
fn subscriptions_in_client_list(listing: &str, name: &str) -> Option<u64> {
    listing.lines().find_map(|line| {
        let mut fields = line.split(' ');
        fields
            .clone()
            .find(|field| field.strip_prefix("name=") == Some(name))?;
        fields.find_map(|field| field.strip_prefix("sub=")?.parse().ok())
    })
}

/// One message received on a subscribed pub/sub channel.
pub struct Published {
    /// The pub/sub channel name (UTF-8, as Redis channel names from
    /// channels_redis always are).
    pub channel: Bytes,
    pub payload: Bytes,
}

/// What reading the next published message gave.
pub enum NextPublished {
    Message(Published),
    /// The router fell this many messages behind and they were discarded.
    Lagged(u64),
    Closed,
}

/// A subscriber connection to one Redis host (pub/sub layer).
pub type RedisSubscriber = Connection<fred::clients::SubscriberClient>;

impl RedisSubscriber {
    pub fn new(host: &HostSetting) -> Result<RedisSubscriber, RedisError> {
        let label = host.label();
        let mut builder = builder(host)?;
        builder.with_connection_config(|connection| {
            // Named, so its subscriptions can be read from CLIENT LIST.
            connection.auto_client_setname = true;
        });
        let client = builder
            .build_subscriber_client()
            .map_err(|error| bad_url(&label, &error))?;
        Ok(RedisSubscriber { client, label })
    }

    /// One `SUBSCRIBE` for all of `channels`; sent, not confirmed (see
    /// [`RedisSubscriber::carried_out`]).
    pub async fn subscribe(&self, channels: Vec<String>) -> Result<(), RedisError> {
        if channels.is_empty() {
            return Ok(());
        }
        self.client
            .subscribe(channels)
            .await
            .map_err(|error| self.command_error(error))
    }

    /// The name this connection gives itself in Redis (`CLIENT SETNAME`
    /// on every connect), to find it in `CLIENT LIST`.
    pub fn name(&self) -> &str {
        self.client.id()
    }

    /// Waits until Redis has carried out every `SUBSCRIBE` and
    /// `UNSUBSCRIBE` sent before it on this connection (a `PING` with a
    /// `token` of its own, answered in order). Those resolve once written
    /// and their replies come out of band: a refusal (an ACL's NOPERM) may
    /// be dropped by the client, so whether they took effect is read from
    /// Redis afterwards ([`RedisHost::subscriptions_of`]).
    pub async fn carried_out(&self, token: &str) -> Result<(), RedisError> {
        let reply: Value = self
            .client
            .ping(Some(token.to_string()))
            .await
            .map_err(|error| self.command_error(error))?;
        let echoed = |value: &Value| value.as_str().is_some_and(|text| text == token);
        let echoes = match &reply {
            // In subscribed mode: ["pong", token].
            Value::Array(items) => items.iter().any(echoed),
            other => echoed(other),
        };
        if echoes {
            Ok(())
        } else {
            Err(RedisError::Reply {
                host: self.label.clone(),
                what: "PING did not echo its token",
            })
        }
    }

    /// One `UNSUBSCRIBE` for all of `channels`.
    pub async fn unsubscribe(&self, channels: Vec<String>) -> Result<(), RedisError> {
        if channels.is_empty() {
            return Ok(());
        }
        self.client
            .unsubscribe(channels)
            .await
            .map_err(|error| self.command_error(error))
    }

    pub fn messages(&self) -> PublishedMessages {
        PublishedMessages {
            receiver: self.client.message_rx(),
        }
    }
}

/// The stream of messages one subscriber connection receives.
pub struct PublishedMessages {
    receiver: broadcast::Receiver<fred::types::Message>,
}

impl PublishedMessages {
    pub async fn next(&mut self) -> NextPublished {
        Self::published(self.receiver.recv().await)
    }

    /// The next message if one is already waiting.
    pub fn try_next(&mut self) -> Option<NextPublished> {
        match self.receiver.try_recv() {
            Ok(message) => Some(Self::published(Ok(message))),
            Err(broadcast::error::TryRecvError::Empty) => None,
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                Some(NextPublished::Lagged(missed))
            }
            Err(broadcast::error::TryRecvError::Closed) => Some(NextPublished::Closed),
        }
    }

    fn published(
        received: Result<fred::types::Message, broadcast::error::RecvError>,
    ) -> NextPublished {
        match received {
            Ok(message) => {
                let payload = match message.value {
                    Value::Bytes(bytes) => bytes,
                    Value::String(text) => text.into_inner(),
                    _ => Bytes::new(),
                };
                NextPublished::Message(Published {
                    channel: message.channel.into_inner(),
                    payload,
                })
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => NextPublished::Lagged(missed),
            Err(broadcast::error::RecvError::Closed) => NextPublished::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_socket_urls_read_like_redis_py() {
        let config = unix_socket_config("unix://user:pw@/run/redis.sock?db=4").expect("valid");
        assert_eq!(config.username.as_deref(), Some("user"));
        assert_eq!(config.password.as_deref(), Some("pw"));
        assert_eq!(config.database, Some(4));
        assert!(
            matches!(config.server, ServerConfig::Unix { ref path } if path == Path::new("/run/redis.sock"))
        );
        let config = unix_socket_config("unix:///tmp/r.sock").expect("valid");
        assert_eq!(
            (config.username, config.password, config.database),
            (None, None, None)
        );
        assert!(unix_socket_config("unix://relative.sock").is_err());
        assert!(unix_socket_config("unix:///r.sock?db=x").is_err());
    }

    #[test]
    fn a_connections_subscriptions_are_read_from_client_list() {
        let listing = "id=3 addr=127.0.0.1:1 name=fred-a db=0 sub=2 psub=0 cmd=subscribe\n\
                       id=4 addr=127.0.0.1:2 name=fred-ab db=0 sub=7 psub=0 cmd=ping\n";
        assert_eq!(subscriptions_in_client_list(listing, "fred-a"), Some(2));
        assert_eq!(subscriptions_in_client_list(listing, "fred-ab"), Some(7));
        assert_eq!(subscriptions_in_client_list(listing, "fred-b"), None);
        assert_eq!(subscriptions_in_client_list("", "fred-a"), None);
    }
}
