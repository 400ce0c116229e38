//! Token, transport and origin security end to end: the real gateway binary
//! verifying tokens minted by Python (PyJWT and djangorestframework-simplejwt,
//! never only by our own code) for every algorithm family, with keys made by
//! the `openssl` CLI; the refusals an attacker would try (wrong key, `none`,
//! algorithm confusion, expired, not yet valid, wrong issuer or audience,
//! missing or unknown `kid`, refresh tokens); each token transport; the origin
//! allowlist; and a grep of the gateway log for every token it saw.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::*;
use serde_json::{json, Value};
use tests::gateway_bin;
use tests::procs::scratch_dir;
use tests::tokens::now_secs;
use tests::{
    ConnectError, GatewayConfig, GatewayLauncher, GatewayProcess, LayerDriver, RedisServer,
    TokenIn, WsClient,
};

/// Key pairs made with the `openssl` CLI, PEM files in a scratch directory.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn generate() -> Keys {
        let dir = scratch_dir("security-keys").expect("scratch dir");
        let keys = Keys { dir };
        keys.pair(
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        keys.pair(
            "rsa2",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        keys.pair(
            "ec256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        keys.pair(
            "ec384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        );
        keys.pair("ed", &["-algorithm", "ed25519"]);
        keys
    }

    fn pair(&self, name: &str, args: &[&str]) {
        tests::certs::key_pair(&self.dir, name, args);
    }

    fn private(&self, name: &str) -> String {
        read(&self.dir.join(format!("{name}.pem")))
    }

    fn public(&self, name: &str) -> String {
        read(&self.dir.join(format!("{name}.pub")))
    }

    fn public_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pub"))
    }

    /// A JWKS document of `(key name, kid, algorithm)` made by PyJWT's
    /// `to_jwk`, written to `file`.
    async fn write_jwks(
        &self,
        driver: &mut LayerDriver,
        file: &str,
        entries: &[(&str, &str, &str)],
    ) -> PathBuf {
        let mut keys = Vec::new();
        for (name, kid, algorithm) in entries {
            let reply = driver
                .request(json!({"op": "public_jwk", "pem": self.public(name),
                                "algorithm": algorithm, "kid": kid, "use": "sig"}))
                .await
                .expect("PyJWT to_jwk");
            keys.push(reply["jwk"].clone());
        }
        let path = self.dir.join(file);
        let document = json!({ "keys": keys }).to_string();
        std::fs::write(&path, document).expect("write jwks");
        path
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("key file")
}

fn toml_string(value: &str) -> String {
    tests::gateway_proc::toml_str(value)
}

fn claims(user: u64, ttl: i64) -> Value {
    json!({"user_id": user, "exp": now_secs() + ttl, "token_type": "access"})
}

struct Secured {
    _redis: RedisServer,
    gateway: GatewayProcess,
    driver: LayerDriver,
}

/// A private Redis, the gateway with `configure` applied (and `env` set for
/// it), and a Python driver for minting.
async fn secured(
    configure: impl FnOnce(GatewayConfig) -> GatewayConfig,
    env: &[(&str, &str)],
) -> Secured {
    let redis = RedisServer::start().expect("redis starts");
    let mut config = configure(GatewayConfig::new(&redis.url()).expect("config"));
    let mut launcher = GatewayLauncher::new().bin(gateway_bin!());
    for (key, value) in env {
        launcher = launcher.env(*key, *value);
    }
    let gateway = launcher
        .start_config(&mut config)
        .await
        .expect("gateway starts and becomes ready");
    let driver = publisher_for(&redis, json!({})).await;
    Secured {
        _redis: redis,
        gateway,
        driver,
    }
}

impl Secured {
    fn url(&self) -> String {
        self.gateway.ws_url("/ws/notifications/")
    }

    async fn accepts(&self, case: &str, token: TokenIn) -> WsClient {
        match WsClient::connect(&self.url(), token).await {
            Ok(socket) => socket,
            Err(error) => panic!("{case}: refused: {error}"),
        }
    }

    /// Asserts a 401 whose JSON reason is `reason`.
    async fn refuses(&self, case: &str, token: TokenIn, reason: &str) {
        match WsClient::connect(&self.url(), token).await {
            Ok(_) => panic!("{case}: socket was accepted"),
            Err(error) => assert_refusal(case, &error, 401, reason),
        }
    }

    async fn pyjwt(
        &mut self,
        claims: Value,
        key: &str,
        algorithm: &str,
        kid: Option<&str>,
    ) -> String {
        let headers = kid.map(|kid| json!({ "kid": kid }));
        self.driver
            .mint_jwt(claims, key, algorithm, headers)
            .await
            .expect("PyJWT encode")
    }

    /// An HS256 token whose HMAC key is `key` (e.g. a PEM public key).
    async fn forged_hmac(&mut self, claims: Value, key: &str, kid: Option<&str>) -> String {
        let mut request = json!({"op": "forge_hmac_jwt", "claims": claims, "key": key});
        if let Some(kid) = kid {
            request["headers"] = json!({ "kid": kid });
        }
        let reply = self.driver.request(request).await.expect("forge");
        reply["token"].as_str().expect("token").to_string()
    }
}

fn assert_refusal(case: &str, error: &ConnectError, status: u16, reason: &str) {
    assert_eq!(error.status(), Some(status), "{case}: {error}");
    match error {
        ConnectError::Http { body, .. } => {
            let body: Value = serde_json::from_str(body).expect("JSON refusal");
            assert_eq!(body["reason"], reason, "{case}");
        }
        ConnectError::Other(_) => unreachable!("status checked above"),
    }
}

const ALL_ALGORITHMS: &str = r#"algorithms = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]"#;

#[tokio::test]
async fn every_algorithm_family_with_a_jwks_file_and_the_attacks_on_it() {
    let keys = Keys::generate();
    // The JWKS needs PyJWT's `to_jwk`, so a driver runs before the gateway.
    let redis_for_driver = RedisServer::start().expect("redis");
    let mut jwks_driver = publisher_for(&redis_for_driver, json!({})).await;
    let jwks = keys
        .write_jwks(
            &mut jwks_driver,
            "jwks.json",
            &[
                ("rsa", "rsa-1", "RS256"),
                ("ec256", "ec-256", "ES256"),
                ("ec384", "ec-384", "ES384"),
                ("ed", "ed-1", "EdDSA"),
            ],
        )
        .await;
    // PyJWT writes `alg` only when asked; drop it from the RSA key so one
    // key serves RS* and PS* (the type decides, not a JWK field).
    let mut document: Value = serde_json::from_str(&read(&jwks)).expect("jwks json");
    if let Some(rsa) = document["keys"][0].as_object_mut() {
        rsa.remove("alg");
    }
    std::fs::write(&jwks, document.to_string()).expect("rewrite jwks");

    let jwks_line = format!("jwks_file = {}", toml_string(&jwks.display().to_string()));
    let mut stack = secured(
        |config| {
            config
                .line("auth", ALL_ALGORITHMS)
                .line("auth", jwks_line)
                .line("auth", "jwks_reload_interval = \"1s\"")
        },
        &[],
    )
    .await;
    let mut issued = Vec::new();

    // Accepted: every algorithm, minted by PyJWT.
    let families = [
        ("HS256", None, SECRET.to_string()),
        ("HS384", None, SECRET.to_string()),
        ("HS512", None, SECRET.to_string()),
        ("RS256", Some("rsa-1"), keys.private("rsa")),
        ("RS384", Some("rsa-1"), keys.private("rsa")),
        ("RS512", Some("rsa-1"), keys.private("rsa")),
        ("PS256", Some("rsa-1"), keys.private("rsa")),
        ("PS384", Some("rsa-1"), keys.private("rsa")),
        ("PS512", Some("rsa-1"), keys.private("rsa")),
        ("ES256", Some("ec-256"), keys.private("ec256")),
        ("ES384", Some("ec-384"), keys.private("ec384")),
        ("EdDSA", Some("ed-1"), keys.private("ed")),
    ];
    for (algorithm, kid, key) in &families {
        let token = stack.pyjwt(claims(5, 300), key, algorithm, *kid).await;
        issued.push(token.clone());
        let mut socket = stack.accepts(algorithm, TokenIn::Header(token)).await;
        socket.close().await.expect("close");
    }

    // Refused.
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "RS256 signed by another key",
            stack
                .pyjwt(
                    claims(5, 300),
                    &keys.private("rsa2"),
                    "RS256",
                    Some("rsa-1"),
                )
                .await,
            "bad_signature",
        ),
        (
            "RS256 without kid",
            stack
                .pyjwt(claims(5, 300), &keys.private("rsa"), "RS256", None)
                .await,
            "missing_kid",
        ),
        (
            "unknown kid",
            stack
                .pyjwt(
                    claims(5, 300),
                    &keys.private("rsa2"),
                    "RS256",
                    Some("nobody"),
                )
                .await,
            "unknown_kid",
        ),
        (
            "ES384 token naming the P-256 key",
            stack
                .pyjwt(
                    claims(5, 300),
                    &keys.private("ec384"),
                    "ES384",
                    Some("ec-256"),
                )
                .await,
            "wrong_algorithm",
        ),
        (
            // Algorithm confusion: HMAC keyed with the RSA public key the
            // attacker can fetch. Only the HMAC secret may check HS256.
            "HS256 keyed with the RSA public key, kid of that key",
            stack
                .forged_hmac(claims(5, 300), &keys.public("rsa"), Some("rsa-1"))
                .await,
            "bad_signature",
        ),
        (
            "HS256 keyed with the Ed25519 public key",
            stack
                .forged_hmac(claims(5, 300), &keys.public("ed"), None)
                .await,
            "bad_signature",
        ),
        (
            "alg none",
            stack.pyjwt(claims(5, 300), "", "none", None).await,
            "malformed",
        ),
        (
            "ES256 expired",
            stack
                .pyjwt(
                    claims(5, -60),
                    &keys.private("ec256"),
                    "ES256",
                    Some("ec-256"),
                )
                .await,
            "expired",
        ),
    ];
    for (case, token, reason) in cases {
        issued.push(token.clone());
        stack.refuses(case, TokenIn::Query(token), reason).await;
    }
    let refresh = stack
        .driver
        .simplejwt(json!(5), SECRET, "HS256", Duration::from_secs(300))
        .await
        .expect("simplejwt pair");
    issued.push(refresh.refresh.clone());
    stack
        .refuses(
            "simplejwt refresh",
            TokenIn::Query(refresh.refresh),
            "not_access_token",
        )
        .await;

    // Rotation: a kid added to the file is picked up on first use (after
    // the reload interval), without a restart.
    let token = stack
        .pyjwt(
            claims(5, 300),
            &keys.private("rsa2"),
            "RS256",
            Some("rsa-2"),
        )
        .await;
    issued.push(token.clone());
    keys.write_jwks(
        &mut jwks_driver,
        "jwks.json",
        &[("rsa", "rsa-1", "RS256"), ("rsa2", "rsa-2", "RS256")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut socket = stack.accepts("rotated key", TokenIn::Query(token)).await;
    socket.close().await.expect("close");

    assert_eq!(
        metric(
            &stack.gateway,
            "gateway_auth_failures_total{reason=\"unknown_kid\"} "
        )
        .await,
        1.0
    );
    let log = stack.gateway.log_text();
    for token in &issued {
        assert!(!log.contains(token.as_str()), "a token reached the log");
    }
}

#[tokio::test]
async fn public_key_from_env_with_simplejwt_issuer_audience_and_time_claims() {
    let keys = Keys::generate();
    let public = keys.public("rsa");
    let mut stack = secured(
        |config| {
            config
                .jwt_secret("")
                .jwt_algorithm("RS256")
                .line("auth", "public_key_env = \"SECURITY_TEST_PUBLIC_KEY\"")
                .line("auth", "issuer = \"https://auth.example\"")
                .line("auth", "audience = [\"notifications\"]")
        },
        &[("SECURITY_TEST_PUBLIC_KEY", public.as_str())],
    )
    .await;
    let private = keys.private("rsa");

    // SimpleJWT signing with RS256 and its own AUDIENCE / ISSUER settings.
    let pair = stack
        .driver
        .request(
            json!({"op": "simplejwt", "user_id": 31, "signing_key": private,
                        "algorithm": "RS256", "lifetime_s": 300,
                        "audience": "notifications", "issuer": "https://auth.example"}),
        )
        .await
        .expect("simplejwt RS256");
    let access = pair["access"].as_str().expect("access").to_string();
    let refresh = pair["refresh"].as_str().expect("refresh").to_string();
    let mut socket = stack
        .accepts(
            "simplejwt RS256 access",
            TokenIn::Subprotocol(access.clone()),
        )
        .await;
    stack
        .driver
        .group_send("user_31", notification(r#""signed by Django""#))
        .await
        .expect("group_send");
    expect_frame(&mut socket, r#"{"message": "signed by Django"}"#).await;
    stack
        .refuses(
            "simplejwt RS256 refresh",
            TokenIn::Query(refresh.clone()),
            "not_access_token",
        )
        .await;

    let good = |ttl: i64| {
        json!({"user_id": 31, "exp": now_secs() + ttl, "iss": "https://auth.example",
               "aud": "notifications"})
    };
    let with = |claim: &str, value: Value| {
        let mut claims = good(300);
        claims[claim] = value;
        claims
    };
    let wrong_iss = with("iss", json!("https://evil.example"));
    let wrong_aud = with("aud", json!("billing"));
    let future_nbf = with("nbf", json!(now_secs() + 120));
    let mut no_aud = good(300);
    no_aud.as_object_mut().expect("object").remove("aud");
    let mut issued = vec![access, refresh];
    let cases = [
        ("wrong iss", wrong_iss, "wrong_issuer"),
        ("wrong aud", wrong_aud, "wrong_audience"),
        ("missing aud", no_aud, "missing_claim"),
        ("nbf in the future", future_nbf, "not_yet_valid"),
        ("expired (no leeway)", good(-30), "expired"),
    ];
    for (case, claims, reason) in cases {
        let token = stack.pyjwt(claims, &private, "RS256", None).await;
        issued.push(token.clone());
        stack.refuses(case, TokenIn::Header(token), reason).await;
    }
    // Algorithm confusion without any HMAC secret configured: the header's
    // HS256 is outside the allowlist and no key could run it anyway.
    let forged = stack.forged_hmac(good(300), &public, None).await;
    issued.push(forged.clone());
    stack
        .refuses(
            "HS256 keyed with the public key",
            TokenIn::Header(forged),
            "wrong_algorithm",
        )
        .await;
    let other_key = stack
        .pyjwt(good(300), &keys.private("rsa2"), "RS256", None)
        .await;
    stack
        .refuses(
            "another RSA key",
            TokenIn::Header(other_key),
            "bad_signature",
        )
        .await;

    let log = stack.gateway.log_text();
    for token in &issued {
        assert!(!log.contains(token.as_str()), "a token reached the log");
    }
    assert!(!log.contains("BEGIN PUBLIC KEY"), "keys are not logged");
}

#[tokio::test]
async fn hmac_and_public_key_side_by_side_never_confuse_and_leeway_applies() {
    let keys = Keys::generate();
    let pem_path = keys.public_path("ec256").display().to_string();
    let mut stack = secured(
        |config| {
            config
                .jwt_secret("")
                .line("auth", "jwt_secret_env = \"SECURITY_TEST_HMAC\"")
                .line("auth", "algorithms = [\"HS256\", \"ES256\"]")
                .line(
                    "auth",
                    format!("public_key_file = {}", toml_string(&pem_path)),
                )
                .line("auth", "leeway = 60")
        },
        &[("SECURITY_TEST_HMAC", "env-secret")],
    )
    .await;

    let hs = stack
        .pyjwt(claims(8, 300), "env-secret", "HS256", None)
        .await;
    stack
        .accepts("HS256 from env secret", TokenIn::Query(hs))
        .await;
    let es = stack
        .pyjwt(claims(8, 300), &keys.private("ec256"), "ES256", None)
        .await;
    stack
        .accepts("ES256 from key file", TokenIn::Query(es))
        .await;
    let simple = stack
        .driver
        .simplejwt(json!(8), "env-secret", "HS256", Duration::from_secs(300))
        .await
        .expect("simplejwt");
    stack
        .accepts("simplejwt HS256", TokenIn::Query(simple.access))
        .await;

    // With both an HMAC secret and a public key configured, an HS256 token
    // keyed with the public key is checked against the secret only.
    let forged = stack
        .forged_hmac(claims(8, 300), &keys.public("ec256"), None)
        .await;
    stack
        .refuses(
            "HS256 keyed with the EC public key",
            TokenIn::Query(forged),
            "bad_signature",
        )
        .await;

    // Leeway: 30 s past exp is inside 60 s of leeway, 120 s is not.
    let recent = stack
        .pyjwt(claims(8, -30), "env-secret", "HS256", None)
        .await;
    stack
        .accepts("expired within leeway", TokenIn::Query(recent))
        .await;
    let old = stack
        .pyjwt(claims(8, -120), "env-secret", "HS256", None)
        .await;
    stack
        .refuses("expired beyond leeway", TokenIn::Query(old), "expired")
        .await;
    let mut soon = claims(8, 300);
    soon["nbf"] = json!(now_secs() + 30);
    let soon = stack.pyjwt(soon, "env-secret", "HS256", None).await;
    stack
        .accepts("nbf within leeway", TokenIn::Query(soon))
        .await;
}

#[tokio::test]
async fn every_transport_connects_and_no_token_reaches_the_log() {
    let mut stack = secured(
        |config| {
            config
                .token_cookie("access_token")
                .line("auth", r#"allowed_origins = ["https://app.example.com"]"#)
        },
        &[("RUST_LOG", "trace")],
    )
    .await;
    let url = stack.url();
    let mut issued = Vec::new();

    for user in 0..4u64 {
        let token = stack
            .pyjwt(claims(100 + user, 300), SECRET, "HS256", None)
            .await;
        issued.push(token.clone());
        let (name, credentials) = match user {
            0 => ("header", TokenIn::Header(token.clone())),
            1 => ("subprotocol", TokenIn::Subprotocol(token.clone())),
            2 => ("query", TokenIn::Query(token.clone())),
            _ => (
                "cookie",
                TokenIn::Cookie {
                    name: "access_token".into(),
                    token: token.clone(),
                },
            ),
        };
        let mut socket = stack.accepts(name, credentials).await;
        let protocol = socket
            .response_headers()
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("sec-websocket-protocol"))
            .map(|(_, value)| value.clone());
        if name == "subprotocol" {
            assert_eq!(protocol.as_deref(), Some("bearer"), "bearer is echoed");
        } else {
            assert_eq!(protocol, None, "{name}: no subprotocol was offered");
        }
        stack
            .driver
            .group_send(&format!("user_{}", 100 + user), notification(r#""via""#))
            .await
            .expect("group_send");
        expect_frame(&mut socket, r#"{"message": "via"}"#).await;
        socket.close().await.expect("close");

        // The same transport with a token signed by someone else.
        let bad = stack
            .pyjwt(claims(100 + user, 300), "not-the-secret", "HS256", None)
            .await;
        issued.push(bad.clone());
        let credentials = match user {
            0 => TokenIn::Header(bad),
            1 => TokenIn::Subprotocol(bad),
            2 => TokenIn::Query(bad),
            _ => TokenIn::Cookie {
                name: "access_token".into(),
                token: bad,
            },
        };
        stack.refuses(name, credentials, "bad_signature").await;
    }
    // A client that offers only `bearer` has sent no token.
    match WsClient::connect_with(
        &url,
        TokenIn::None,
        &[("Sec-WebSocket-Protocol", "bearer")],
        WAIT,
    )
    .await
    {
        Ok(_) => panic!("bearer without a token was accepted"),
        Err(error) => assert_refusal("bare bearer", &error, 401, "missing_token"),
    }

    let log = stack.gateway.log_text();
    assert!(log.contains("handshake refused"), "refusals are logged");
    assert!(log.contains("socket opened"), "accepts are logged");
    for token in &issued {
        // Each JWT part is distinctive; none may appear, whole or in part.
        for part in token.split('.') {
            assert!(!log.contains(part), "part of a token reached the log");
        }
    }
    assert!(!log.contains(SECRET), "the secret reached the log");
    let (_, metrics) = stack.gateway.admin_get("/metrics").await.expect("metrics");
    for token in &issued {
        assert!(
            !metrics.contains(token.as_str()),
            "a token reached a metric"
        );
    }
}

/// Cookie transport is opt-in: a default gateway reads no cookie (one with
/// a cookie and no origin allowlist does not start: `tests/cli.rs`).
#[tokio::test]
async fn the_token_cookie_is_read_only_when_configured_and_needs_an_allowlist() {
    let mut stack = secured(|config| config, &[]).await;
    let token = stack.pyjwt(claims(14, 300), SECRET, "HS256", None).await;
    stack
        .refuses(
            "cookie with the cookie transport off",
            TokenIn::Cookie {
                name: "access_token".into(),
                token: token.clone(),
            },
            "missing_token",
        )
        .await;
    stack
        .accepts("the same token in a header", TokenIn::Header(token))
        .await;
}

#[tokio::test]
async fn origin_allowlist_refuses_cross_site_sockets_before_auth() {
    let mut stack = secured(
        |config| {
            config
                .token_cookie("access_token")
                .line(
                    "auth",
                    r#"allowed_origins = ["https://app.example.com", "https://*.example.org"]"#,
                )
                .line("auth", r#"missing_origin = "deny""#)
        },
        &[],
    )
    .await;
    let url = stack.url();
    let token = stack.pyjwt(claims(12, 300), SECRET, "HS256", None).await;
    let cookie = || TokenIn::Cookie {
        name: "access_token".into(),
        token: token.clone(),
    };
    for origin in [
        "https://app.example.com",
        "https://pr-7.preview.example.org",
    ] {
        let socket = WsClient::connect_with(&url, cookie(), &[("Origin", origin)], WAIT).await;
        assert!(socket.is_ok(), "{origin} is allowed: {:?}", socket.err());
    }
    let refused = [
        (Some("https://evil.example.net"), "origin_not_allowed"),
        (
            Some("https://app.example.com.evil.net"),
            "origin_not_allowed",
        ),
        (Some("http://app.example.com"), "origin_not_allowed"),
        (Some("null"), "origin_not_allowed"),
        (None, "origin_missing"),
    ];
    for (origin, reason) in refused {
        let headers: Vec<(&str, &str)> = origin.iter().map(|origin| ("Origin", *origin)).collect();
        match WsClient::connect_with(&url, cookie(), &headers, WAIT).await {
            Ok(_) => panic!("{origin:?}: cross-site socket accepted"),
            Err(error) => assert_refusal(&format!("{origin:?}"), &error, 403, reason),
        }
    }
    assert_eq!(
        metric(
            &stack.gateway,
            "gateway_connects_total{result=\"forbidden_origin\"} "
        )
        .await,
        5.0
    );
    assert_eq!(
        metric(
            &stack.gateway,
            "gateway_connects_total{result=\"unauthorized\"} "
        )
        .await,
        0.0,
        "the origin is judged before the token"
    );
    let log = stack.gateway.log_text();
    assert!(log.contains("origin_not_allowed") && log.contains("origin_missing"));
    assert!(!log.contains(token.as_str()));
}

#[tokio::test]
async fn missing_origin_allowed_for_non_browser_clients() {
    let mut stack = secured(
        |config| config.line("auth", r#"allowed_origins = ["https://app.example.com"]"#),
        &[],
    )
    .await;
    let token = stack.pyjwt(claims(13, 300), SECRET, "HS256", None).await;
    stack
        .accepts("no Origin header", TokenIn::Header(token.clone()))
        .await;
    match WsClient::connect_with(
        &stack.url(),
        TokenIn::Header(token),
        &[("Origin", "https://evil.example.net")],
        WAIT,
    )
    .await
    {
        Ok(_) => panic!("foreign origin accepted"),
        Err(error) => assert_refusal("foreign origin", &error, 403, "origin_not_allowed"),
    }
}

#[tokio::test]
async fn a_key_replaced_under_the_same_kid_is_picked_up_by_the_periodic_refresh() {
    let keys = Keys::generate();
    let redis_for_driver = RedisServer::start().expect("redis");
    let mut jwks_driver = publisher_for(&redis_for_driver, json!({})).await;
    let jwks = keys
        .write_jwks(
            &mut jwks_driver,
            "rotating.json",
            &[("rsa", "rot", "RS256")],
        )
        .await;
    let jwks_line = format!("jwks_file = {}", toml_string(&jwks.display().to_string()));
    let mut stack = secured(
        |config| {
            config
                .line("auth", r#"algorithms = ["HS256", "RS256"]"#)
                .line("auth", jwks_line)
                .line("auth", "jwks_refresh_interval = \"1s\"")
        },
        &[],
    )
    .await;
    let token = stack
        .pyjwt(claims(6, 300), &keys.private("rsa2"), "RS256", Some("rot"))
        .await;
    stack
        .refuses(
            "new key, old document",
            TokenIn::Header(token.clone()),
            "bad_signature",
        )
        .await;
    // The identity provider rotates the key but keeps the kid: only a
    // periodic re-read can notice.
    keys.write_jwks(
        &mut jwks_driver,
        "rotating.json",
        &[("rsa2", "rot", "RS256")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut socket = stack
        .accepts("new key after the periodic refresh", TokenIn::Header(token))
        .await;
    socket.close().await.expect("close");
}
