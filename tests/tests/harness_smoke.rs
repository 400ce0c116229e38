//! Proves the harness itself, without the gateway: a private redis-server can
//! be started, queried, paused, restarted empty and stopped by PID; the REAL
//! channels_redis (via tests/py/layer_driver.py) writes what the wire spec says;
//! the driver's helper ops (expected_frame, serialize, mint_jwt, simplejwt) work;
//! and the Rust token helpers agree with PyJWT.

use std::time::Duration;

use serde_json::{json, Value};
use tests::procs::{self, Signal};
use tests::python::{base64_decode, base64_encode, JsonText};
use tests::{LayerDriver, RedisServer, TokenIn, WsClient};

fn core_config(redis: &RedisServer) -> Value {
    json!({"hosts": [redis.url()]})
}

fn notification(message: Value) -> Value {
    json!({"type": "send_notification", "message": message})
}

#[tokio::test]
async fn redis_starts_answers_and_stops_by_pid() {
    let mut redis = RedisServer::start().expect("start redis");
    assert_ne!(redis.port(), 6379, "never the shared default port");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.cmd(&["PING"]).await.expect("ping"), vec!["PONG"]);
    let info = redis.cmd(&["INFO", "server"]).await.expect("info").join("");
    assert!(
        info.contains(&format!("process_id:{}", redis.pid())),
        "the server answering is the one we started"
    );
    // No persistence configured.
    let save = redis
        .cmd(&["CONFIG", "GET", "save"])
        .await
        .expect("config get");
    assert_eq!(save, vec!["save", ""]);
    let aof = redis
        .cmd(&["CONFIG", "GET", "appendonly"])
        .await
        .expect("config get");
    assert_eq!(aof, vec!["appendonly", "no"]);

    // RESP types: integer, nil, error, nested arrays.
    assert_eq!(redis.cmd(&["INCR", "n"]).await.expect("incr"), vec!["1"]);
    assert!(redis
        .cmd(&["GET", "missing"])
        .await
        .expect("get")
        .is_empty());
    assert!(redis.cmd(&["NOSUCHCOMMAND"]).await.is_err());
    redis
        .cmd(&["ZADD", "z", "1.5", "a", "2", "b"])
        .await
        .expect("zadd");
    assert_eq!(
        redis
            .cmd(&["ZRANGE", "z", "0", "-1", "WITHSCORES"])
            .await
            .expect("zrange"),
        vec!["a", "1.5", "b", "2"]
    );

    let pid = redis.pid();
    redis.stop().expect("stop");
    assert!(!redis.is_running());
    assert!(
        procs::send_signal(pid, Signal::Cont).is_err(),
        "the stopped server's pid is gone"
    );
    assert!(
        redis.cmd(&["PING"]).await.is_err(),
        "nothing listens any more"
    );
    redis.stop().expect("stop twice is a no-op");
}

#[tokio::test]
async fn redis_restart_empty_keeps_port_and_loses_data() {
    let mut redis = RedisServer::start().expect("start redis");
    let port = redis.port();
    let first_pid = redis.pid();
    redis.cmd(&["SET", "k", "v"]).await.expect("set");
    redis.restart_empty().expect("restart");
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), first_pid);
    assert!(
        redis.cmd(&["GET", "k"]).await.expect("get").is_empty(),
        "data is gone"
    );
    assert_eq!(redis.cmd(&["DBSIZE"]).await.expect("dbsize"), vec!["0"]);
    // restart after an explicit stop works too
    redis.stop().expect("stop");
    redis.restart_empty().expect("restart after stop");
    assert_eq!(redis.cmd(&["PING"]).await.expect("ping"), vec!["PONG"]);
}

