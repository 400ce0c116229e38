//! Clock: the process's one reading of wall-clock time, in Unix seconds.
//!
//! channels_redis scores queue entries and stamps Fernet tokens with Unix
//! time, so the gateway compares against the same. Only the modules that do
//! I/O read it (layers, the socket side, recovery's read); they pass the
//! time in to the modules that promise no I/O (`relay::router`,
//! `ops::canary`). It must not be used for measuring intervals
//! (`std::time::Instant` is).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix seconds; 0 on a clock set before 1970.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}
