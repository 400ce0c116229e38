//! The command line an operator meets first: `check-config` validates and
//! redacts, a bad value exits non-zero naming its key, environment variables
//! override the file, and `gen-token` mints a token the gateway accepts.

use std::process::{Command, Output};

use tests::gateway_bin;

fn gateway(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(gateway_bin!());
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEWAY_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("gateway binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let output = gateway(
        &["check-config", "--set", "layer.prefix=\"myapp\""],
        &[
            ("GATEWAY_AUTH_JWT_SECRET", "super-secret-value"),
            (
                "GATEWAY_LAYER_HOSTS",
                "[\"redis://user:hunter2@10.0.0.5:6380/2\"]",
            ),
            ("GATEWAY_LAYER_GROUP_EXPIRY", "600"),
        ],
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("prefix = \"myapp\""), "{stdout}");
    assert!(stdout.contains("group_expiry = 600"), "{stdout}");
    assert!(
        stdout.contains("redis://user:<redacted>@10.0.0.5:6380/2"),
        "{stdout}"
    );
    assert!(!stdout.contains("super-secret-value") && !stdout.contains("hunter2"));
}

#[test]
fn one_host_url_as_people_type_it_is_a_list_of_one() {
    for (env, set) in [
        (Some("redis://user:hunter2@10.0.0.5:6380/2"), None),
        (
            None,
            Some("layer.hosts=redis://user:hunter2@10.0.0.5:6380/2"),
        ),
    ] {
        let mut args = vec!["check-config"];
        let mut vars = vec![
            ("GATEWAY_AUTH_JWT_SECRET", "x"),
            ("GATEWAY_AUTH_ALGORITHMS", "HS512"),
        ];
        if let Some(url) = env {
            vars.push(("GATEWAY_LAYER_HOSTS", url));
        }
        if let Some(set) = set {
            args.extend(["--set", set]);
        }
        let output = gateway(&args, &vars);
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(
            stdout.contains("hosts = [\"redis://user:<redacted>@10.0.0.5:6380/2\"]"),
            "{stdout}"
        );
        assert!(stdout.contains("algorithms = [\"HS512\"]"), "{stdout}");
    }
    // Still named when one value is of the wrong kind.
    let output = gateway(
        &["check-config"],
        &[
            ("GATEWAY_AUTH_JWT_SECRET", "x"),
            ("GATEWAY_LAYER_HOSTS", "6379"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("layer.hosts"));
}

#[test]
fn encryption_keys_from_an_environment_variable() {
    let vars = [
        ("GATEWAY_AUTH_JWT_SECRET", "x"),
        (
            "GATEWAY_LAYER_SYMMETRIC_ENCRYPTION_KEYS_ENV",
            "GATEWAY_TEST_FERNET_KEYS",
        ),
        ("GATEWAY_TEST_FERNET_KEYS", "[\"key one\", \"key two\"]"),
    ];
    let output = gateway(&["check-config"], &vars);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!stdout.contains("key one"), "{stdout}");
    assert!(
        stdout.contains("symmetric_encryption_keys = [\n    \"<redacted>\",\n    \"<redacted>\",")
            || stdout.contains("symmetric_encryption_keys = [\"<redacted>\", \"<redacted>\"]"),
        "{stdout}"
    );
    let output = gateway(&["check-config"], &vars[..2]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("layer.symmetric_encryption_keys_env"));
}

#[test]
fn a_bad_value_fails_with_its_key_and_a_non_zero_exit() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (
            &["check-config"],
            &[("GATEWAY_LAYER_EXPIRY", "\"soon\"")],
            "expiry",
        ),
        (
            &["check-config"],
            &[("GATEWAY_LAYER_GROUP_EXPIRY", "1")],
            "layer.group_expiry",
        ),
        (
            &["check-config", "--set", "server.ping_interval=\"often\""],
            &[],
            "ping_interval",
        ),
        (
            &["check-config"],
            &[("GATEWAY_LAYER_HOSTS", "[\"http://x\"]")],
            "layer.hosts",
        ),
        (&["check-config"], &[], "auth.jwt_secret"),
    ];
    for (args, env, key) in cases {
        let output = gateway(args, env);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(key), "{key} named in: {stderr}");
    }
}

/// Cookie credentials ride along with sockets any site opens, so the
/// gateway refuses to start with them unless origins are listed or the
/// operator waives the allowlist by name.
#[test]
fn cookie_credentials_without_an_origin_allowlist_refuse_to_start() {
    let secret = [("GATEWAY_AUTH_JWT_SECRET", "s")];
    for credentials in [
        "auth.token_cookie=\"access_token\"",
        "auth.session_url=\"http://backend/gateway/whoami/\"",
    ] {
        for command in ["check-config", "serve"] {
            let output = gateway(&[command, "--set", credentials], &secret);
            let stderr = text(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{credentials}: {stderr}");
            assert!(stderr.contains("auth.allowed_origins"), "{stderr}");
        }
        for remedy in [
            "auth.allowed_origins=[\"https://app.example.com\"]",
            "auth.allow_any_origin_with_cookies=true",
        ] {
            let output = gateway(
                &["check-config", "--set", credentials, "--set", remedy],
                &secret,
            );
            assert!(output.status.success(), "{}", text(&output.stderr));
        }
    }
}

#[test]
fn the_config_file_can_come_from_gateway_config() {
    let dir = std::env::temp_dir().join(format!("gateway-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        "[layer]\nprefix = \"fromfile\"\n[auth]\njwt_secret = \"x\"\n",
    )
    .expect("write config");
    let path = file.to_string_lossy().into_owned();
    let output = gateway(&["check-config"], &[("GATEWAY_CONFIG", path.as_str())]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("prefix = \"fromfile\""));
}

#[test]
fn gen_token_mints_a_verifiable_access_token() {
    let output = gateway(
        &["gen-token", "--user-id", "42", "--lifetime", "60"],
        &[("GATEWAY_AUTH_JWT_SECRET", "s3")],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let token = text(&output.stdout).trim().to_string();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(b"s3"),
        &validation,
    )
    .expect("token verifies with the configured secret")
    .claims;
    assert_eq!(claims["user_id"], 42);
    assert_eq!(claims["token_type"], "access");
}
