//! Keys: what tokens may be verified with, read from the configuration.
//!
//! Owns the algorithm allowlist (`none` is never accepted), the verification
//! keys' sources (an HMAC secret or one public key: inline, a file or an
//! environment variable), PEM and JWK parsing, and the pairing of each key
//! with the only algorithms its type can verify (so an HMAC check is never
//! run with a public key). A setting it cannot use is a [`KeyError`] naming
//! the setting. It must not verify tokens (`verify`) or fetch anything
//! (`jwks_url`), and must never log or return key material.

use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;

use crate::config::{AuthConfig, ConfigError};

/// A key setting that cannot be used; `setting` is its TOML name so the
/// operator knows what to fix. The reason never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `{setting}`: {reason}")]
pub struct KeyError {
    pub setting: &'static str,
    pub reason: String,
}

pub(crate) fn key_error(setting: &'static str, reason: impl Into<String>) -> KeyError {
    KeyError {
        setting,
        reason: reason.into(),
    }
}

impl From<KeyError> for ConfigError {
    fn from(error: KeyError) -> ConfigError {
        ConfigError::Invalid {
            key: error.setting,
            reason: error.reason,
        }
    }
}

pub(crate) const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
pub(crate) const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// One algorithm name from the configuration. Every algorithm jsonwebtoken's
/// RustCrypto backend can verify is accepted; `none` never is.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("`none` (unsigned tokens) is never allowed".into());
    }
    Algorithm::from_str(name).map_err(|_| {
        format!(
            "unknown JWT algorithm `{name}` (use HS256/384/512, RS256/384/512, \
             PS256/384/512, ES256, ES384 or EdDSA)"
        )
    })
}

/// The algorithms tokens may use: `auth.algorithms`, else the legacy
/// single `auth.jwt_algorithm`, else HS256 (SimpleJWT's default).
pub fn allowed_algorithms(config: &AuthConfig) -> Result<Vec<Algorithm>, KeyError> {
    let names: Vec<&str> = if !config.algorithms.is_empty() {
        config.algorithms.iter().map(String::as_str).collect()
    } else {
        vec![config.jwt_algorithm.as_deref().unwrap_or("HS256")]
    };
    let mut allowed = Vec::new();
    for name in names {
        let algorithm =
            parse_algorithm(name).map_err(|reason| key_error("auth.algorithms", reason))?;
        if !allowed.contains(&algorithm) {
            allowed.push(algorithm);
        }
    }
    if let (Some(single), false) = (&config.jwt_algorithm, config.algorithms.is_empty()) {
        let single =
            parse_algorithm(single).map_err(|reason| key_error("auth.jwt_algorithm", reason))?;
        if !allowed.contains(&single) {
            return Err(key_error(
                "auth.jwt_algorithm",
                "is not in auth.algorithms; set only auth.algorithms",
            ));
        }
    }
    Ok(allowed)
}

