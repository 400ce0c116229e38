//! Configuration: the typed settings of one gateway process, where they come
//! from, and whether they make sense.
//!
//! Sources, later ones winning: built-in defaults, one TOML file, environment
//! variables named `GATEWAY_<SECTION>_<KEY>` (one per key, e.g.
//! `GATEWAY_LAYER_PREFIX`), then `--set section.key=value` flags. The `[layer]`
//! section reuses channels_redis' own setting names so an operator can copy
//! their Django `CHANNEL_LAYERS` values. Every error names the offending key.
//!
//! This module reads files and the environment once at start and does nothing
//! else: it must not open sockets or know how a setting is used.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::{self, Deserializer, MapAccess, SeqAccess};
use serde::{Deserialize, Serialize, Serializer};

/// Sections whose keys may be set from `GATEWAY_<SECTION>_<KEY>` variables.
const SECTIONS: &[&str] = &["server", "auth", "limits", "layer", "events", "log"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("`--set {0}`: expected section.key=value")]
    BadOverride(String),
}

impl From<figment::Error> for ConfigError {
    /// Names each bad key in its TOML spelling (`layer.expiry`) whatever
    /// source it came from, and says which source that was.
    fn from(error: figment::Error) -> Self {
        let described: Vec<String> = error
            .into_iter()
            .map(|error| {
                let key = error
                    .path
                    .iter()
                    .map(|part| part.to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(".");
                let source = error
                    .metadata
                    .as_ref()
                    .map(|metadata| format!(" (from {})", metadata.name))
                    .unwrap_or_default();
                if key.is_empty() {
                    format!("{}{source}", error.kind)
                } else {
                    format!("invalid value for `{key}`: {}{source}", error.kind)
                }
            })
            .collect();
        ConfigError::Load(described.join("; "))
    }
}

/// A setting given as a value, `_file` or `_env`: at most one of them.
fn only_one_of(key: &'static str, set: [bool; 3]) -> Result<(), ConfigError> {
    if set.iter().filter(|set| **set).count() > 1 {
        return Err(invalid(
            key,
            format!("set only one of {key}, {key}_file and {key}_env"),
        ));
    }
    Ok(())
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Reads a list setting from any source in the same forms: a list, or one
/// value standing for a list of one (`GATEWAY_LAYER_HOSTS=redis://h:6379`,
/// `--set auth.algorithms=RS256`, `hosts = "redis://h:6379"` in the file).
/// A single string is never split: a Redis password may hold a comma.
fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OneOrMany<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> de::Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list, or one value standing for a list of one")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Vec<T>, E> {
            self.visit_string(value.to_owned())
        }

        fn visit_string<E: de::Error>(self, value: String) -> Result<Vec<T>, E> {
            T::deserialize(de::value::StringDeserializer::<E>::new(value)).map(|one| vec![one])
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|one| vec![one])
        }
    }

    deserializer.deserialize_any(OneOrMany(std::marker::PhantomData))
}

/// Reads the Fernet keys `symmetric_encryption_keys_env` or `_file` point
/// at: a JSON list of strings, or one key per line (channels_redis hashes
/// any string into a key, so a line is taken whole; empty lines are skipped).
fn parse_key_list(key: &'static str, text: &str) -> Result<Vec<Secret>, ConfigError> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        let keys: Vec<String> = serde_json::from_str(trimmed)
            .map_err(|error| invalid(key, format!("not a JSON list of strings: {error}")))?;
        return Ok(keys.into_iter().map(Secret::new).collect());
    }
    Ok(text
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty())
        .map(Secret::new)
        .collect())
}

/// A string that never shows up in `Debug` output, logs or `check-config`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub layer: LayerConfig,
    pub events: EventsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Public listener: WebSocket upgrades and health probes.
    pub listen: SocketAddr,
    /// Operator listener: `/metrics`, `/healthz`, `/readyz`. Keep it off the internet.
    pub admin_listen: SocketAddr,
    /// PEM certificate chain and private key: serve `wss://` on `listen`
    /// without a terminating proxy. Both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Socket worker threads; 0 means one per CPU core but one, at least
    /// one ([`ServerConfig::socket_workers`]). The Redis receiver and the
    /// router run on a thread of their own (`relay`).
    pub workers: usize,
    /// Who speaks WebSocket on accepted sockets: `direct` (the gateway owns
    /// the connection after the upgrade and keeps no buffers while idle) or
    /// `actix-ws` (actix-ws behind actix's HTTP/1 dispatcher; more memory
    /// per socket, kept for comparison and as a fallback).
    pub websocket_driver: WebSocketDriver,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A peer silent for longer than this (no pong, no frame) is dropped.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Frames waiting for one socket; a socket that falls this far behind is closed.
    pub outbound_queue: usize,
    /// Largest frame a client may send, in bytes.
    pub max_inbound_frame: usize,
    /// How long a client may take to send its complete handshake request
    /// (and, with TLS, as long again for the TLS handshake before it).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long a connect may wait for its group memberships to be written.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Upper bound on the shutdown sequence after SIGTERM / SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM: readiness is false at once, new sockets are refused,
    /// and the listener keeps running this long so load balancers notice.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Sockets are then closed in batches spread over this window.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// Each drained client is told to wait a random time up to this before
    /// reconnecting (`retry_after_ms=` in the close reason).
    #[serde(with = "humantime_serde")]
    pub drain_reconnect_jitter: Duration,
}

