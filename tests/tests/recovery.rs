//! Recovery of missed notifications (`layer.recovery`), with Django
//! publishing through the real channels_redis, unchanged: a client that
//! comes back with its last position (`?recover=<position>`) gets every
//! message it missed, from whichever gateway process it reaches, in order
//! and exactly once, then live messages; a client away past the window, or
//! with a position that is no position, is told `recovered: false`; and the
//! replay members the gateway adds to groups go away once nobody needs them.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tests::{GatewayConfig, GatewayProcess, LayerDriver, RedisServer, Signal, TokenIn, WsClient};

/// Django's `expiry` for the tests that wait for the window to pass.
const SHORT_EXPIRY: u64 = 3;

fn recovering(config: GatewayConfig) -> GatewayConfig {
    config.line("layer", "recovery = true")
}

async fn recovering_gateway(redis: &RedisServer, extra: &[(&str, &str)]) -> GatewayProcess {
    recovering_gateway_with(redis, |config| {
        extra.iter().fold(config, |config, (section, line)| {
            config.line(*section, *line)
        })
    })
    .await
}

async fn recovering_gateway_with(
    redis: &RedisServer,
    configure: impl FnOnce(GatewayConfig) -> GatewayConfig,
) -> GatewayProcess {
    let mut config = configure(recovering(
        GatewayConfig::new(&redis.url()).expect("config"),
    ));
    start_gateway(&mut config).await
}

/// Opens a recovering socket (`recover=` and the position, if any).
async fn connect_recovering(
    gateway: &GatewayProcess,
    user: u32,
    position: Option<&str>,
) -> WsClient {
    let url = gateway.ws_url(&format!(
        "/ws/notifications/?recover={}",
        position.unwrap_or("")
    ));
    WsClient::connect(&url, TokenIn::Query(token(user)))
        .await
        .expect("socket opens")
}

/// What a recovering socket read up to and including its status frame.
struct Recovered {
    messages: Vec<Value>,
    status: Value,
}

async fn read_recovery(socket: &mut WsClient) -> Recovered {
    let mut messages = Vec::new();
    loop {
        let frame = socket
            .recv_json(WAIT)
            .await
            .expect("replayed frame or status");
        if frame["type"] == "recovery" {
            return Recovered {
                messages,
                status: frame,
            };
        }
        messages.push(frame);
    }
}

/// `count` numbered notifications `{"n": start..}` to `group`, one every
/// `gap`.
async fn publish_numbered(
    publisher: &mut LayerDriver,
    group: &str,
    start: u64,
    count: u64,
    gap: Duration,
) {
    for n in start..start + count {
        publisher
            .group_send(group, notification(&json!({ "n": n }).to_string()))
            .await
            .expect("group_send");
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
}

fn numbers(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|frame| frame["message"]["n"].as_u64().expect("numbered message"))
        .collect()
}

fn position_of(frame: &Value) -> String {
    frame["position"]
        .as_str()
        .expect("a positioned frame")
        .to_string()
}

#[tokio::test]
async fn a_client_away_for_ten_seconds_gets_everything_from_another_process() {
    let redis = RedisServer::start().expect("redis starts");
    let first = recovering_gateway(&redis, &[]).await;
    let second = recovering_gateway(&redis, &[]).await;
    let mut django = publisher_for(&redis, json!({})).await;

    let mut socket = connect_recovering(&first, 42, None).await;
    let start = read_recovery(&mut socket).await;
    assert_eq!(start.status["recovered"], true, "{:?}", start.status);
    assert!(start.messages.is_empty());
    // The position a client holds before it has received anything.
    let position = position_of(&start.status);
    socket.close().await.expect("close");

    // Away for 10 s while Django publishes 100 messages.
    let away = Instant::now();
    publish_numbered(&mut django, "user_42", 0, 100, Duration::from_millis(99)).await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(away.elapsed())).await;

    let mut back = connect_recovering(&second, 42, Some(&position)).await;
    let recovered = read_recovery(&mut back).await;
    assert_eq!(numbers(&recovered.messages), (0..100).collect::<Vec<_>>());
    assert_eq!(recovered.status["replayed"], 100);
    // The replay key holds Django's capacity (100): a 101st message would
    // have been refused, and nothing records whether one was, so
    // completeness cannot be promised (docs/recovery.md).
    assert_eq!(
        recovered.status["recovered"], false,
        "{:?}",
        recovered.status
    );
    let last = recovered.messages.last().expect("replayed");
    assert_eq!(recovered.status["position"], last["position"]);

    publish_numbered(&mut django, "user_42", 100, 2, Duration::ZERO).await;
    let live: Vec<Value> = vec![
        back.recv_json(WAIT).await.expect("live"),
        back.recv_json(WAIT).await.expect("live"),
    ];
    assert_eq!(numbers(&live), vec![100, 101], "then live, no duplicate");
    assert!(position_of(&live[0]) > position_of(last), "positions grow");
    back.expect_silence(Duration::from_millis(500))
        .await
        .expect("nothing more");
    assert_eq!(
        metric(
            &second,
            "gateway_recoveries_total{result=\"window_exceeded\"} "
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&second, "gateway_messages_replayed_total ").await,
        100.0
    );
}

