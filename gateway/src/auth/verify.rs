//! Verification: turns a bearer token into the identity of one user.
//!
//! Owns the checks: signature (with the keys `keys` read, a JWKS file's or a
//! JWKS URL's selected by `kid`), `exp`, `nbf`, `iss` and `aud` with the
//! configured leeway, SimpleJWT's `token_type` rule and the user-id and
//! groups claims. It is the one module that verifies tokens, and building a
//! [`TokenVerifier`] is where every auth key setting is judged. It must not
//! know where a token came from (see `credentials`) and must never log or
//! return the token or a key. For an unknown `kid` it waits for the one fetch
//! `jwks_url` runs for everyone.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{Map, Value};

use crate::auth::jwks_file::JwksFile;
use crate::auth::jwks_url::RemoteJwks;
use crate::auth::keys::{
    allowed_algorithms, hmac_secret, key_error, key_material, public_key_from_pem, restrict,
    JwksKeys, KeyError, VerifyingKey, HMAC,
};
use crate::config::AuthConfig;

/// Why a token was refused; the label doubles as the metric label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token in Authorization header, subprotocol, query or cookie")]
    MissingToken,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token is signed with an algorithm that is not allowed for any configured key")]
    WrongAlgorithm,
    #[error("token lacks a required claim (exp, iss, aud or a user id claim)")]
    MissingClaim,
    #[error("token was issued by an issuer that is not configured")]
    WrongIssuer,
    #[error("token is meant for another audience")]
    WrongAudience,
    #[error("token names no key id (kid) and only JWKS keys could verify it")]
    MissingKid,
    #[error("token names a key id (kid) the JWKS document does not hold")]
    UnknownKid,
    #[error("token is not an access token (SimpleJWT token_type)")]
    NotAccessToken,
    #[error("token's user id cannot name a channels group")]
    InvalidUserId,
    #[error("token's groups claim is not a list of strings")]
    InvalidGroups,
    #[error("no token, and the session cookie belongs to nobody logged in")]
    NoSession,
}

impl AuthError {
    pub fn label(self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAlgorithm => "wrong_algorithm",
            AuthError::MissingClaim => "missing_claim",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingKid => "missing_kid",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::NotAccessToken => "not_access_token",
            AuthError::InvalidUserId => "invalid_user_id",
            AuthError::InvalidGroups => "invalid_groups",
            AuthError::NoSession => "no_session",
        }
    }
}

/// Who a verified token speaks for.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// Seconds since the epoch after which the token is no longer valid.
    pub expires_at: u64,
    /// Extra groups the token asks for (`auth.groups_claim`); the handshake
    /// admits only those matching `auth.allowed_groups`.
    pub groups: Vec<String>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user {}", self.user_id)
    }
}

/// Verifies tokens against the configured keys and allowlist.
pub struct TokenVerifier {
    allowed: Vec<Algorithm>,
    /// Keys configured one by one (HMAC secret, public key): tried for any
    /// `kid`, since SimpleJWT does not set one.
    unnamed: Vec<VerifyingKey>,
    jwks: Option<JwksFile>,
    /// A JWKS document fetched over HTTPS (`auth.jwks_url`); exclusive with
    /// `jwks`.
    remote: Option<Arc<RemoteJwks>>,
    /// The claim checks, one per allowed algorithm (jsonwebtoken checks the
    /// header's algorithm against this list as well).
    validations: Vec<(Algorithm, Validation)>,
    user_id_claims: Vec<String>,
    groups_claim: Option<String>,
}

impl TokenVerifier {
    /// Re-reads the JWKS file if it was last read `every` ago or longer, so
    /// a key replaced under the same `kid` is picked up too. Callers run it
    /// periodically; without a JWKS file it does nothing.
    pub fn refresh_jwks(&self, every: Duration) {
        if let Some(jwks) = &self.jwks {
            if jwks.last_load.lock().elapsed() >= every {
                jwks.reload(&self.allowed, "periodic refresh");
            }
        }
    }

    pub fn uses_jwks_file(&self) -> bool {
        self.jwks.is_some()
    }

    /// The fetched JWKS, for the task that keeps it fresh.
    pub fn remote_jwks(&self) -> Option<Arc<RemoteJwks>> {
        self.remote.clone()
    }

