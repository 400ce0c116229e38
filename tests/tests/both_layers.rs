//! Every behaviour that must hold on both channels_redis layers — core
//! (`RedisChannelLayer`) and pub/sub (`RedisPubSubChannelLayer`) — including
//! several sharded hosts and Redis faults, each run once per layer with the
//! real Python library publishing.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tests::{GatewayConfig, GatewayLauncher, RedisServer, Signal};

on_both_layers!(
    delivers_to_every_socket_of_the_user_only,
    a_thousand_messages_arrive_in_order,
    subscriptions_or_memberships_follow_the_sockets,
    several_hosts_shard_like_channels_redis,
    delivery_resumes_after_redis_restarts_empty,
    delivery_resumes_after_the_gateways_connections_are_killed,
    a_stalled_redis_makes_it_unready_and_then_delivery_resumes,
    redis_down_at_start_then_ready_when_it_comes,
    sigterm_leaves_nothing_behind_in_redis,
    canaries_come_back_through_redis,
    concurrent_connects_share_round_trips,
    the_backend_can_disconnect_a_group,
    receiving_and_routing_run_on_the_relay_thread,
);

/// The receiver (and its Redis connection) runs on the relay thread, which
/// runs nothing else: a message is popped, routed and written there, and no
/// handshake (on the socket threads) waits in line with it.
async fn receiving_and_routing_run_on_the_relay_thread(layer: &str) {
    let mut stack = layer_stack(layer, |config| config).await;
    let mut socket = connect(&stack.gateway, 42).await;
    stack.notify("user_42", r#""on one thread""#).await;
    expect_frame(&mut socket, r#"{"message": "on one thread"}"#).await;
    let threads = receiver_threads(&stack.gateway, 1).await;
    assert_eq!(threads.len(), 1, "{layer}: one receiver: {threads:?}");
    assert!(
        threads.iter().all(|thread| is_relay_thread(thread)),
        "{layer}: receiver threads {threads:?}"
    );
}

async fn delivers_to_every_socket_of_the_user_only(layer: &str) {
    let mut stack = layer_stack(layer, |config| config).await;
    let mut alice = vec![
        connect(&stack.gateway, 42).await,
        connect(&stack.gateway, 42).await,
    ];
    let mut bob = connect(&stack.gateway, 7).await;
    stack
        .notify("user_42", r#""You have a task due soon!""#)
        .await;
    for socket in &mut alice {
        expect_frame(socket, r#"{"message": "You have a task due soon!"}"#).await;
    }
    bob.expect_silence(Duration::from_millis(300))
        .await
        .expect("bob receives nothing");
}

async fn a_thousand_messages_arrive_in_order(layer: &str) {
    let mut stack = layer_stack(layer, |config| config).await;
    let mut socket = connect(&stack.gateway, 1).await;
    send_sequence(&mut stack.publisher, "user_1", 1000).await;
    expect_sequence(&mut socket, 1000).await;
}

/// What Redis holds for a user's sockets: group members on the core layer,
/// subscribed channels on the pub/sub layer.
async fn presence(redis: &RedisServer, layer: &str, user: u32) -> usize {
    if layer == "core" {
        group_members(redis, &format!("user_{user}")).await.len()
    } else {
        redis
            .cmd(&["PUBSUB", "NUMSUB", &format!("asgi__group__user_{user}")])
            .await
            .expect("numsub")
            .get(1)
            .and_then(|count| count.parse().ok())
            .unwrap_or(0)
    }
}

async fn wait_for_presence(redis: &RedisServer, layer: &str, user: u32, expected: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = presence(redis, layer, user).await;
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "user {user}: {found} entries in Redis, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn subscriptions_or_memberships_follow_the_sockets(layer: &str) {
    let stack = layer_stack(layer, |config| config).await;
    let mut first = connect(&stack.gateway, 5).await;
    // Present before the upgrade answer, not eventually.
    assert_eq!(presence(&stack.redis, layer, 5).await, 1);
    let mut second = connect(&stack.gateway, 5).await;
    let expected_with_two = if layer == "core" { 2 } else { 1 };
    assert_eq!(presence(&stack.redis, layer, 5).await, expected_with_two);
    first.close().await.expect("close");
    // Core: one member left. Pub/sub: still subscribed while a socket remains.
    wait_for_presence(&stack.redis, layer, 5, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(presence(&stack.redis, layer, 5).await, 1);
    second.close().await.expect("close");
    wait_for_presence(&stack.redis, layer, 5, 0).await;
}

async fn several_hosts_shard_like_channels_redis(layer: &str) {
    let hosts: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start().expect("redis"))
        .collect();
    let host_refs: Vec<&RedisServer> = hosts.iter().collect();
    let urls: Vec<String> = hosts.iter().map(RedisServer::url).collect();
    let mut config = GatewayConfig::new(&urls[0])
        .expect("config")
        .backend(layer)
        .hosts(urls);
    let gateway = start_gateway(&mut config).await;
    let mut publisher = layer_publisher(layer, &host_refs, json!({})).await;
    let mut sockets = Vec::new();
    for user in 0..24 {
        sockets.push(connect(&gateway, user).await);
    }
    for user in 0..24 {
        publisher
            .group_send(
                &format!("user_{user}"),
                notification(&format!("\"to {user}\"")),
            )
            .await
            .expect("group_send");
    }
    for (user, socket) in sockets.iter_mut().enumerate() {
        expect_frame(socket, &format!("{{\"message\": \"to {user}\"}}")).await;
    }
    // The groups really are spread over the three hosts.
    let mut hosts_used = 0;
    for redis in &hosts {
        let pattern = if layer == "core" {
            "asgi:group:*"
        } else {
            "asgi__group__*"
        };
        let found = if layer == "core" {
            redis.cmd(&["KEYS", pattern]).await.expect("keys")
        } else {
            redis
                .cmd(&["PUBSUB", "CHANNELS", pattern])
                .await
                .expect("channels")
        };
        if !found.is_empty() {
            hosts_used += 1;
        }
    }
    assert_eq!(hosts_used, 3, "24 groups land on all three hosts");
}

/// Publishes until a frame arrives, returning how long after `since` that was.
async fn publish_until_delivered(
    publisher: &mut tests::LayerDriver,
    socket: &mut tests::WsClient,
    user: u32,
    since: Instant,
    limit: Duration,
) -> Duration {
    let mut attempt = 0;
    loop {
        assert!(
            since.elapsed() < limit,
            "delivery did not resume within {limit:?}"
        );
        attempt += 1;
        let _ = publisher
            .group_send(
                &format!("user_{user}"),
                notification(&format!("\"attempt {attempt}\"")),
            )
            .await;
        if socket.recv_text(Duration::from_millis(100)).await.is_ok() {
            return since.elapsed();
        }
    }
}

async fn delivery_resumes_after_redis_restarts_empty(layer: &str) {
    let mut stack = layer_stack(layer, |config| config).await;
    let mut socket = connect(&stack.gateway, 8).await;
    stack.redis.restart_empty().expect("restart");
    let restarted = Instant::now();
    let mut publisher = layer_publisher(layer, &[&stack.redis], json!({})).await;
    let took = publish_until_delivered(
        &mut publisher,
        &mut socket,
        8,
        restarted,
        Duration::from_secs(2),
    )
    .await;
    eprintln!("{layer}: delivery resumed {took:?} after an empty restart");
    assert!(socket.close_code().is_none(), "no client reconnect");
}

async fn delivery_resumes_after_the_gateways_connections_are_killed(layer: &str) {
    let stack = layer_stack(layer, |config| config).await;
    let mut socket = connect(&stack.gateway, 9).await;
    for kind in ["normal", "pubsub"] {
        stack
            .redis
            .cmd(&["CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes"])
            .await
            .expect("client kill");
    }
    let killed = Instant::now();
    let mut publisher = layer_publisher(layer, &[&stack.redis], json!({})).await;
    let took = publish_until_delivered(
        &mut publisher,
        &mut socket,
        9,
        killed,
        Duration::from_secs(3),
    )
    .await;
    eprintln!("{layer}: delivery resumed {took:?} after CLIENT KILL");
    assert!(metric(&stack.gateway, "gateway_redis_reconnects_total ").await >= 1.0);
}

async fn a_stalled_redis_makes_it_unready_and_then_delivery_resumes(layer: &str) {
    let mut stack = layer_stack(layer, |config| config).await;
    let mut socket = connect(&stack.gateway, 10).await;
    stack.redis.pause().expect("SIGSTOP");
    let stalled = Instant::now();
    if layer == "core" {
        // The receiver's blocking pop stops returning: unready within its
        // staleness bound.
        let took = wait_ready(&stack.gateway, false, Duration::from_secs(5)).await;
        eprintln!("core: unready {took:?} into the stall");
    }
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stalled.elapsed())).await;
    stack.redis.resume().expect("SIGCONT");
    let resumed = Instant::now();
    wait_ready(&stack.gateway, true, Duration::from_secs(10)).await;
    let mut publisher = layer_publisher(layer, &[&stack.redis], json!({})).await;
    let took = publish_until_delivered(
        &mut publisher,
        &mut socket,
        10,
        resumed,
        Duration::from_secs(10),
    )
    .await;
    eprintln!("{layer}: delivery resumed {took:?} after a 5 s stall");
    assert!(socket.close_code().is_none());
}

async fn redis_down_at_start_then_ready_when_it_comes(layer: &str) {
    let mut redis = RedisServer::start().expect("redis");
    redis.stop().expect("stopped before the gateway starts");
    let config = GatewayConfig::new(&redis.url())
        .expect("config")
        .backend(layer);
    let gateway = GatewayLauncher::new()
        .bin(tests::gateway_bin!())
        .spawn_only(&config.to_toml())
        .expect("gateway spawns");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok((status, _)) = gateway.admin_get("/readyz").await {
            break status;
        }
        assert!(Instant::now() < deadline, "admin listener answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "unready without Redis");
    // A socket cannot be promised delivery yet: refused, not accepted.
    let refused = tests::WsClient::connect(
        &gateway.ws_url("/ws/notifications/"),
        tests::TokenIn::Query(token(12)),
    )
    .await;
    assert_eq!(refused.err().and_then(|error| error.status()), Some(503));

    redis.restart_empty().expect("redis comes up");
    let took = wait_ready(&gateway, true, Duration::from_secs(10)).await;
    eprintln!("{layer}: ready {took:?} after Redis came up");
    let mut socket = connect(&gateway, 12).await;
    let mut publisher = layer_publisher(layer, &[&redis], json!({})).await;
    publisher
        .group_send("user_12", notification(r#""hello""#))
        .await
        .expect("group_send");
    expect_frame(&mut socket, r#"{"message": "hello"}"#).await;
    let log = gateway.log_text();
    assert!(!log.contains("panicked"), "no panic while Redis was down");
}

async fn sigterm_leaves_nothing_behind_in_redis(layer: &str) {
    let mut stack = layer_stack(layer, |config| config).await;
    let mut sockets = Vec::new();
    for user in [20, 20, 21] {
        sockets.push(connect(&stack.gateway, user).await);
    }
    stack.gateway.signal(Signal::Term).expect("SIGTERM");
    for socket in &mut sockets {
        assert_eq!(socket.wait_close(WAIT).await.expect("closed"), 1001);
    }
    let status = stack
        .gateway
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits");
    assert!(status.success(), "{status:?}");
    for user in [20, 21] {
        assert_eq!(presence(&stack.redis, layer, user).await, 0, "user {user}");
    }
}

async fn canaries_come_back_through_redis(layer: &str) {
    let stack = layer_stack(layer, |config| config).await;
    let deadline = Instant::now() + WAIT;
    while metric(&stack.gateway, "gateway_canaries_received_total ").await < 2.0 {
        assert!(Instant::now() < deadline, "canaries arrive every second");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, body) = stack.gateway.admin_get("/metrics").await.expect("metrics");
    assert!(body.contains("gateway_canary_round_trip_seconds_count"));
}

/// Calls of one Redis command so far (`INFO commandstats`).
async fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let stats = redis
        .cmd(&["INFO", "commandstats"])
        .await
        .expect("commandstats")
        .join("\n");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

async fn concurrent_connects_share_round_trips(layer: &str) {
    let stack = layer_stack(layer, |config| config).await;
    let before_subscribes = command_calls(&stack.redis, "subscribe").await;
    let before_pipelines =
        metric(&stack.gateway, "gateway_membership_pipelines_total ").await as u64;
    let url = stack.gateway.ws_url("/ws/notifications/");
    let connects = (0..300).map(|user| {
        let url = url.clone();
        async move {
            tests::WsClient::connect(&url, tests::TokenIn::Query(token(1000 + user)))
                .await
                .expect("socket opens")
        }
    });
    let sockets = futures_util::future::join_all(connects).await;
    assert_eq!(sockets.len(), 300);
    // Round trips that carried the 300 joins: membership pipelines on the
    // core layer, SUBSCRIBE commands (each for many channels) on pub/sub.
    let round_trips = if layer == "core" {
        metric(&stack.gateway, "gateway_membership_pipelines_total ").await as u64
            - before_pipelines
    } else {
        command_calls(&stack.redis, "subscribe").await - before_subscribes
    };
    eprintln!("{layer}: 300 concurrent connects of distinct users took {round_trips} round trips");
    assert!(round_trips < 300, "{round_trips} round trips for 300 joins");
}

async fn the_backend_can_disconnect_a_group(layer: &str) {
    let mut stack = layer_stack(layer, |config| config).await;
    let mut second_config = GatewayConfig::new(&stack.redis.url())
        .expect("config")
        .backend(layer);
    let second = start_gateway(&mut second_config).await;
    let mut targets = vec![
        connect(&stack.gateway, 30).await,
        connect(&second, 30).await,
    ];
    let mut bystander = connect(&stack.gateway, 31).await;
    stack
        .publisher
        .group_send(
            "user_30",
            tests::python::JsonText::new(
                r#"{"type": "gateway.disconnect", "code": 4003, "reason": "password changed"}"#,
            ),
        )
        .await
        .expect("group_send");
    for socket in &mut targets {
        assert_eq!(socket.wait_close(WAIT).await.expect("closed"), 4003);
        assert_eq!(socket.close_reason().as_deref(), Some("password changed"));
    }
    stack.notify("user_31", r#""still here""#).await;
    expect_frame(&mut bystander, r#"{"message": "still here"}"#).await;

    let mut plain = connect(&stack.gateway, 32).await;
    stack
        .publisher
        .group_send(
            "user_32",
            tests::python::JsonText::new(r#"{"type": "gateway.disconnect"}"#),
        )
        .await
        .expect("group_send");
    assert_eq!(plain.wait_close(WAIT).await.expect("closed"), 4006);
}