#[tokio::test]
async fn a_recovery_within_the_window_and_below_capacity_is_complete() {
    let redis = RedisServer::start().expect("redis starts");
    let first = recovering_gateway(&redis, &[]).await;
    let second = recovering_gateway(&redis, &[]).await;
    let mut django = publisher_for(&redis, json!({})).await;

    let mut socket = connect_recovering(&first, 9, None).await;
    let position = position_of(&read_recovery(&mut socket).await.status);
    socket.close().await.expect("close");
    publish_numbered(&mut django, "user_9", 0, 50, Duration::from_millis(20)).await;

    let mut back = connect_recovering(&second, 9, Some(&position)).await;
    let recovered = read_recovery(&mut back).await;
    assert_eq!(numbers(&recovered.messages), (0..50).collect::<Vec<_>>());
    assert_eq!(
        recovered.status["recovered"], true,
        "{:?}",
        recovered.status
    );
    assert_eq!(recovered.status["replayed"], 50);
    // Coming back again with the newest position replays nothing.
    back.close().await.expect("close");
    let newest = recovered.status["position"].as_str().expect("position");
    let mut again = connect_recovering(&first, 9, Some(newest)).await;
    let nothing = read_recovery(&mut again).await;
    assert!(nothing.messages.is_empty());
    assert_eq!(nothing.status["recovered"], true);
    assert_eq!(
        metric(&first, "gateway_recoveries_total{result=\"recovered\"} ").await,
        1.0
    );
}

/// Messages published while the socket connects, replays and goes live
/// arrive once each, in order: the replay and the live path overlap and the
/// outbox drops live copies of what was replayed.
#[tokio::test]
async fn no_gap_and_no_duplicate_between_replay_and_live() {
    let redis = RedisServer::start().expect("redis starts");
    let gateway = recovering_gateway(&redis, &[]).await;
    let mut django = publisher_for(&redis, json!({})).await;
    let mut socket = connect_recovering(&gateway, 5, None).await;
    let mut position = position_of(&read_recovery(&mut socket).await.status);
    socket.close().await.expect("close");

    let publishing = tokio::spawn(async move {
        publish_numbered(&mut django, "user_5", 0, 90, Duration::from_millis(5)).await;
        django
    });
    let mut received: Vec<u64> = Vec::new();
    // Reconnect over and over while Django publishes.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let mut socket = connect_recovering(&gateway, 5, Some(&position)).await;
        let recovered = read_recovery(&mut socket).await;
        received.extend(numbers(&recovered.messages));
        position = recovered.status["position"]
            .as_str()
            .expect("position")
            .to_string();
        while let Ok(frame) = socket.recv_json(Duration::from_millis(60)).await {
            received.push(frame["message"]["n"].as_u64().expect("numbered"));
            position = position_of(&frame);
        }
        socket.close().await.expect("close");
    }
    let _django = publishing.await.expect("publisher");
    let mut last = connect_recovering(&gateway, 5, Some(&position)).await;
    received.extend(numbers(&read_recovery(&mut last).await.messages));
    assert_eq!(received, (0..90).collect::<Vec<_>>(), "each once, in order");
}

