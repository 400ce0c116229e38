//! The notification gateway: holds authenticated WebSockets from browsers and
//! relays what an unchanged Django backend sends with channels_redis.
//!
//! See ARCHITECTURE.md for the map of modules and the path of one message.

pub mod allocator;
pub mod canary;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod drain;
pub mod events;
pub mod glob;
pub mod groups;
pub mod health;
pub mod http;
pub mod jwks_remote;
pub mod jwtverify;
pub mod layer;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod origin;
pub mod outbox;
pub mod recovery;
pub mod redis;
pub mod registry;
pub mod router;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod socket;
pub mod telemetry;
pub mod transport;
pub mod upgrade;
