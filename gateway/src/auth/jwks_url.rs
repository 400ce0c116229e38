//! JWKS over HTTPS: the key set named by `auth.jwks_url`, kept in memory.
//!
//! Owns fetching the document (an awc client on rustls with the ring
//! provider, trusting the system's roots plus `auth.jwks_ca_file`, no
//! redirects, a size cap, 200 and a usable JWKS or it is an error) and when
//! to fetch it: once at start, every `auth.jwks_refresh_interval`, and when a
//! token names an unknown `kid` — then at most once per
//! `auth.jwks_reload_interval`, with every handshake that arrives meanwhile
//! waiting for that same fetch (bounded by `auth.jwks_fetch_timeout`), never
//! starting its own. It counts fetches in `gateway_jwks_fetches_total`.
//! It must not verify tokens (`verify` does, with the keys held here),
//! must never replace working keys with the result of a failed fetch, and
//! must never log or label the URL, which may carry credentials: only its
//! host.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::http::Uri;
use jsonwebtoken::Algorithm;
use parking_lot::Mutex;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::{watch, Notify};

use crate::auth::keys::{jwks_keys, JwksKeys, KeyError};
use crate::config::AuthConfig;
use crate::ops::metrics::{JwksFetchResult, Metrics};

/// Largest JWKS document read; real ones are a few kilobytes.
pub const MAX_DOCUMENT: usize = 1024 * 1024;

/// Why one fetch produced no new keys. Never holds the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the server answered HTTP {0}, not 200")]
    BadStatus(u16),
    #[error("the document is larger than {MAX_DOCUMENT} bytes")]
    TooLarge,
    #[error("unusable document: {0}")]
    BadDocument(String),
}

impl FetchError {
    fn result(&self) -> JwksFetchResult {
        match self {
            FetchError::Timeout(_) => JwksFetchResult::Timeout,
            FetchError::Connect(_) => JwksFetchResult::ConnectError,
            FetchError::BadStatus(_) => JwksFetchResult::BadStatus,
            FetchError::TooLarge => JwksFetchResult::TooLarge,
            FetchError::BadDocument(_) => JwksFetchResult::BadDocument,
        }
    }
}

/// Why a fetch runs; logged, so an operator can tell rotations from routine.
#[derive(Debug, Clone, Copy)]
enum FetchReason {
    Start,
    Periodic,
    /// No fetch has succeeded yet: tried again every reload interval.
    Retry,
    UnknownKid,
}

impl FetchReason {
    fn label(self) -> &'static str {
        match self {
            FetchReason::Start => "start",
            FetchReason::Periodic => "periodic refresh",
            FetchReason::Retry => "retry: no keys held yet",
            FetchReason::UnknownKid => "unknown kid",
        }
    }
}

#[derive(Default)]
struct FetchState {
    /// A fetch is running or has been asked for; handshakes wait for it
    /// instead of asking again.
    in_flight: bool,
    /// When the last fetch was started: the unknown-kid rate limit counts
    /// from here.
    last_started: Option<Instant>,
}

/// The fetched key set and the machinery that keeps it fresh.
pub struct RemoteJwks {
    url: String,
    /// The only part of the URL that is ever logged.
    host: String,
    allowed: Vec<Algorithm>,
    keys: JwksKeys,
    tls: Arc<rustls::ClientConfig>,
    state: Mutex<FetchState>,
    /// Wakes the fetching task when a handshake needs a fetch.
    wake: Notify,
    /// Bumped after every fetch, good or bad, so waiters stop waiting.
    finished: watch::Sender<u64>,
    reload_interval: Duration,
    refresh_interval: Duration,
    fetch_timeout: Duration,
}

/// The host of `url` (no user info, path or query), or an error naming
/// `auth.jwks_url` without repeating the URL.
pub fn url_host(url: &str) -> Result<(String, bool), String> {
    let uri: Uri = url.parse().map_err(|_| "is not a valid URL".to_string())?;
    let host = uri
        .host()
        .filter(|host| !host.is_empty())
        .ok_or("has no host")?
        .to_string();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("must be an https:// URL".into()),
    };
    Ok((host, https))
}

