//! Authorisation of extra groups: a token may ask for groups beyond
//! `user_<id>` in a configured claim, and gets only those an allowlist
//! pattern admits; nobody joins a group their token does not grant.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tests::tokens::{claims_for_user, mint};
use tests::{GatewayConfig, RedisServer, TokenIn, WsClient};

fn token_with_groups(user: u32, groups: serde_json::Value) -> String {
    let mut claims = claims_for_user(user, 300);
    claims["groups"] = groups;
    mint(SECRET, claims)
}

#[tokio::test]
async fn granted_and_allowed_groups_are_joined_and_others_refused() {
    let redis = RedisServer::start().expect("redis");
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        .line("auth", "groups_claim = \"groups\"")
        .line("auth", "allowed_groups = [\"todo_list_*\"]");
    let gateway = start_gateway(&mut config).await;
    let mut publisher = publisher_for(&redis, json!({})).await;
    let url = gateway.ws_url("/ws/notifications/");

    let mut member = WsClient::connect(
        &url,
        TokenIn::Query(token_with_groups(1, json!(["todo_list_7"]))),
    )
    .await
    .expect("allowed group");
    let mut outsider = connect(&gateway, 2).await;
    publisher
        .group_send("todo_list_7", notification(r#""list changed""#))
        .await
        .expect("group_send");
    expect_frame(&mut member, r#"{"message": "list changed"}"#).await;
    outsider
        .expect_silence(Duration::from_millis(300))
        .await
        .expect("a token without the grant receives nothing");
    publisher
        .group_send("user_1", notification(r#""own group too""#))
        .await
        .expect("group_send");
    expect_frame(&mut member, r#"{"message": "own group too"}"#).await;

    for groups in [
        json!(["admin"]),
        json!(["todo_list_7", "user_2"]),
        json!("todo_list_7"),
        json!([7]),
    ] {
        let refused =
            WsClient::connect(&url, TokenIn::Query(token_with_groups(3, groups.clone()))).await;
        let status = refused.err().and_then(|error| error.status());
        assert!(
            status == Some(403) || status == Some(401),
            "{groups}: refused, got {status:?}"
        );
    }
    assert!(
        metric(
            &gateway,
            "gateway_connects_total{result=\"forbidden_group\"} "
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn without_a_groups_claim_configured_token_groups_are_ignored() {
    let mut stack = stack().await;
    let mut socket = WsClient::connect(
        &stack.gateway.ws_url("/ws/notifications/"),
        TokenIn::Query(token_with_groups(5, json!(["todo_list_9"]))),
    )
    .await
    .expect("opens");
    stack.notify("todo_list_9", r#""not for you""#).await;
    socket
        .expect_silence(Duration::from_millis(300))
        .await
        .expect("no extra group joined");
}
