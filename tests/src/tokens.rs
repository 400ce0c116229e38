//! Convenience JWT minting in Rust (jsonwebtoken, HS256) for tests that need a
//! token but are not about token interop: [`mint`] and [`claims_for_user`],
//! which mirrors the claims djangorestframework-simplejwt 5.5 puts in an access
//! token.
//!
//! Interop tests about what Django really issues must use
//! [`crate::python::LayerDriver::simplejwt`] / `mint_jwt` (the real Python
//! libraries) instead; this module must not be the only source of tokens for
//! those.

use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// Seconds since the UNIX epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// HS256-signs `claims` with `secret` (header `{"alg":"HS256","typ":"JWT"}`).
pub fn try_mint(secret: &str, claims: &Value) -> Result<String> {
    mint_with(
        &Header::new(Algorithm::HS256),
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
    )
}

/// [`try_mint`]; panics only if jsonwebtoken cannot sign at all (a broken
/// crypto backend), which no test can work around.
pub fn mint(secret: &str, claims: Value) -> String {
    match try_mint(secret, &claims) {
        Ok(token) => token,
        Err(err) => panic!("minting a test JWT failed: {err:#}"),
    }
}

/// Signs with any header/key (RS256 from PEM, a `kid`, a wrong `alg`, ...).
pub fn mint_with(header: &Header, key: &EncodingKey, claims: &Value) -> Result<String> {
    let token = jsonwebtoken::encode(header, claims, key).context("jsonwebtoken::encode")?;
    record_issued(&token);
    Ok(token)
}

/// HS256 tokens for many claims at once, listed for the leak check with one
/// append: a load generator mints its sockets' tokens before it measures,
/// so neither the signing nor a file append per token is in its connect path.
pub fn try_mint_many(secret: &str, claims: impl IntoIterator<Item = Value>) -> Result<Vec<String>> {
    let header = Header::new(Algorithm::HS256);
    let key = EncodingKey::from_secret(secret.as_bytes());
    let tokens = claims
        .into_iter()
        .map(|claims| jsonwebtoken::encode(&header, &claims, &key).context("jsonwebtoken::encode"))
        .collect::<Result<Vec<_>>>()?;
    append_issued(&tokens);
    Ok(tokens)
}

/// Where every token a test issues is listed, so `tests/py/check_token_leaks.py`
/// can prove after the whole run that none reached a gateway log.
/// `ISSUED_TOKENS_FILE` moves the list elsewhere: `scripts/bench` keeps its
/// load generators' hundreds of thousands of tokens out of the tests' list.
pub fn issued_tokens_file() -> PathBuf {
    match std::env::var_os("ISSUED_TOKENS_FILE") {
        Some(path) => PathBuf::from(path),
        None => crate::procs::target_dir()
            .join("test-logs")
            .join("issued-tokens.txt"),
    }
}

/// Appends `token` to [`issued_tokens_file`].
pub fn record_issued(token: &str) {
    append_issued(&[token]);
}

/// One `O_APPEND` write of whole lines, so concurrent test processes never
/// interleave inside a line.
fn append_issued<T: AsRef<str>>(tokens: &[T]) {
    let path = issued_tokens_file();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut lines = String::new();
    for token in tokens {
        lines.push_str(token.as_ref());
        lines.push('\n');
    }
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = file.write_all(lines.as_bytes());
    }
}

/// 32 random lowercase hex digits, like simplejwt's `uuid4().hex` jti.
pub fn random_jti() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Claims shaped like a simplejwt 5.5 access token for `user_id`, valid for
/// `ttl_secs` from now (negative = already expired):
/// `{"token_type":"access","exp":..,"iat":..,"jti":..,"user_id":"<id>"}`.
/// simplejwt 5.5 stores `user_id` as `str(user.id)`, so it is a string here.
pub fn claims_for_user(user_id: impl std::fmt::Display, ttl_secs: i64) -> Value {
    let now = now_secs();
    json!({
        "token_type": "access",
        "exp": now.saturating_add(ttl_secs),
        "iat": now,
        "jti": random_jti(),
        "user_id": user_id.to_string(),
    })
}
