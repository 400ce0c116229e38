//! Django session auth without JWTs: the handshake's session cookie is
//! forwarded to a real Django view (`tests/py/session_site.py`, real
//! sessions in SQLite) which names the user; answers are cached briefly; a
//! cookie of nobody gets 401 and a backend that cannot answer gets 503 —
//! never a socket.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tests::gateway_proc::http_get;
use tests::procs::{free_port, repo_root, scratch_dir};
use tests::{GatewayConfig, RedisServer, TokenIn, WsClient};

/// The Django site, ended by PID on drop.
struct Site {
    child: Child,
    address: String,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_site() -> Site {
    let dir = scratch_dir("session-site").expect("dir");
    let db = dir.join("db.sqlite3");
    let script = repo_root().join("tests/py/session_site.py");
    let python = tests::python_bin();
    let migrated = Command::new(&python)
        .arg(&script)
        .arg(&db)
        .args(["migrate", "--noinput"])
        .stdout(Stdio::null())
        .status()
        .expect("migrate runs");
    assert!(migrated.success());
    let address = format!("127.0.0.1:{}", free_port().expect("port"));
    let child = Command::new(&python)
        .arg(&script)
        .arg(&db)
        .args(["runserver", &address, "--noreload"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("django starts");
    let site = Site { child, address };
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(&site.address, "/calls/", Duration::from_secs(2))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "django answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    site
}

async fn session_of(site: &Site, user: u32) -> String {
    let (status, body) = http_get(
        &site.address,
        &format!("/login/{user}/"),
        Duration::from_secs(5),
    )
    .await
    .expect("login");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    answer["sessionid"]
        .as_str()
        .expect("session key")
        .to_string()
}

async fn whoami_calls(site: &Site) -> u64 {
    let (_, body) = http_get(&site.address, "/calls/", Duration::from_secs(5))
        .await
        .expect("calls");
    serde_json::from_str::<serde_json::Value>(&body).expect("json")["count"]
        .as_u64()
        .unwrap_or(0)
}

fn with_session(key: &str) -> TokenIn {
    TokenIn::Cookie {
        name: "sessionid".into(),
        token: key.into(),
    }
}

#[tokio::test]
async fn a_django_session_cookie_authenticates_and_failures_never_open_the_door() {
    let site = start_site().await;
    let redis = RedisServer::start().expect("redis");
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        .line(
            "auth",
            format!("session_url = \"http://{}/gateway/whoami/\"", site.address),
        )
        .line("auth", r#"allowed_origins = ["https://app.example.com"]"#)
        .line("auth", "session_cache_ttl = \"30s\"");
    let gateway = start_gateway(&mut config).await;
    let url = gateway.ws_url("/ws/notifications/");

    let key = session_of(&site, 77).await;
    let calls_before = whoami_calls(&site).await;
    let mut socket = WsClient::connect(&url, with_session(&key))
        .await
        .expect("session socket");
    let mut publisher = publisher_for(&redis, json!({})).await;
    publisher
        .group_send("user_77", notification(r#""via session""#))
        .await
        .expect("group_send");
    expect_frame(&mut socket, r#"{"message": "via session"}"#).await;
    for _ in 0..3 {
        let mut again = WsClient::connect(&url, with_session(&key))
            .await
            .expect("cached");
        let _ = again.close().await;
    }
    assert_eq!(
        whoami_calls(&site).await - calls_before,
        1,
        "answers are cached"
    );

    let nobody = WsClient::connect(&url, with_session("not-a-session-key")).await;
    assert_eq!(nobody.err().and_then(|error| error.status()), Some(401));
    assert!(
        !gateway.log_text().contains(&key),
        "the session cookie never reaches the log"
    );

    let fresh = session_of(&site, 78).await;
    drop(site);
    let down = WsClient::connect(&url, with_session(&fresh)).await;
    assert_eq!(
        down.err().and_then(|error| error.status()),
        Some(503),
        "a backend that cannot answer gives 503, never a socket"
    );
}
