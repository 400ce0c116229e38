//! The notification gateway: holds authenticated WebSockets from browsers and
//! relays what an unchanged Django backend sends with channels_redis.
//!
//! The crate map, bottom up (arrows point down only; `tests/tests/tidy.rs`
//! keeps it so):
//!
//! - [`config`]: the settings, plain data plus the checks that need no
//!   concern's code; every concern validates its own part when it is built.
//! - [`ops`]: what operators see and the process's plumbing — metrics (a
//!   leaf), health, the canary, shutdown, logs, the allocator.
//! - [`relay`]: inside one process, from a payload to the sockets it
//!   addresses — the router, events, the registry of sockets and their
//!   outboxes. No I/O.
//! - [`layer`]: the channel layer in Redis — the core and pub/sub layers,
//!   memberships, liveness and reaping, replay members, and the one module
//!   that talks to Redis.
//! - [`auth`]: who a handshake belongs to — credentials, JWT and JWKS keys,
//!   Django sessions, the groups a token grants.
//! - [`edge`]: the public side — the listener, HTTP and the upgrade, the
//!   socket loop and its transport, origin and rate limits, recovery's
//!   preface, the drain.
//! - [`server`] builds all of it from a [`config::Config`], serves and
//!   stops; [`cli`] is the command line; `main.rs` only calls [`cli::run`].
//!
//! See ARCHITECTURE.md for the code map and the path of one message.

pub mod auth;
pub mod cli;
pub mod config;
pub mod edge;
pub mod layer;
pub mod ops;
pub mod relay;
pub mod server;
