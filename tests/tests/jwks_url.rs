//! A JWKS fetched over HTTPS (`auth.jwks_url`), end to end: a local HTTPS
//! server (`tests/py/jwks_server.py`, certificate from a CA made here with
//! the `openssl` CLI) serves keys exported by PyJWT, and the real gateway
//! verifies tokens PyJWT signs with them. Proves rotation through an unknown
//! `kid`, a key replaced under the same `kid` through the periodic refresh,
//! one shared fetch for a burst of handshakes, old keys kept through server
//! errors and garbage, a certificate from another CA refused, http:// to a
//! remote host refused by `check-config`, and no token or URL secret in logs.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tests::gateway_bin;
use tests::procs::scratch_dir;
use tests::tokens::now_secs;
use tests::{
    ConnectError, GatewayConfig, GatewayProcess, LayerDriver, RedisServer, Signal, TokenIn,
    WsClient,
};

/// A query parameter standing in for credentials in the URL: it must reach
/// neither the log nor the metrics.
const URL_SECRET: &str = "jwks-url-credential-7f3a";

fn toml_string(value: &str) -> String {
    tests::gateway_proc::toml_str(value)
}

/// Key pairs and certificates made with the `openssl` CLI in a scratch
/// directory.
struct Material {
    dir: PathBuf,
}

impl Material {
    fn new() -> Material {
        let material = Material {
            dir: scratch_dir("jwks-url").expect("scratch dir"),
        };
        for (name, args) in [
            (
                "rsa",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            ),
            (
                "rsa2",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            ),
            (
                "ec256",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            ),
            ("ed", &["-algorithm", "ed25519"][..]),
        ] {
            tests::certs::key_pair(&material.dir, name, args);
        }
        material
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("key file")
    }

    fn private(&self, key: &str) -> String {
        self.read(&format!("{key}.pem"))
    }

    /// A CA named `ca` and a server certificate for 127.0.0.1 signed by it:
    /// `(ca.pem, server.pem, server.key)`.
    fn certificates(&self, ca: &str) -> (PathBuf, PathBuf, PathBuf) {
        tests::certs::test_ca_and_server_certificate(&self.dir, ca)
    }
}

