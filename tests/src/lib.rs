//! Integration-test harness of the notification gateway.
//!
//! It owns the test-side processes and clients only: a throw-away Redis per test
//! ([`redis_server`], asserted through the tiny RESP client in [`resp`]), the REAL
//! Python `channels_redis` publisher ([`python`]), the gateway binary under test
//! ([`gateway_proc`]), a browser-like WebSocket client ([`ws_client`]),
//! convenience JWTs ([`tokens`]), test keys and certificates ([`certs`]) and, for benchmarks, a native core-layer
//! `group_send` ([`publisher`], checked against the Python library) and a lean
//! frame reader ([`lean_ws`]) for the load generator, how its tools end ([`tool_result`]), and the [`bare_relay`] it
//! measures the gateway against (the least work any relay must do). It must not re-implement gateway logic, must
//! never use the Redis on port 6379, and ends only processes it started, by PID.

pub mod bare_relay;
pub mod certs;
pub mod gateway_proc;
pub mod lean_ws;
pub mod procs;
pub mod publisher;
pub mod python;
pub mod redis_server;
pub mod resp;
pub mod tokens;
pub mod tool_result;
pub mod ws_client;

pub use gateway_proc::{GatewayConfig, GatewayLauncher, GatewayProcess};
pub use procs::Signal;
pub use python::{python_bin, JsonText, LayerDriver, SimpleJwtPair, ToDriverJson};
pub use redis_server::RedisServer;
pub use resp::{RespClient, RespValue};
pub use ws_client::{ConnectError, TokenIn, WsClient};