/// Reads a setting given inline, as a file path or as an environment
/// variable name; `None` when none of the three is set.
pub(crate) fn key_material(
    inline: Option<&str>,
    file: Option<&Path>,
    env: Option<&str>,
    names: [&'static str; 3],
) -> Result<Option<(Vec<u8>, &'static str)>, KeyError> {
    let given = [inline.is_some(), file.is_some(), env.is_some()];
    if given.iter().filter(|set| **set).count() > 1 {
        return Err(key_error(
            names[0],
            format!(
                "set only one of {}, {} and {}",
                names[0], names[1], names[2]
            ),
        ));
    }
    if let Some(value) = inline {
        return Ok(Some((value.as_bytes().to_vec(), names[0])));
    }
    if let Some(path) = file {
        let mut bytes = std::fs::read(path).map_err(|error| {
            key_error(
                names[1],
                format!("cannot read {}: {}", path.display(), error.kind()),
            )
        })?;
        // Editors and `echo` end files with a newline no backend key has.
        while bytes
            .last()
            .is_some_and(|byte| *byte == b'\n' || *byte == b'\r')
        {
            bytes.pop();
        }
        return Ok(Some((bytes, names[1])));
    }
    if let Some(name) = env {
        let value = std::env::var(name).map_err(|_| {
            key_error(
                names[2],
                format!("environment variable {name} is not set or not UTF-8"),
            )
        })?;
        return Ok(Some((value.into_bytes(), names[2])));
    }
    Ok(None)
}

/// The HMAC secret, wherever it is configured.
pub(crate) fn hmac_secret(config: &AuthConfig) -> Result<Option<Vec<u8>>, KeyError> {
    let inline = (!config.jwt_secret.is_empty()).then(|| config.jwt_secret.expose());
    let found = key_material(
        inline,
        config.jwt_secret_file.as_deref(),
        config.jwt_secret_env.as_deref(),
        [
            "auth.jwt_secret",
            "auth.jwt_secret_file",
            "auth.jwt_secret_env",
        ],
    )?;
    match found {
        Some((bytes, setting)) if bytes.is_empty() => Err(key_error(setting, "is empty")),
        Some((bytes, _)) => Ok(Some(bytes)),
        None => Ok(None),
    }
}

/// One key and the algorithms it may verify: the intersection of the
/// allowlist with what the key's type can do, so a token whose header names
/// another family never reaches this key.
pub(crate) struct VerifyingKey {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: Vec<Algorithm>,
}

pub(crate) fn restrict(
    possible: &[Algorithm],
    allowed: &[Algorithm],
    setting: &'static str,
    what: &str,
) -> Result<Vec<Algorithm>, KeyError> {
    let algorithms: Vec<Algorithm> = possible
        .iter()
        .filter(|algorithm| allowed.contains(algorithm))
        .copied()
        .collect();
    if algorithms.is_empty() {
        return Err(key_error(
            setting,
            format!(
                "{what} can verify only {} and auth.algorithms allows none of them",
                names(possible)
            ),
        ));
    }
    Ok(algorithms)
}

pub(crate) fn names(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|algorithm| format!("{algorithm:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// ECDSA algorithm for a SEC1 public point by its length (uncompressed or
/// compressed): the curve decides the algorithm, nothing else may.
pub(crate) fn ec_algorithm(point: &[u8]) -> Option<Algorithm> {
    match point.len() {
        65 | 33 => Some(Algorithm::ES256),
        97 | 49 => Some(Algorithm::ES384),
        _ => None,
    }
}

/// A PEM public key (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`).
pub(crate) fn public_key_from_pem(
    pem: &[u8],
    allowed: &[Algorithm],
    setting: &'static str,
) -> Result<VerifyingKey, KeyError> {
    let text = std::str::from_utf8(pem).map_err(|_| key_error(setting, "is not PEM text"))?;
    if text.contains("PRIVATE KEY") {
        return Err(key_error(
            setting,
            "is a private key; give the gateway only the public key",
        ));
    }
    if !text.contains("PUBLIC KEY-----") {
        return Err(key_error(
            setting,
            "is not a PEM `PUBLIC KEY` or `RSA PUBLIC KEY`",
        ));
    }
    let (key, possible, what): (DecodingKey, Vec<Algorithm>, &str) =
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (key, RSA.to_vec(), "an RSA key")
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            let algorithm = key
                .try_get_as_bytes()
                .ok()
                .and_then(ec_algorithm)
                .ok_or_else(|| key_error(setting, "EC keys must be on P-256 or P-384"))?;
            (key, vec![algorithm], "an EC key")
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            if key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(32) {
                return Err(key_error(setting, "only Ed25519 EdDSA keys are supported"));
            }
            (key, vec![Algorithm::EdDSA], "an Ed25519 key")
        } else {
            return Err(key_error(
                setting,
                "is not an RSA, EC (P-256, P-384) or Ed25519 public key",
            ));
        };
    Ok(VerifyingKey {
        kid: None,
        algorithms: restrict(&possible, allowed, setting, what)?,
        key,
    })
}

/// The usable signing keys of a JWKS document. Keys without a `kid`, with a
/// `use` other than `sig`, symmetric (`oct`: a JWKS is often public, so an
/// HMAC secret does not belong in one) or of unsupported curves are skipped.
pub(crate) fn jwks_keys(
    document: &[u8],
    allowed: &[Algorithm],
) -> Result<Vec<VerifyingKey>, String> {
    let set: JwkSet = serde_json::from_slice(document)
        .map_err(|error| format!("not a JWKS document ({:?} error)", error.classify()))?;
    let mut keys: Vec<VerifyingKey> = Vec::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if keys
            .iter()
            .any(|key| key.kid.as_deref() == Some(kid.as_str()))
        {
            return Err(format!("kid `{kid}` appears twice"));
        }
        if let Some(key) = jwk_key(jwk, kid, allowed) {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "holds no signing key with a kid for {}",
            names(allowed)
        ));
    }
    Ok(keys)
}

pub(crate) fn jwk_key(jwk: &Jwk, kid: String, allowed: &[Algorithm]) -> Option<VerifyingKey> {
    if matches!(&jwk.common.public_key_use, Some(usage) if *usage != PublicKeyUse::Signature) {
        return None;
    }
    let possible: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA.to_vec(),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => return None,
    };
    // A key that names its algorithm may verify only that one.
    let possible = match &jwk.common.key_algorithm {
        Some(named) => {
            let named = Algorithm::from_str(&named.to_string()).ok()?;
            possible.into_iter().filter(|alg| *alg == named).collect()
        }
        None => possible,
    };
    let algorithms: Vec<Algorithm> = possible
        .into_iter()
        .filter(|algorithm| allowed.contains(algorithm))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyingKey {
        kid: Some(kid),
        key,
        algorithms,
    })
}

/// The keys of a JWKS document, selected by `kid`; replaced whole by a
/// successful re-read or fetch, never emptied by a failed one.
#[derive(Default)]
pub(crate) struct JwksKeys(RwLock<Vec<VerifyingKey>>);

impl JwksKeys {
    pub(crate) fn new(keys: Vec<VerifyingKey>) -> JwksKeys {
        JwksKeys(RwLock::new(keys))
    }

    /// Calls `each` for every key named `kid`, under the read lock.
    pub(crate) fn for_kid(&self, kid: &str, mut each: impl FnMut(&VerifyingKey)) {
        for key in self.0.read().iter() {
            if key.kid.as_deref() == Some(kid) {
                each(key);
            }
        }
    }

    pub(crate) fn holds(&self, kid: &str) -> bool {
        self.0
            .read()
            .iter()
            .any(|key| key.kid.as_deref() == Some(kid))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.read().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.read().is_empty()
    }

    /// Installs a new set; callers pass only a set that parsed and holds at
    /// least one usable key.
    pub(crate) fn replace(&self, keys: Vec<VerifyingKey>) {
        *self.0.write() = keys;
    }
}