#[tokio::test]
async fn redis_pause_and_resume() {
    let mut redis = RedisServer::start().expect("start redis");
    redis.pause().expect("pause");
    let mut client = redis
        .client()
        .await
        .expect("tcp connect still works (kernel accepts)");
    client.send(&["PING"]).await.expect("send");
    assert!(
        client
            .read_value_timeout(Duration::from_millis(300))
            .await
            .is_err(),
        "a paused server does not answer"
    );
    redis.resume().expect("resume");
    let v = client
        .read_value_timeout(Duration::from_secs(5))
        .await
        .expect("answers after resume");
    assert_eq!(v.into_strings().expect("pong"), vec!["PONG"]);
    // Stopping a paused server works (SIGTERM + SIGCONT).
    redis.pause().expect("pause again");
    redis.stop().expect("stop while paused");
}

#[tokio::test]
async fn many_redis_servers_get_distinct_ports() {
    let servers: Vec<RedisServer> = (0..4)
        .map(|_| RedisServer::start().expect("start"))
        .collect();
    let mut ports: Vec<u16> = servers.iter().map(|s| s.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4);
}

/// The core layer: group_add stores the member in `asgi:group:<g>`; group_send
/// puts ONE payload per process key into `asgispecific.<x>!` with
/// `__asgi_channel__` listing the member channels.
#[tokio::test]
async fn core_group_send_lands_in_the_process_queue_key() {
    let redis = RedisServer::start().expect("start redis");
    let mut driver = LayerDriver::start("core", core_config(&redis))
        .await
        .expect("start driver");
    assert_eq!(driver.versions()["channels-redis"], json!("4.3.0"));

    let proc_hex = "0123456789abcdef0123456789abcdef";
    let ch1 = format!("specific.{proc_hex}!aaa");
    let ch2 = format!("specific.{proc_hex}!bbb");
    driver
        .group_add("user_42", &ch1)
        .await
        .expect("group_add 1");
    driver
        .group_add("user_42", &ch2)
        .await
        .expect("group_add 2");

    let members = redis
        .cmd(&["ZRANGE", "asgi:group:user_42", "0", "-1", "WITHSCORES"])
        .await
        .expect("zrange group");
    assert_eq!(members.len(), 4, "two members with scores: {members:?}");
    assert_eq!(members[0], ch1);
    assert_eq!(members[2], ch2);
    let now = unix_now();
    for score in [&members[1], &members[3]] {
        let t: f64 = score.parse().expect("score is a float time");
        assert!(
            (t - now).abs() < 30.0,
            "score {t} is the add time (now {now})"
        );
    }
    let ttl = redis
        .cmd(&["TTL", "asgi:group:user_42"])
        .await
        .expect("ttl");
    let ttl: i64 = ttl[0].parse().expect("ttl int");
    assert!(
        ttl > 86000 && ttl <= 86400,
        "group TTL is group_expiry: {ttl}"
    );

    let msg = notification(json!({"text": "hello", "n": 1, "f": 2.5}));
    driver
        .group_send("user_42", msg.clone())
        .await
        .expect("group_send");

    let queue_key = format!("asgispecific.{proc_hex}!");
    let queued = redis
        .cmd_value(&["ZRANGE", queue_key.as_str(), "0", "-1", "WITHSCORES"])
        .await
        .expect("zrange queue")
        .into_bytes_list()
        .expect("bytes");
    assert_eq!(
        queued.len(),
        2,
        "ONE payload + its score for two local channels"
    );
    let payload = &queued[0];
    let score: f64 = String::from_utf8_lossy(&queued[1]).parse().expect("score");
    assert!((score - now).abs() < 30.0);
    let ttl: i64 = redis.cmd(&["TTL", &queue_key]).await.expect("ttl")[0]
        .parse()
        .expect("ttl int");
    assert!(ttl > 0 && ttl <= 60, "queue TTL is expiry: {ttl}");

    // Decode the stored member with the library itself: 12 random bytes, then
    // msgpack of the message plus __asgi_channel__ (a list for group_send).
    let decoded = driver.deserialize(payload).await.expect("deserialize");
    assert_eq!(decoded["type"], json!("send_notification"));
    assert_eq!(decoded["message"], msg["message"]);
    assert_eq!(decoded["__asgi_channel__"], json!([ch1, ch2]));
    assert!(payload.len() > 12);

    // A direct send carries __asgi_channel__ as a string.
    driver
        .send(&ch1, notification(json!("direct")))
        .await
        .expect("send");
    let queued = redis
        .cmd_value(&["ZRANGE", queue_key.as_str(), "0", "-1"])
        .await
        .expect("zrange")
        .into_bytes_list()
        .expect("bytes");
    assert_eq!(queued.len(), 2);
    let mut channels = Vec::new();
    for member in &queued {
        channels.push(
            driver.deserialize(member).await.expect("deserialize")["__asgi_channel__"].clone(),
        );
    }
    assert!(
        channels.contains(&json!(ch1)),
        "string form from send: {channels:?}"
    );

    // group_discard removes the member.
    driver
        .group_discard("user_42", &ch2)
        .await
        .expect("discard");
    assert_eq!(
        redis
            .cmd(&["ZRANGE", "asgi:group:user_42", "0", "-1"])
            .await
            .expect("zrange"),
        vec![ch1.clone()]
    );

    driver.quit().await.expect("quit");
}