#[tokio::test]
async fn a_client_away_longer_than_the_window_is_told_so_then_gets_live_messages() {
    let redis = RedisServer::start().expect("redis starts");
    let gateway = recovering_gateway_with(&redis, |config| config.expiry(SHORT_EXPIRY)).await;
    let mut django = publisher_for(&redis, json!({ "expiry": SHORT_EXPIRY })).await;

    let mut socket = connect_recovering(&gateway, 3, None).await;
    let position = position_of(&read_recovery(&mut socket).await.status);
    socket.close().await.expect("close");
    publish_numbered(&mut django, "user_3", 0, 3, Duration::ZERO).await;
    // Past the window: the next group_send trims those three.
    tokio::time::sleep(Duration::from_secs(SHORT_EXPIRY + 2)).await;
    publish_numbered(&mut django, "user_3", 3, 2, Duration::ZERO).await;

    let mut back = connect_recovering(&gateway, 3, Some(&position)).await;
    let recovered = read_recovery(&mut back).await;
    assert_eq!(
        recovered.status["recovered"], false,
        "{:?}",
        recovered.status
    );
    assert_eq!(
        numbers(&recovered.messages),
        vec![3, 4],
        "what the window kept"
    );
    publish_numbered(&mut django, "user_3", 5, 1, Duration::ZERO).await;
    let live = back.recv_json(WAIT).await.expect("live");
    assert_eq!(live["message"]["n"], 5);
    assert_eq!(
        metric(
            &gateway,
            "gateway_recoveries_total{result=\"window_exceeded\"} "
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn bad_positions_get_their_documented_answers_and_nobody_elses_messages() {
    let redis = RedisServer::start().expect("redis starts");
    let gateway = recovering_gateway(&redis, &[]).await;
    let mut django = publisher_for(&redis, json!({})).await;
    // Another user's traffic, and a position taken from it.
    let mut other = connect_recovering(&gateway, 8, None).await;
    read_recovery(&mut other).await;
    let mut mine = connect_recovering(&gateway, 6, None).await;
    let mine_start = position_of(&read_recovery(&mut mine).await.status);
    mine.close().await.expect("close");
    publish_numbered(&mut django, "user_8", 1000, 1, Duration::ZERO).await;
    let foreign = position_of(&other.recv_json(WAIT).await.expect("other's message"));
    publish_numbered(&mut django, "user_6", 0, 2, Duration::ZERO).await;
    publish_numbered(&mut django, "user_8", 1001, 2, Duration::ZERO).await;
    publish_numbered(&mut django, "user_6", 2, 1, Duration::ZERO).await;

    // Garbage, and a position from the future: nothing replayed, false.
    let future = {
        let seconds = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64())
            + 3600.0;
        format!("{:016x}00000000", seconds.to_bits())
    };
    for (position, label) in [
        ("not-a-position", "garbage"),
        ("%27%3B--", "garbage"),
        ("ffffffffffffffffffffffff", "garbage"),
        (future.as_str(), "future"),
    ] {
        let mut socket = connect_recovering(&gateway, 6, Some(position)).await;
        let recovered = read_recovery(&mut socket).await;
        assert!(recovered.messages.is_empty(), "{label}: nothing replayed");
        assert_eq!(recovered.status["recovered"], false, "{label}");
        assert_eq!(recovered.status["replayed"], 0, "{label}");
        socket.close().await.expect("close");
    }
    assert_eq!(
        metric(
            &gateway,
            "gateway_recoveries_total{result=\"bad_position\"} "
        )
        .await,
        4.0
    );

    // Another user's position is only a point in time: this user's own
    // messages after it, never the other's.
    let mut socket = connect_recovering(&gateway, 6, Some(&foreign)).await;
    let recovered = read_recovery(&mut socket).await;
    assert_eq!(numbers(&recovered.messages), vec![0, 1, 2]);
    socket.close().await.expect("close");

    // A stale position (long before the window): what the window holds,
    // and false.
    let stale = format!("{:016x}00000000", 1_000_000_000f64.to_bits());
    let mut socket = connect_recovering(&gateway, 6, Some(&stale)).await;
    let recovered = read_recovery(&mut socket).await;
    assert_eq!(numbers(&recovered.messages), vec![0, 1, 2]);
    assert_eq!(recovered.status["recovered"], false);
    socket.close().await.expect("close");

    // Its own start position: everything, complete.
    let mut socket = connect_recovering(&gateway, 6, Some(&mine_start)).await;
    let recovered = read_recovery(&mut socket).await;
    assert_eq!(numbers(&recovered.messages), vec![0, 1, 2]);
    assert_eq!(recovered.status["recovered"], true);
}

/// A replay longer than the socket's outbound queue is written as the
/// connection takes it, not queued: no 4004.
#[tokio::test]
async fn a_replay_longer_than_the_outbound_queue_is_paced_not_closed() {
    let redis = RedisServer::start().expect("redis starts");
    let gateway = recovering_gateway(&redis, &[("server", "outbound_queue = 8")]).await;
    let mut django = publisher_for(&redis, json!({})).await;
    let mut socket = connect_recovering(&gateway, 4, None).await;
    let position = position_of(&read_recovery(&mut socket).await.status);
    socket.close().await.expect("close");
    publish_numbered(&mut django, "user_4", 0, 80, Duration::ZERO).await;

    let mut back = connect_recovering(&gateway, 4, Some(&position)).await;
    let recovered = read_recovery(&mut back).await;
    assert_eq!(numbers(&recovered.messages), (0..80).collect::<Vec<_>>());
    publish_numbered(&mut django, "user_4", 80, 1, Duration::ZERO).await;
    assert_eq!(
        back.recv_json(WAIT).await.expect("live")["message"]["n"],
        80
    );
    assert_eq!(back.close_code(), None, "still open");
}

/// Without `recover`, frames stay byte for byte the consumer's, recovery
/// on or off; with recovery off, `recover=` is ignored.
#[tokio::test]
async fn frames_stay_the_consumers_unless_a_client_asks() {
    let redis = RedisServer::start().expect("redis starts");
    let on = recovering_gateway(&redis, &[]).await;
    let mut off_config = GatewayConfig::new(&redis.url()).expect("config");
    let off = start_gateway(&mut off_config).await;
    let mut django = publisher_for(&redis, json!({})).await;
    let mut plain = connect(&on, 2).await;
    let mut ignored = connect_recovering(&off, 2, None).await;
    publish_numbered(&mut django, "user_2", 0, 1, Duration::ZERO).await;
    expect_frame(&mut plain, r#"{"message": {"n": 0}}"#).await;
    expect_frame(&mut ignored, r#"{"message": {"n": 0}}"#).await;
}

/// The replay member a group gets stays while a gateway socket is in the
/// group and goes once the group has been idle for two windows; a crashed
/// process's groups count as idle from the reap.
#[tokio::test]
async fn replay_members_go_once_nobody_needs_them() {
    let redis = RedisServer::start().expect("redis starts");
    let configure = |config: GatewayConfig| {
        config
            .expiry(SHORT_EXPIRY)
            .line("layer", r#"liveness_timeout = "3s""#)
    };
    let keeper = recovering_gateway_with(&redis, configure).await;
    let mut doomed = recovering_gateway_with(&redis, configure).await;

    let mut socket = connect_recovering(&keeper, 11, None).await;
    read_recovery(&mut socket).await;
    let mut crashed = connect_recovering(&doomed, 12, None).await;
    read_recovery(&mut crashed).await;
    let replay_members = |members: Vec<String>| {
        members
            .into_iter()
            .filter(|member| member.starts_with("gw.replay."))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        replay_members(group_members(&redis, "user_11").await),
        vec!["gw.replay.user_11"]
    );
    assert_eq!(
        replay_members(group_members(&redis, "user_12").await),
        vec!["gw.replay.user_12"]
    );

    socket.close().await.expect("close");
    doomed.signal(Signal::Kill).expect("SIGKILL");
    // Kept for a client coming back within the window...
    tokio::time::sleep(Duration::from_secs(SHORT_EXPIRY)).await;
    assert_eq!(
        replay_members(group_members(&redis, "user_11").await).len(),
        1
    );
    // ...gone within two windows, a reap and a sweep.
    let deadline = Instant::now() + Duration::from_secs(2 * SHORT_EXPIRY + 20);
    loop {
        let left: HashMap<&str, usize> = [
            (
                "user_11",
                replay_members(group_members(&redis, "user_11").await).len(),
            ),
            (
                "user_12",
                replay_members(group_members(&redis, "user_12").await).len(),
            ),
        ]
        .into_iter()
        .collect();
        if left.values().all(|count| *count == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "replay members left: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(metric(&keeper, "gateway_replay_members_removed_total ").await >= 2.0);
}

/// Users in the rolling restart, and what Django publishes to them.
const ROLLING_USERS: u32 = 500;
const ROLLING_RATE: u64 = 200;
const ROLLING_ROUNDS: u64 = 8;

/// One browser of the rolling restart: reads, keeps its position, and when
/// its socket closes waits the drain's hint and reconnects, with its
/// position, to the gateway it was not on (or either, whichever answers).
async fn rolling_client(
    user: u32,
    urls: std::sync::Arc<std::sync::Mutex<[String; 2]>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<u64>, u32) {
    use std::sync::atomic::Ordering;
    let mut received = Vec::new();
    let mut position = String::new();
    let mut on = (user % 2) as usize;
    let mut reconnects = 0;
    'connect: loop {
        let url = format!(
            "{}/ws/notifications/?recover={position}",
            urls.lock().expect("urls")[on].clone()
        );
        let mut socket = match WsClient::connect(&url, TokenIn::Query(token(user))).await {
            Ok(socket) => socket,
            Err(_) => {
                on = 1 - on;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'connect;
            }
        };
        loop {
            match socket.recv_json(Duration::from_millis(200)).await {
                Ok(frame) => {
                    if frame["type"] == "recovery" {
                        position = position_of_status(&frame);
                    } else {
                        received.push(frame["message"]["n"].as_u64().expect("numbered"));
                        position = frame["position"].as_str().expect("position").to_string();
                    }
                }
                Err(_) if socket.close_code().is_none() && !stop.load(Ordering::Relaxed) => {
                    // A quiet moment, or a connection that just went: a
                    // ping tells.
                    if socket.send_ping(b"alive").await.is_ok() {
                        continue;
                    }
                    break;
                }
                Err(_) => break,
            }
        }
        if stop.load(Ordering::Relaxed) {
            return (received, reconnects);
        }
        let hint: u64 = socket
            .close_reason()
            .and_then(|reason| reason.rsplit("retry_after_ms=").next()?.parse().ok())
            .unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(hint)).await;
        on = 1 - on;
        reconnects += 1;
    }
}

fn position_of_status(frame: &Value) -> String {
    frame["position"]
        .as_str()
        .expect("status position")
        .to_string()
}

#[tokio::test]
async fn a_rolling_restart_loses_nothing_and_repeats_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let redis = RedisServer::start().expect("redis starts");
    let drain = [
        ("server", r#"drain_delay = "200ms""#),
        ("server", r#"drain_window = "2s""#),
        ("server", r#"drain_reconnect_jitter = "1s""#),
        ("server", r#"shutdown_timeout = "8s""#),
    ];
    let mut configs: Vec<GatewayConfig> = (0..2)
        .map(|_| {
            let mut config = recovering(GatewayConfig::new(&redis.url()).expect("config"));
            for (section, line) in drain {
                config = config.line(section, line);
            }
            config
        })
        .collect();
    let mut gateways = Vec::new();
    for config in &mut configs {
        gateways.push(start_gateway(config).await);
    }
    let base = |gateway: &GatewayProcess| {
        gateway
            .ws_url("/ws/notifications/")
            .trim_end_matches("/ws/notifications/")
            .to_string()
    };
    let urls = Arc::new(std::sync::Mutex::new([
        base(&gateways[0]),
        base(&gateways[1]),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..ROLLING_USERS)
        .map(|user| tokio::spawn(rolling_client(user, urls.clone(), stop.clone())))
        .collect();
    // Every client is in its group before Django starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis
        .cmd(&["KEYS", "asgi:group:user_*"])
        .await
        .expect("keys")
        .len()
        < ROLLING_USERS as usize
    {
        assert!(Instant::now() < deadline, "clients connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut django = publisher_for(&redis, json!({})).await;
    let groups: Vec<String> = (0..ROLLING_USERS)
        .map(|user| format!("user_{user}"))
        .collect();
    let publishing = tokio::spawn(async move {
        // 200 msgs/s: a tenth of the users every 250 ms, round after round.
        let slice = (ROLLING_RATE / 4) as usize;
        let started = Instant::now();
        let mut sent = 0u64;
        for round in 0..ROLLING_ROUNDS {
            for users in groups.chunks(slice) {
                django
                    .group_send_rounds_from(
                        users,
                        round,
                        1,
                        json!({"type": "send_notification", "message": {"n": 0}}),
                        "n",
                    )
                    .await
                    .expect("group_send");
                sent += users.len() as u64;
                let due = Duration::from_secs_f64(sent as f64 / ROLLING_RATE as f64);
                tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
            }
        }
        django
    });

    // Restart one process, then the other, while Django publishes.
    for index in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let gateway = &mut gateways[index];
        gateway.signal(Signal::Term).expect("SIGTERM");
        let exit = gateway
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("drained gateway exits");
        assert!(exit.success(), "{exit:?}");
        gateways[index] = start_gateway(&mut configs[index]).await;
        urls.lock().expect("urls")[index] = base(&gateways[index]);
    }
    let _django = publishing.await.expect("publisher");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    let expected: Vec<u64> = (0..ROLLING_ROUNDS).collect();
    let mut reconnected = 0;
    for (user, client) in clients.into_iter().enumerate() {
        let (received, reconnects) = client.await.expect("client");
        assert_eq!(
            received, expected,
            "user {user}: every message once, in order"
        );
        reconnected += reconnects;
    }
    assert!(
        reconnected >= ROLLING_USERS,
        "every socket was drained once at least ({reconnected} reconnects)"
    );
}

/// With sharded hosts, every recovering gateway keeps its queue keys on the
/// first host, where the replay keys are: one clock reading scores both
/// copies of a message, so positions agree; groups stay sharded.
#[tokio::test]
async fn recovery_works_over_three_sharded_hosts() {
    let redis: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start().expect("redis starts"))
        .collect();
    let urls: Vec<String> = redis.iter().map(RedisServer::url).collect();
    let sharded = |config: GatewayConfig| recovering(config.hosts(urls.clone()));
    let mut first_config = sharded(GatewayConfig::new(&urls[0]).expect("config"));
    let first = start_gateway(&mut first_config).await;
    let mut second_config = sharded(GatewayConfig::new(&urls[0]).expect("config"));
    let second = start_gateway(&mut second_config).await;
    let hosts: Vec<&RedisServer> = redis.iter().collect();
    let mut django = layer_publisher("core", &hosts, json!({})).await;

    let users = [21u32, 22, 23, 24];
    let mut positions = Vec::new();
    for user in users {
        let mut socket = connect_recovering(&first, user, None).await;
        let start = read_recovery(&mut socket).await;
        publish_numbered(&mut django, &format!("user_{user}"), 0, 1, Duration::ZERO).await;
        let live = socket.recv_json(WAIT).await.expect("live message");
        assert_eq!(live["message"]["n"], 0);
        assert!(position_of(&live) > position_of(&start.status));
        positions.push(position_of(&live));
        socket.close().await.expect("close");
    }
    for user in users {
        publish_numbered(&mut django, &format!("user_{user}"), 1, 30, Duration::ZERO).await;
    }
    for (user, position) in users.iter().zip(&positions) {
        let mut back = connect_recovering(&second, *user, Some(position)).await;
        let recovered = read_recovery(&mut back).await;
        assert_eq!(
            numbers(&recovered.messages),
            (1..31).collect::<Vec<_>>(),
            "user {user}"
        );
        assert_eq!(
            recovered.status["recovered"], true,
            "{:?}",
            recovered.status
        );
        publish_numbered(&mut django, &format!("user_{user}"), 31, 1, Duration::ZERO).await;
        let live = back.recv_json(WAIT).await.expect("live after the replay");
        assert_eq!(live["message"]["n"], 31, "user {user}");
    }
    // The replay keys are all on the first host.
    let on_first = redis[0]
        .cmd(&["KEYS", "asgigw.replay*"])
        .await
        .expect("keys");
    assert_eq!(on_first.len(), users.len(), "{on_first:?}");
    for other in &redis[1..] {
        assert!(other
            .cmd(&["KEYS", "asgigw.replay*"])
            .await
            .expect("keys")
            .is_empty());
    }
}

/// A client that keeps its token out of the URL (first-message
/// authentication) recovers the same way: `authenticated`, the replay,
/// the status.
#[tokio::test]
async fn first_message_authentication_recovers_too() {
    let redis = RedisServer::start().expect("redis starts");
    let gateway = recovering_gateway(&redis, &[("auth", r#"first_message_timeout = "2s""#)]).await;
    let mut django = publisher_for(&redis, json!({})).await;
    let mut socket = connect_recovering(&gateway, 14, None).await;
    let position = position_of(&read_recovery(&mut socket).await.status);
    socket.close().await.expect("close");
    publish_numbered(&mut django, "user_14", 0, 3, Duration::ZERO).await;

    let url = gateway.ws_url(&format!("/ws/notifications/?recover={position}"));
    let mut back = WsClient::connect(&url, TokenIn::None)
        .await
        .expect("socket opens");
    back.send_text(&json!({"token": token(14)}).to_string())
        .await
        .expect("token sent");
    let authenticated = back.recv_json(WAIT).await.expect("authenticated");
    assert_eq!(authenticated["type"], "authenticated");
    let recovered = read_recovery(&mut back).await;
    assert_eq!(numbers(&recovered.messages), vec![0, 1, 2]);
    assert_eq!(recovered.status["recovered"], true);
}
