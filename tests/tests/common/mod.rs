//! What the gateway's integration tests share: a stack of a private
//! redis-server, the real gateway binary and a real channels_redis publisher,
//! plus helpers to connect sockets and read metrics. It must not hold test
//! cases.

#![allow(dead_code, unused_macros)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::gateway_bin;
use tests::python::JsonText;
use tests::tokens::{claims_for_user, mint};
use tests::{
    GatewayConfig, GatewayLauncher, GatewayProcess, LayerDriver, RedisServer, TokenIn, WsClient,
};

/// `on_both_layers!(a_test, …)`: for each async `fn a_test(layer: &str)`,
/// a module `a_test` with the tests `core` and `pubsub` running it on that
/// layer.
macro_rules! on_both_layers {
    ($($test:ident),+ $(,)?) => {
        $(
            mod $test {
                #[tokio::test]
                async fn core() {
                    super::$test("core").await
                }
                #[tokio::test]
                async fn pubsub() {
                    super::$test("pubsub").await
                }
            }
        )+
    };
}

pub const SECRET: &str = "test-secret";
pub const WAIT: Duration = Duration::from_secs(5);

pub struct Stack {
    pub redis: RedisServer,
    pub gateway: GatewayProcess,
    pub publisher: LayerDriver,
}

pub async fn start_gateway(config: &mut GatewayConfig) -> GatewayProcess {
    GatewayLauncher::new()
        .bin(gateway_bin!())
        .start_config(config)
        .await
        .expect("gateway starts and becomes ready")
}

pub async fn publisher_for(redis: &RedisServer, extra: Value) -> LayerDriver {
    layer_publisher("core", &[redis], extra).await
}

/// A real channels_redis layer (`core` or `pubsub`) over `hosts`, in order,
/// with extra CONFIG entries.
pub async fn layer_publisher(layer: &str, hosts: &[&RedisServer], extra: Value) -> LayerDriver {
    let urls: Vec<String> = hosts.iter().map(|redis| redis.url()).collect();
    let mut config = json!({ "hosts": urls });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    LayerDriver::start(layer, config)
        .await
        .expect("python channels_redis publisher starts")
}

pub async fn stack_with(configure: impl FnOnce(GatewayConfig) -> GatewayConfig) -> Stack {
    layer_stack("core", configure).await
}

/// A stack whose gateway and publisher both run `layer` (`core` or `pubsub`).
pub async fn layer_stack(
    layer: &str,
    configure: impl FnOnce(GatewayConfig) -> GatewayConfig,
) -> Stack {
    let redis = RedisServer::start().expect("redis starts");
    let mut config = configure(
        GatewayConfig::new(&redis.url())
            .expect("config")
            .backend(layer),
    );
    let gateway = start_gateway(&mut config).await;
    let publisher = layer_publisher(layer, &[&redis], json!({})).await;
    Stack {
        redis,
        gateway,
        publisher,
    }
}

pub async fn stack() -> Stack {
    stack_with(|config| config).await
}

impl Stack {
    /// `group_send(group, {"type": "send_notification", "message": <message JSON>})`
    /// through the real channels_redis.
    pub async fn notify(&mut self, group: &str, message: &str) {
        self.publisher
            .group_send(group, notification(message))
            .await
            .expect("group_send");
    }
}

/// `count` back-to-back group_sends through the real channels_redis, each
/// message `{"n": i}`.
pub async fn send_sequence(publisher: &mut LayerDriver, group: &str, count: u64) {
    publisher
        .group_send_seq(
            group,
            count,
            json!({"type": "send_notification", "message": {"n": 0}}),
            "n",
        )
        .await
        .expect("group_send_seq");
}

/// Reads `{"message": {"n": 0}}` … `{"n": count - 1}` in order.
pub async fn expect_sequence(socket: &mut WsClient, count: u64) {
    for expected in 0..count {
        let frame = socket.recv_json(WAIT).await.expect("frame of the sequence");
        assert_eq!(
            frame["message"]["n"],
            json!(expected),
            "complete and in order"
        );
    }
}

/// Polls `/readyz` until it is (or is not) 200, within `limit`; returns how
/// long that took.
pub async fn wait_ready(gateway: &tests::GatewayProcess, ready: bool, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = gateway.admin_get("/readyz").await.map(|(status, _)| status);
        if (status.ok() == Some(200)) == ready {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "readiness did not become {ready} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn expect_frame(socket: &mut WsClient, expected: &str) {
    assert_eq!(socket.recv_text(WAIT).await.expect("frame"), expected);
}

pub fn token(user: impl std::fmt::Display) -> String {
    mint(SECRET, claims_for_user(user, 300))
}

pub async fn connect(gateway: &GatewayProcess, user: impl std::fmt::Display) -> WsClient {
    WsClient::connect(
        &gateway.ws_url("/ws/notifications/"),
        TokenIn::Query(token(user)),
    )
    .await
    .expect("socket opens")
}

pub fn notification(message: &str) -> JsonText {
    JsonText::new(format!(
        r#"{{"type": "send_notification", "message": {message}}}"#
    ))
}

pub async fn metric(gateway: &GatewayProcess, line_prefix: &str) -> f64 {
    let (status, body) = gateway.admin_get("/metrics").await.expect("metrics answer");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(line_prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The metric's value once it reaches `expected`, or what it is after
/// `WAIT` (counters the gateway updates right after an event may trail
/// what a client already saw of it by a preemption).
pub async fn wait_for_metric(gateway: &GatewayProcess, line_prefix: &str, expected: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(gateway, line_prefix).await;
        if value >= expected || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn group_members(redis: &RedisServer, group: &str) -> Vec<String> {
    redis
        .cmd(&["ZRANGE", &format!("asgi:group:{group}"), "0", "-1"])
        .await
        .expect("zrange")
}

/// The threads the gateway's receivers said they run on (its `receiving`
/// log lines), once at least `expected` have said so.
pub async fn receiver_threads(gateway: &GatewayProcess, expected: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let threads: Vec<String> = gateway
            .log_text()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| entry["message"] == "receiving")
            .filter_map(|entry| entry["thread"].as_str().map(str::to_string))
            .collect();
        if threads.len() >= expected || Instant::now() >= deadline {
            return threads;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `thread` is the receiver's own thread (`relay`): neither the
/// main thread nor one of actix-server's socket workers (arbiter threads),
/// where handshakes run.
pub fn is_relay_thread(thread: &str) -> bool {
    thread == "relay"
}