impl ServerConfig {
    /// How many socket worker threads to start: `workers`, or for 0 one per
    /// core the process may use but one, at least one. The receiver routes
    /// on its own thread and writes frames to waiting sockets of every
    /// socket thread itself, so the core left over is its; the main thread
    /// keeps the membership writer, the keeper and the canary.
    pub fn socket_workers(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        cores.saturating_sub(1).max(1)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9000)),
            tls_cert_file: None,
            tls_key_file: None,
            workers: 0,
            websocket_driver: WebSocketDriver::Direct,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(60),
            outbound_queue: 256,
            max_inbound_frame: 4096,
            handshake_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            drain_window: Duration::ZERO,
            drain_reconnect_jitter: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebSocketDriver {
    Direct,
    ActixWs,
}

/// What to do with a handshake that carries no `Origin` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingOrigin {
    /// Accept it: browsers always send `Origin`, so such a client is not a
    /// browser and cannot be the victim of cross-site WebSocket hijacking.
    #[default]
    Allow,
    /// Refuse it with 403 (browser-only deployments).
    Deny,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret shared with the backend (SimpleJWT's `SIGNING_KEY`).
    pub jwt_secret: Secret,
    /// A file holding the HMAC secret (a trailing newline is ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret_file: Option<PathBuf>,
    /// The name of an environment variable holding the HMAC secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret_env: Option<String>,
    /// Legacy single algorithm; when `algorithms` is set it must be one of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_algorithm: Option<String>,
    /// The algorithm allowlist (`none` is never accepted). Empty: the
    /// `jwt_algorithm`, else HS256.
    #[serde(deserialize_with = "one_or_many")]
    pub algorithms: Vec<String>,
    /// PEM public key (RSA, EC P-256/P-384 or Ed25519), inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// The name of an environment variable holding the PEM public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_env: Option<String>,
    /// A JWKS document (`{"keys": [...]}`); tokens select a key by `kid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document fetched over HTTPS (the identity provider's
    /// `jwks_uri`); exclusive with `jwks_file`. May carry credentials, so it
    /// is never logged (only its host) and `check-config` redacts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// PEM CA certificates trusted for `jwks_url`, besides the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_ca_file: Option<PathBuf>,
    /// Bounds one fetch of `jwks_url`, and how long a handshake naming an
    /// unknown `kid` waits for it.
    #[serde(with = "humantime_serde")]
    pub jwks_fetch_timeout: Duration,
    /// Least time between re-reads (or fetches) of the JWKS prompted by an
    /// unknown `kid`.
    #[serde(with = "humantime_serde")]
    pub jwks_reload_interval: Duration,
    /// How often the JWKS is re-read (or fetched) anyway (keys replaced
    /// under the same `kid`, removed keys).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// Required `iss`; unset: not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values (a token must name one); empty: not checked.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway: u64,
    pub token_query_param: String,
    /// A cookie holding the access token; empty (the default) reads no
    /// cookie. The browser attaches cookies to sockets any site opens, so
    /// a cookie (or `session_url`) needs `allowed_origins`.
    pub token_cookie: String,
    /// Accept cookie credentials (`token_cookie`, `session_url`) from every
    /// origin. Only for a gateway no browser reaches with a cross-site
    /// cookie: any page a logged-in user visits could open a socket as them.
    pub allow_any_origin_with_cookies: bool,
    /// Claims tried in order for the user id (SimpleJWT's `USER_ID_CLAIM` first).
    #[serde(deserialize_with = "one_or_many")]
    pub user_id_claims: Vec<String>,
    /// Group each socket joins; `{user_id}` is replaced by the token's user id.
    pub user_group_template: String,
    /// A backend URL asked who a session cookie belongs to when the
    /// handshake carries no token (Django session auth without JWTs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_url: Option<String>,
    /// How long the backend may take to answer.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long an answer is reused for the same cookie.
    #[serde(with = "humantime_serde")]
    pub session_cache_ttl: Duration,
    /// When set, a handshake without a token is upgraded and must send
    /// `{"token": "..."}` as its first frame within this time (else 4001).
    #[serde(default, with = "humantime_serde")]
    pub first_message_timeout: Option<Duration>,
    /// A claim listing extra groups the socket joins (e.g. `groups`).
    pub groups_claim: Option<String>,
    /// Patterns (`todo_list_*`) an extra group must match; a token asking
    /// for any other group is refused with 403.
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_groups: Vec<String>,
    /// Origins allowed to open sockets (`https://app.example.com`,
    /// `https://*.example.com`, `http://localhost:*`); empty: every origin.
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_origins: Vec<String>,
    /// What to do when the handshake has no `Origin` header.
    pub missing_origin: MissingOrigin,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: Secret::default(),
            jwt_secret_file: None,
            jwt_secret_env: None,
            jwt_algorithm: None,
            algorithms: Vec::new(),
            public_key: None,
            public_key_file: None,
            public_key_env: None,
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_fetch_timeout: Duration::from_secs(3),
            jwks_reload_interval: Duration::from_secs(30),
            jwks_refresh_interval: Duration::from_secs(300),
            issuer: None,
            audience: Vec::new(),
            leeway: 0,
            token_query_param: "token".into(),
            token_cookie: String::new(),
            allow_any_origin_with_cookies: false,
            user_id_claims: vec!["user_id".into(), "sub".into()],
            user_group_template: "user_{user_id}".into(),
            session_url: None,
            session_timeout: Duration::from_secs(2),
            session_cache_ttl: Duration::from_secs(10),
            first_message_timeout: None,
            groups_claim: None,
            allowed_groups: Vec::new(),
            allowed_origins: Vec::new(),
            missing_origin: MissingOrigin::Allow,
        }
    }
}

