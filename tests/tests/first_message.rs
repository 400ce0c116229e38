//! First-message authentication: a browser that keeps its token out of the
//! URL opens the socket without one and sends `{"token": ...}` first; it is
//! joined (and receives) only after that, and a wrong, missing or late token
//! closes the socket with 4001. While it waits, the socket counts against
//! the process's and its address's limits, its pings against the inbound
//! budget, and a drain closes it with 1001.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tests::{GatewayConfig, RedisServer, Signal, TokenIn, WsClient};

async fn gateway_with_first_message() -> (RedisServer, tests::GatewayProcess) {
    gateway_waiting("1s", &[]).await
}

/// A gateway that waits `wait` for first-message tokens, with more lines.
async fn gateway_waiting(
    wait: &str,
    lines: &[(&str, &str)],
) -> (RedisServer, tests::GatewayProcess) {
    let redis = RedisServer::start().expect("redis");
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        .line("auth", format!("first_message_timeout = \"{wait}\""));
    for (section, line) in lines {
        config = config.line(*section, *line);
    }
    let gateway = start_gateway(&mut config).await;
    (redis, gateway)
}

#[tokio::test]
async fn a_token_sent_first_authenticates_and_joins() {
    let (redis, gateway) = gateway_with_first_message().await;
    let url = gateway.ws_url("/ws/notifications/");
    let mut socket = WsClient::connect(&url, TokenIn::None)
        .await
        .expect("upgraded");
    assert!(
        group_members(&redis, "user_8").await.is_empty(),
        "not joined before the token"
    );
    socket
        .send_text(&json!({"token": token(8)}).to_string())
        .await
        .expect("token sent");
    assert_eq!(
        socket.recv_json(WAIT).await.expect("answer")["type"],
        "authenticated"
    );
    assert_eq!(group_members(&redis, "user_8").await.len(), 1);
    let mut publisher = publisher_for(&redis, json!({})).await;
    publisher
        .group_send("user_8", notification(r#""in band""#))
        .await
        .expect("group_send");
    expect_frame(&mut socket, r#"{"message": "in band"}"#).await;
}

#[tokio::test]
async fn a_missing_wrong_or_late_token_closes_with_4001() {
    let (_redis, gateway) = gateway_with_first_message().await;
    let url = gateway.ws_url("/ws/notifications/");

    let mut silent = WsClient::connect(&url, TokenIn::None)
        .await
        .expect("upgraded");
    assert_eq!(
        silent
            .wait_close(Duration::from_secs(4))
            .await
            .expect("closed"),
        4001
    );

    let mut wrong = WsClient::connect(&url, TokenIn::None)
        .await
        .expect("upgraded");
    wrong
        .send_text(&json!({"token": "not.a.jwt"}).to_string())
        .await
        .expect("sent");
    assert_eq!(wrong.wait_close(WAIT).await.expect("closed"), 4001);

    let mut chatty = WsClient::connect(&url, TokenIn::None)
        .await
        .expect("upgraded");
    chatty.send_text(r#"{"type": "ping"}"#).await.expect("sent");
    assert_eq!(chatty.wait_close(WAIT).await.expect("closed"), 4001);
    assert!(
        metric(
            &gateway,
            "gateway_auth_failures_total{reason=\"missing_token\"} "
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn without_the_setting_a_handshake_without_token_gets_401() {
    let stack = stack().await;
    let refused =
        WsClient::connect(&stack.gateway.ws_url("/ws/notifications/"), TokenIn::None).await;
    assert_eq!(refused.err().and_then(|error| error.status()), Some(401));
}

#[tokio::test]
async fn waiting_sockets_count_against_the_process_and_address_limits() {
    let (_redis, gateway) = gateway_waiting(
        "10s",
        &[
            ("limits", "max_sockets = 2"),
            ("limits", "max_sockets_per_ip = 1"),
        ],
    )
    .await;
    let url = gateway.ws_url("/ws/notifications/");
    let mut waiting = WsClient::connect(&url, TokenIn::None)
        .await
        .expect("upgraded");
    // The address holds its one socket, though nobody is known yet.
    for credentials in [TokenIn::None, TokenIn::Query(token(5))] {
        let refused = WsClient::connect(&url, credentials).await;
        assert_eq!(refused.err().and_then(|error| error.status()), Some(429));
    }
    // Authenticating keeps the one share: no second one is needed.
    waiting
        .send_text(&json!({"token": token(5)}).to_string())
        .await
        .expect("token sent");
    assert_eq!(
        waiting.recv_json(WAIT).await.expect("answer")["type"],
        "authenticated"
    );
    assert_eq!(
        metric(&gateway, "gateway_connects_total{result=\"address_full\"} ").await,
        2.0
    );
    // Given back when it ends.
    waiting.close().await.expect("closed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = WsClient::connect(&url, TokenIn::None)
        .await
        .expect("the share came back");
    again.close().await.expect("closed");
}

#[tokio::test]
async fn waiting_sockets_hold_a_share_of_the_process_limit() {
    let (_redis, gateway) = gateway_waiting("10s", &[("limits", "max_sockets = 1")]).await;
    let url = gateway.ws_url("/ws/notifications/");
    let _waiting = WsClient::connect(&url, TokenIn::None)
        .await
        .expect("upgraded");
    let refused = WsClient::connect(&url, TokenIn::Query(token(6))).await;
    assert_eq!(refused.err().and_then(|error| error.status()), Some(503));
}

#[tokio::test]
async fn pings_before_the_token_are_spent_from_the_inbound_budget() {
    let (_redis, gateway) = gateway_waiting(
        "10s",
        &[
            ("limits", "inbound_rate = 1.0"),
            ("limits", "inbound_burst = 3.0"),
        ],
    )
    .await;
    let url = gateway.ws_url("/ws/notifications/");
    let mut pinging = WsClient::connect(&url, TokenIn::None)
        .await
        .expect("upgraded");
    for _ in 0..10 {
        if pinging.send_ping(b"p").await.is_err() {
            break;
        }
    }
    assert_eq!(pinging.wait_close(WAIT).await.expect("closed"), 4007);
    assert_eq!(
        metric(&gateway, "gateway_connects_total{result=\"inbound_rate\"} ").await,
        1.0
    );
}

#[tokio::test]
async fn a_drain_closes_waiting_sockets_with_1001_and_a_hint() {
    let (_redis, mut gateway) = gateway_waiting(
        "30s",
        &[
            ("server", "drain_delay = \"200ms\""),
            ("server", "drain_window = \"200ms\""),
            ("server", "drain_reconnect_jitter = \"2s\""),
        ],
    )
    .await;
    let url = gateway.ws_url("/ws/notifications/");
    let mut waiting = WsClient::connect(&url, TokenIn::None)
        .await
        .expect("upgraded");
    gateway.signal(Signal::Term).expect("SIGTERM");
    assert_eq!(waiting.wait_close(WAIT).await.expect("closed"), 1001);
    let reason = waiting.close_reason().unwrap_or_default();
    assert!(reason.contains("retry_after_ms="), "{reason}");
}
