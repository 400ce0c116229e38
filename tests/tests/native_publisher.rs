//! The native publisher (`tests::publisher`) against the REAL Python
//! channels_redis: for the same group and message both must leave Redis in the
//! same state — same keys, same members once the 12 random prefix bytes are
//! stripped (the msgpack bodies byte-identical), same TTLs, the same group
//! expiry trim and capacity drops, the same host for every key when sharding
//! over two servers — and the gateway must deliver identical frames from both.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use shared_proto::{Message, PayloadCodec};
use tests::gateway_bin;
use tests::publisher::{NativePublisher, PublisherConfig};
use tests::python::JsonText;
use tests::tokens::{claims_for_user, mint};
use tests::{GatewayConfig, GatewayLauncher, LayerDriver, RedisServer, TokenIn, WsClient};

const PREFIX_LEN: usize = PayloadCodec::CORE_LAYER_PREFIX_LENGTH;

/// One key as the test compares it: members with the random prefix removed
/// (sorted, since members of one score order by their random bytes), TTL.
#[derive(Debug, PartialEq, Eq)]
struct KeyState {
    members: Vec<Vec<u8>>,
    ttl: i64,
}

async fn snapshot(redis: &RedisServer, pattern: &str) -> BTreeMap<String, KeyState> {
    let keys = redis.cmd(&["KEYS", pattern]).await.expect("KEYS");
    let mut out = BTreeMap::new();
    for key in keys {
        if key.contains(":group:") {
            continue;
        }
        let members = redis
            .cmd_value(&["ZRANGE", key.as_str(), "0", "-1"])
            .await
            .expect("ZRANGE")
            .into_bytes_list()
            .expect("members");
        let mut bodies: Vec<Vec<u8>> = members
            .iter()
            .map(|m| {
                assert!(m.len() > PREFIX_LEN, "member shorter than the prefix");
                m[PREFIX_LEN..].to_vec()
            })
            .collect();
        bodies.sort();
        let ttl = redis
            .cmd_value(&["TTL", key.as_str()])
            .await
            .expect("TTL")
            .as_int()
            .expect("integer TTL");
        out.insert(
            key,
            KeyState {
                members: bodies,
                ttl,
            },
        );
    }
    out
}

/// Deletes every queue key (`asgi*` but not the group sets).
async fn clear_queues(redis: &RedisServer) {
    for key in redis.cmd(&["KEYS", "asgi*"]).await.expect("KEYS") {
        if !key.contains(":group:") {
            redis.cmd(&["DEL", key.as_str()]).await.expect("DEL");
        }
    }
}

/// The message Python would be handed, decoded from Python's own serialisation
/// so that key order and number types are exactly Python's.
async fn message_from_python(driver: &mut LayerDriver, json_text: &str) -> Message {
    let payload = driver
        .serialize(JsonText::new(json_text))
        .await
        .expect("python serialize");
    PayloadCodec::default()
        .decode(&payload)
        .expect("python payload decodes")
}

async fn python(redis: &RedisServer, extra: Value) -> LayerDriver {
    let mut config = json!({ "hosts": [redis.url()] });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    LayerDriver::start("core", config)
        .await
        .expect("python channels_redis starts")
}

fn assert_ttls_close(python: &BTreeMap<String, KeyState>, native: &BTreeMap<String, KeyState>) {
    for (key, state) in python {
        let other = &native[key];
        assert!(
            (state.ttl - other.ttl).abs() <= 1 && state.ttl > 0,
            "TTL of {key}: python {} native {}",
            state.ttl,
            other.ttl
        );
    }
}

fn members_only(states: &BTreeMap<String, KeyState>) -> BTreeMap<String, Vec<Vec<u8>>> {
    states
        .iter()
        .map(|(k, v)| (k.clone(), v.members.clone()))
        .collect()
}

const MESSAGE: &str = r#"{"type": "send_notification", "message": {"text": "Tâche 😀", "n": 7, "f": 2.5, "big": 12345678901234567890, "list": [1, null, true, {"z": 1, "a": 2}], "bytes?": "no"}, "extra": -1}"#;