impl Drop for Material {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tests/py/jwks_server.py`: serves the state directory's `jwks.json` over
/// HTTPS and logs every request. Stopped by its PID when dropped.
struct JwksServer {
    child: Child,
    port: u16,
    state: PathBuf,
}

impl JwksServer {
    fn start(cert: &Path, key: &Path, state: PathBuf, document: &Value) -> JwksServer {
        std::fs::create_dir_all(&state).expect("state dir");
        std::fs::write(state.join("jwks.json"), document.to_string()).expect("jwks.json");
        let mut child = Command::new(tests::python_bin())
            .arg(tests::python::py_dir().join("jwks_server.py"))
            .arg(cert)
            .arg(key)
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("jwks server starts");
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("jwks server printed {line:?}"));
        JwksServer { child, port, state }
    }

    /// The URL given to the gateway; its query stands in for a credential.
    fn url(&self) -> String {
        format!(
            "https://127.0.0.1:{}/jwks.json?access_key={URL_SECRET}",
            self.port
        )
    }

    fn serve(&self, document: &Value) {
        // Written aside and renamed: a request never reads half a document.
        let temporary = self.state.join("jwks.json.new");
        std::fs::write(&temporary, document.to_string()).expect("write jwks");
        std::fs::rename(&temporary, self.state.join("jwks.json")).expect("rename jwks");
    }

    fn set(&self, name: &str, value: &str) {
        std::fs::write(self.state.join(name), value).expect("state file");
    }

    /// Requests the server has received so far.
    fn requests(&self) -> usize {
        std::fs::read_to_string(self.state.join("requests.log"))
            .map(|log| log.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PyJWT's `to_jwk` for one public key, with its `kid` and `alg`.
async fn jwk(
    driver: &mut LayerDriver,
    material: &Material,
    key: &str,
    kid: &str,
    alg: &str,
) -> Value {
    let reply = driver
        .request(
            json!({"op": "public_jwk", "pem": material.read(&format!("{key}.pub")),
                        "algorithm": alg, "kid": kid, "use": "sig"}),
        )
        .await
        .expect("PyJWT to_jwk");
    reply["jwk"].clone()
}

fn claims(user: u64) -> Value {
    json!({"user_id": user, "exp": now_secs() + 300, "token_type": "access"})
}

/// A gateway verifying with a fetched JWKS, its Redis, and a PyJWT driver.
struct Fixture {
    _redis: RedisServer,
    gateway: GatewayProcess,
    driver: LayerDriver,
    issued: Vec<String>,
}

impl Fixture {
    /// `ca` is what the gateway trusts (`auth.jwks_ca_file`); `extra` adds
    /// `[auth]` lines.
    async fn start(
        redis: RedisServer,
        driver: LayerDriver,
        url: &str,
        ca: &Path,
        extra: &[&str],
    ) -> Fixture {
        Fixture::start_with_server(redis, driver, url, ca, extra, &[]).await
    }

    /// [`Fixture::start`], with `server` adding `[server]` lines.
    async fn start_with_server(
        redis: RedisServer,
        driver: LayerDriver,
        url: &str,
        ca: &Path,
        extra: &[&str],
        server: &[&str],
    ) -> Fixture {
        let mut config = GatewayConfig::new(&redis.url())
            .expect("config")
            .line(
                "auth",
                r#"algorithms = ["HS256", "RS256", "ES256", "EdDSA"]"#,
            )
            .line("auth", format!("jwks_url = {}", toml_string(url)))
            .line(
                "auth",
                format!("jwks_ca_file = {}", toml_string(&ca.to_string_lossy())),
            )
            .line("auth", "jwks_reload_interval = \"1s\"");
        for line in extra {
            config = config.line("auth", *line);
        }
        for line in server {
            config = config.line("server", *line);
        }
        let gateway = start_gateway(&mut config).await;
        Fixture {
            _redis: redis,
            gateway,
            driver,
            issued: Vec::new(),
        }
    }

    async fn token(&mut self, material: &Material, key: &str, alg: &str, kid: &str) -> String {
        let token = self
            .driver
            .mint_jwt(
                claims(7),
                &material.private(key),
                alg,
                Some(json!({ "kid": kid })),
            )
            .await
            .expect("PyJWT encode");
        self.issued.push(token.clone());
        token
    }

    fn url(&self) -> String {
        self.gateway.ws_url("/ws/notifications/")
    }

    async fn accepts(&self, case: &str, token: &str) {
        match WsClient::connect(&self.url(), TokenIn::Header(token.to_string())).await {
            Ok(mut socket) => socket.close().await.expect("close"),
            Err(error) => panic!("{case}: refused: {error}"),
        }
    }

    async fn refuses(&self, case: &str, token: &str, reason: &str) {
        match WsClient::connect(&self.url(), TokenIn::Header(token.to_string())).await {
            Ok(_) => panic!("{case}: socket was accepted"),
            Err(error) => assert_refusal(case, &error, reason),
        }
    }

    async fn fetches(&self, result: &str) -> f64 {
        metric(
            &self.gateway,
            &format!("gateway_jwks_fetches_total{{result=\"{result}\"}} "),
        )
        .await
    }

    /// Waits until `gateway_jwks_fetches_total{result}` reaches `at_least`.
    async fn wait_fetches(&self, result: &str, at_least: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.fetches(result).await < at_least {
            assert!(Instant::now() < deadline, "no {result} fetch");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// No token and no part of the URL's query reached the log or metrics.
    async fn assert_nothing_leaked(&self) {
        let log = self.gateway.log_text();
        for token in &self.issued {
            assert!(!log.contains(token.as_str()), "a token reached the log");
        }
        assert!(!log.contains(URL_SECRET), "the JWKS URL reached the log");
        let (_, metrics) = self.gateway.admin_get("/metrics").await.expect("metrics");
        assert!(
            !metrics.contains(URL_SECRET),
            "the JWKS URL reached a metric"
        );
    }
}

fn assert_refusal(case: &str, error: &ConnectError, reason: &str) {
    assert_eq!(error.status(), Some(401), "{case}: {error}");
    match error {
        ConnectError::Http { body, .. } => {
            let body: Value = serde_json::from_str(body).expect("JSON refusal");
            assert_eq!(body["reason"], reason, "{case}");
        }
        ConnectError::Other(_) => unreachable!("status checked above"),
    }
}

/// Redis and a PyJWT driver, started before the JWKS server because PyJWT
/// exports its keys.
async fn redis_and_driver() -> (RedisServer, LayerDriver) {
    let redis = RedisServer::start().expect("redis starts");
    let driver = publisher_for(&redis, json!({})).await;
    (redis, driver)
}

/// Keys, a CA-signed JWKS server publishing the RS256 key `kid`, and a
/// gateway (with `auth` settings `extra`) that has fetched it once.
async fn with_one_rsa_key(kid: &str, extra: &[&str]) -> (Material, JwksServer, Fixture) {
    let material = Material::new();
    let (ca, cert, key) = material.certificates("ca");
    let (redis, mut driver) = redis_and_driver().await;
    let document = json!({"keys": [jwk(&mut driver, &material, "rsa", kid, "RS256").await]});
    let server = JwksServer::start(&cert, &key, material.path("state"), &document);
    let fixture = Fixture::start(redis, driver, &server.url(), &ca, extra).await;
    fixture.wait_fetches("ok", 1.0).await;
    (material, server, fixture)
}

#[tokio::test]
async fn fetched_keys_verify_each_family_and_a_new_kid_is_fetched_on_first_use() {
    let material = Material::new();
    let (ca, cert, key) = material.certificates("ca");
    let (redis, mut driver) = redis_and_driver().await;
    let document = json!({"keys": [
        jwk(&mut driver, &material, "rsa", "rsa-1", "RS256").await,
        jwk(&mut driver, &material, "ec256", "ec-1", "ES256").await,
        jwk(&mut driver, &material, "ed", "ed-1", "EdDSA").await,
    ]});
    let server = JwksServer::start(&cert, &key, material.path("state"), &document);
    let mut fixture = Fixture::start(redis, driver, &server.url(), &ca, &[]).await;
    fixture.wait_fetches("ok", 1.0).await;

    for (key, alg, kid) in [
        ("rsa", "RS256", "rsa-1"),
        ("ec256", "ES256", "ec-1"),
        ("ed", "EdDSA", "ed-1"),
    ] {
        let token = fixture.token(&material, key, alg, kid).await;
        fixture.accepts(alg, &token).await;
    }
    // Each key verifies only its own family: an RS256 token naming the EC
    // key, and HS256 keyed with the RSA public key (algorithm confusion).
    let token = fixture.token(&material, "rsa", "RS256", "ec-1").await;
    fixture
        .refuses("RS256 naming the EC key", &token, "wrong_algorithm")
        .await;
    let forged = fixture
        .driver
        .request(json!({"op": "forge_hmac_jwt", "claims": claims(7),
                        "key": material.read("rsa.pub"), "headers": {"kid": "rsa-1"}}))
        .await
        .expect("forge");
    let forged = forged["token"].as_str().expect("token").to_string();
    fixture.issued.push(forged.clone());
    fixture
        .refuses(
            "HS256 keyed with the RSA public key",
            &forged,
            "bad_signature",
        )
        .await;
    assert_eq!(server.requests(), 1, "known kids cause no fetch");

    // Rotation: the provider publishes a new key; the first token naming it
    // (after the reload interval) makes the gateway fetch, and it verifies.
    let rotated = json!({"keys": [
        jwk(&mut fixture.driver, &material, "rsa", "rsa-1", "RS256").await,
        jwk(&mut fixture.driver, &material, "rsa2", "rsa-2", "RS256").await,
    ]});
    server.serve(&rotated);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = fixture.token(&material, "rsa2", "RS256", "rsa-2").await;
    fixture.accepts("rotated key, new kid", &token).await;
    assert_eq!(server.requests(), 2);
    assert_eq!(fixture.fetches("ok").await, 2.0);
    // Keys dropped from the document are gone.
    let token = fixture.token(&material, "ed", "EdDSA", "ed-1").await;
    fixture
        .refuses("key removed by the rotation", &token, "unknown_kid")
        .await;
    fixture.assert_nothing_leaked().await;
}

#[tokio::test]
async fn a_key_replaced_under_the_same_kid_is_picked_up_by_the_periodic_fetch() {
    let (material, server, mut fixture) =
        with_one_rsa_key("rot", &["jwks_refresh_interval = \"1s\""]).await;
    let token = fixture.token(&material, "rsa2", "RS256", "rot").await;
    fixture
        .refuses("new key, old document", &token, "bad_signature")
        .await;
    // Same kid, new key: only the periodic fetch can notice.
    server.serve(
        &json!({"keys": [jwk(&mut fixture.driver, &material, "rsa2", "rot", "RS256").await]}),
    );
    let before = fixture.fetches("ok").await;
    fixture.wait_fetches("ok", before + 1.0).await;
    fixture
        .accepts("new key after the periodic fetch", &token)
        .await;
    fixture.assert_nothing_leaked().await;
}

/// `count` handshakes with `token` in the header, all in flight at once.
async fn handshakes_at_once(
    url: &str,
    token: &str,
    count: usize,
) -> Vec<Result<WsClient, tests::ConnectError>> {
    let handshakes = (0..count).map(|_| WsClient::connect(url, TokenIn::Header(token.to_string())));
    futures_util::future::join_all(handshakes).await
}

#[tokio::test]
async fn concurrent_handshakes_with_an_unknown_kid_share_one_fetch() {
    let (material, server, mut fixture) = with_one_rsa_key("rsa-1", &[]).await;
    server.serve(&json!({"keys": [
        jwk(&mut fixture.driver, &material, "rsa", "rsa-1", "RS256").await,
        jwk(&mut fixture.driver, &material, "ed", "ed-2", "EdDSA").await,
    ]}));
    // A slow provider: every handshake below arrives while the fetch runs.
    server.set("delay_ms", "500");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = server.requests();
    let token = fixture.token(&material, "ed", "EdDSA", "ed-2").await;
    let url = fixture.url();
    for result in handshakes_at_once(&url, &token, 40).await {
        match result {
            Ok(mut socket) => socket.close().await.expect("close"),
            Err(error) => panic!("handshake during the shared fetch refused: {error}"),
        }
    }
    let fetched = server.requests() - before;
    assert!(
        (1..=2).contains(&fetched),
        "40 handshakes with an unknown kid caused {fetched} fetches"
    );

    // Made-up kids right after: rate-limited, no fetch per handshake.
    server.set("delay_ms", "0");
    let before = server.requests();
    let bogus = fixture.token(&material, "rsa", "RS256", "made-up").await;
    for result in handshakes_at_once(&url, &bogus, 30).await {
        match result {
            Ok(_) => panic!("a made-up kid was accepted"),
            Err(error) => assert_refusal("made-up kid", &error, "unknown_kid"),
        }
    }
    let fetched = server.requests() - before;
    assert!(fetched <= 1, "30 made-up kids caused {fetched} fetches");
    fixture.assert_nothing_leaked().await;
}

#[tokio::test]
async fn a_failing_server_keeps_the_keys_that_work() {
    let (material, server, mut fixture) =
        with_one_rsa_key("rsa-1", &["jwks_refresh_interval = \"1s\""]).await;
    let token = fixture.token(&material, "rsa", "RS256", "rsa-1").await;
    fixture.accepts("before the outage", &token).await;

    server.set("mode", "500");
    fixture.wait_fetches("bad_status", 1.0).await;
    fixture
        .accepts("while the server answers 500", &token)
        .await;

    server.set("mode", "garbage");
    fixture.wait_fetches("bad_document", 1.0).await;
    fixture
        .accepts("while the server answers garbage", &token)
        .await;

    // A well-formed document whose only key the gateway must not use (a
    // symmetric secret in a public key set) is an error too.
    server.set("mode", "ok");
    server.serve(&json!({"keys": [{"kty": "oct", "kid": "rsa-1", "k": "c2VjcmV0"}]}));
    fixture.wait_fetches("bad_document", 2.0).await;
    fixture
        .accepts("after a document without usable keys", &token)
        .await;
    assert_eq!(
        metric(&fixture.gateway, "gateway_jwks_keys ").await,
        1.0,
        "the first document's key is still held"
    );
    let log = fixture.gateway.log_text();
    assert!(log.contains("keeping the previous keys"), "{log}");
    fixture.assert_nothing_leaked().await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let material = Material::new();
    let (trusted_ca, _, _) = material.certificates("trusted");
    let (_, rogue_cert, rogue_key) = material.certificates("rogue");
    let (redis, mut driver) = redis_and_driver().await;
    let document = json!({"keys": [jwk(&mut driver, &material, "rsa", "rsa-1", "RS256").await]});
    let server = JwksServer::start(&rogue_cert, &rogue_key, material.path("state"), &document);
    // The gateway starts (and is ready) without keys from the URL.
    let mut fixture = Fixture::start(redis, driver, &server.url(), &trusted_ca, &[]).await;
    fixture.wait_fetches("connect_error", 1.0).await;
    let token = fixture.token(&material, "rsa", "RS256", "rsa-1").await;
    fixture
        .refuses("key served by an untrusted server", &token, "unknown_kid")
        .await;
    assert_eq!(server.requests(), 0, "no request passed the TLS handshake");
    assert_eq!(fixture.fetches("ok").await, 0.0);
    let log = fixture.gateway.log_text();
    assert!(log.contains("no keys are held yet"), "{log}");
    assert!(log.contains("127.0.0.1"), "the host is named: {log}");
    fixture.assert_nothing_leaked().await;
}

fn check_config(settings: &[&str]) -> (Option<i32>, String) {
    let mut command = Command::new(gateway_bin!());
    command.arg("check-config");
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEWAY_") {
            command.env_remove(key);
        }
    }
    command.env("GATEWAY_AUTH_JWT_SECRET", SECRET);
    for setting in settings {
        command.args(["--set", setting]);
    }
    let output = command.output().expect("gateway binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_refuses_plain_http_to_a_remote_host_and_two_jwks_sources() {
    let (code, stderr) = check_config(&[
        r#"auth.algorithms=["HS256", "RS256"]"#,
        r#"auth.jwks_url="http://idp.example/.well-known/jwks.json""#,
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("auth.jwks_url") && stderr.contains("https://"),
        "{stderr}"
    );

    let (code, stderr) = check_config(&[
        r#"auth.algorithms=["HS256", "RS256"]"#,
        r#"auth.jwks_url="https://idp.example/jwks.json""#,
        r#"auth.jwks_file="/etc/hostname""#,
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("auth.jwks_url") && stderr.contains("auth.jwks_file"),
        "{stderr}"
    );

    // Loopback (a sidecar) may use http://; nothing is fetched by check-config.
    let (code, stderr) = check_config(&[
        r#"auth.algorithms=["HS256", "RS256"]"#,
        r#"auth.jwks_url="http://127.0.0.1:1/jwks.json""#,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
}

/// A handshake still verifying when the drain takes its list of sockets
/// (here: waiting on a slow fetch for a new kid) is still closed with 1001
/// and a hint once it has joined, instead of staying open until the
/// process exits.
#[tokio::test]
async fn a_socket_that_joins_after_the_drain_began_is_closed_with_1001() {
    let material = Material::new();
    let (ca, cert, key) = material.certificates("ca");
    let (redis, mut driver) = redis_and_driver().await;
    let first = json!({"keys": [jwk(&mut driver, &material, "rsa", "first", "RS256").await]});
    let server = JwksServer::start(&cert, &key, material.path("state"), &first);
    let mut fixture = Fixture::start_with_server(
        redis,
        driver,
        &server.url(),
        &ca,
        &[],
        &[
            "drain_delay = \"200ms\"",
            "drain_window = \"100ms\"",
            "shutdown_timeout = \"20s\"",
        ],
    )
    .await;
    let token = fixture.token(&material, "rsa2", "RS256", "late").await;
    server.serve(&json!({"keys": [
        jwk(&mut fixture.driver, &material, "rsa", "first", "RS256").await,
        jwk(&mut fixture.driver, &material, "rsa2", "late", "RS256").await,
    ]}));
    server.set("delay_ms", "1500");
    // Past the reload interval, so the new kid may be fetched.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let url = fixture.url();
    let handshake =
        tokio::spawn(async move { WsClient::connect(&url, TokenIn::Header(token)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    fixture.gateway.signal(Signal::Term).expect("SIGTERM");
    let mut socket = handshake
        .await
        .expect("handshake task")
        .expect("accepted once the key arrived");
    assert_eq!(socket.wait_close(WAIT).await.expect("closed"), 1001);
    let reason = socket.close_reason().unwrap_or_default();
    assert!(reason.contains("retry_after_ms="), "{reason}");
}
