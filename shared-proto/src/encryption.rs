//! channels_redis' optional payload encryption (`symmetric_encryption_keys`).
//!
//! Each configured key string `k` becomes the Fernet key
//! `urlsafe_b64encode(sha256(k))`, exactly as channels_redis derives it.
//! Encryption uses the first key; decryption tries every key, so keys can be
//! rotated by putting the new one first. Tokens older than the TTL
//! (`expiry + 10` on the core layer, none on the pub/sub layer) are refused
//! as expired, apart from tokens that fail to verify. The caller passes the
//! current time: this module must not read clocks or do any other I/O.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use fernet::Fernet;
use sha2::{Digest, Sha256};

/// Why a payload could not be decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// A well-formed token whose timestamp is older than the TTL allows.
    #[error("encrypted payload is older than the {ttl_secs} s Fernet TTL")]
    Expired {
        /// The TTL the token was checked against.
        ttl_secs: u64,
    },
    /// Not a Fernet token, or no configured key verifies it.
    #[error("payload is not a Fernet token any configured key verifies")]
    Invalid,
}

/// A configuration that cannot encrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncryptionConfigError {
    /// `symmetric_encryption_keys` was set but empty.
    #[error("symmetric_encryption_keys must list at least one key")]
    NoKeys,
}

/// The Fernet keys of one channel layer.
pub struct Encryption {
    fernets: Vec<Fernet>,
    ttl_secs: Option<u64>,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Encryption {{ keys: {}, ttl_secs: {:?} }}",
            self.fernets.len(),
            self.ttl_secs
        )
    }
}

/// Fernet version byte, then an 8-byte big-endian timestamp.
const TOKEN_HEADER: usize = 9;
const FERNET_VERSION: u8 = 0x80;
/// The fernet crate's (and Python's) allowance for tokens stamped in the
/// future, which it adds to the current time.
const FERNET_MAX_CLOCK_SKEW: u64 = 60;

impl Encryption {
    /// Keys as configured in Django (strings or bytes), in the same order.
    pub fn new<K: AsRef<[u8]>>(
        keys: &[K],
        ttl_secs: Option<u64>,
    ) -> Result<Encryption, EncryptionConfigError> {
        if keys.is_empty() {
            return Err(EncryptionConfigError::NoKeys);
        }
        let fernets = keys
            .iter()
            .filter_map(|key| Fernet::new(&derived_key(key.as_ref())))
            .collect();
        Ok(Encryption { fernets, ttl_secs })
    }

    /// The TTL applied on decryption, if any.
    pub fn ttl_secs(&self) -> Option<u64> {
        self.ttl_secs
    }

    /// Decrypts one token (the payload after the random prefix).
    pub fn decrypt(&self, token: &[u8], now_secs: u64) -> Result<Vec<u8>, DecryptError> {
        let token = std::str::from_utf8(token).map_err(|_| DecryptError::Invalid)?;
        if let Some(ttl_secs) = self.ttl_secs {
            let issued = token_timestamp(token).ok_or(DecryptError::Invalid)?;
            if issued.saturating_add(ttl_secs) < now_secs {
                return Err(DecryptError::Expired { ttl_secs });
            }
        }
        // The TTL was checked above, with saturating arithmetic: the fernet
        // crate adds `timestamp + ttl` and `now + skew` unchecked, which
        // overflows (a panic where overflow checks are on) for a hostile
        // timestamp near `u64::MAX`. So it gets no TTL, and a `now` it can
        // add its skew to; it still refuses tokens from the future.
        let fernet_now = now_secs.min(u64::MAX - FERNET_MAX_CLOCK_SKEW);
        self.fernets
            .iter()
            .find_map(|fernet| fernet.decrypt_at_time(token, None, fernet_now).ok())
            .ok_or(DecryptError::Invalid)
    }

    /// Encrypts with the first key, as channels_redis' `MultiFernet` does.
    pub fn encrypt(&self, plain: &[u8], now_secs: u64) -> Vec<u8> {
        match self.fernets.first() {
            Some(fernet) => fernet.encrypt_at_time(plain, now_secs).into_bytes(),
            None => plain.to_vec(),
        }
    }
}