/// How much one process, user, client address and socket may take.
/// Counts of 0 mean "no limit".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sockets this process holds at most; more get 503 before the upgrade.
    pub max_sockets: usize,
    pub max_sockets_per_user: usize,
    pub max_sockets_per_ip: usize,
    /// Authenticated sockets per second this process admits (token
    /// bucket); 0 = any. Spent only once a handshake's credentials
    /// verified, so clients without a valid token cannot use it up.
    pub connect_rate: f64,
    pub connect_burst: f64,
    /// Handshakes per second one client address may start, checked before
    /// any token is read (token bucket; IPv6 by /64); 0 = any.
    pub connect_rate_per_ip: f64,
    pub connect_burst_per_ip: f64,
    /// Proxies (CIDRs or addresses) whose `client_ip_header` is believed.
    #[serde(deserialize_with = "one_or_many")]
    pub trusted_proxies: Vec<String>,
    pub client_ip_header: String,
    /// Frames per second one client may send (token bucket); past it the
    /// socket is closed with 4007. Clients have little to say.
    pub inbound_rate: f64,
    pub inbound_burst: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_sockets: 0,
            max_sockets_per_user: 0,
            max_sockets_per_ip: 0,
            connect_rate: 0.0,
            connect_burst: 100.0,
            connect_rate_per_ip: 0.0,
            connect_burst_per_ip: 20.0,
            trusted_proxies: Vec::new(),
            client_ip_header: "X-Forwarded-For".into(),
            inbound_rate: 10.0,
            inbound_burst: 20.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerBackend {
    /// `channels_redis.core.RedisChannelLayer`.
    Core,
    /// `channels_redis.pubsub.RedisPubSubChannelLayer`.
    Pubsub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerializerFormatSetting {
    Msgpack,
    Json,
}

/// One entry of channels_redis' `hosts`: a URL, a `[host, port]` pair, or a
/// table (an `address` URL with options, or a Sentinel master).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HostSetting {
    Url(String),
    Pair(String, u16),
    Table(HostTable),
}

/// The dict form of a `hosts` entry, with redis-py's option names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostTable {
    /// `redis://`, `rediss://` or `unix://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Sentinel `[host, port]` pairs; with `master_name`, instead of `address`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sentinels: Vec<(String, u16)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    /// PEM file with the CA certificates that sign the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_ca_certs: Option<PathBuf>,
    /// Credentials and database of a Sentinel-managed master (URLs carry
    /// their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<u8>,
}

/// Where one host entry points.
pub enum HostTarget<'a> {
    /// A URL, and a CA file when the entry names one.
    Url {
        url: String,
        ca_file: Option<&'a Path>,
    },
    Sentinel {
        sentinels: &'a [(String, u16)],
        master_name: &'a str,
        table: &'a HostTable,
    },
}

impl HostSetting {
    pub fn target(&self) -> Result<HostTarget<'_>, String> {
        match self {
            HostSetting::Url(url) => Ok(HostTarget::Url {
                url: url.clone(),
                ca_file: None,
            }),
            HostSetting::Pair(host, port) => Ok(HostTarget::Url {
                url: format!("redis://{host}:{port}"),
                ca_file: None,
            }),
            HostSetting::Table(table) => match (&table.address, &table.master_name) {
                (Some(url), None) if table.sentinels.is_empty() => Ok(HostTarget::Url {
                    url: url.clone(),
                    ca_file: table.ssl_ca_certs.as_deref(),
                }),
                (None, Some(master_name)) if !table.sentinels.is_empty() => {
                    Ok(HostTarget::Sentinel {
                        sentinels: &table.sentinels,
                        master_name,
                        table,
                    })
                }
                _ => {
                    Err("a table needs either `address`, or `sentinels` with `master_name`".into())
                }
            },
        }
    }

    /// What to call this host in logs and metrics: its URL with any password
    /// replaced, or its Sentinel master.
    pub fn label(&self) -> String {
        match self.target() {
            Ok(HostTarget::Url { url, .. }) => redact_url_password(&url),
            Ok(HostTarget::Sentinel {
                sentinels,
                master_name,
                ..
            }) => {
                let addresses: Vec<String> = sentinels
                    .iter()
                    .map(|(host, port)| format!("{host}:{port}"))
                    .collect();
                format!("sentinel://{}/{master_name}", addresses.join(","))
            }
            Err(_) => "<invalid host>".to_string(),
        }
    }

    /// The same entry with URL passwords replaced, for `check-config`.
    fn redacted(&self) -> HostSetting {
        match self {
            HostSetting::Url(url) => HostSetting::Url(redact_url_password(url)),
            HostSetting::Pair(..) => self.clone(),
            HostSetting::Table(table) => HostSetting::Table(HostTable {
                address: table.address.as_deref().map(redact_url_password),
                ..table.clone()
            }),
        }
    }
}

fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The userinfo ends at the last `@`: a password may hold `/`, `?` or `#`
    // unencoded, and a URL parser that stops at those would print the rest
    // of it as a path. An `@` further on (in a query) only hides more.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:<redacted>"),
                None => "<redacted>".to_string(),
            };
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_string(),
    }
}

