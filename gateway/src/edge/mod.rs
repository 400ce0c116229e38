//! The edge: everything between a client's TCP connection and the relay.
//!
//! The listening socket, the HTTP routes and the WebSocket handshake, the
//! upgrade, the socket loop and how its frames reach the wire, the origin
//! allowlist and the admission limits, the preface a recovering socket gets,
//! and the paced drain. It may use every concern below it (`auth`, `layer`,
//! `relay`, `ops`); nothing below it may use it.

pub(crate) mod drain;
pub mod frames;
pub(crate) mod http;
pub mod limits;
pub(crate) mod listener;
pub mod origin;
pub(crate) mod recovery;
pub(crate) mod socket;
pub(crate) mod tls;
pub mod transport;
pub(crate) mod upgrade;
