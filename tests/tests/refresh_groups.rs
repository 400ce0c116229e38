//! An in-band token refresh brings the socket's extra groups in line with
//! the new token, by the handshake's own rule, on both channels_redis
//! layers with the real Python library publishing: a group the new token
//! drops stops delivering once the `refreshed` reply is out (the user's
//! group and other sockets of that group go on), a group it adds delivers
//! from then on, the socket's end leaves exactly the groups it holds, and a
//! token asking for a group no pattern allows, or naming another user, is
//! refused with 4003.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tests::tokens::{claims_for_user, mint};
use tests::{RedisServer, TokenIn, WsClient};

on_both_layers!(
    a_refresh_that_drops_a_group_stops_its_messages,
    a_refresh_that_adds_an_allowed_group_starts_its_messages,
    a_refresh_asking_for_a_group_no_pattern_allows_joins_nothing,
    a_refresh_for_another_user_is_still_refused,
);

fn token_with_groups(user: u32, groups: Value) -> String {
    let mut claims = claims_for_user(user, 300);
    claims["groups"] = groups;
    mint(SECRET, claims)
}

/// A gateway and publisher on `layer` whose tokens may grant `todo_list_*`.
async fn groups_stack(layer: &str) -> Stack {
    layer_stack(layer, |config| {
        config
            .line("auth", "groups_claim = \"groups\"")
            .line("auth", "allowed_groups = [\"todo_list_*\"]")
    })
    .await
}

async fn open(stack: &Stack, token: String) -> WsClient {
    WsClient::connect(
        &stack.gateway.ws_url("/ws/notifications/"),
        TokenIn::Query(token),
    )
    .await
    .expect("socket opens")
}

async fn refresh(socket: &mut WsClient, token: String) -> Value {
    socket
        .send_text(&json!({"type": "refresh", "token": token}).to_string())
        .await
        .expect("refresh sent");
    socket.recv_json(WAIT).await.expect("refresh answered")
}

/// What Redis holds for `group`: its members on the core layer, the
/// subscribers of its channel on the pub/sub layer.
async fn in_redis(redis: &RedisServer, layer: &str, group: &str) -> usize {
    if layer == "core" {
        group_members(redis, group).await.len()
    } else {
        redis
            .cmd(&["PUBSUB", "NUMSUB", &format!("asgi__group__{group}")])
            .await
            .expect("numsub")
            .get(1)
            .and_then(|count| count.parse().ok())
            .unwrap_or(0)
    }
}