    /// The JWKS keys, from the file or the URL, whichever is configured.
    fn jwks_held(&self) -> Option<&JwksKeys> {
        match (&self.jwks, &self.remote) {
            (Some(file), _) => Some(&file.keys),
            (None, Some(remote)) => Some(remote.keys()),
            (None, None) => None,
        }
    }

    pub fn new(config: &AuthConfig) -> Result<TokenVerifier, KeyError> {
        // A combination is judged before any key is read: two JWKS sources
        // are refused as such, whatever either holds.
        if config.jwks_file.is_some() && config.jwks_url.is_some() {
            return Err(key_error(
                "auth.jwks_url",
                "set only one of auth.jwks_file and auth.jwks_url",
            ));
        }
        let allowed = allowed_algorithms(config)?;
        let mut unnamed = Vec::new();
        if let Some(secret) = hmac_secret(config)? {
            unnamed.push(VerifyingKey {
                kid: None,
                key: DecodingKey::from_secret(&secret),
                algorithms: restrict(&HMAC, &allowed, "auth.jwt_secret", "an HMAC secret")?,
            });
        }
        let public_key = key_material(
            config.public_key.as_deref(),
            config.public_key_file.as_deref(),
            config.public_key_env.as_deref(),
            [
                "auth.public_key",
                "auth.public_key_file",
                "auth.public_key_env",
            ],
        )?;
        if let Some((pem, setting)) = public_key {
            unnamed.push(public_key_from_pem(&pem, &allowed, setting)?);
        }
        let jwks = match &config.jwks_file {
            Some(path) => Some(JwksFile {
                keys: JwksKeys::new(
                    JwksFile::load(path, &allowed)
                        .map_err(|reason| key_error("auth.jwks_file", reason))?,
                ),
                path: path.clone(),
                last_load: Mutex::new(Instant::now()),
                reload_interval: config.jwks_reload_interval,
            }),
            None => None,
        };
        // Nothing is fetched here: `serve` starts the fetching task, and
        // `check-config` must not depend on the network.
        let remote = match &config.jwks_url {
            Some(url) => Some(Arc::new(RemoteJwks::new(url, config, &allowed)?)),
            None => None,
        };
        let has_jwks = jwks.is_some() || remote.is_some();
        if unnamed.is_empty() && !has_jwks {
            return Err(key_error(
                "auth.jwt_secret",
                "no verification key: set auth.jwt_secret (or _file/_env), \
                 auth.public_key (or _file/_env), auth.jwks_file or auth.jwks_url",
            ));
        }
        // An allowed algorithm no key can ever verify is a configuration
        // mistake (usually the wrong key type); say so at start.
        for algorithm in &allowed {
            let hmac = HMAC.contains(algorithm);
            let covered = if hmac {
                unnamed.iter().any(|key| key.algorithms.contains(algorithm))
            } else {
                has_jwks || unnamed.iter().any(|key| key.algorithms.contains(algorithm))
            };
            if !covered {
                return Err(key_error(
                    "auth.algorithms",
                    format!(
                        "{algorithm:?} is allowed but no configured key can verify it ({})",
                        if hmac {
                            "HMAC needs auth.jwt_secret"
                        } else {
                            "it needs a matching auth.public_key, auth.jwks_file or auth.jwks_url"
                        }
                    ),
                ));
            }
        }
        let leeway = config.leeway;
        let validations = allowed
            .iter()
            .map(|algorithm| {
                let mut validation = Validation::new(*algorithm);
                validation.leeway = leeway;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(issuer) = &config.issuer {
                    validation.set_issuer(&[issuer]);
                    required.push("iss");
                }
                if config.audience.is_empty() {
                    // Not configured: a token's `aud` is not checked.
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&config.audience);
                    required.push("aud");
                }
                validation.set_required_spec_claims(&required);
                (*algorithm, validation)
            })
            .collect();
        Ok(TokenVerifier {
            allowed,
            unnamed,
            jwks,
            remote,
            validations,
            user_id_claims: config.user_id_claims.clone(),
            groups_claim: config.groups_claim.clone(),
        })
    }

    /// [`Self::verify`], but a token naming a `kid` the fetched JWKS does
    /// not hold first waits (at most `auth.jwks_fetch_timeout`) for the one
    /// fetch `jwks_url` runs for every such handshake, rate-limited by
    /// `auth.jwks_reload_interval`. Without `auth.jwks_url` it is `verify`.
    pub async fn verify_fetching(&self, token: &str) -> Result<Identity, AuthError> {
        if let Some(remote) = &self.remote {
            if let Ok(header) = jsonwebtoken::decode_header(token) {
                // Only a token that a JWKS key could verify may cause a
                // fetch: a disallowed or HMAC algorithm never will.
                let could_use_jwks =
                    self.allowed.contains(&header.alg) && !HMAC.contains(&header.alg);
                if let (true, Some(kid)) = (could_use_jwks, header.kid.as_deref()) {
                    if !remote.keys().holds(kid) {
                        remote.fetch_for_unknown_kid().await;
                    }
                }
            }
        }
        self.verify(token)
    }

    /// Verifies with the keys held now (a JWKS *file* is re-read for an
    /// unknown `kid`; a JWKS URL is fetched only by [`Self::verify_fetching`]).
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let algorithm = header.alg;
        if !self.allowed.contains(&algorithm) {
            return Err(AuthError::WrongAlgorithm);
        }
        let validation = self
            .validations
            .iter()
            .find_map(|(candidate, validation)| (*candidate == algorithm).then_some(validation))
            .ok_or(AuthError::WrongAlgorithm)?;
        let fits = |key: &VerifyingKey| key.algorithms.contains(&algorithm);

        let mut outcome: Option<Result<Map<String, Value>, AuthError>> = None;
        let mut try_key = |key: &VerifyingKey| {
            if matches!(outcome, Some(Ok(_))) {
                return;
            }
            let result = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
                .map(|data| data.claims)
                .map_err(|error| classify(error.kind()));
            // A signature failure on one key must not hide a success or a
            // more specific claim error from another.
            if outcome.is_none() || result.is_ok() || result != Err(AuthError::BadSignature) {
                outcome = Some(result);
            }
        };

        if let (Some(held), Some(kid)) = (self.jwks_held(), header.kid.as_deref()) {
            if let Some(file) = &self.jwks {
                if !held.holds(kid) {
                    file.reload_for(kid, &self.allowed);
                }
            }
            held.for_kid(kid, |key| {
                if fits(key) {
                    try_key(key);
                }
            });
        }
        for key in self.unnamed.iter().filter(|key| fits(key)) {
            try_key(key);
        }
        let claims = match outcome {
            Some(result) => result?,
            None => {
                return Err(match (self.jwks_held(), header.kid) {
                    (Some(_), None) => AuthError::MissingKid,
                    (Some(held), Some(kid)) if !held.holds(&kid) => AuthError::UnknownKid,
                    // No key of the header's family: e.g. HS256 against a
                    // public key (the algorithm-confusion attack).
                    _ => AuthError::WrongAlgorithm,
                });
            }
        };
        self.identity(claims)
    }

    fn identity(&self, claims: Map<String, Value>) -> Result<Identity, AuthError> {
        if let Some(token_type) = claims.get("token_type") {
            if token_type.as_str() != Some("access") {
                return Err(AuthError::NotAccessToken);
            }
        }
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AuthError::MissingClaim)?;
        let user_id = self
            .user_id_claims
            .iter()
            .find_map(|claim| claims.get(claim))
            .ok_or(AuthError::MissingClaim)?;
        let user_id = match user_id {
            Value::String(id) => id.clone(),
            Value::Number(id) if id.is_i64() || id.is_u64() => id.to_string(),
            _ => return Err(AuthError::InvalidUserId),
        };
        if user_id.is_empty() {
            return Err(AuthError::InvalidUserId);
        }
        let groups = match self
            .groups_claim
            .as_ref()
            .and_then(|claim| claims.get(claim))
        {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(AuthError::InvalidGroups)?,
            Some(_) => return Err(AuthError::InvalidGroups),
        };
        Ok(Identity {
            user_id,
            expires_at,
            groups,
        })
    }
}

fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_) => AuthError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            AuthError::MissingClaim
        }
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::*;
    use crate::auth::mint::mint_access_token;
    use crate::config::Secret;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn config() -> AuthConfig {
        AuthConfig {
            jwt_secret: Secret::new("unit-secret"),
            ..AuthConfig::default()
        }
    }

    fn sign(claims: Value, algorithm: Algorithm, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(algorithm),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn future() -> u64 {
        now() + 300
    }

    #[test]
    fn minted_token_verifies() {
        let verifier = TokenVerifier::new(&config()).expect("verifier");
        let token = mint_access_token(&config(), "42", 60).expect("mint");
        assert_eq!(verifier.verify(&token).expect("valid").user_id, "42");
    }

    #[test]
    fn user_id_comes_from_user_id_then_sub() {
        let verifier = TokenVerifier::new(&config()).expect("verifier");
        let uuid = "0b9f7c1e-3f0e-4a53-9a40-3c5b1d0c2f11";
        let token = sign(
            json!({"exp": future(), "sub": uuid}),
            Algorithm::HS256,
            "unit-secret",
        );
        assert_eq!(verifier.verify(&token).expect("valid").user_id, uuid);
        let token = sign(
            json!({"exp": future(), "sub": "x", "user_id": 7}),
            Algorithm::HS256,
            "unit-secret",
        );
        assert_eq!(verifier.verify(&token).expect("valid").user_id, "7");
    }

    #[test]
    fn rejections_are_classified() {
        let verifier = TokenVerifier::new(&config()).expect("verifier");
        let cases = [
            (
                sign(
                    json!({"exp": future(), "user_id": 1}),
                    Algorithm::HS256,
                    "other",
                ),
                AuthError::BadSignature,
            ),
            (
                sign(
                    json!({"exp": 1000, "user_id": 1}),
                    Algorithm::HS256,
                    "unit-secret",
                ),
                AuthError::Expired,
            ),
            (
                sign(
                    json!({"exp": future(), "nbf": future(), "user_id": 1}),
                    Algorithm::HS256,
                    "unit-secret",
                ),
                AuthError::NotYetValid,
            ),
            (
                sign(
                    json!({"exp": future(), "user_id": 1}),
                    Algorithm::HS512,
                    "unit-secret",
                ),
                AuthError::WrongAlgorithm,
            ),
            (
                sign(json!({"exp": future()}), Algorithm::HS256, "unit-secret"),
                AuthError::MissingClaim,
            ),
            (
                sign(json!({"user_id": 1}), Algorithm::HS256, "unit-secret"),
                AuthError::MissingClaim,
            ),
            (
                sign(
                    json!({"exp": future(), "user_id": 1, "token_type": "refresh"}),
                    Algorithm::HS256,
                    "unit-secret",
                ),
                AuthError::NotAccessToken,
            ),
            (
                sign(
                    json!({"exp": future(), "user_id": [1]}),
                    Algorithm::HS256,
                    "unit-secret",
                ),
                AuthError::InvalidUserId,
            ),
            ("not-a-jwt".to_string(), AuthError::Malformed),
            // `{"alg":"none"}` with an empty signature.
            (
                "eyJhbGciOiJub25lIn0.eyJ1c2VyX2lkIjoxfQ.".to_string(),
                AuthError::Malformed,
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(verifier.verify(&token), Err(expected));
        }
    }

    #[test]
    fn leeway_issuer_and_audience() {
        let mut config = config();
        config.leeway = 60;
        config.issuer = Some("https://auth.example".into());
        config.audience = vec!["notifications".into()];
        let verifier = TokenVerifier::new(&config).expect("verifier");
        let good = json!({"exp": now() - 30, "user_id": 1,
                          "iss": "https://auth.example", "aud": "notifications"});
        assert!(verifier
            .verify(&sign(good.clone(), Algorithm::HS256, "unit-secret"))
            .is_ok());
        let cases = [
            ("iss", json!("https://evil.example"), AuthError::WrongIssuer),
            ("aud", json!("billing"), AuthError::WrongAudience),
            ("exp", json!(now() - 120), AuthError::Expired),
        ];
        for (claim, value, expected) in cases {
            let mut claims = good.clone();
            claims[claim] = value;
            let token = sign(claims, Algorithm::HS256, "unit-secret");
            assert_eq!(verifier.verify(&token), Err(expected), "{claim}");
        }
        for claim in ["iss", "aud"] {
            let mut claims = good.clone();
            claims.as_object_mut().expect("object").remove(claim);
            let token = sign(claims, Algorithm::HS256, "unit-secret");
            assert_eq!(verifier.verify(&token), Err(AuthError::MissingClaim));
        }
    }

    #[test]
    fn allowlist_parsing() {
        assert!(parse_algorithm("none").is_err());
        assert!(parse_algorithm("NONE").is_err());
        for name in [
            "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
            "ES256", "ES384", "EdDSA",
        ] {
            assert!(parse_algorithm(name).is_ok(), "{name}");
        }
        let mut config = config();
        config.algorithms = vec!["HS256".into(), "HS512".into()];
        config.jwt_algorithm = Some("HS384".into());
        assert_eq!(
            allowed_algorithms(&config).expect_err("conflict").setting,
            "auth.jwt_algorithm"
        );
        config.jwt_algorithm = None;
        assert_eq!(
            allowed_algorithms(&config).expect("list"),
            [Algorithm::HS256, Algorithm::HS512]
        );
    }

    #[test]
    fn keys_must_fit_the_allowlist() {
        let mut config = config();
        config.algorithms = vec!["RS256".into()];
        let error = TokenVerifier::new(&config)
            .err()
            .expect("secret without HS");
        assert_eq!(error.setting, "auth.jwt_secret");
        config.algorithms = vec!["HS256".into(), "ES256".into()];
        let error = TokenVerifier::new(&config)
            .err()
            .expect("ES256 without key");
        assert_eq!(error.setting, "auth.algorithms");
        let mut config = AuthConfig::default();
        assert!(TokenVerifier::new(&config).is_err(), "no key at all");
        config.public_key =
            Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into());
        config.algorithms = vec!["RS256".into()];
        let error = TokenVerifier::new(&config)
            .err()
            .expect("private key refused");
        assert!(error.reason.contains("private key"), "{error}");
    }

    #[test]
    fn secret_sources_are_exclusive_and_read() {
        let dir = std::env::temp_dir().join(format!("jwtverify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("secret");
        std::fs::write(&path, "file-secret\n").expect("write");
        let mut config = AuthConfig {
            jwt_secret_file: Some(path.clone()),
            ..AuthConfig::default()
        };
        let verifier = TokenVerifier::new(&config).expect("file secret");
        let token = sign(
            json!({"exp": future(), "user_id": 5}),
            Algorithm::HS256,
            "file-secret",
        );
        assert!(verifier.verify(&token).is_ok(), "trailing newline dropped");
        config.jwt_secret = Secret::new("inline");
        assert!(TokenVerifier::new(&config).is_err(), "two sources");
        let config = AuthConfig {
            jwt_secret_env: Some("GATEWAY_UNIT_TEST_SURELY_UNSET".into()),
            ..AuthConfig::default()
        };
        assert_eq!(
            TokenVerifier::new(&config).err().expect("unset").setting,
            "auth.jwt_secret_env"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ec_curve_decides_the_algorithm() {
        assert_eq!(ec_algorithm(&[4; 65]), Some(Algorithm::ES256));
        assert_eq!(ec_algorithm(&[4; 97]), Some(Algorithm::ES384));
        assert_eq!(ec_algorithm(&[4; 133]), None);
    }

    #[test]
    fn jwks_documents_are_filtered() {
        let allowed = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
        let rsa = json!({"kty": "RSA", "kid": "r1", "n": "sXch", "e": "AQAB"});
        let oct = json!({"kty": "oct", "kid": "o1", "k": "c2VjcmV0"});
        let enc = json!({"kty": "RSA", "kid": "r2", "use": "enc", "n": "sXch", "e": "AQAB"});
        let no_kid = json!({"kty": "RSA", "n": "sXch", "e": "AQAB"});
        let named = json!({"kty": "RSA", "kid": "r3", "alg": "PS256", "n": "sXch", "e": "AQAB"});
        let document = json!({"keys": [rsa, oct, enc, no_kid, named]}).to_string();
        let keys = jwks_keys(document.as_bytes(), &allowed).expect("one usable key");
        let kids: Vec<_> = keys.iter().map(|key| key.kid.clone()).collect();
        assert_eq!(kids, [Some("r1".to_string())]);
        assert_eq!(keys[0].algorithms, [Algorithm::RS256]);
        let twice = json!({"keys": [rsa, rsa]}).to_string();
        assert!(jwks_keys(twice.as_bytes(), &allowed).is_err());
        assert!(jwks_keys(b"{}", &allowed).is_err());
    }
}
