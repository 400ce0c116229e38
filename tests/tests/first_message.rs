//! First-message authentication: a browser that keeps its token out of the
//! URL opens the socket without one and sends `{"token": ...}` first; it is
//! joined (and receives) only after that, and a wrong, missing or late token
//! closes the socket with 4001.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tests::{GatewayConfig, RedisServer, TokenIn, WsClient};

async fn gateway_with_first_message() -> (RedisServer, tests::GatewayProcess) {
    let redis = RedisServer::start().expect("redis");
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        .line("auth", "first_message_timeout = \"1s\"");
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
