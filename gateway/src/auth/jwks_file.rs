//! JWKS file: the key set named by `auth.jwks_file`, kept in memory.
//!
//! Read once at start, re-read when a token names a `kid` it does not hold
//! (at most once per `auth.jwks_reload_interval`, so a flood of made-up kids
//! costs little) and every `auth.jwks_refresh_interval`, so keys rotate
//! without a restart. A failed re-read keeps the keys it had. It must not
//! verify tokens (`verify` does, with the keys held here).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use parking_lot::Mutex;

use crate::auth::keys::{jwks_keys, JwksKeys, VerifyingKey};

/// A JWKS file, re-read (at most once per `reload_interval`) when a token
/// names a `kid` it does not hold, so keys rotate without a restart.
pub(crate) struct JwksFile {
    pub(crate) path: PathBuf,
    pub(crate) keys: JwksKeys,
    pub(crate) last_load: Mutex<Instant>,
    pub(crate) reload_interval: Duration,
}

impl JwksFile {
    pub(crate) fn load(path: &Path, allowed: &[Algorithm]) -> Result<Vec<VerifyingKey>, String> {
        let document = std::fs::read(path)
            .map_err(|error| format!("cannot read {}: {}", path.display(), error.kind()))?;
        jwks_keys(&document, allowed)
    }

    /// Re-reads the file unless that happened within `reload_interval`;
    /// the rate limit bounds what a flood of made-up kids can cost (a small
    /// blocking read on a handshake worker).
    pub(crate) fn reload_for(&self, kid: &str, allowed: &[Algorithm]) {
        if self.last_load.lock().elapsed() >= self.reload_interval {
            self.reload(allowed, &format!("unknown kid {}", shown_kid(kid)));
        }
    }

    pub(crate) fn reload(&self, allowed: &[Algorithm], why: &str) {
        *self.last_load.lock() = Instant::now();
        match JwksFile::load(&self.path, allowed) {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), %why, "JWKS file reloaded");
                self.keys.replace(keys);
            }
            Err(reason) => {
                tracing::warn!(%reason, "JWKS file reload failed; keeping the previous keys");
            }
        }
    }
}

/// Most characters of a token's `kid` a log line shows.
const KID_SHOWN: usize = 64;

/// A token's `kid` as a log line may show it: the client chose it, so it
/// is cut to [`KID_SHOWN`] characters and escaped (no line breaks or control
/// characters reach the log).
pub(crate) fn shown_kid(kid: &str) -> String {
    let mut shown: String = kid
        .chars()
        .take(KID_SHOWN)
        .flat_map(char::escape_debug)
        .collect();
    if kid.chars().count() > KID_SHOWN {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kid_is_logged_short_and_escaped() {
        assert_eq!(shown_kid("key-1"), "key-1");
        assert_eq!(shown_kid("a\nforged line"), "a\\nforged line");
        let long = "k".repeat(10_000);
        assert_eq!(shown_kid(&long).chars().count(), KID_SHOWN + 1);
    }
}
