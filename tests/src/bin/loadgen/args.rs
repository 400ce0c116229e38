//! The command line: the modes, every flag with the help text `--help`
//! prints, and the checks clap cannot make (loopback only, a sane source
//! range, Redis where a mode publishes). It owns parsing only: it must not
//! open a socket, read a file or start a task.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// Connect N sockets, hold them, report connect rate and RSS.
    Idle,
    /// One user per socket; publish at each rate of `--rates` in turn.
    PerUser,
    /// Every socket is the same user; publish `--messages` to that one group.
    Broadcast,
    /// Connect N (one user), drop all at once, reconnect, time until a
    /// message reaches all of them again.
    ReconnectStorm,
    /// Recovery (`--recover` implied): connect N sockets, `--sockets-per-user`
    /// to a user, each holding the position its status frame gave; drop all
    /// at once, publish `--messages` to every user, reconnect all at once
    /// with their positions, and time until each has its replay and status
    /// frame; checks that every socket got every missed message exactly once.
    RecoveryStorm,
    /// The connected sockets (one user) are the running ones: measure their
    /// latency at `--broadcast-rate` for `--messages`, quiet, then again
    /// while `--storm-clients` others, with RS256 tokens, connect all at
    /// once, are dropped and connect again, over and over.
    HandshakeStorm,
}

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "WebSocket load generator for the notification gateway"
)]
pub(crate) struct Args {
    #[arg(long, value_enum)]
    pub(crate) mode: Mode,
    /// Server address, loopback only (`127.0.0.1:8000`).
    #[arg(long)]
    pub(crate) target: SocketAddr,
    #[arg(long, default_value = "/ws/notifications/")]
    pub(crate) path: String,
    /// Connect over TLS (`wss://`), trusting only the CA certificates in
    /// this PEM file (the tests' own CA; the server's certificate must name
    /// the target's IP address).
    #[arg(long)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// HS256 secret the server verifies tokens with.
    #[arg(long, env = "LOADGEN_SECRET")]
    pub(crate) secret: String,
    /// Redis of the channel layer (`redis://127.0.0.1:PORT`), repeatable in
    /// the backend's `hosts` order. Needed by every mode but `idle`.
    #[arg(long)]
    pub(crate) redis: Vec<String>,
    #[arg(long, default_value_t = 100)]
    pub(crate) sockets: usize,
    /// User ids are `user_base + i` (per-user) or `user_base` (broadcast, storm).
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) user_base: u64,
    /// Last octet of the first / last source address 127.0.0.X.
    #[arg(long, default_value_t = 2)]
    pub(crate) src_first: u8,
    #[arg(long, default_value_t = 250)]
    pub(crate) src_last: u8,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub(crate) connect_concurrency: usize,
    /// Give up on a handshake after this many seconds.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) connect_timeout_secs: f64,
    /// Idle: seconds to hold the sockets after all connected.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) hold_secs: f64,
    /// Idle: after the hold, group_send one message to the sockets' user and
    /// count who received it (proves held sockets still receive).
    #[arg(long)]
    pub(crate) probe: bool,
    /// Idle: seconds between the last connect and the RSS sample.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle_secs: f64,
    /// Created (empty) once every socket is connected.
    #[arg(long)]
    pub(crate) ready_file: Option<PathBuf>,
    /// Server process whose VmRSS is sampled before and after connecting
    /// (repeatable).
    #[arg(long)]
    pub(crate) server_pid: Vec<u32>,
    /// The redis-server process, whose CPU time each step reports next to the
    /// server's and the load generator's own (where the cores went).
    #[arg(long)]
    pub(crate) redis_pid: Option<u32>,
    /// The gateway's admin address (HOST:PORT): each step also reports how
    /// long messages waited between their queue score and routing there
    /// (`gateway_publish_lag_seconds`), to tell a latency tail in front of
    /// the gateway from one behind it.
    #[arg(long)]
    pub(crate) gateway_admin: Option<SocketAddr>,
    /// Per-user: message rates (msgs/s) of the ramp, in order.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub(crate) rates: Vec<u64>,
    /// Per-user: seconds per rate step.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) step_secs: f64,
    /// Per-user: stop the ramp after a step with loss or a p99 above this.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) stop_p99_ms: f64,
    /// Per-user: run every step of `--rates` whatever the loss and p99 (the
    /// ramp at Django's default capacity counts the sender's drops at each).
    #[arg(long)]
    pub(crate) ramp_through: bool,
    /// Broadcast: messages to publish. Recovery storm: messages each user
    /// misses while its sockets are gone.
    #[arg(long, default_value_t = 100)]
    pub(crate) messages: u64,
    /// Broadcast: publish rate in msgs/s.
    #[arg(long, default_value_t = 100)]
    pub(crate) broadcast_rate: u64,
    /// Parallel publisher connections.
    #[arg(long, default_value_t = 2)]
    pub(crate) publishers: usize,
    /// Sockets ask for recovery (`&recover=`, or `&recover=<position>` when
    /// they reconnect in the recovery storm).
    #[arg(long)]
    pub(crate) recover: bool,
    /// Recovery storm: sockets of each user (users = sockets / this).
    #[arg(long, default_value_t = 1)]
    pub(crate) sockets_per_user: usize,
    /// Recovery storm: publish rate (msgs/s) of the messages the sockets miss.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) missed_rate: u64,
    /// Each step also reports Redis' commands (`INFO commandstats`) and
    /// `used_memory` before and after it, per group_send and per user (one
    /// `--redis` host); the connect reports the memory its joins took.
    #[arg(long)]
    pub(crate) redis_stats: bool,
    /// Per-user without sockets (the Redis-alone ceiling): give this many
    /// users' groups one member each, as sockets' joins would, and pop their
    /// queue key as a gateway's receiver would, so that Redis does all of a
    /// delivery's work and only the gateway and the sockets are missing.
    #[arg(long, default_value_t = 0)]
    pub(crate) ceiling_members: u64,
    /// Handshake storm: clients that connect, are dropped and connect
    /// again while the running sockets are measured.
    #[arg(long, default_value_t = 15_000)]
    pub(crate) storm_clients: usize,
    /// Handshake storm: the PEM RSA private key the storm's RS256 tokens
    /// are signed with (the gateway verifies with its public key).
    #[arg(long)]
    pub(crate) storm_rsa_key: Option<PathBuf>,
    /// Handshake storm: distinct tokens (users) the storm clients share.
    #[arg(long, default_value_t = 500)]
    pub(crate) storm_tokens: usize,
    /// Seconds to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) drain_secs: f64,
    /// The publisher's `capacity` (as Django's CHANNEL_LAYERS would set it).
    #[arg(long, default_value_t = 100)]
    pub(crate) capacity: u64,
    /// `channel_capacity` entries `GLOB=N` (repeatable).
    #[arg(long)]
    pub(crate) channel_capacity: Vec<String>,
    #[arg(long, default_value = "asgi")]
    pub(crate) prefix: String,
    /// Free-form label copied into the output.
    #[arg(long, default_value = "")]
    pub(crate) label: String,
    /// Write the JSON result here instead of stdout.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

impl Args {
    /// What clap cannot check: loopback only, a sane source range, and
    /// Redis for every mode that publishes.
    pub(crate) fn check(&self) -> Result<()> {
        if !self.target.ip().is_loopback() {
            bail!("--target must be a loopback address");
        }
        if self.src_first < 1 || self.src_last < self.src_first {
            bail!("bad source address range");
        }
        if (self.mode != Mode::Idle || self.probe) && self.redis.is_empty() {
            bail!("--redis is required for {:?}", self.mode);
        }
        if self.mode == Mode::HandshakeStorm && self.storm_rsa_key.is_none() {
            bail!("--storm-rsa-key is required for the handshake storm");
        }
        Ok(())
    }
}

/// `HOST:PORT` of the one `--redis` host `what` works with.
pub(crate) fn single_redis_addr<'a>(args: &'a Args, what: &str) -> Result<&'a str> {
    let [host] = args.redis.as_slice() else {
        bail!("{what} takes exactly one --redis host");
    };
    Ok(tests::resp::host_port(host))
}