async fn wait_in_redis(redis: &RedisServer, layer: &str, group: &str, expected: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = in_redis(redis, layer, group).await;
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{layer}: {group} has {found} entries in Redis, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_refresh_that_drops_a_group_stops_its_messages(layer: &str) {
    let mut stack = groups_stack(layer).await;
    let mut socket = open(
        &stack,
        token_with_groups(1, json!(["todo_list_1", "todo_list_2"])),
    )
    .await;
    let mut neighbour = open(&stack, token_with_groups(2, json!(["todo_list_1"]))).await;
    stack.notify("todo_list_1", r#""before""#).await;
    expect_frame(&mut socket, r#"{"message": "before"}"#).await;
    expect_frame(&mut neighbour, r#"{"message": "before"}"#).await;

    let reply = refresh(&mut socket, token_with_groups(1, json!(["todo_list_2"]))).await;
    assert_eq!(reply["type"], "refreshed", "{layer}: {reply}");
    if layer == "core" {
        // The leave is written before the reply, not eventually.
        assert_eq!(
            group_members(&stack.redis, "todo_list_1").await.len(),
            1,
            "core: only the neighbour is left in todo_list_1"
        );
    }

    // Published in this order, so a frame of the dropped group would come
    // before the user's own.
    stack.notify("todo_list_1", r#""dropped""#).await;
    stack.notify("user_1", r#""own group""#).await;
    stack.notify("todo_list_2", r#""kept""#).await;
    expect_frame(&mut socket, r#"{"message": "own group"}"#).await;
    expect_frame(&mut socket, r#"{"message": "kept"}"#).await;
    socket
        .expect_silence(Duration::from_millis(300))
        .await
        .expect("nothing of the dropped group");
    expect_frame(&mut neighbour, r#"{"message": "dropped"}"#).await;
    // One local member of todo_list_1 is left: the pub/sub layer keeps
    // its subscription.
    assert_eq!(in_redis(&stack.redis, layer, "todo_list_1").await, 1);

    assert!(
        stack
            .gateway
            .log_text()
            .contains("groups changed by a token refresh"),
        "{layer}: the change is logged"
    );
    socket.close().await.expect("close");
    wait_in_redis(&stack.redis, layer, "todo_list_2", 0).await;
    wait_in_redis(&stack.redis, layer, "user_1", 0).await;
    assert_eq!(in_redis(&stack.redis, layer, "todo_list_1").await, 1);
}

async fn a_refresh_that_adds_an_allowed_group_starts_its_messages(layer: &str) {
    let mut stack = groups_stack(layer).await;
    let mut socket = open(&stack, token_with_groups(3, json!([]))).await;
    stack.notify("todo_list_5", r#""not yet""#).await;
    socket
        .expect_silence(Duration::from_millis(300))
        .await
        .expect("not a member yet");

    let reply = refresh(&mut socket, token_with_groups(3, json!(["todo_list_5"]))).await;
    assert_eq!(reply["type"], "refreshed", "{layer}: {reply}");
    // Joined before the reply, as the handshake joins before the 101.
    assert_eq!(in_redis(&stack.redis, layer, "todo_list_5").await, 1);
    if layer == "core" {
        assert_eq!(
            group_members(&stack.redis, "todo_list_5").await,
            group_members(&stack.redis, "user_3").await,
            "core: the same channel (and lane) as before the refresh"
        );
    }
    stack.notify("todo_list_5", r#""now""#).await;
    expect_frame(&mut socket, r#"{"message": "now"}"#).await;
    stack.notify("user_3", r#""own group""#).await;
    expect_frame(&mut socket, r#"{"message": "own group"}"#).await;

    // The socket's end leaves the group it joined on the refresh too.
    socket.close().await.expect("close");
    wait_in_redis(&stack.redis, layer, "todo_list_5", 0).await;
    wait_in_redis(&stack.redis, layer, "user_3", 0).await;
}

async fn a_refresh_asking_for_a_group_no_pattern_allows_joins_nothing(layer: &str) {
    let stack = groups_stack(layer).await;
    for (user, groups) in [
        (4, json!(["todo_list_1", "admin"])),
        (5, json!(["todo_list_1", "user_9"])),
    ] {
        let mut socket = open(&stack, token_with_groups(user, json!(["todo_list_1"]))).await;
        socket
            .send_text(
                &json!({"type": "refresh", "token": token_with_groups(user, groups.clone())})
                    .to_string(),
            )
            .await
            .expect("refresh sent");
        assert_eq!(
            socket.wait_close(WAIT).await.expect("closed"),
            4003,
            "{layer}: {groups} is refused as at the handshake"
        );
        for group in ["admin", "user_9"] {
            assert_eq!(
                in_redis(&stack.redis, layer, group).await,
                0,
                "{layer}: {group}"
            );
        }
        wait_in_redis(&stack.redis, layer, "todo_list_1", 0).await;
        wait_in_redis(&stack.redis, layer, &format!("user_{user}"), 0).await;
    }
}

async fn a_refresh_for_another_user_is_still_refused(layer: &str) {
    let mut stack = groups_stack(layer).await;
    let mut socket = open(&stack, token_with_groups(7, json!(["todo_list_1"]))).await;
    socket
        .send_text(
            &json!({"type": "refresh", "token": token_with_groups(8, json!(["todo_list_1"]))})
                .to_string(),
        )
        .await
        .expect("refresh sent");
    assert_eq!(
        socket.wait_close(WAIT).await.expect("closed"),
        4003,
        "{layer}: a refresh cannot switch users"
    );
    assert_eq!(in_redis(&stack.redis, layer, "user_8").await, 0);
    wait_in_redis(&stack.redis, layer, "user_7", 0).await;
    let mut other = connect(&stack.gateway, 8).await;
    stack.notify("user_8", r#""own""#).await;
    expect_frame(&mut other, r#"{"message": "own"}"#).await;
}
