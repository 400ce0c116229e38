//! Authentication: who a handshake belongs to and which groups it joins.
//!
//! Finding the token (`credentials`), the keys it may be signed with
//! (`keys`: inline, from files or the environment; `jwks_file`, `jwks_url`),
//! verifying it (`verify`), minting one for tests and demos (`mint`), asking
//! Django about a session cookie (`session`), and the group rule
//! (`groups`, with `glob` for its patterns). It must not touch sockets or
//! Redis, and must never log a token, a cookie or a key.

pub mod credentials;
pub(crate) mod glob;
pub(crate) mod groups;
pub(crate) mod jwks_file;
pub(crate) mod jwks_url;
pub(crate) mod keys;
pub(crate) mod mint;
pub(crate) mod session;
pub(crate) mod verify;