/// group_send_seq numbers messages and they are queued in order; capacity
/// (default 100) drops the rest silently (logged only).
#[tokio::test]
async fn core_group_send_seq_and_capacity() {
    let redis = RedisServer::start().expect("start redis");
    let mut driver = LayerDriver::start("core", json!({"hosts": [redis.url()], "capacity": 5}))
        .await
        .expect("start driver");
    let ch = "specific.feedfeedfeedfeedfeedfeedfeedfeed!x";
    driver.group_add("g", ch).await.expect("group_add");
    let reply = driver
        .group_send_seq_timed("g", 8, notification(json!({"kind": "seq"})), "seq", "ts")
        .await
        .expect("seq");
    assert_eq!(reply["count"], json!(8));
    let key = "asgispecific.feedfeedfeedfeedfeedfeedfeedfeed!";
    let members = redis
        .cmd_value(&["ZRANGE", key, "0", "-1"])
        .await
        .expect("zrange")
        .into_bytes_list()
        .expect("bytes");
    assert_eq!(members.len(), 5, "capacity 5 keeps 5 of 8");
    let mut seqs = Vec::new();
    for m in &members {
        let v = driver.deserialize(m).await.expect("deserialize");
        assert!(
            v["message"]["ts"].is_f64(),
            "timestamp_field is a float: {v}"
        );
        seqs.push(v["message"]["seq"].as_i64().expect("seq int"));
    }
    assert_eq!(seqs, vec![0, 1, 2, 3, 4], "score (time) order = send order");
    // The drop is only logged by channels_redis (INFO) — visible on driver stderr.
    let mut logged = false;
    for _ in 0..40 {
        if driver.stderr_text().contains("over capacity") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "stderr: {}", driver.stderr_text());

    // Non-dict message: "<message> #i".
    driver.flush().await.expect("flush");
    driver.group_add("g", ch).await.expect("group_add");
    driver
        .group_send_seq("g", 2, notification(json!("ping")), "seq")
        .await
        .expect("seq");
    let members = redis
        .cmd_value(&["ZRANGE", key, "0", "-1"])
        .await
        .expect("zrange")
        .into_bytes_list()
        .expect("bytes");
    let mut texts = Vec::new();
    for m in &members {
        texts.push(driver.deserialize(m).await.expect("deserialize")["message"].clone());
    }
    assert_eq!(texts, vec![json!("ping #0"), json!("ping #1")]);
}