/// The most queue keys one process may use (`layer.queue_keys`).
pub const MAX_QUEUE_KEYS: usize = 256;
/// A crashed process is reaped within this plus one reaper pass (about 20 s).
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(15);
/// Below this, a busy event loop or a short network hiccup would get a live
/// process reaped.
pub const MIN_LIVENESS_TIMEOUT: Duration = Duration::from_secs(2);
/// Above this, a crashed process's users stay "present" and its groups keep
/// collecting messages nobody reads for too long.
pub const MAX_LIVENESS_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayerConfig {
    pub backend: LayerBackend,
    /// Same order as the backend's `hosts`: the shard ring depends on it.
    #[serde(deserialize_with = "one_or_many")]
    pub hosts: Vec<HostSetting>,
    pub prefix: String,
    /// Seconds a queued message lives (`expiry`).
    pub expiry: u64,
    /// Seconds a group membership lives without a refresh (`group_expiry`).
    pub group_expiry: u64,
    /// The backend's `capacity`: senders enforce it; the gateway spills its
    /// lanes behind a backlog once one holds a quarter of it, and judges a
    /// replay window by it.
    pub capacity: u64,
    pub random_prefix_length: usize,
    pub serializer_format: SerializerFormatSetting,
    /// Fernet keys as in Django (first encrypts, any decrypts); empty = off.
    #[serde(deserialize_with = "one_or_many")]
    pub symmetric_encryption_keys: Vec<Secret>,
    /// The name of an environment variable holding the Fernet keys (a JSON
    /// list of strings, or one key per line), instead of the list itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_encryption_keys_env: Option<String>,
    /// A file holding the Fernet keys, in the same forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_encryption_keys_file: Option<PathBuf>,
    /// How often live memberships are re-added; default a quarter of `group_expiry`.
    #[serde(with = "humantime_serde")]
    pub membership_refresh: Option<Duration>,
    /// Messages taken from the queue keys per round trip.
    pub receive_batch: usize,
    /// Queue keys this process spreads its sockets over (all of one user's
    /// in one key): channels_redis' `capacity` holds per key, so this many
    /// times Django's default room for a burst, with nothing set in Django.
    pub queue_keys: usize,
    /// How often the process sends itself a canary through Redis; `0s`
    /// turns the canary (and its readiness check) off.
    #[serde(with = "humantime_serde")]
    pub canary_interval: Duration,
    /// How long a process's liveness record outlives its last heartbeat
    /// (core layer); after that, other processes reap its memberships.
    #[serde(with = "humantime_serde")]
    pub liveness_timeout: Duration,
    /// Keep each group's recent messages in Redis for reconnecting clients
    /// that ask for them (`?recover=`): a replay channel per group, filled
    /// by channels_redis itself (core layer; with several hosts, queue keys
    /// and replay keys on the first; see `recovery`).
    pub recovery: bool,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            backend: LayerBackend::Core,
            hosts: vec![HostSetting::Url("redis://127.0.0.1:6379".into())],
            prefix: "asgi".into(),
            expiry: 60,
            group_expiry: 86_400,
            capacity: 100,
            random_prefix_length: 12,
            serializer_format: SerializerFormatSetting::Msgpack,
            symmetric_encryption_keys: Vec::new(),
            symmetric_encryption_keys_env: None,
            symmetric_encryption_keys_file: None,
            membership_refresh: None,
            receive_batch: 512,
            queue_keys: 32,
            canary_interval: Duration::from_secs(1),
            liveness_timeout: DEFAULT_LIVENESS_TIMEOUT,
            recovery: false,
        }
    }
}

impl LayerConfig {
    /// Random bytes in front of each payload: the pub/sub layer never adds any.
    pub fn payload_prefix_length(&self) -> usize {
        match self.backend {
            LayerBackend::Core => self.random_prefix_length,
            LayerBackend::Pubsub => 0,
        }
    }

    /// The Fernet keys, if the layer encrypts; the TTL is channels_redis'
    /// `expiry + 10` on the core layer and none on the pub/sub layer.
    pub fn encryption(&self) -> Option<shared_proto::Encryption> {
        if self.symmetric_encryption_keys.is_empty() {
            return None;
        }
        let keys: Vec<&str> = self
            .symmetric_encryption_keys
            .iter()
            .map(Secret::expose)
            .collect();
        let ttl = match self.backend {
            LayerBackend::Core => Some(self.expiry.saturating_add(10)),
            LayerBackend::Pubsub => None,
        };
        shared_proto::Encryption::new(&keys, ttl).ok()
    }

    /// Fills `symmetric_encryption_keys` from `symmetric_encryption_keys_env`
    /// or `_file` (only one of the three may be set), so nothing else needs
    /// to know where the keys came from.
    pub fn resolve_encryption_key_references(&mut self) -> Result<(), ConfigError> {
        const KEY: &str = "layer.symmetric_encryption_keys";
        let set = [
            !self.symmetric_encryption_keys.is_empty(),
            self.symmetric_encryption_keys_env.is_some(),
            self.symmetric_encryption_keys_file.is_some(),
        ];
        only_one_of(KEY, set)?;
        let keys = if let Some(name) = &self.symmetric_encryption_keys_env {
            const ENV_KEY: &str = "layer.symmetric_encryption_keys_env";
            let text = std::env::var(name).map_err(|error| {
                invalid(ENV_KEY, format!("environment variable {name}: {error}"))
            })?;
            parse_key_list(ENV_KEY, &text)?
        } else if let Some(path) = &self.symmetric_encryption_keys_file {
            const FILE_KEY: &str = "layer.symmetric_encryption_keys_file";
            let text = std::fs::read_to_string(path)
                .map_err(|error| invalid(FILE_KEY, format!("{}: {error}", path.display())))?;
            parse_key_list(FILE_KEY, &text)?
        } else {
            return Ok(());
        };
        if keys.is_empty() || keys.iter().any(Secret::is_empty) {
            return Err(invalid(KEY, "the referenced keys are empty"));
        }
        self.symmetric_encryption_keys = keys;
        Ok(())
    }

