//! Session: who a Django session cookie belongs to, asked of the backend.
//!
//! For deployments that authenticate browsers with Django's session cookie
//! (what the seed's `AuthMiddlewareStack` did) instead of JWTs: the
//! handshake's `Cookie` header is forwarded to a small view of the backend
//! (`auth.session_url`), whose JSON answer names the user and optionally
//! extra groups. Answers are cached for `auth.session_cache_ttl` so a
//! reconnect storm does not become a login storm. A backend that is slow,
//! down or answers nonsense gives "unavailable", never a user: this module
//! must not let a failure open the door, and must never log the cookie.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

use crate::auth::verify::Identity;

/// Cached answers kept at most; past this the oldest half is dropped.
const CACHE_LIMIT: usize = 50_000;
/// Largest answer read from the backend.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The backend says the cookie belongs to nobody logged in.
    #[error("the session is not logged in")]
    NotLoggedIn,
    /// The backend could not tell (timeout, error status, bad answer).
    #[error("the session backend is unavailable: {0}")]
    Unavailable(String),
}

/// The backend view's answer: `{"user_id": 42, "groups": ["todo_list_7"]}`.
#[derive(Deserialize)]
struct Answer {
    user_id: serde_json::Value,
    #[serde(default)]
    groups: Vec<String>,
}

/// When the backend answered, and what.
type CachedAnswer = (Instant, Result<Identity, SessionError>);

pub struct SessionAuth {
    url: String,
    timeout: Duration,
    ttl: Duration,
    hasher: RandomState,
    cache: Mutex<HashMap<u64, CachedAnswer>>,
}

thread_local! {
    // awc's client is bound to one worker thread; each worker keeps its own
    // pool of connections to the backend.
    static CLIENT: awc::Client = awc::Client::builder()
        .disable_redirects()
        .finish();
}

impl SessionAuth {
    pub fn new(url: String, timeout: Duration, ttl: Duration) -> SessionAuth {
        SessionAuth {
            url,
            timeout,
            ttl,
            hasher: RandomState::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Who `cookie_header` belongs to, from the cache or the backend.
    pub async fn identify(&self, cookie_header: &str) -> Result<Identity, SessionError> {
        // Keyed by a keyed hash: the cache never holds the cookie itself.
        let key = self.hasher.hash_one(cookie_header);
        if let Some((at, answer)) = self.cache.lock().get(&key) {
            if at.elapsed() < self.ttl {
                return answer.clone();
            }
        }
        let answer = self.ask(cookie_header).await;
        // Failures to ask are not cached: the next connect asks again.
        if !matches!(answer, Err(SessionError::Unavailable(_))) {
            let mut cache = self.cache.lock();
            if cache.len() >= CACHE_LIMIT {
                let ttl = self.ttl;
                cache.retain(|_, (at, _)| at.elapsed() < ttl);
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now(), answer.clone()));
        }
        answer
    }

    async fn ask(&self, cookie_header: &str) -> Result<Identity, SessionError> {
        let unavailable = |what: String| SessionError::Unavailable(what);
        let request = CLIENT.with(|client| {
            client
                .get(&self.url)
                .insert_header(("Cookie", cookie_header))
                .insert_header(("Accept", "application/json"))
                .timeout(self.timeout)
        });
        let mut response = request
            .send()
            .await
            .map_err(|error| unavailable(error.to_string()))?;
        let status = response.status();
        if status == 401 || status == 403 {
            return Err(SessionError::NotLoggedIn);
        }
        if !status.is_success() {
            return Err(unavailable(format!("the backend answered {status}")));
        }
        let body = response
            .body()
            .limit(MAX_ANSWER)
            .await
            .map_err(|error| unavailable(error.to_string()))?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
            unavailable(format!(
                "the backend's answer ({} bytes) is not the expected JSON",
                body.len()
            ))
        })?;
        let user_id = match answer.user_id {
            serde_json::Value::String(id) if !id.is_empty() => id,
            serde_json::Value::Number(id) if id.is_i64() || id.is_u64() => id.to_string(),
            _ => return Err(SessionError::NotLoggedIn),
        };
        Ok(Identity {
            user_id,
            // A session has no token expiry; the backend's logout (or a
            // `gateway.disconnect`) ends it.
            expires_at: u64::MAX / 2,
            groups: answer.groups,
        })
    }
}