#[tokio::test]
async fn same_keys_members_and_ttls_as_channels_redis() {
    let redis = RedisServer::start().expect("redis starts");
    let mut driver = python(&redis, json!({})).await;
    // Two channels of one process, one of another, one without `!`, and one
    // member older than group_expiry (it must be trimmed by both).
    for channel in [
        "specific.aaa!1",
        "specific.aaa!2",
        "specific.bbb!x",
        "plain.channel",
    ] {
        driver
            .group_add("user_1", channel)
            .await
            .expect("group_add");
    }
    let stale = ["ZADD", "asgi:group:user_1", "1", "specific.stale!1"];
    let add_stale = || async { redis.cmd(&stale).await.expect("ZADD stale") };
    add_stale().await;

    driver
        .group_send("user_1", JsonText::new(MESSAGE))
        .await
        .expect("python group_send");
    let from_python = snapshot(&redis, "asgi*").await;
    let group_after_python = redis
        .cmd(&["ZRANGE", "asgi:group:user_1", "0", "-1"])
        .await
        .expect("ZRANGE group");

    clear_queues(&redis).await;
    add_stale().await;
    let message = message_from_python(&mut driver, MESSAGE).await;
    let mut native = NativePublisher::connect(&[redis.url()], PublisherConfig::default())
        .await
        .expect("native publisher connects");
    let outcome = native
        .group_send("user_1", &message)
        .await
        .expect("native group_send");
    let from_native = snapshot(&redis, "asgi*").await;
    let group_after_native = redis
        .cmd(&["ZRANGE", "asgi:group:user_1", "0", "-1"])
        .await
        .expect("ZRANGE group");

    assert_eq!(outcome.channels, 4);
    assert_eq!(outcome.queue_keys, 3);
    assert_eq!(outcome.over_capacity, 0);
    assert_eq!(
        from_python.keys().collect::<Vec<_>>(),
        vec![
            "asgiplain.channel",
            "asgispecific.aaa!",
            "asgispecific.bbb!"
        ]
    );
    assert_eq!(members_only(&from_python), members_only(&from_native));
    assert_ttls_close(&from_python, &from_native);
    assert_eq!(group_after_python, group_after_native);
    assert!(!group_after_native.iter().any(|c| c.contains("stale")));

    // The body equals Python's serialisation of the addressed message, and
    // Python reads the native payload back as the same message.
    let addressed = r#"{"type": "send_notification", "message": {"text": "Tâche 😀", "n": 7, "f": 2.5, "big": 12345678901234567890, "list": [1, null, true, {"z": 1, "a": 2}], "bytes?": "no"}, "extra": -1, "__asgi_channel__": ["specific.aaa!1", "specific.aaa!2"]}"#;
    let python_body = driver
        .serialize(JsonText::new(addressed))
        .await
        .expect("serialize");
    let native_raw = redis
        .cmd_value(&["ZRANGE", "asgispecific.aaa!", "0", "-1"])
        .await
        .expect("ZRANGE")
        .into_bytes_list()
        .expect("members");
    assert_eq!(native_raw.len(), 1);
    assert_eq!(native_raw[0][PREFIX_LEN..], python_body[PREFIX_LEN..]);
    let round_trip = driver
        .deserialize_text(&native_raw[0])
        .await
        .expect("python deserializes the native payload");
    let python_round_trip = driver
        .deserialize_text(&python_body)
        .await
        .expect("python deserializes its own payload");
    assert_eq!(round_trip, python_round_trip);

    // Scores are UNIX times as floats, like Python's time.time().
    let scores = redis
        .cmd(&["ZRANGE", "asgispecific.aaa!", "0", "-1", "WITHSCORES"])
        .await
        .expect("scores");
    let score: f64 = scores[1].parse().expect("float score");
    let now = tests::tokens::now_secs() as f64;
    assert!((score - now).abs() < 3600.0, "score {score} is a UNIX time");
    driver.quit().await.expect("driver quits");
}

