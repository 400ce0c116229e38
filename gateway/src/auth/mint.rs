//! Minting: an access token shaped like SimpleJWT's, for `gateway
//! gen-token`, the demos and the tests. Only with an HMAC secret: the
//! gateway never holds a private key. It must not verify anything.

use jsonwebtoken::{EncodingKey, Header};

use serde_json::{Map, Value};

use crate::auth::keys::{allowed_algorithms, hmac_secret, HMAC};
use crate::config::AuthConfig;

/// Mints an access token shaped like SimpleJWT's, for `gateway gen-token`
/// and for trying the gateway out. Only possible with an HMAC secret: the
/// gateway never holds a private key.
pub fn mint_access_token(
    config: &AuthConfig,
    user_id: &str,
    lifetime_secs: u64,
) -> Result<String, String> {
    let allowed = allowed_algorithms(config).map_err(|error| error.to_string())?;
    let algorithm = allowed
        .iter()
        .copied()
        .find(|algorithm| HMAC.contains(algorithm))
        .ok_or(
            "auth.algorithms allows no HMAC algorithm; tokens come from the backend's private key",
        )?;
    let secret = hmac_secret(config)
        .map_err(|error| error.to_string())?
        .ok_or("no HMAC secret configured (auth.jwt_secret, _file or _env)")?;
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
    if let Some(issuer) = &config.issuer {
        claims.insert("iss".into(), issuer.clone().into());
    }
    if let Some(audience) = config.audience.first() {
        claims.insert("aud".into(), audience.clone().into());
    }
    jsonwebtoken::encode(
        &Header::new(algorithm),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .map_err(|error| error.to_string())
}