/// Whether `host` names this machine, the only place where a JWKS may be
/// fetched without TLS (a sidecar or a test server).
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// The TLS client configuration: ring only, the system's trusted roots plus
/// the PEM certificates of `ca_file`.
/// `https` false (a loopback http:// URL) needs no roots.
fn tls_config(ca_file: Option<&Path>, https: bool) -> Result<rustls::ClientConfig, KeyError> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(system.certs);
    if !system.errors.is_empty() {
        tracing::warn!(
            errors = system.errors.len(),
            "some system root certificates could not be read"
        );
    }
    if let Some(path) = ca_file {
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .map_err(|error| KeyError {
                setting: "auth.jwks_ca_file",
                reason: format!(
                    "cannot read PEM certificates from {}: {error}",
                    path.display()
                ),
            })?;
        if certificates.is_empty() {
            return Err(KeyError {
                setting: "auth.jwks_ca_file",
                reason: format!("{} holds no PEM certificate", path.display()),
            });
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|error| KeyError {
                setting: "auth.jwks_ca_file",
                reason: format!("unusable CA certificate in {}: {error}", path.display()),
            })?;
        }
    } else if added == 0 && https {
        return Err(KeyError {
            setting: "auth.jwks_url",
            reason: "no trusted root certificates in the system store; \
                     set auth.jwks_ca_file"
                .into(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| KeyError {
            setting: "auth.jwks_url",
            reason: format!("TLS setup failed: {error}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // One small GET now and then: HTTP/1.1 is plenty.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl RemoteJwks {
    /// Checks the settings and prepares TLS; fetches nothing (see [`run`]).
    pub fn new(
        url: &str,
        config: &AuthConfig,
        allowed: &[Algorithm],
    ) -> Result<RemoteJwks, KeyError> {
        let (host, https) = url_host(url).map_err(|reason| KeyError {
            setting: "auth.jwks_url",
            reason,
        })?;
        // The reasons never repeat the URL: it may carry credentials.
        if !https && !is_loopback_host(&host) {
            return Err(KeyError {
                setting: "auth.jwks_url",
                reason: "must be an https:// URL: keys fetched over plain http:// could be \
                         replaced by anyone on the path (http:// is accepted only for a \
                         loopback host)"
                    .into(),
            });
        }
        let (finished, _) = watch::channel(0);
        Ok(RemoteJwks {
            url: url.to_string(),
            host,
            allowed: allowed.to_vec(),
            keys: JwksKeys::default(),
            tls: Arc::new(tls_config(config.jwks_ca_file.as_deref(), https)?),
            state: Mutex::new(FetchState::default()),
            wake: Notify::new(),
            finished,
            reload_interval: config.jwks_reload_interval,
            refresh_interval: config.jwks_refresh_interval,
            fetch_timeout: config.jwks_fetch_timeout,
        })
    }

    pub(crate) fn keys(&self) -> &JwksKeys {
        &self.keys
    }

    /// Called by a handshake whose token names a `kid` not held: joins the
    /// running fetch, or asks for one unless one started within
    /// `reload_interval`, and waits for it at most `fetch_timeout`. Returns
    /// at once when rate-limited (the kid is then unknown).
    pub async fn fetch_for_unknown_kid(&self) {
        let mut finished = {
            let mut state = self.state.lock();
            if !state.in_flight {
                let recent = state
                    .last_started
                    .is_some_and(|started| started.elapsed() < self.reload_interval);
                if recent {
                    return;
                }
                state.in_flight = true;
                state.last_started = Some(Instant::now());
                self.wake.notify_one();
            }
            // Subscribed under the lock, before the fetch can finish: the
            // fetch's completion is always a change this receiver sees.
            self.finished.subscribe()
        };
        let _ = tokio::time::timeout(self.fetch_timeout, finished.changed()).await;
    }

    /// Marks a fetch as running (for one the task starts itself).
    fn begin(&self) {
        let mut state = self.state.lock();
        state.in_flight = true;
        state.last_started = Some(Instant::now());
    }

    fn end(&self) {
        self.state.lock().in_flight = false;
        self.finished
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    async fn fetch(&self, client: &awc::Client) -> Result<Vec<u8>, FetchError> {
        let request = client
            .get(&self.url)
            .insert_header(("Accept", "application/jwk-set+json, application/json"));
        let mut response = request.send().await.map_err(|error| match error {
            awc::error::SendRequestError::Timeout => FetchError::Timeout(self.fetch_timeout),
            other => FetchError::Connect(other.to_string()),
        })?;
        let status = response.status();
        if status != awc::http::StatusCode::OK {
            return Err(FetchError::BadStatus(status.as_u16()));
        }
        let body = response
            .body()
            .limit(MAX_DOCUMENT)
            .await
            .map_err(|error| match error {
                awc::error::PayloadError::Overflow => FetchError::TooLarge,
                other => FetchError::Connect(other.to_string()),
            })?;
        Ok(body.to_vec())
    }

    /// One fetch; a usable document replaces the keys, anything else keeps
    /// them and is logged with the host only.
    async fn fetch_and_install(&self, client: &awc::Client, metrics: &Metrics, why: FetchReason) {
        let fetched = tokio::time::timeout(self.fetch_timeout, self.fetch(client))
            .await
            .unwrap_or(Err(FetchError::Timeout(self.fetch_timeout)))
            .and_then(|document| {
                jwks_keys(&document, &self.allowed).map_err(FetchError::BadDocument)
            });
        match fetched {
            Ok(keys) => {
                metrics.jwks_fetch(JwksFetchResult::Ok);
                tracing::info!(host = %self.host, keys = keys.len(), why = why.label(), "JWKS fetched");
                self.keys.replace(keys);
            }
            Err(error) => {
                metrics.jwks_fetch(error.result());
                if self.keys.is_empty() {
                    tracing::warn!(
                        host = %self.host, %error, why = why.label(),
                        "JWKS fetch failed and no keys are held yet: tokens naming a kid \
                         are refused until a fetch succeeds"
                    );
                } else {
                    tracing::warn!(
                        host = %self.host, %error, why = why.label(),
                        "JWKS fetch failed; keeping the previous keys"
                    );
                }
            }
        }
        metrics
            .jwks_keys
            .set(i64::try_from(self.keys.len()).unwrap_or(i64::MAX));
    }
}

/// Keeps `remote` fresh for the life of the process: fetches at once, then
/// on every request from a handshake and every `refresh_interval` (every
/// `reload_interval` while no fetch has ever succeeded, so a gateway that
/// started during an outage recovers without waiting for a handshake).
/// Runs on one actix thread: the awc client is bound to it.
pub async fn run(remote: Arc<RemoteJwks>, metrics: Arc<Metrics>) {
    let client = awc::Client::builder()
        .connector(
            awc::Connector::new()
                .rustls_0_23(remote.tls.clone())
                .timeout(remote.fetch_timeout),
        )
        // A redirect could lead to http:// or another host.
        .disable_redirects()
        .timeout(remote.fetch_timeout)
        .finish();
    remote.begin();
    let mut why = FetchReason::Start;
    loop {
        remote.fetch_and_install(&client, &metrics, why).await;
        remote.end();
        let (wait, timed_reason) = if remote.keys.is_empty() {
            (remote.reload_interval, FetchReason::Retry)
        } else {
            (remote.refresh_interval, FetchReason::Periodic)
        };
        let next_refresh = tokio::time::Instant::now() + wait;
        why = loop {
            tokio::select! {
                () = remote.wake.notified() => {
                    // A wake left over from a request a periodic fetch
                    // already served finds nothing in flight: skip it.
                    if remote.state.lock().in_flight {
                        break FetchReason::UnknownKid;
                    }
                }
                () = tokio::time::sleep_until(next_refresh) => {
                    remote.begin();
                    break timed_reason;
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_schemes() {
        assert_eq!(
            url_host("https://user:pw@idp.example/jwks?x=1"),
            Ok(("idp.example".to_string(), true))
        );
        assert_eq!(
            url_host("http://127.0.0.1:8080/jwks"),
            Ok(("127.0.0.1".to_string(), false))
        );
        assert!(url_host("ftp://idp.example/jwks").is_err());
        assert!(url_host("idp.example/jwks").is_err());
        assert!(url_host("").is_err());
        for host in ["localhost", "127.0.0.1", "127.1.2.3", "[::1]", "::1"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["idp.example", "10.0.0.1", "localhost.evil.example"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    fn auth(url: &str) -> AuthConfig {
        AuthConfig {
            jwks_url: Some(url.into()),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let allowed = [Algorithm::RS256];
        let error = RemoteJwks::new("http://idp.example/jwks", &auth("x"), &allowed)
            .err()
            .expect("refused");
        assert_eq!(error.setting, "auth.jwks_url");
        assert!(!error.reason.contains("idp.example"), "{error}");
    }

    #[tokio::test]
    async fn unknown_kids_share_one_fetch_and_are_rate_limited() {
        let mut config = auth("http://127.0.0.1:9/jwks");
        config.jwks_fetch_timeout = Duration::from_millis(200);
        config.jwks_ca_file = None;
        // A loopback http:// URL needs no trusted roots, so this builds on
        // any machine: the test cannot pass without running.
        let remote = RemoteJwks::new("http://127.0.0.1:9/jwks", &config, &[Algorithm::RS256])
            .expect("a loopback http URL builds without system roots");
        let remote = Arc::new(remote);
        // No task runs: waiters time out, but only the first asks.
        let waiters: Vec<_> = (0..20)
            .map(|_| {
                let remote = remote.clone();
                tokio::spawn(async move { remote.fetch_for_unknown_kid().await })
            })
            .collect();
        for waiter in waiters {
            waiter.await.expect("waiter");
        }
        assert!(remote.state.lock().in_flight, "one fetch asked for");
        remote.end();
        // Within the reload interval nobody asks again, nor waits.
        let started = Instant::now();
        remote.fetch_for_unknown_kid().await;
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(!remote.state.lock().in_flight);
    }
}
