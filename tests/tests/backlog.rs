//! A backlog is the gateway's, not the client's: while the gateway is
//! stalled (SIGSTOP here; CPU starvation or a slow Redis reply in
//! production), the real channels_redis keeps publishing, and when the
//! gateway resumes it finds thousands of messages at once. A client that
//! reads as fast as it can must receive every one, in order, and must not
//! be closed as too slow — on both layers and both WebSocket drivers, for
//! one user with a deep backlog and for 1,000 users with a shallow one.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tests::Signal;
use tests::{GatewayConfig, RedisServer, WsClient};

/// How long the gateway is stalled while Django publishes.
const STALL: Duration = Duration::from_secs(1);

struct Backlog {
    layer: &'static str,
    driver: &'static str,
    users: u64,
    per_user: u64,
    /// Django's default `capacity` (100 per queue key) and no
    /// `channel_capacity`, instead of room for the whole backlog.
    django_defaults: bool,
}

async fn a_stalled_gateway_delivers_its_whole_backlog(case: Backlog) {
    let Backlog {
        layer,
        driver,
        users,
        per_user,
        django_defaults,
    } = case;
    let redis = RedisServer::start().expect("redis");
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        .backend(layer)
        .line("server", format!("websocket_driver = \"{driver}\""));
    let mut gateway = start_gateway(&mut config).await;
    // The sender's capacity would drop most of a backlog this deep before
    // the gateway could see it; what is queued must arrive.
    let capacity = match layer {
        "core" if !django_defaults => json!({ "channel_capacity": { "specific.gw-*": 100_000 } }),
        _ => json!({}),
    };
    let mut publisher = layer_publisher(layer, &[&redis], capacity).await;
    let first_user = 30_000;
    let mut sockets: Vec<WsClient> = Vec::new();
    for user in first_user..first_user + users {
        sockets.push(connect(&gateway, user).await);
    }
    let groups: Vec<String> = (first_user..first_user + users)
        .map(|user| format!("user_{user}"))
        .collect();

    gateway.signal(Signal::Stop).expect("SIGSTOP");
    let stalled = tokio::time::Instant::now();
    publisher
        .group_send_rounds(
            &groups,
            per_user,
            json!({"type": "send_notification", "message": {"n": 0}}),
            "n",
        )
        .await
        .expect("group_send while the gateway is stalled");
    tokio::time::sleep_until(stalled + STALL).await;
    gateway.signal(Signal::Cont).expect("SIGCONT");

    for (index, socket) in sockets.iter_mut().enumerate() {
        for expected in 0..per_user {
            let frame = socket.recv_json(WAIT).await.unwrap_or_else(|error| {
                panic!(
                    "{layer}/{driver}: socket {index} got {expected} of {per_user}, then {error} \
                     (closed with {:?})",
                    socket.close_code()
                )
            });
            assert_eq!(
                frame["message"]["n"],
                json!(expected),
                "{layer}/{driver}: socket {index} in order"
            );
        }
    }
    if let Some(socket) = sockets.first_mut() {
        socket
            .expect_silence(Duration::from_millis(300))
            .await
            .unwrap_or_else(|error| panic!("{layer}/{driver}: still open: {error}"));
    }
    let slow = metric(&gateway, "gateway_drops_total{reason=\"slow_consumer\"} ").await;
    assert_eq!(slow, 0.0, "{layer}/{driver}: no socket blamed as slow");
    assert_eq!(
        metric(&gateway, "gateway_sockets_open ").await,
        users as f64,
        "{layer}/{driver}: every socket still open"
    );
}

/// Deeper than a socket's outbox (256 frames) several times over, and
/// deeper than one pop (512 payloads).
const DEEP: u64 = 3_000;

#[tokio::test]
async fn core_direct_one_user_deep_backlog() {
    a_stalled_gateway_delivers_its_whole_backlog(Backlog {
        layer: "core",
        driver: "direct",
        users: 1,
        per_user: DEEP,
        django_defaults: false,
    })
    .await;
}

#[tokio::test]
async fn core_actix_ws_one_user_deep_backlog() {
    a_stalled_gateway_delivers_its_whole_backlog(Backlog {
        layer: "core",
        driver: "actix-ws",
        users: 1,
        per_user: DEEP,
        django_defaults: false,
    })
    .await;
}

#[tokio::test]
async fn pubsub_direct_one_user_deep_backlog() {
    a_stalled_gateway_delivers_its_whole_backlog(Backlog {
        layer: "pubsub",
        driver: "direct",
        users: 1,
        per_user: DEEP,
        django_defaults: false,
    })
    .await;
}

#[tokio::test]
async fn pubsub_actix_ws_one_user_deep_backlog() {
    a_stalled_gateway_delivers_its_whole_backlog(Backlog {
        layer: "pubsub",
        driver: "actix-ws",
        users: 1,
        per_user: DEEP,
        django_defaults: false,
    })
    .await;
}

#[tokio::test]
async fn core_direct_1000_users_backlog() {
    a_stalled_gateway_delivers_its_whole_backlog(Backlog {
        layer: "core",
        driver: "direct",
        users: 1_000,
        per_user: 5,
        django_defaults: false,
    })
    .await;
}

#[tokio::test]
async fn core_actix_ws_1000_users_backlog() {
    a_stalled_gateway_delivers_its_whole_backlog(Backlog {
        layer: "core",
        driver: "actix-ws",
        users: 1_000,
        per_user: 5,
        django_defaults: false,
    })
    .await;
}

#[tokio::test]
async fn pubsub_direct_1000_users_backlog() {
    a_stalled_gateway_delivers_its_whole_backlog(Backlog {
        layer: "pubsub",
        driver: "direct",
        users: 1_000,
        per_user: 5,
        django_defaults: false,
    })
    .await;
}

#[tokio::test]
async fn pubsub_actix_ws_1000_users_backlog() {
    a_stalled_gateway_delivers_its_whole_backlog(Backlog {
        layer: "pubsub",
        driver: "actix-ws",
        users: 1_000,
        per_user: 5,
        django_defaults: false,
    })
    .await;
}

/// Django's defaults: `capacity` 100 per queue key, nothing for the
/// gateway's channels. 1,200 users each get a message while the gateway is
/// stalled: one key per process would have held 100 of them and
/// channels_redis would have dropped the rest; spread over the process's
/// 32 keys (38 at most in one, for these user ids) every one arrives.
#[tokio::test]
async fn core_django_default_capacity_holds_a_burst_over_many_users() {
    a_stalled_gateway_delivers_its_whole_backlog(Backlog {
        layer: "core",
        driver: "direct",
        users: 1_200,
        per_user: 1,
        django_defaults: true,
    })
    .await;
}