/// The driver round-trips through the library's own receive too, and JSON
/// given as text keeps its key order and number types end to end.
#[tokio::test]
async fn core_send_receive_roundtrip_through_the_library() {
    let redis = RedisServer::start().expect("start redis");
    let mut driver = LayerDriver::start("core", core_config(&redis))
        .await
        .expect("driver");
    let ch = driver.new_channel().await.expect("new_channel");
    assert!(ch.starts_with("specific.") && ch.contains('!'), "{ch}");
    driver.group_add("room", &ch).await.expect("add");
    let text = r#"{"type": "send_notification", "message": {"z": 1, "a": 1.0, "m": [3, 2.5, {"y": null, "b": true}]}}"#;
    driver
        .group_send("room", JsonText::from(text))
        .await
        .expect("send");
    let got = driver
        .receive_text(&ch, Duration::from_secs(5))
        .await
        .expect("receive")
        .expect("a message");
    assert_eq!(
        got, text,
        "ints stay ints, floats stay floats, key order kept"
    );

    // Value input works too (keys then sorted by serde_json).
    let msg = notification(json!({"ints": [1, 2, 3], "float": 1.0}));
    driver.group_send("room", &msg).await.expect("send");
    let got = driver
        .receive(&ch, Duration::from_secs(5))
        .await
        .expect("receive")
        .expect("a message");
    assert_eq!(got, msg);
    assert!(got["message"]["float"].is_f64() && got["message"]["ints"][0].is_u64());
    assert!(driver
        .receive(&ch, Duration::from_millis(200))
        .await
        .expect("receive")
        .is_none());
}

/// Pub/sub layer: group_send is a PUBLISH to `<prefix>__group__<group>` with a
/// bare msgpack payload (no random prefix).
#[tokio::test]
async fn pubsub_group_send_publishes_to_the_group_channel() {
    let redis = RedisServer::start().expect("start redis");
    let mut sub = redis.client().await.expect("client");
    sub.send(&["SUBSCRIBE", "asgi__group__user_7"])
        .await
        .expect("subscribe");
    let confirm = sub
        .read_value_timeout(Duration::from_secs(5))
        .await
        .expect("subscribe confirmation")
        .into_strings()
        .expect("strings");
    assert_eq!(confirm, vec!["subscribe", "asgi__group__user_7", "1"]);

    let mut driver = LayerDriver::start("pubsub", core_config(&redis))
        .await
        .expect("driver");
    let msg = notification(json!({"id": 7}));
    driver
        .group_send("user_7", msg.clone())
        .await
        .expect("group_send");
    let pushed = sub
        .read_value_timeout(Duration::from_secs(5))
        .await
        .expect("published message")
        .into_bytes_list()
        .expect("bytes");
    assert_eq!(pushed[0], b"message");
    assert_eq!(pushed[1], b"asgi__group__user_7");
    let serialized = driver.serialize(msg.clone()).await.expect("serialize");
    assert_eq!(
        pushed[2], serialized,
        "pubsub payloads have no random prefix"
    );
    assert_eq!(
        driver.deserialize(&pushed[2]).await.expect("deserialize"),
        msg
    );

    // And the library's own subscriber gets it.
    let ch = driver.new_channel().await.expect("new_channel");
    driver.group_add("user_7", &ch).await.expect("group_add");
    driver
        .group_send("user_7", msg.clone())
        .await
        .expect("group_send");
    let got = driver
        .receive(&ch, Duration::from_secs(5))
        .await
        .expect("receive")
        .expect("message");
    assert_eq!(got, msg);
}