/// A group of `channels` sent `sends` notifications by the real
/// channels_redis with `capacity` and one `channel_capacity` pattern: what
/// Redis held then, the queues cleared, the message as Python encodes it
/// and a native publisher with the same capacities, for the caller to
/// repeat the sends with.
async fn sent_by_python_then_native(
    redis: &RedisServer,
    (group, channels, sends): (&str, &[&str], usize),
    (capacity, pattern, pattern_capacity): (u64, &str, u64),
) -> (
    BTreeMap<String, KeyState>,
    LayerDriver,
    Message,
    NativePublisher,
) {
    let mut driver = python(
        redis,
        json!({"capacity": capacity, "channel_capacity": {pattern: pattern_capacity}}),
    )
    .await;
    for channel in channels {
        driver.group_add(group, channel).await.expect("group_add");
    }
    let text = r#"{"type": "send_notification", "message": "m"}"#;
    for _ in 0..sends {
        driver
            .group_send(group, JsonText::new(text))
            .await
            .expect("python group_send");
    }
    let from_python = snapshot(redis, "asgi*").await;
    clear_queues(redis).await;
    let message = message_from_python(&mut driver, text).await;
    let config = PublisherConfig {
        capacity,
        channel_capacity: vec![(pattern.into(), pattern_capacity)],
        ..PublisherConfig::default()
    };
    let native = NativePublisher::connect(&[redis.url()], config)
        .await
        .expect("native publisher connects");
    (from_python, driver, message, native)
}

#[tokio::test]
async fn capacity_drops_match_channels_redis() {
    let redis = RedisServer::start().expect("redis starts");
    let (from_python, driver, message, mut native) = sent_by_python_then_native(
        &redis,
        ("user_3", &["specific.small!1", "specific.big!1"], 7),
        (3, "specific.big*", 5),
    )
    .await;
    let mut dropped = Vec::new();
    for _ in 0..7 {
        let outcome = native
            .group_send("user_3", &message)
            .await
            .expect("native group_send");
        dropped.push(outcome.over_capacity);
    }
    let from_native = snapshot(&redis, "asgi*").await;

    assert_eq!(from_python["asgispecific.small!"].members.len(), 3);
    assert_eq!(from_python["asgispecific.big!"].members.len(), 5);
    assert_eq!(members_only(&from_python), members_only(&from_native));
    assert_ttls_close(&from_python, &from_native);
    assert_eq!(dropped, vec![0, 0, 0, 1, 1, 2, 2]);

    // The batched form writes the same thing.
    clear_queues(&redis).await;
    let batch: Vec<(&str, &Message)> = (0..7).map(|_| ("user_3", &message)).collect();
    let outcomes = native.group_send_many(&batch).await.expect("batch");
    let over: Vec<u64> = outcomes.iter().map(|o| o.over_capacity).collect();
    assert_eq!(over, vec![0, 0, 0, 1, 1, 2, 2]);
    assert_eq!(
        members_only(&from_python),
        members_only(&snapshot(&redis, "asgi*").await)
    );
    driver.quit().await.expect("driver quits");
}

/// With recovery, a group also holds its replay member, whose key
/// channels_redis fills and refuses into like any other: the publisher
/// counts every full key as channels_redis does, and tells which of them
/// were replay keys (the window's refusals, which no socket misses).
#[tokio::test]
async fn refusals_into_a_replay_key_are_told_apart() {
    let redis = RedisServer::start().expect("redis starts");
    let replay = shared_proto::names::replay_channel("user_4", 1);
    let (from_python, driver, message, mut native) = sent_by_python_then_native(
        &redis,
        ("user_4", &["specific.gw-p.0!1", replay.as_str()], 5),
        (4, "gw.replay.*", 2),
    )
    .await;
    let batch: Vec<(&str, &Message)> = (0..5).map(|_| ("user_4", &message)).collect();
    let outcomes = native.group_send_many(&batch).await.expect("batch");
    assert_eq!(from_python["asgigw.replay.user_4"].members.len(), 2);
    assert_eq!(from_python["asgispecific.gw-p.0!"].members.len(), 4);
    assert_eq!(
        members_only(&from_python),
        members_only(&snapshot(&redis, "asgi*").await)
    );
    let over: Vec<u64> = outcomes.iter().map(|o| o.over_capacity).collect();
    let replay_over: Vec<u64> = outcomes.iter().map(|o| o.replay_over_capacity).collect();
    assert_eq!(over, vec![0, 0, 1, 1, 2]);
    assert_eq!(replay_over, vec![0, 0, 1, 1, 1]);
    driver.quit().await.expect("driver quits");
}