    pub fn membership_refresh_interval(&self) -> Duration {
        self.membership_refresh
            .unwrap_or_else(|| Duration::from_millis(self.group_expiry.saturating_mul(1000) / 4))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Event types other than `send_notification` forwarded as
    /// `{"type": ..., ...rest}`; all others are dropped and counted.
    #[serde(deserialize_with = "one_or_many")]
    pub passthrough_types: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

impl Config {
    /// Layers defaults, the optional TOML file, `GATEWAY_*` variables and
    /// `--set` overrides, then validates the result.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only `GATEWAY_<SECTION>_<KEY>` names are settings; others that
        // share the prefix (`GATEWAY_CONFIG`) are not.
        figment = figment.merge(
            Env::prefixed("GATEWAY_")
                .filter(|name| {
                    let name = name.as_str().to_ascii_lowercase();
                    name.split_once('_')
                        .is_some_and(|(section, _)| SECTIONS.contains(&section))
                })
                .map(|name| {
                    let name = name.as_str().to_ascii_lowercase();
                    match name.split_once('_') {
                        Some((section, key)) => format!("{section}.{key}").into(),
                        None => name.into(),
                    }
                }),
        );
        for item in overrides {
            let (key, value) = item
                .split_once('=')
                .filter(|(key, _)| key.contains('.'))
                .ok_or_else(|| ConfigError::BadOverride(item.clone()))?;
            // `--set a.b=VALUE` is the TOML dotted key `a.b = VALUE`; a bare
            // word that is not TOML is taken as a string.
            let mut line = format!("{key} = {value}");
            if line.parse::<toml::Table>().is_err() {
                line = format!("{key} = {}", toml::Value::String(value.to_string()));
            }
            if line.parse::<toml::Table>().is_err() {
                return Err(ConfigError::BadOverride(item.clone()));
            }
            figment = figment.merge(Toml::string(&line));
        }
        let mut config: Config = figment.extract()?;
        config.layer.resolve_encryption_key_references()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, names and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        if server.listen == server.admin_listen {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen",
            ));
        }
        match (&server.tls_cert_file, &server.tls_key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                for (key_name, path) in
                    [("server.tls_cert_file", cert), ("server.tls_key_file", key)]
                {
                    if !path.is_file() {
                        return Err(invalid(
                            key_name,
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                }
            }
            _ => {
                return Err(invalid(
                    "server.tls_cert_file",
                    "set tls_cert_file and tls_key_file together",
                ))
            }
        }
        if server.ping_interval < Duration::from_millis(100) {
            return Err(invalid("server.ping_interval", "must be at least 100ms"));
        }
        if server.pong_timeout <= server.ping_interval {
            return Err(invalid(
                "server.pong_timeout",
                "must be longer than server.ping_interval",
            ));
        }
        if server.drain_delay + server.drain_window >= server.shutdown_timeout {
            return Err(invalid(
                "server.drain_window",
                "drain_delay + drain_window must be shorter than server.shutdown_timeout, \
                 which bounds the whole stop",
            ));
        }
        if server.outbound_queue == 0 {
            return Err(invalid("server.outbound_queue", "must be at least 1"));
        }
        if server.max_inbound_frame < 128 {
            return Err(invalid("server.max_inbound_frame", "must be at least 128"));
        }

        let auth = &self.auth;
        for (set, key) in [
            (
                [
                    !auth.jwt_secret.is_empty(),
                    auth.jwt_secret_file.is_some(),
                    auth.jwt_secret_env.is_some(),
                ],
                "auth.jwt_secret",
            ),
            (
                [
                    auth.public_key.is_some(),
                    auth.public_key_file.is_some(),
                    auth.public_key_env.is_some(),
                ],
                "auth.public_key",
            ),
        ] {
            only_one_of(key, set)?;
        }
        if auth.jwks_reload_interval < Duration::from_secs(1) {
            return Err(invalid("auth.jwks_reload_interval", "must be at least 1s"));
        }
        if auth.jwks_refresh_interval < Duration::from_secs(1) {
            return Err(invalid("auth.jwks_refresh_interval", "must be at least 1s"));
        }
        if auth.jwks_fetch_timeout < Duration::from_millis(100)
            || auth.jwks_fetch_timeout > Duration::from_secs(60)
        {
            return Err(invalid(
                "auth.jwks_fetch_timeout",
                "must be between 100ms and 60s (handshakes wait for it)",
            ));
        }
        if let Some(path) = &auth.jwks_ca_file {
            if auth.jwks_url.is_none() {
                return Err(invalid(
                    "auth.jwks_ca_file",
                    "is used only with auth.jwks_url",
                ));
            }
            if !path.is_file() {
                return Err(invalid(
                    "auth.jwks_ca_file",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        if auth.audience.iter().any(String::is_empty) {
            return Err(invalid("auth.audience", "entries must not be empty"));
        }
        if auth.issuer.as_deref() == Some("") {
            return Err(invalid("auth.issuer", "must not be empty (leave it unset)"));
        }
        if auth.user_id_claims.is_empty() {
            return Err(invalid(
                "auth.user_id_claims",
                "must name at least one claim",
            ));
        }
        if !auth.user_group_template.contains("{user_id}") {
            return Err(invalid(
                "auth.user_group_template",
                "must contain {user_id}",
            ));
        }
        let sample_group = auth.user_group_template.replace("{user_id}", "1");
        if !shared_proto::names::is_valid_group_name(&sample_group) {
            return Err(invalid(
                "auth.user_group_template",
                "does not make a valid channels group name",
            ));
        }
        if let Some(url) = &auth.session_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "auth.session_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if auth.groups_claim.is_some() && auth.allowed_groups.is_empty() {
            return Err(invalid(
                "auth.allowed_groups",
                "list the group patterns tokens may grant when auth.groups_claim is set",
            ));
        }
        if auth.token_query_param.is_empty() {
            return Err(invalid("auth.token_query_param", "must not be empty"));
        }
        let cookies = !auth.token_cookie.is_empty() || auth.session_url.is_some();
        if cookies && auth.allowed_origins.is_empty() && !auth.allow_any_origin_with_cookies {
            return Err(invalid(
                "auth.allowed_origins",
                "cookie credentials (auth.token_cookie or auth.session_url) are on: list the \
                 origins of your pages, since a browser sends the cookie with a socket any \
                 site opens (or set auth.allow_any_origin_with_cookies = true if no browser \
                 can reach this gateway cross-site)",
            ));
        }

        let limits = &self.limits;
        for (key, value) in [
            ("limits.connect_rate", limits.connect_rate),
            ("limits.connect_burst", limits.connect_burst),
            ("limits.connect_rate_per_ip", limits.connect_rate_per_ip),
            ("limits.connect_burst_per_ip", limits.connect_burst_per_ip),
            ("limits.inbound_rate", limits.inbound_rate),
            ("limits.inbound_burst", limits.inbound_burst),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(invalid(key, "must be a number of at least 0"));
            }
        }
        if limits.inbound_rate > 0.0 && limits.inbound_burst < 1.0 {
            // A bucket that holds less than one frame closes every socket
            // on its first frame.
            return Err(invalid(
                "limits.inbound_burst",
                "must be at least 1 while limits.inbound_rate is set",
            ));
        }

        let layer = &self.layer;
        if layer.hosts.is_empty() {
            return Err(invalid("layer.hosts", "must list at least one Redis host"));
        }
        for host in &layer.hosts {
            match host.target() {
                Err(reason) => return Err(invalid("layer.hosts", reason)),
                Ok(HostTarget::Url { url, .. }) => {
                    if !["redis://", "rediss://", "unix://"]
                        .iter()
                        .any(|scheme| url.starts_with(scheme))
                    {
                        return Err(invalid(
                            "layer.hosts",
                            format!(
                                "`{}` is not a redis://, rediss:// or unix:// URL",
                                host.label()
                            ),
                        ));
                    }
                }
                Ok(HostTarget::Sentinel { .. }) => {}
            }
            if let HostSetting::Table(HostTable {
                ssl_ca_certs: Some(path),
                ..
            }) = host
            {
                if !path.is_file() {
                    return Err(invalid(
                        "layer.hosts",
                        format!("ssl_ca_certs {} is not a readable file", path.display()),
                    ));
                }
            }
        }
        if !layer
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(invalid(
                "layer.prefix",
                "use letters, digits and - _ . : only",
            ));
        }
        if layer.expiry == 0 {
            return Err(invalid("layer.expiry", "must be at least 1 second"));
        }
        if layer.group_expiry < 2 {
            return Err(invalid("layer.group_expiry", "must be at least 2 seconds"));
        }
        let refresh = layer.membership_refresh_interval();
        if refresh.is_zero() || refresh >= Duration::from_secs(layer.group_expiry) {
            return Err(invalid(
                "layer.membership_refresh",
                "must be above zero and below group_expiry",
            ));
        }
        if layer.liveness_timeout < MIN_LIVENESS_TIMEOUT
            || layer.liveness_timeout > MAX_LIVENESS_TIMEOUT
        {
            return Err(invalid(
                "layer.liveness_timeout",
                "must be between 2s and 300s",
            ));
        }
        if layer.recovery && layer.backend == LayerBackend::Pubsub {
            return Err(invalid(
                "layer.recovery",
                "needs the core layer: the pub/sub layer stores no message, so nothing \
                 published while a client is away can be replayed",
            ));
        }
        if layer.symmetric_encryption_keys.iter().any(Secret::is_empty) {
            return Err(invalid(
                "layer.symmetric_encryption_keys",
                "keys must not be empty strings",
            ));
        }
        if layer.random_prefix_length > 64 {
            return Err(invalid("layer.random_prefix_length", "must be at most 64"));
        }
        if layer.receive_batch == 0 || layer.receive_batch > 10_000 {
            return Err(invalid(
                "layer.receive_batch",
                "must be between 1 and 10000",
            ));
        }
        if layer.queue_keys == 0 || layer.queue_keys > MAX_QUEUE_KEYS {
            return Err(invalid(
                "layer.queue_keys",
                format!("must be between 1 and {MAX_QUEUE_KEYS}"),
            ));
        }
        Ok(())
    }

    /// Settings `serve` cannot run without, checked apart from `validate` so
    /// `check-config` can print the rest first; the keys themselves are
    /// judged where they are built (`server::build`).
    pub fn require_serving_secrets(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if auth.jwt_secret.is_empty()
            && auth.jwt_secret_file.is_none()
            && auth.jwt_secret_env.is_none()
            && auth.public_key.is_none()
            && auth.public_key_file.is_none()
            && auth.public_key_env.is_none()
            && auth.jwks_file.is_none()
            && auth.jwks_url.is_none()
        {
            return Err(invalid(
                "auth.jwt_secret",
                "is required (set GATEWAY_AUTH_JWT_SECRET or [auth] jwt_secret), \
                 unless auth.public_key, auth.jwks_file or auth.jwks_url verifies tokens",
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets and URL passwords redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.layer.hosts = self.layer.hosts.iter().map(HostSetting::redacted).collect();
        shown.auth.jwks_url = self.auth.jwks_url.as_deref().map(redact_backend_url);
        shown.auth.session_url = self.auth.session_url.as_deref().map(redact_backend_url);
        toml::to_string_pretty(&shown).unwrap_or_else(|error| format!("# cannot render: {error}"))
    }
}

/// `jwks_url` and `session_url` as `check-config` shows them: a password and
/// the query (where
/// API keys travel) hidden.
fn redact_backend_url(url: &str) -> String {
    let shown = redact_url_password(url);
    match shown.split_once('?') {
        Some((before, _)) => format!("{before}?<redacted>"),
        None => shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_workers_leave_a_core_to_the_main_thread_unless_set() {
        let mut server = ServerConfig::default();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(server.socket_workers(), cores.saturating_sub(1).max(1));
        server.workers = 3;
        assert_eq!(server.socket_workers(), 3);
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    #[test]
    fn cookie_credentials_need_an_origin_allowlist_or_an_explicit_waiver() {
        assert!(Config::default().auth.token_cookie.is_empty(), "opt-in");
        for credentials in [
            "auth.token_cookie=\"access_token\"",
            "auth.session_url=\"http://backend/gateway/whoami/\"",
        ] {
            let error = Config::load(None, &[credentials.into()]).unwrap_err();
            assert!(
                error.to_string().contains("auth.allowed_origins"),
                "{credentials}: {error}"
            );
            Config::load(
                None,
                &[
                    credentials.into(),
                    "auth.allowed_origins=[\"https://app.example.com\"]".into(),
                ],
            )
            .expect("with an allowlist");
            Config::load(
                None,
                &[
                    credentials.into(),
                    "auth.allow_any_origin_with_cookies=true".into(),
                ],
            )
            .expect("waived explicitly");
        }
    }

    #[test]
    fn bad_value_names_its_key() {
        let error = Config::load(None, &["layer.group_expiry=1".into()]).unwrap_err();
        assert!(error.to_string().contains("layer.group_expiry"), "{error}");
        for timeout in ["\"1s\"", "\"301s\"", "\"500ms\""] {
            let error =
                Config::load(None, &[format!("layer.liveness_timeout={timeout}")]).unwrap_err();
            assert!(
                error.to_string().contains("layer.liveness_timeout"),
                "{error}"
            );
        }
        let error = Config::load(None, &["layer.expiry=\"soon\"".into()]).unwrap_err();
        assert!(error.to_string().contains("expiry"), "{error}");
    }

    #[test]
    fn recovery_is_refused_where_it_cannot_work() {
        Config::load(None, &["layer.recovery=true".into()]).expect("core layer, one host");
        Config::load(
            None,
            &[
                "layer.recovery=true".into(),
                "layer.hosts=[\"redis://127.0.0.1:1\", \"redis://127.0.0.1:2\"]".into(),
            ],
        )
        .expect("core layer, sharded");
        let pubsub = [
            "layer.recovery=true".into(),
            "layer.backend=\"pubsub\"".into(),
        ];
        let error = Config::load(None, &pubsub).unwrap_err().to_string();
        assert!(error.contains("layer.recovery"), "{error}");
    }

    #[test]
    fn hosts_accept_channels_redis_forms() {
        let config: Config = Figment::new()
            .merge(Toml::string(
                r#"
                [layer]
                hosts = ["redis://a:1/0", ["b", 2], { address = "redis://c:3" },
                         { sentinels = [["s1", 26379], ["s2", 26380]], master_name = "mymaster" }]
                "#,
            ))
            .extract()
            .expect("parses");
        let labels: Vec<String> = config.layer.hosts.iter().map(HostSetting::label).collect();
        assert_eq!(
            labels,
            [
                "redis://a:1/0",
                "redis://b:2",
                "redis://c:3",
                "sentinel://s1:26379,s2:26380/mymaster"
            ]
        );
        config.validate().expect("all forms are valid");
    }

    /// Figment's environment provider for one variable, as `Config::load`
    /// reads them, without touching the process environment.
    fn from_env_value(key: &str, value: &str) -> Result<Config, ConfigError> {
        let figment = Figment::new().merge(figment::providers::Serialized::default(
            key,
            figment::value::Value::from(value),
        ));
        Ok(figment.extract::<Config>()?)
    }

    #[test]
    fn one_host_url_is_a_list_of_one_from_every_source() {
        let url = "redis://u:p@127.0.0.1:6390/2";
        let want = vec![HostSetting::Url(url.into())];
        let set = Config::load(None, &[format!("layer.hosts={url}")]).expect("--set bare URL");
        assert_eq!(set.layer.hosts, want);
        let quoted = Config::load(None, &[format!("layer.hosts=\"{url}\"")]).expect("--set string");
        assert_eq!(quoted.layer.hosts, want);
        let listed = Config::load(None, &[format!("layer.hosts=[\"{url}\"]")]).expect("--set list");
        assert_eq!(listed.layer.hosts, want);
        let env = from_env_value("layer.hosts", url).expect("env string");
        assert_eq!(env.layer.hosts, want);
        let file: Config = Figment::new()
            .merge(Toml::string(&format!("[layer]\nhosts = \"{url}\"")))
            .extract()
            .expect("file string");
        assert_eq!(file.layer.hosts, want);
        let table: Config = Figment::new()
            .merge(Toml::string(
                "[layer]\nhosts = { address = \"redis://c:3\" }",
            ))
            .extract()
            .expect("one table");
        assert_eq!(table.layer.hosts.len(), 1);
        // A URL holding a comma stays one host: nothing splits a string.
        let comma = Config::load(None, &["layer.hosts=redis://:a,b@h:1".into()]).expect("comma");
        assert_eq!(comma.layer.hosts.len(), 1);
    }

    #[test]
    fn every_list_setting_takes_one_value() {
        let config = Config::load(
            None,
            &[
                "auth.algorithms=HS512".into(),
                "auth.audience=web".into(),
                "auth.user_id_claims=uid".into(),
                "auth.allowed_origins=https://app.example.com".into(),
                "limits.trusted_proxies=10.0.0.1".into(),
                "events.passthrough_types=task.update".into(),
                "layer.symmetric_encryption_keys=k1".into(),
            ],
        )
        .expect("single values");
        assert_eq!(config.auth.algorithms, ["HS512"]);
        assert_eq!(config.auth.audience, ["web"]);
        assert_eq!(config.auth.user_id_claims, ["uid"]);
        assert_eq!(config.auth.allowed_origins, ["https://app.example.com"]);
        assert_eq!(config.limits.trusted_proxies, ["10.0.0.1"]);
        assert_eq!(config.events.passthrough_types, ["task.update"]);
        assert_eq!(config.layer.symmetric_encryption_keys.len(), 1);
        let env = from_env_value("auth.algorithms", "RS256").expect("env single value");
        assert_eq!(env.auth.algorithms, ["RS256"]);
    }

    #[test]
    fn a_list_setting_of_the_wrong_type_names_its_key() {
        for (set, key) in [
            ("layer.hosts=6379", "layer.hosts"),
            ("auth.algorithms=true", "auth.algorithms"),
            ("layer.hosts=[6379]", "layer.hosts"),
        ] {
            let error = Config::load(None, &[set.into()]).unwrap_err().to_string();
            assert!(error.contains(key), "{set}: {error}");
        }
    }

    #[test]
    fn encryption_keys_come_from_a_file_or_an_environment_variable() {
        let dir = std::env::temp_dir().join(format!("gateway-config-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let lines = dir.join("keys");
        std::fs::write(&lines, "first key\nsecond,key\n\n").expect("write keys");
        let config = Config::load(
            None,
            &[format!(
                "layer.symmetric_encryption_keys_file=\"{}\"",
                lines.display()
            )],
        )
        .expect("file of lines");
        let keys: Vec<&str> = config
            .layer
            .symmetric_encryption_keys
            .iter()
            .map(Secret::expose)
            .collect();
        assert_eq!(keys, ["first key", "second,key"]);
        assert!(config.layer.encryption().is_some());
        let json = dir.join("keys.json");
        std::fs::write(&json, "[\"a\", \"b\"]").expect("write json");
        let config = Config::load(
            None,
            &[format!(
                "layer.symmetric_encryption_keys_file=\"{}\"",
                json.display()
            )],
        )
        .expect("JSON list");
        assert_eq!(config.layer.symmetric_encryption_keys.len(), 2);
        assert!(!config.to_redacted_toml().contains("\"a\""));

        let error = Config::load(
            None,
            &["layer.symmetric_encryption_keys_env=\"GATEWAY_UNIT_TEST_SURELY_UNSET\"".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("layer.symmetric_encryption_keys_env"),
            "{error}"
        );
        let error = Config::load(
            None,
            &[
                "layer.symmetric_encryption_keys=k".into(),
                format!(
                    "layer.symmetric_encryption_keys_file=\"{}\"",
                    json.display()
                ),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("set only one of"), "{error}");
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").expect("write empty");
        let error = Config::load(
            None,
            &[format!(
                "layer.symmetric_encryption_keys_file=\"{}\"",
                empty.display()
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("layer.symmetric_encryption_keys"), "{error}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_inbound_burst_below_one_frame_is_refused() {
        let error = Config::load(None, &["limits.inbound_burst=0".into()]).unwrap_err();
        assert!(
            error.to_string().contains("limits.inbound_burst"),
            "{error}"
        );
        Config::load(
            None,
            &[
                "limits.inbound_burst=0".into(),
                "limits.inbound_rate=0".into(),
            ],
        )
        .expect("no budget at all is allowed");
    }

    #[test]
    fn passwords_and_secrets_are_redacted() {
        assert_eq!(
            redact_url_password("redis://user:pw@host:1/2"),
            "redis://user:<redacted>@host:1/2"
        );
        assert_eq!(
            redact_url_password("rediss://:pw@host"),
            "rediss://:<redacted>@host"
        );
        let mut config = Config::default();
        config.auth.jwt_secret = Secret::new("s3cr3t");
        config.layer.hosts = vec![HostSetting::Url("redis://u:hunter2@h:1".into())];
        let shown = config.to_redacted_toml();
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_password_with_url_delimiters_is_redacted_whole() {
        for (url, shown) in [
            ("redis://u:pa/ss@h:1/0", "redis://u:<redacted>@h:1/0"),
            ("redis://u:pa?ss@h:1", "redis://u:<redacted>@h:1"),
            ("redis://u:pa#ss@h:1/2", "redis://u:<redacted>@h:1/2"),
            ("rediss://:p@ss@h", "rediss://:<redacted>@h"),
            ("redis://h:1/0", "redis://h:1/0"),
        ] {
            assert_eq!(redact_url_password(url), shown, "{url}");
        }
        let mut config = Config::default();
        config.auth.session_url = Some("https://u:hunter2@backend/session/?key=k3y".into());
        let shown = config.to_redacted_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "session_url shown as {shown}"
        );
    }
}