#[tokio::test]
async fn driver_reports_bad_requests_and_survives() {
    let redis = RedisServer::start().expect("start redis");
    let mut driver = LayerDriver::start("core", core_config(&redis))
        .await
        .expect("driver");
    let err = driver
        .group_send("user_1", json!({"no_type": true}))
        .await
        .expect_err("message without type");
    assert!(format!("{err:#}").contains("type"), "{err:#}");
    let err = driver
        .group_send("not a valid group!", notification(json!(1)))
        .await
        .expect_err("invalid group name");
    assert!(format!("{err:#}").contains("Group name"), "{err:#}");
    assert!(driver.request(json!({"op": "nope"})).await.is_err());
    assert!(driver.request(json!({"op": "receive"})).await.is_err());
    // Still alive and in step.
    driver.request(json!({"op": "ping"})).await.expect("ping");

    // A config channels_redis rejects fails at start with its message.
    let err = LayerDriver::start("core", json!({"hosts": "redis://127.0.0.1:1"}))
        .await
        .err()
        .expect("string hosts are refused by channels_redis");
    assert!(
        format!("{err:#}").contains("list of Redis hosts"),
        "{err:#}"
    );
}

#[tokio::test]
async fn expected_frame_is_json_dumps_of_the_event_message() {
    let redis = RedisServer::start().expect("start redis");
    let mut driver = LayerDriver::start("core", core_config(&redis))
        .await
        .expect("driver");
    let cases = [
        (json!("Task created"), r#"{"message": "Task created"}"#),
        (
            json!({"a": [1.0, 2.5, null, true], "s": "é\u{1F600}\"</"}),
            r#"{"message": {"a": [1.0, 2.5, null, true], "s": "\u00e9\ud83d\ude00\"</"}}"#,
        ),
        (json!(12345678901234i64), r#"{"message": 12345678901234}"#),
    ];
    for (value, want) in cases {
        let frame = driver.expected_frame(&value).await.expect("expected_frame");
        assert_eq!(frame, want, "for {value}");
    }
    // Key order as given (JsonText); pretty-printed input is fine.
    let frame = driver
        .expected_frame(JsonText::from("{\n  \"b\": 1,\n  \"a\": 2\n}"))
        .await
        .expect("expected_frame");
    assert_eq!(frame, r#"{"message": {"b": 1, "a": 2}}"#);
    assert!(driver
        .expected_frame(JsonText::from("{not json"))
        .await
        .is_err());
}

#[tokio::test]
async fn serialize_matches_the_library_format() {
    let redis = RedisServer::start().expect("start redis");
    let mut core = LayerDriver::start("core", core_config(&redis))
        .await
        .expect("driver");
    let msg = json!({"type": "t", "v": 1});
    let a = core.serialize(msg.clone()).await.expect("serialize");
    let b = core.serialize(msg.clone()).await.expect("serialize");
    // 12 random bytes + msgpack {"type": "t", "v": 1}
    let msgpack = [
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa1, b't', 0xa1, b'v', 0x01,
    ];
    assert_eq!(&a[12..], &msgpack);
    assert_eq!(&b[12..], &msgpack);
    assert_ne!(&a[..12], &b[..12], "random prefix differs");

    let mut json_layer = LayerDriver::start(
        "core",
        json!({"hosts": [redis.url()], "serializer_format": "json", "random_prefix_length": 0}),
    )
    .await
    .expect("driver");
    let c = json_layer.serialize(msg).await.expect("serialize");
    assert_eq!(c, br#"{"type": "t", "v": 1}"#);

    // Fernet: version byte 0x80 after base64 -> token starts with "gAAAAA".
    let mut enc = LayerDriver::start(
        "pubsub",
        json!({"hosts": [redis.url()], "symmetric_encryption_keys": ["k1"]}),
    )
    .await
    .expect("driver");
    let d = enc
        .serialize(json!({"type": "t"}))
        .await
        .expect("serialize");
    assert!(
        d.starts_with(b"gAAAAA"),
        "{:?}",
        String::from_utf8_lossy(&d)
    );
    assert_eq!(
        enc.deserialize(&d).await.expect("deserialize"),
        json!({"type": "t"})
    );
}

#[tokio::test]
async fn mint_jwt_and_rust_tokens_agree() {
    let redis = RedisServer::start().expect("start redis");
    let mut driver = LayerDriver::start("core", core_config(&redis))
        .await
        .expect("driver");
    let claims = json!({"user_id": 42, "exp": 4102444800i64});
    let py = driver
        .mint_jwt(claims.clone(), "test-secret", "HS256", None)
        .await
        .expect("mint_jwt");
    let rs = tests::tokens::mint("test-secret", claims.clone());
    // PyJWT sorts header keys and writes compact JSON; jsonwebtoken writes
    // {"typ":"JWT","alg":"HS256"}: compare decoded claims, not bytes.
    let py_claims = decode_hs256(&py, "test-secret");
    let rs_claims = decode_hs256(&rs, "test-secret");
    assert_eq!(py_claims, claims);
    assert_eq!(rs_claims, claims);

    let with_kid = driver
        .mint_jwt(claims, "test-secret", "HS256", Some(json!({"kid": "k1"})))
        .await
        .expect("mint_jwt with headers");
    let header = jsonwebtoken::decode_header(&with_kid).expect("header");
    assert_eq!(header.kid.as_deref(), Some("k1"));

    let c = tests::tokens::claims_for_user(42, 300);
    assert_eq!(c["user_id"], json!("42"));
    assert_eq!(c["token_type"], json!("access"));
    assert_eq!(c["jti"].as_str().map(str::len), Some(32));
    assert_eq!(
        c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"),
        300
    );
}

#[tokio::test]
async fn simplejwt_issues_a_verifiable_pair() {
    let redis = RedisServer::start().expect("start redis");
    let mut driver = LayerDriver::start("core", core_config(&redis))
        .await
        .expect("driver");
    let pair = driver
        .simplejwt(json!(42), "test-secret", "HS256", Duration::from_secs(300))
        .await
        .expect("simplejwt");
    let access = decode_hs256(&pair.access, "test-secret");
    let refresh = decode_hs256(&pair.refresh, "test-secret");
    assert_eq!(access["token_type"], json!("access"));
    assert_eq!(refresh["token_type"], json!("refresh"));
    // simplejwt 5.5 writes str(user.id).
    assert_eq!(access["user_id"], json!("42"));
    assert_eq!(refresh["user_id"], json!("42"));
    assert_eq!(
        access["exp"].as_i64().expect("exp") - access["iat"].as_i64().expect("iat"),
        300
    );
    assert_eq!(access, pair.access_claims);
    assert_ne!(access["jti"], refresh["jti"]);

    // Other parameters in the same driver process.
    let other = driver
        .simplejwt(
            json!(7),
            "another-key-another-key-another-key",
            "HS512",
            Duration::from_secs(60),
        )
        .await
        .expect("simplejwt again");
    let header = jsonwebtoken::decode_header(&other.access).expect("header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::HS512);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS512);
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Value>(
        &other.access,
        &jsonwebtoken::DecodingKey::from_secret(b"another-key-another-key-another-key"),
        &validation,
    )
    .expect("verifies with the other key");
    assert_eq!(data.claims["user_id"], json!("7"));
    assert_eq!(
        data.claims["exp"].as_i64().expect("exp") - data.claims["iat"].as_i64().expect("iat"),
        60
    );
}

#[test]
fn base64_helpers_round_trip() {
    for data in [
        &b""[..],
        b"f",
        b"fo",
        b"foo",
        b"foob",
        b"fooba",
        b"foobar",
        &[0xff, 0x00, 0x80],
    ] {
        let enc = base64_encode(data);
        assert_eq!(base64_decode(&enc).expect("decode"), data);
    }
    assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64_encode(b"fo"), "Zm8=");
    assert!(base64_decode("a*b").is_err());
}

/// The WebSocket client reports a refused TCP connect as a non-HTTP error.
#[tokio::test]
async fn ws_client_connect_refused_is_not_an_http_status() {
    let port = procs::free_port().expect("port");
    let err = WsClient::connect(&format!("ws://127.0.0.1:{port}/ws"), TokenIn::None)
        .await
        .err()
        .expect("nothing listens");
    assert_eq!(err.status(), None, "{err}");
}

fn decode_hs256(token: &str, secret: &str) -> Value {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .expect("token verifies")
    .claims
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after epoch")
        .as_secs_f64()
}

/// A stand-in server: records how the client presented its token, sends a
/// ping, two frames, waits, then closes with 4001.
async fn tiny_ws_server() -> (String, tokio::task::JoinHandle<Vec<String>>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut info = String::new();
            // tungstenite's callback signature fixes the (large) error type.
            #[allow(clippy::result_large_err)]
            let callback = |req: &Request, resp: Response| {
                let uri = req.uri().to_string();
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string();
                let cookie = req
                    .headers()
                    .get("cookie")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string();
                info = format!("{uri} | {auth} | {cookie}");
                Ok(resp)
            };
            let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
                .await
                .expect("handshake");
            seen.push(info);
            ws.send(Message::Ping(b"hb".to_vec().into()))
                .await
                .expect("ping");
            ws.send(Message::text("first")).await.expect("send");
            ws.send(Message::text(r#"{"message": 1}"#))
                .await
                .expect("send");
            // Expect the pong and then the client's text.
            let mut got_pong = false;
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Pong(p) => got_pong = p.as_ref() == b"hb",
                    Message::Text(t) => {
                        seen.push(format!("client said {} pong={got_pong}", t.as_str()));
                        break;
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::from(4001),
                    reason: "bye".into(),
                }))
                .await;
            while let Some(Ok(_)) = ws.next().await {}
        }
        seen
    });
    (format!("ws://{addr}/ws/notifications/"), handle)
}

#[tokio::test]
async fn ws_client_token_placements_frames_silence_and_close_code() {
    let (url, server) = tiny_ws_server().await;
    let tokens = [
        TokenIn::Query("a.b-c_d".into()),
        TokenIn::Header("hdr.tok".into()),
        TokenIn::Cookie {
            name: "access_token".into(),
            token: "cookie.tok".into(),
        },
        TokenIn::None,
    ];
    for token in tokens {
        let mut ws = WsClient::connect(&url, token).await.expect("connect");
        assert_eq!(
            ws.recv_text(Duration::from_secs(5)).await.expect("first"),
            "first"
        );
        assert_eq!(
            ws.recv_json(Duration::from_secs(5)).await.expect("second"),
            json!({"message": 1})
        );
        ws.send_text("hi").await.expect("send");
        ws.expect_silence(Duration::from_millis(100))
            .await
            .expect("nothing for a while");
        assert_eq!(ws.close_code(), None);
        let code = ws.wait_close(Duration::from_secs(5)).await.expect("closed");
        assert_eq!(code, 4001);
        assert_eq!(ws.close_code(), Some(4001));
        assert_eq!(ws.close_reason().as_deref(), Some("bye"));
        assert!(ws.recv_text(Duration::from_millis(50)).await.is_err());
    }
    let seen = server.await.expect("server task");
    assert_eq!(
        seen,
        vec![
            "/ws/notifications/?token=a.b-c_d | - | -",
            "client said hi pong=true",
            "/ws/notifications/ | Bearer hdr.tok | -",
            "client said hi pong=true",
            "/ws/notifications/ | - | access_token=cookie.tok",
            "client said hi pong=true",
            "/ws/notifications/ | - | -",
            "client said hi pong=true",
        ]
    );
}

#[tokio::test]
async fn ws_client_exposes_the_status_of_a_refused_upgrade() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 4096];
        let _ = tcp.read(&mut buf).await;
        tcp.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\nWWW-Authenticate: Bearer\r\nConnection: close\r\n\r\nbad token!!\n",
        )
        .await
        .expect("write");
    });
    let err = WsClient::connect(&format!("ws://{addr}/ws"), TokenIn::Query("x".into()))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.status(), Some(401), "{err}");
    assert_eq!(err.header("www-authenticate"), Some("Bearer"));
    server.await.expect("server");
}

