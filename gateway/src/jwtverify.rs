//! JWT verification: turns a bearer token into the identity of one user.
//!
//! Owns the algorithm pin, signature and `exp` checks, SimpleJWT's
//! `token_type` rule and the user-id claim lookup. It must not know where a
//! token came from (see `credentials`) and must never log or return the token.

use std::fmt;
use std::str::FromStr;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::config::AuthConfig;

/// Why a token was refused; the label doubles as the metric label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token in query, Authorization header or cookie")]
    MissingToken,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is signed with an algorithm that is not allowed")]
    WrongAlgorithm,
    #[error("token lacks a required claim (exp or a user id claim)")]
    MissingClaim,
    #[error("token is not an access token (SimpleJWT token_type)")]
    NotAccessToken,
    #[error("token's user id cannot name a channels group")]
    InvalidUserId,
}

impl AuthError {
    pub fn label(self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::WrongAlgorithm => "wrong_algorithm",
            AuthError::MissingClaim => "missing_claim",
            AuthError::NotAccessToken => "not_access_token",
            AuthError::InvalidUserId => "invalid_user_id",
        }
    }
}

/// Who a verified token speaks for.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// Seconds since the epoch after which the token is no longer valid.
    pub expires_at: u64,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user {}", self.user_id)
    }
}

pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let algorithm =
        Algorithm::from_str(name).map_err(|_| format!("unknown JWT algorithm `{name}`"))?;
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Ok(algorithm),
        _ => Err(format!(
            "`{name}` needs a public key; this release verifies HS256, HS384 and HS512"
        )),
    }
}

/// Verifies tokens against one configured key and algorithm.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    user_id_claims: Vec<String>,
}

impl TokenVerifier {
    pub fn new(config: &AuthConfig) -> Result<TokenVerifier, String> {
        let algorithm = parse_algorithm(&config.jwt_algorithm)?;
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway;
        validation.validate_exp = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(TokenVerifier {
            key: DecodingKey::from_secret(config.jwt_secret.expose().as_bytes()),
            validation,
            user_id_claims: config.user_id_claims.clone(),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|error| classify(error.kind()))?;
        let claims = data.claims;
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
        Ok(Identity {
            user_id,
            expires_at,
        })
    }
}

fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            AuthError::MissingClaim
        }
        _ => AuthError::Malformed,
    }
}

/// Mints an access token shaped like SimpleJWT's, for `gateway gen-token`
/// and for trying the gateway out.
pub fn mint_access_token(
    config: &AuthConfig,
    user_id: &str,
    lifetime_secs: u64,
) -> Result<String, String> {
    let algorithm = parse_algorithm(&config.jwt_algorithm)?;
    let now = jsonwebtoken::get_current_timestamp();
    let user_id_value = user_id
        .parse::<i64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(user_id));
    let claim = config
        .user_id_claims
        .first()
        .map_or("user_id", String::as_str);
    let mut claims = Map::new();
    claims.insert("token_type".into(), "access".into());
    claims.insert("exp".into(), (now + lifetime_secs).into());
    claims.insert("iat".into(), now.into());
    claims.insert(
        "jti".into(),
        format!("{:032x}", rand::random::<u128>()).into(),
    );
    claims.insert(claim.into(), user_id_value);
    jsonwebtoken::encode(
        &Header::new(algorithm),
        &claims,
        &EncodingKey::from_secret(config.jwt_secret.expose().as_bytes()),
    )
    .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
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

    fn future() -> u64 {
        jsonwebtoken::get_current_timestamp() + 300
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
        ];
        for (token, expected) in cases {
            assert_eq!(verifier.verify(&token), Err(expected));
        }
    }

    #[test]
    fn asymmetric_and_unknown_algorithms_are_refused_by_config() {
        assert!(parse_algorithm("none").is_err());
        assert!(parse_algorithm("RS256").is_err());
        assert!(parse_algorithm("HS384").is_ok());
    }
}
