//! Paced drain: on SIGTERM a process with 5,000 sockets turns unready at
//! once, refuses new sockets, closes the open ones in batches spread over the
//! drain window with a reconnect hint each, leaves nothing joined in Redis,
//! and exits 0 within its shutdown timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tests::{GatewayConfig, RedisServer, Signal};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const SOCKETS: usize = 5_000;
const DRAIN_DELAY: Duration = Duration::from_secs(1);
const DRAIN_WINDOW: Duration = Duration::from_secs(4);

/// When and how the server closed one socket.
struct Closed {
    at: Instant,
    code: u16,
    reason: String,
}

/// Opens a socket with small buffers and reads it until the server closes it.
async fn hold(url: String) -> tokio::task::JoinHandle<Option<Closed>> {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    let (mut stream, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .expect("socket opens");
    tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            if let Ok(Message::Close(frame)) = message {
                return frame.map(|frame| Closed {
                    at: Instant::now(),
                    code: frame.code.into(),
                    reason: frame.reason.to_string(),
                });
            }
            if message.is_err() {
                return None;
            }
        }
        None
    })
}

#[tokio::test]
async fn sigterm_drains_5000_sockets_in_paced_batches() {
    let redis = RedisServer::start().expect("redis");
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        .line("server", "drain_delay = \"1s\"")
        .line("server", "drain_window = \"4s\"")
        .line("server", "drain_reconnect_jitter = \"2s\"")
        .line("server", "shutdown_timeout = \"10s\"");
    let mut gateway = start_gateway(&mut config).await;
    let url = gateway.ws_url("/ws/notifications/");

    let mut readers = Vec::with_capacity(SOCKETS);
    for chunk in (0..SOCKETS).collect::<Vec<_>>().chunks(250) {
        let opened = futures_util::future::join_all(
            chunk
                .iter()
                .map(|index| hold(format!("{url}?token={}", token(index % 500)))),
        )
        .await;
        readers.extend(opened);
    }
    let joined = redis
        .cmd(&["KEYS", "asgi:group:user_*"])
        .await
        .expect("keys");
    assert_eq!(joined.len(), 500, "500 users' groups are in Redis");

    gateway.signal(Signal::Term).expect("SIGTERM");
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = gateway.admin_get("/readyz").await.expect("readyz");
    assert_eq!(status, 503, "unready at once");
    let refused = tests::WsClient::connect(&url, tests::TokenIn::Query(token(1))).await;
    assert_eq!(
        refused.err().and_then(|error| error.status()),
        Some(503),
        "new sockets are refused while draining"
    );

    let mut closes = Vec::with_capacity(SOCKETS);
    for reader in readers {
        closes.push(
            reader
                .await
                .expect("reader task")
                .expect("closed with a close frame"),
        );
    }
    let exit = gateway
        .wait_exit(Duration::from_secs(12))
        .await
        .expect("gateway exits");
    assert!(exit.success(), "{exit:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(11),
        "within the shutdown timeout"
    );

    for closed in &closes {
        assert_eq!(closed.code, 1001);
        let hint: u64 = closed
            .reason
            .rsplit("retry_after_ms=")
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("reconnect hint in {:?}", closed.reason));
        assert!(hint <= 2_000, "hint within the configured jitter: {hint}");
    }
    let first = closes.iter().map(|closed| closed.at).min().expect("closes");
    let last = closes.iter().map(|closed| closed.at).max().expect("closes");
    let spread = last - first;
    let began = first - signalled;
    eprintln!("drain: first close {began:?} after SIGTERM, closes spread over {spread:?}");
    assert!(
        began >= DRAIN_DELAY - Duration::from_millis(100),
        "the listener stayed up for drain_delay first"
    );
    assert!(
        spread >= DRAIN_WINDOW * 3 / 4 && spread <= DRAIN_WINDOW + Duration::from_secs(2),
        "closes spread over the window: {spread:?}"
    );
    // No 500 ms slice takes much more than its share (5000 / 8 = 625).
    let mut slices = [0usize; 16];
    for closed in &closes {
        let slice = ((closed.at - first).as_millis() / 500) as usize;
        if let Some(count) = slices.get_mut(slice) {
            *count += 1;
        }
    }
    let busiest = slices.iter().copied().max().unwrap_or(0);
    assert!(
        busiest <= 1_000,
        "no thundering herd: busiest 500 ms took {busiest}"
    );

    let left = redis.cmd(&["KEYS", "asgi:group:*"]).await.expect("keys");
    assert!(left.is_empty(), "nothing left joined: {left:?}");
}