/// gateway_proc against a stand-in binary (the real gateway is not ready
/// yet): config file + `--config <file> serve`, env, log capture under
/// target/test-logs/<test>-<pid>.log, /readyz wait, signal, exit status.
#[tokio::test]
async fn gateway_proc_runs_a_stand_in_binary() {
    use tests::gateway_proc::{GatewayConfig, GatewayLauncher};
    let dir = procs::scratch_dir("fake-gateway").expect("scratch");
    let script = dir.join("fake_gateway.py");
    std::fs::write(&script, FAKE_GATEWAY).expect("write script");
    let bin = dir.join("fake-gateway");
    std::fs::write(
        &bin,
        format!("#!/bin/sh\nexec python3 {} \"$@\"\n", script.display()),
    )
    .expect("write wrapper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    let mut cfg = GatewayConfig::new("redis://127.0.0.1:1")
        .expect("config")
        .line("server", "fake_delay_ms = 300");
    let launcher = GatewayLauncher::new()
        .bin(&bin)
        .env("FAKE_EXTRA", "extra-env-ok");
    let mut gw = launcher.start_config(&mut cfg).await.expect("ready");
    assert!(gw.log_path().to_string_lossy().ends_with(&format!(
        "gateway_proc_runs_a_stand_in_binary-{}.log",
        gw.pid()
    )));
    assert!(gw.config_path().exists());
    assert_eq!(gw.ws_url("/ws/x"), format!("ws://{}/ws/x", cfg.listen));
    let (status, body) = gw.admin_get("/readyz").await.expect("readyz");
    assert_eq!((status, body.as_str()), (200, "ready"));
    assert!(
        gw.wait_for_log("extra-env-ok", Duration::from_secs(5))
            .await
    );
    let log = gw.log_text();
    assert!(
        log.contains("RUST_LOG=info GATEWAY_LOG_FORMAT=json"),
        "{log}"
    );
    assert!(log.contains("stderr line"), "stderr is captured too: {log}");
    assert!(log.contains("args=--config"), "{log}");
    gw.signal(Signal::Term).expect("sigterm");
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        gw.signal(Signal::Term).is_err(),
        "no signals to a reaped pid"
    );

    // A binary that exits at start: the error carries the log tail.
    let bad = cfg.clone().line("server", "fake_fail = true");
    let err = launcher.start(&bad.to_toml()).await.err().expect("fails");
    assert!(
        format!("{err:#}").contains("config rejected: fake_fail"),
        "{err:#}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const FAKE_GATEWAY: &str = r#"
import http.server, os, signal, sys, threading, time, tomllib
args = sys.argv[1:]
cfg = tomllib.load(open(args[args.index("--config") + 1], "rb"))
print("args=" + " ".join(args), flush=True)
print("RUST_LOG=%s GATEWAY_LOG_FORMAT=%s" % (os.environ.get("RUST_LOG"), os.environ.get("GATEWAY_LOG_FORMAT")), flush=True)
print("FAKE_EXTRA=" + os.environ.get("FAKE_EXTRA", ""), flush=True)
print("stderr line", file=sys.stderr, flush=True)
if cfg["server"].get("fake_fail"):
    print("config rejected: fake_fail", file=sys.stderr, flush=True)
    sys.exit(3)
started = time.time()
delay = cfg["server"].get("fake_delay_ms", 0) / 1000.0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/readyz" and time.time() - started >= delay
        body = b"ready" if ok else b"not yet"
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
host, port = cfg["server"]["admin_listen"].rsplit(":", 1)
srv = http.server.ThreadingHTTPServer((host, int(port)), H)
signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=srv.shutdown).start())
srv.serve_forever()
print("stopped cleanly", flush=True)
"#;
