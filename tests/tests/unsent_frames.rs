//! Every frame a socket never sent is counted in `gateway_drops_total` by
//! why the socket closed: frames queued for a socket that is closed as too
//! slow (`slow_consumer`), by the backend (`backend_disconnect`), by the
//! drain at shutdown (`draining`), or that ends on its own account — the
//! client went away, or stopped answering (`socket_closed`). Clients here
//! never read (a tiny receive buffer), so frames stay queued in the
//! gateway; the real channels_redis publishes. For each case the gateway's
//! books balance: every payload it routed to the socket was delivered or
//! counted as a drop.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tests::{GatewayConfig, GatewayProcess, LayerDriver, RedisServer, Signal};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;

/// A frame's filler: big enough that a few dozen fill the kernel buffers.
const PAD: usize = 64 * 1024;

/// A socket whose client never reads: its receive buffer is as small as
/// the kernel allows, so what the gateway sends soon stays in its outbox.
async fn silent_client(gateway: &GatewayProcess, user: u32) -> WebSocketStream<TcpStream> {
    let addr = gateway.listen_addr().parse().expect("listen address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connects");
    let url = format!(
        "{}?token={}",
        gateway.ws_url("/ws/notifications/"),
        token(user)
    );
    let (client, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    client
}

/// What the gateway says it did with what it routed.
#[derive(Debug, Default, Clone)]
struct Books {
    routed: f64,
    delivered: f64,
    drops: HashMap<String, f64>,
}

impl Books {
    async fn read(gateway: &GatewayProcess) -> Books {
        let (_, body) = gateway.admin_get("/metrics").await.expect("metrics");
        let mut books = Books::default();
        for line in body.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if name == "gateway_redis_messages_total{layer=\"core\"}" {
                books.routed = value;
            } else if name == "gateway_frames_delivered_total" {
                books.delivered = value;
            } else if let Some(reason) = name
                .strip_prefix("gateway_drops_total{reason=\"")
                .and_then(|rest| rest.strip_suffix("\"}"))
            {
                books.drops.insert(reason.to_string(), value);
            }
        }
        books
    }

    /// The books once nothing moves any more (the receiver has routed
    /// what Redis held for the process). The receiver runs on a thread of
    /// its own, so a socket can end while payloads the receiver has counted
    /// as received are still being routed: read the books after both.
    async fn settled(gateway: &GatewayProcess) -> Books {
        let deadline = Instant::now() + WAIT;
        let mut last = Books::read(gateway).await;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let books = Books::read(gateway).await;
            let unchanged = books.routed == last.routed
                && books.delivered == last.delivered
                && books.all_dropped() == last.all_dropped();
            if unchanged || Instant::now() >= deadline {
                return books;
            }
            last = books;
        }
    }

    fn dropped(&self, reason: &str) -> f64 {
        self.drops.get(reason).copied().unwrap_or(0.0)
    }

    fn all_dropped(&self) -> f64 {
        self.drops.values().sum()
    }

    /// Frames routed since `before` that were neither delivered nor
    /// counted as dropped; `not_frames` payloads (a disconnect) carried none.
    fn unaccounted_since(&self, before: &Books, not_frames: f64) -> f64 {
        (self.routed - before.routed - not_frames)
            - (self.delivered - before.delivered)
            - (self.all_dropped() - before.all_dropped())
    }
}

/// `count` big frames to `group`, numbered.
async fn flood(publisher: &mut LayerDriver, group: &str, count: u64) {
    publisher
        .group_send_seq(
            group,
            count,
            json!({"type": "send_notification", "message": {"n": 0, "pad": "p".repeat(PAD)}}),
            "n",
        )
        .await
        .expect("group_send_seq");
}