#[tokio::test]
async fn two_hosts_shard_keys_like_channels_redis() {
    let first = RedisServer::start().expect("redis starts");
    let second = RedisServer::start().expect("redis starts");
    let hosts = vec![first.url(), second.url()];
    let mut driver = LayerDriver::start("core", json!({ "hosts": hosts }))
        .await
        .expect("python channels_redis starts");
    let groups = ["user_1", "user_2", "user_3", "user_40"];
    for (i, group) in groups.iter().enumerate() {
        for process in ["p1", "p2", "a", "b", "gw-1"] {
            driver
                .group_add(group, &format!("specific.{process}!{i}"))
                .await
                .expect("group_add");
        }
    }
    let text = r#"{"type": "send_notification", "message": {"k": "v"}}"#;
    for group in groups {
        driver
            .group_send(group, JsonText::new(text))
            .await
            .expect("python group_send");
    }
    let python_state = (
        members_only(&snapshot(&first, "asgi*").await),
        members_only(&snapshot(&second, "asgi*").await),
    );
    clear_queues(&first).await;
    clear_queues(&second).await;

    let message = message_from_python(&mut driver, text).await;
    let mut native = NativePublisher::connect(&hosts, PublisherConfig::default())
        .await
        .expect("native publisher connects");
    let batch: Vec<(&str, &Message)> = groups.iter().map(|g| (*g, &message)).collect();
    native.group_send_many(&batch).await.expect("batch");
    let native_state = (
        members_only(&snapshot(&first, "asgi*").await),
        members_only(&snapshot(&second, "asgi*").await),
    );
    assert!(
        !python_state.0.is_empty() && !python_state.1.is_empty(),
        "both hosts hold queue keys: {:?} / {:?}",
        python_state.0.keys().collect::<Vec<_>>(),
        python_state.1.keys().collect::<Vec<_>>()
    );
    assert_eq!(python_state, native_state);
    driver.quit().await.expect("driver quits");
}

#[tokio::test]
async fn the_gateway_delivers_identical_frames_from_both_publishers() {
    let redis = RedisServer::start().expect("redis starts");
    let mut config = GatewayConfig::new(&redis.url()).expect("config");
    let gateway = GatewayLauncher::new()
        .bin(gateway_bin!())
        .start_config(&mut config)
        .await
        .expect("gateway starts");
    let mut driver = python(&redis, json!({})).await;
    let token = mint("test-secret", claims_for_user(9, 300));
    let mut sockets = Vec::new();
    for _ in 0..2 {
        sockets.push(
            WsClient::connect(
                &gateway.ws_url("/ws/notifications/"),
                TokenIn::Query(token.clone()),
            )
            .await
            .expect("socket opens"),
        );
    }
    let mut native = NativePublisher::connect(&[redis.url()], PublisherConfig::default())
        .await
        .expect("native publisher connects");
    let wait = Duration::from_secs(5);
    for text in [
        MESSAGE,
        r#"{"type": "send_notification", "message": "You have a task due soon!"}"#,
        r#"{"type": "send_notification", "message": [1.0, -0.0, 1e+16, "\u0001"]}"#,
    ] {
        driver
            .group_send("user_9", JsonText::new(text))
            .await
            .expect("python group_send");
        let message = message_from_python(&mut driver, text).await;
        native
            .group_send("user_9", &message)
            .await
            .expect("native group_send");
        for socket in &mut sockets {
            let from_python = socket.recv_text(wait).await.expect("frame from python");
            let from_native = socket.recv_text(wait).await.expect("frame from native");
            assert_eq!(from_python, from_native);
        }
    }
    for socket in &mut sockets {
        socket
            .expect_silence(Duration::from_millis(300))
            .await
            .expect("nothing more");
    }
    // Nothing is left behind in the gateway's queue key.
    let leftovers = redis.cmd(&["KEYS", "asgispecific.*"]).await.expect("KEYS");
    for key in leftovers {
        let count = redis
            .cmd_value(&["ZCARD", key.as_str()])
            .await
            .map(|v| v.as_int().unwrap_or(-1))
            .unwrap_or(-1);
        assert_eq!(count, 0, "{key} drained");
    }
    driver.quit().await.expect("driver quits");
}