/// `urlsafe_b64encode(sha256(key).digest())`, channels_redis' key derivation.
fn derived_key(key: &[u8]) -> String {
    URL_SAFE.encode(Sha256::digest(key))
}

/// The issue time a Fernet token carries, without verifying it.
fn token_timestamp(token: &str) -> Option<u64> {
    let trimmed = token.trim_end_matches('=');
    // The header is the first 9 bytes: 12 base64 characters cover them.
    let head = trimmed.get(..12)?;
    let bytes = URL_SAFE_NO_PAD.decode(head).ok()?;
    if bytes.len() < TOKEN_HEADER || bytes.first() != Some(&FERNET_VERSION) {
        return None;
    }
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(bytes.get(1..TOKEN_HEADER)?);
    Some(u64::from_be_bytes(stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn round_trip_with_rotation() {
        let old = Encryption::new(&["old-key"], Some(70)).expect("keys");
        let rotated = Encryption::new(&["new-key", "old-key"], Some(70)).expect("keys");
        let token = old.encrypt(b"payload", NOW);
        assert_eq!(
            rotated
                .decrypt(&token, NOW + 5)
                .expect("old key still works"),
            b"payload"
        );
        let token = rotated.encrypt(b"fresh", NOW);
        assert_eq!(old.decrypt(&token, NOW), Err(DecryptError::Invalid));
    }

    #[test]
    fn tokens_past_the_ttl_are_expired_and_garbage_is_invalid() {
        let encryption = Encryption::new(&["k"], Some(70)).expect("keys");
        let token = encryption.encrypt(b"x", NOW);
        assert_eq!(
            encryption.decrypt(&token, NOW + 71),
            Err(DecryptError::Expired { ttl_secs: 70 })
        );
        let no_ttl = Encryption::new(&["k"], None).expect("keys");
        assert_eq!(no_ttl.decrypt(&token, NOW + 10_000).expect("no ttl"), b"x");
        for garbage in [
            &b""[..],
            b"gAAAA",
            b"\xff\xfe",
            b"not a token at all, really",
        ] {
            assert_eq!(encryption.decrypt(garbage, NOW), Err(DecryptError::Invalid));
        }
        assert_eq!(
            Encryption::new::<&str>(&[], None).err(),
            Some(EncryptionConfigError::NoKeys)
        );
    }

    /// Found by the `fernet` fuzz target: a token whose timestamp is near
    /// `u64::MAX` made the fernet crate's own TTL check (`timestamp + ttl`)
    /// overflow, a panic wherever overflow checks are on.
    #[test]
    fn fuzz_regression_timestamp_near_u64_max() {
        let with_ttl = Encryption::new(&["old key", "current key"], Some(70)).expect("keys");
        let no_ttl = Encryption::new(&["old key", "current key"], None).expect("keys");
        let crash = b"gP__________8YDhnuE4usErZZrfhrYfoPjcs0MI5cafRqM8r6Yr2SJufZnoHzrBP8w8PeKJHhDGpH15eR1A9rVCJEe9MeNE3Q==";
        for token in [&crash[..], b"gP__________", b"gP__________AAAA"] {
            for encryption in [&with_ttl, &no_ttl] {
                for now in [0, NOW, u64::MAX] {
                    assert_eq!(encryption.decrypt(token, now), Err(DecryptError::Invalid));
                }
            }
        }
        // A well-formed token issued at the end of time: from the future.
        let future = with_ttl.encrypt(b"x", u64::MAX);
        assert_eq!(with_ttl.decrypt(&future, NOW), Err(DecryptError::Invalid));
        // And one checked at the end of time: long expired, or (no TTL) fine.
        let token = with_ttl.encrypt(b"x", NOW);
        assert_eq!(
            with_ttl.decrypt(&token, u64::MAX),
            Err(DecryptError::Expired { ttl_secs: 70 })
        );
        assert_eq!(no_ttl.decrypt(&token, u64::MAX).as_deref(), Ok(&b"x"[..]));
    }

    #[test]
    fn key_derivation_matches_channels_redis() {
        // base64.urlsafe_b64encode(hashlib.sha256(b"secret").digest())
        assert_eq!(
            derived_key(b"secret"),
            "K7gNU3sdo-OL0wNhqoVWhr3g6s1xYv72ol_pe_Unols="
        );
    }
}