/// Waits until `routed` payloads more than `before` reached the gateway.
async fn wait_routed(gateway: &GatewayProcess, before: &Books, routed: f64) {
    let deadline = Instant::now() + WAIT;
    while Books::read(gateway).await.routed < before.routed + routed {
        assert!(Instant::now() < deadline, "the gateway routed {routed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the gateway holds `open` sockets.
async fn wait_open(gateway: &GatewayProcess, open: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(gateway, "gateway_sockets_open ").await != open {
        assert!(Instant::now() < deadline, "{open} sockets open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(redis: &RedisServer, outbound_queue: usize) -> (GatewayProcess, LayerDriver) {
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        // Long enough for a flood to be published before a silent client
        // times out, short enough for the test.
        .ping_interval("5s")
        .pong_timeout("6s")
        .line("server", format!("outbound_queue = {outbound_queue}"))
        .line("server", "drain_delay = \"200ms\"")
        .line("server", "shutdown_timeout = \"20s\"")
        .line("layer", "canary_interval = \"0s\"");
    let gateway = start_gateway(&mut config).await;
    let publisher = publisher_for(
        redis,
        json!({ "channel_capacity": { "specific.gw-*": 10000 } }),
    )
    .await;
    (gateway, publisher)
}

#[tokio::test]
async fn frames_discarded_by_a_slow_consumer_close_are_counted_as_slow_consumer() {
    let redis = RedisServer::start().expect("redis");
    let (gateway, mut publisher) = start(&redis, 16).await;
    let client = silent_client(&gateway, 1).await;
    let before = Books::read(&gateway).await;
    flood(&mut publisher, "user_1", 300).await;
    // The close cannot be written to a client that does not read: the
    // socket ends after the pong timeout (and leaves its group: what is
    // published after that is not the gateway's to route).
    wait_open(&gateway, 0.0).await;
    let after = Books::settled(&gateway).await;
    assert!(after.routed > before.routed, "{after:?}");
    eprintln!("slow consumer: {after:?}");
    assert!(
        after.dropped("slow_consumer") - before.dropped("slow_consumer") >= 2.0,
        "the push that found it full and the frames its close discarded"
    );
    assert_eq!(after.unaccounted_since(&before, 0.0), 0.0, "{after:?}");
    drop(client);
}

#[tokio::test]
async fn frames_never_sent_are_counted_by_why_the_socket_closed() {
    let redis = RedisServer::start().expect("redis");
    let (mut gateway, mut publisher) = start(&redis, 4096).await;

    // The backend closes it with frames queued.
    let client = silent_client(&gateway, 2).await;
    let before = Books::read(&gateway).await;
    flood(&mut publisher, "user_2", 200).await;
    wait_routed(&gateway, &before, 200.0).await;
    publisher
        .group_send(
            "user_2",
            tests::python::JsonText::new(r#"{"type": "gateway.disconnect", "code": 4003}"#),
        )
        .await
        .expect("group_send");
    wait_routed(&gateway, &before, 201.0).await;
    wait_open(&gateway, 0.0).await;
    let after = Books::settled(&gateway).await;
    eprintln!("backend disconnect: {after:?}");
    assert!(after.dropped("backend_disconnect") >= 1.0, "{after:?}");
    assert_eq!(after.unaccounted_since(&before, 1.0), 0.0, "{after:?}");
    drop(client);

    // The client goes away with frames queued.
    let client = silent_client(&gateway, 3).await;
    let before = Books::read(&gateway).await;
    flood(&mut publisher, "user_3", 200).await;
    wait_routed(&gateway, &before, 200.0).await;
    drop(client);
    wait_open(&gateway, 0.0).await;
    let after = Books::settled(&gateway).await;
    eprintln!("client gone: {after:?}");
    assert!(
        after.dropped("socket_closed") - before.dropped("socket_closed") >= 1.0,
        "{after:?}"
    );
    assert_eq!(after.unaccounted_since(&before, 0.0), 0.0, "{after:?}");

    // The client stops answering: it times out with frames queued.
    let client = silent_client(&gateway, 4).await;
    let before = Books::read(&gateway).await;
    flood(&mut publisher, "user_4", 200).await;
    wait_routed(&gateway, &before, 200.0).await;
    wait_open(&gateway, 0.0).await;
    let after = Books::settled(&gateway).await;
    eprintln!("timed out: {after:?}");
    assert!(
        after.dropped("socket_closed") - before.dropped("socket_closed") >= 1.0,
        "{after:?}"
    );
    assert_eq!(after.unaccounted_since(&before, 0.0), 0.0, "{after:?}");
    drop(client);

    // The drain closes it with frames queued: counted at the close, while
    // the socket still waits to write it.
    let client = silent_client(&gateway, 5).await;
    let before = Books::read(&gateway).await;
    flood(&mut publisher, "user_5", 200).await;
    wait_routed(&gateway, &before, 200.0).await;
    gateway.signal(Signal::Term).expect("SIGTERM");
    let deadline = Instant::now() + WAIT;
    let drained = loop {
        let books = Books::read(&gateway).await;
        if books.dropped("draining") > 0.0 {
            break books;
        }
        assert!(Instant::now() < deadline, "draining drops counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("draining: {drained:?}");
    assert_eq!(
        metric(&gateway, "gateway_sockets_open ").await,
        1.0,
        "counted before the socket's task ended"
    );
    let status = gateway
        .wait_exit(Duration::from_secs(25))
        .await
        .expect("exits");
    assert!(status.success(), "{status:?}");
    drop(client);
}
