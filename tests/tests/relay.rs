//! The relay core end to end: a real redis-server, the real gateway binary,
//! and the real Python channels_redis publishing exactly as Django does
//! (`group_send` on the core layer). Every frame is compared byte for byte
//! with what the replaced Channels consumer would have sent
//! (`json.dumps({"message": ...})`, computed by Python).

use std::time::{Duration, Instant};

mod common;

use common::*;
use serde_json::json;
use tests::python::JsonText;
use tests::tokens::{claims_for_user, mint};
use tests::{GatewayConfig, Signal, TokenIn, WsClient};

#[tokio::test]
async fn group_send_reaches_every_socket_of_that_user_and_nobody_else() {
    let mut stack = stack().await;
    let mut alice = Vec::new();
    for _ in 0..3 {
        alice.push(connect(&stack.gateway, 42).await);
    }
    let mut bob = connect(&stack.gateway, 7).await;

    stack
        .notify("user_42", r#""You have a task due soon!""#)
        .await;
    for socket in &mut alice {
        expect_frame(socket, r#"{"message": "You have a task due soon!"}"#).await;
    }
    bob.expect_silence(Duration::from_millis(500))
        .await
        .expect("another user receives nothing");

    stack.notify("user_7", r#""for bob""#).await;
    expect_frame(&mut bob, r#"{"message": "for bob"}"#).await;
    for socket in &mut alice {
        socket
            .expect_silence(Duration::from_millis(200))
            .await
            .expect("alice receives nothing of bob's");
    }
    assert_eq!(
        metric(&stack.gateway, "gateway_sockets_open ").await,
        4.0,
        "four sockets open"
    );
}

#[tokio::test]
async fn values_arrive_as_the_same_json_the_consumer_sent() {
    let mut stack = stack().await;
    let mut socket = connect(&stack.gateway, 5).await;
    let long = "x".repeat(64 * 1024);
    let cases = [
        r#""Tâche à faire — 日本語""#.to_string(),
        r#""emoji 😀🎉 and \"quotes\" \\ and \n newline \u0001 control""#.to_string(),
        format!("\"{long}\""),
        r#"{"task": {"id": 7, "title": "Buy milk", "tags": ["home", "urgent"], "due": null},
            "z_last": true, "a_first": [1, 2.5, -3, 1e+16, 0.1, 1e-05, {"nested": [[]]}]}"#
            .to_string(),
        r#"[1, "two", 3.0, false, null, {}]"#.to_string(),
        "12345678901234567890".to_string(),
        "-0.0".to_string(),
    ];
    for case in &cases {
        let expected = stack
            .publisher
            .expected_frame(JsonText::new(case.clone()))
            .await
            .expect("python json.dumps");
        stack.notify("user_5", case).await;
        let frame = socket.recv_text(WAIT).await.expect("frame");
        assert_eq!(
            frame, expected,
            "byte-identical to json.dumps for {case:.80}"
        );
    }
}

#[tokio::test]
async fn missing_or_invalid_tokens_get_401_without_upgrade() {
    let mut stack = stack_with(|config| {
        config
            .token_cookie("access_token")
            .line("auth", r#"allowed_origins = ["https://app.example.com"]"#)
    })
    .await;
    let url = stack.gateway.ws_url("/ws/notifications/");
    let future = tests::tokens::now_secs() + 300;
    let refresh = stack
        .publisher
        .simplejwt(json!(9), SECRET, "HS256", Duration::from_secs(300))
        .await
        .expect("simplejwt pair");
    let cases: Vec<(&str, TokenIn)> = vec![
        ("no token", TokenIn::None),
        (
            "bad signature",
            TokenIn::Query(mint("another-secret", claims_for_user(1, 300))),
        ),
        (
            "expired",
            TokenIn::Query(mint(SECRET, claims_for_user(1, -60))),
        ),
        (
            "wrong algorithm",
            TokenIn::Query(
                stack
                    .publisher
                    .mint_jwt(json!({"user_id": 1, "exp": future}), SECRET, "HS512", None)
                    .await
                    .expect("pyjwt HS512"),
            ),
        ),
        (
            "missing user claim",
            TokenIn::Query(mint(SECRET, json!({"exp": future, "token_type": "access"}))),
        ),
        (
            "missing exp",
            TokenIn::Query(mint(SECRET, json!({"user_id": 1, "token_type": "access"}))),
        ),
        ("refresh token", TokenIn::Query(refresh.refresh.clone())),
        ("garbage", TokenIn::Header("not.a.jwt".into())),
    ];
    for (case, credentials) in cases {
        match WsClient::connect(&url, credentials).await {
            Ok(_) => panic!("{case}: socket was accepted"),
            Err(error) => assert_eq!(error.status(), Some(401), "{case}: {error}"),
        }
    }
    let log = stack.gateway.log_text();
    assert!(log.contains("handshake refused"), "reasons are logged");
    assert!(
        !log.contains(&refresh.refresh) && !log.contains(&refresh.access),
        "tokens never reach the log"
    );
    assert_eq!(
        metric(
            &stack.gateway,
            "gateway_connects_total{result=\"unauthorized\"} "
        )
        .await,
        8.0
    );

    // The accepted forms: SimpleJWT's own access token, in each transport.
    let accepted = [
        TokenIn::Query(refresh.access.clone()),
        TokenIn::Header(refresh.access.clone()),
        TokenIn::Cookie {
            name: "access_token".into(),
            token: refresh.access.clone(),
        },
    ];
    for credentials in accepted {
        let mut socket = WsClient::connect(&url, credentials)
            .await
            .expect("simplejwt access token accepted");
        stack.notify("user_9", r#""hi""#).await;
        expect_frame(&mut socket, r#"{"message": "hi"}"#).await;
        socket.close().await.expect("close");
    }
    let no_slash = WsClient::connect(
        &stack.gateway.ws_url("/ws/notifications"),
        TokenIn::Query(token(3)),
    )
    .await;
    assert!(
        no_slash.is_ok(),
        "the path without trailing slash upgrades too"
    );
}

#[tokio::test]
async fn membership_is_in_redis_before_the_upgrade_and_gone_after_disconnect() {
    let stack = stack().await;
    let mut socket = connect(&stack.gateway, 11).await;
    let members = group_members(&stack.redis, "user_11").await;
    assert_eq!(
        members.len(),
        1,
        "joined before the 101 answer: {members:?}"
    );
    assert!(members[0].starts_with("specific.gw-"), "{members:?}");
    let ttl = stack
        .redis
        .cmd(&["TTL", "asgi:group:user_11"])
        .await
        .expect("ttl");
    let ttl: i64 = ttl[0].parse().expect("ttl number");
    assert!(ttl > 86_000, "group key expires after group_expiry: {ttl}");

    socket.close().await.expect("close");
    let deadline = Instant::now() + WAIT;
    while !group_members(&stack.redis, "user_11").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "membership removed after disconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_gateway_processes_both_deliver_to_one_user() {
    let mut stack = stack().await;
    let mut second_config = GatewayConfig::new(&stack.redis.url()).expect("config");
    let second = start_gateway(&mut second_config).await;
    let mut on_first = connect(&stack.gateway, 21).await;
    let mut on_second = connect(&second, 21).await;
    assert_eq!(group_members(&stack.redis, "user_21").await.len(), 2);

    stack.notify("user_21", r#""both""#).await;
    for socket in [&mut on_first, &mut on_second] {
        expect_frame(socket, r#"{"message": "both"}"#).await;
        socket
            .expect_silence(Duration::from_millis(200))
            .await
            .expect("exactly once per socket");
    }
}

#[tokio::test]
async fn a_socket_outlives_group_expiry() {
    let mut stack = stack_with(|config| config.group_expiry(3)).await;
    let mut socket = connect(&stack.gateway, 31).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    stack.notify("user_31", r#""still here""#).await;
    assert_eq!(
        socket.recv_text(WAIT).await.expect("frame after 10 s"),
        r#"{"message": "still here"}"#
    );
}

#[tokio::test]
async fn delivery_resumes_after_redis_restarts_empty_without_client_reconnects() {
    let mut stack = stack().await;
    let mut socket = connect(&stack.gateway, 41).await;
    stack.redis.restart_empty().expect("redis restarted empty");
    let restarted = Instant::now();

    let mut publisher = publisher_for(&stack.redis, json!({})).await;
    let mut seq = 0;
    let received = loop {
        assert!(
            restarted.elapsed() < Duration::from_secs(2),
            "delivery did not resume within 2 s of the restart"
        );
        seq += 1;
        let _ = publisher
            .group_send("user_41", notification(&format!("\"after restart {seq}\"")))
            .await;
        if let Ok(frame) = socket.recv_text(Duration::from_millis(100)).await {
            break frame;
        }
    };
    eprintln!(
        "delivery resumed {:?} after the restart (attempt {seq})",
        restarted.elapsed()
    );
    assert!(
        received.starts_with(r#"{"message": "after restart "#),
        "{received}"
    );
    assert!(
        socket.close_code().is_none(),
        "the same socket, never reconnected"
    );
    assert_eq!(group_members(&stack.redis, "user_41").await.len(), 1);
    drop(stack.publisher);
}

#[tokio::test]
async fn malformed_payloads_are_counted_and_skipped() {
    let mut stack = stack().await;
    let mut socket = connect(&stack.gateway, 51).await;
    let members = group_members(&stack.redis, "user_51").await;
    let channel = members.first().expect("member");
    let queue_key = format!(
        "asgi{}",
        &channel[..=channel.find('!').expect("process-specific channel")]
    );
    let now = format!("{}", tests::tokens::now_secs());
    for garbage in ["not msgpack at all", "123456789012\u{1}\u{2}", "short"] {
        stack
            .redis
            .cmd(&["ZADD", &queue_key, &now, garbage])
            .await
            .expect("zadd garbage");
    }
    stack.notify("user_51", r#""after garbage""#).await;
    assert_eq!(
        socket
            .recv_text(WAIT)
            .await
            .expect("next message delivered"),
        r#"{"message": "after garbage"}"#
    );
    assert_eq!(
        metric(
            &stack.gateway,
            "gateway_drops_total{reason=\"decode_error\"} "
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn other_event_types_are_dropped_or_passed_through_and_the_socket_stays() {
    let mut stack =
        stack_with(|config| config.passthrough_types(vec!["task.updated".into()])).await;
    let mut socket = connect(&stack.gateway, 61).await;
    stack
        .publisher
        .group_send(
            "user_61",
            JsonText::new(r#"{"type": "chat.message", "text": "ignored"}"#),
        )
        .await
        .expect("group_send");
    stack
        .publisher
        .group_send(
            "user_61",
            JsonText::new(r#"{"type": "task.updated", "id": 7, "title": "Écrire"}"#),
        )
        .await
        .expect("group_send");
    assert_eq!(
        socket.recv_text(WAIT).await.expect("passed through"),
        r#"{"type": "task.updated", "id": 7, "title": "\u00c9crire"}"#
    );
    stack.notify("user_61", r#""still open""#).await;
    assert_eq!(
        socket.recv_text(WAIT).await.expect("socket still open"),
        r#"{"message": "still open"}"#
    );
    assert_eq!(
        metric(
            &stack.gateway,
            "gateway_drops_total{reason=\"unknown_type\"} "
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_slow_reader_is_closed_with_4004_and_others_are_not_slowed() {
    let mut stack = stack_with(|config| config.line("server", "outbound_queue = 64")).await;
    let mut slow = connect(&stack.gateway, 71).await;
    let mut fast = connect(&stack.gateway, 72).await;
    let big = format!("\"{}\"", "y".repeat(60 * 1024));
    // ~24 MB for the slow reader: far more than its outbox (64 frames,
    // ~4 MB) and the kernel buffers hold.
    for _ in 0..400 {
        stack.notify("user_71", &big).await;
    }
    send_sequence(&mut stack.publisher, "user_72", 200).await;
    expect_sequence(&mut fast, 200).await;
    let mut delivered = 0;
    let code = loop {
        match slow.recv_text(WAIT).await {
            Ok(_) => delivered += 1,
            Err(_) => break slow.close_code(),
        }
    };
    assert_eq!(
        code,
        Some(4004),
        "closed as a slow consumer after {delivered} frames"
    );
    assert!(delivered < 400, "the slow reader did not get everything");
    assert!(
        metric(
            &stack.gateway,
            "gateway_drops_total{reason=\"slow_consumer\"} "
        )
        .await
            >= 1.0
    );
}

/// Frames far bigger than the kernel's socket buffers: writes stop
/// mid-frame, the socket's task finishes them, and its pings go between
/// whole frames only (a torn frame would fail the client's parser).
#[tokio::test]
async fn frames_larger_than_the_socket_buffers_arrive_whole_in_order_between_pings() {
    let mut stack = stack_with(|config| {
        config
            .ping_interval("100ms")
            .pong_timeout("30s")
            .line("server", "outbound_queue = 1024")
    })
    .await;
    let mut reader = connect(&stack.gateway, 73).await;
    const FRAMES: usize = 120;
    let filler = "z".repeat(100 * 1024);
    for index in 0..FRAMES {
        stack
            .notify("user_73", &format!("\"{index:03}{filler}\""))
            .await;
    }
    // Not reading yet: the buffers fill and pings come due meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for index in 0..FRAMES {
        let text = reader.recv_text(WAIT).await.expect("every frame arrives");
        assert_eq!(
            text,
            format!("{{\"message\": \"{index:03}{filler}\"}}"),
            "frame {index} whole and in order"
        );
    }
    // A writer counts its frames right after the write that sent them: on a
    // loaded machine it may be preempted in between while the client
    // already reads them, so the count is read until it is complete.
    let counted = wait_for_metric(
        &stack.gateway,
        "gateway_frames_delivered_total ",
        FRAMES as f64,
    )
    .await;
    assert_eq!(counted, FRAMES as f64);
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let stack = stack_with(|config| config.ping_interval("200ms").pong_timeout("1s")).await;
    let mut silent = connect(&stack.gateway, 81).await;
    let mut lively = connect(&stack.gateway, 82).await;
    // `lively` reads (and so answers pings) the whole time; `silent` does not read.
    lively
        .expect_silence(Duration::from_millis(2500))
        .await
        .expect("a reading client stays connected");
    // The gateway sends close 4005 and ends the connection. The silent
    // client, once it reads again, answers the queued pings into a closed
    // socket; the kernel's reset can then discard the close frame before the
    // client reads it, so the client may see 1006 instead. The gateway's own
    // account says which it was.
    let code = silent.wait_close(WAIT).await.expect("closed");
    assert!(code == 4005 || code == 1006, "closed with {code}");
    assert!(
        stack.gateway.wait_for_log("PingTimeout", WAIT).await,
        "the gateway closed it for the ping timeout"
    );
    assert_eq!(metric(&stack.gateway, "gateway_sockets_open ").await, 1.0);
    assert!(lively.close_code().is_none());
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_removes_memberships_and_exits_0() {
    let mut stack = stack().await;
    let mut sockets = Vec::new();
    for user in [91, 91, 92] {
        sockets.push(connect(&stack.gateway, user).await);
    }
    assert_eq!(group_members(&stack.redis, "user_91").await.len(), 2);
    stack.gateway.signal(Signal::Term).expect("SIGTERM");
    for socket in &mut sockets {
        assert_eq!(socket.wait_close(WAIT).await.expect("closed"), 1001);
    }
    let status = stack
        .gateway
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("gateway exits");
    assert!(status.success(), "exit status {status:?}");
    assert!(group_members(&stack.redis, "user_91").await.is_empty());
    assert!(group_members(&stack.redis, "user_92").await.is_empty());
    let _ = &mut stack.publisher;
}

#[tokio::test]
async fn health_and_metrics_endpoints_answer() {
    let stack = stack().await;
    assert_eq!(
        stack
            .gateway
            .admin_get("/healthz")
            .await
            .expect("healthz")
            .0,
        200
    );
    assert_eq!(
        stack.gateway.admin_get("/readyz").await.expect("readyz").0,
        200
    );
    let (_, body) = stack.gateway.admin_get("/metrics").await.expect("metrics");
    for name in [
        "gateway_sockets_open",
        "gateway_drops_total",
        "gateway_frames_delivered_total",
        "gateway_publish_lag_seconds",
    ] {
        assert!(body.contains(name), "{name} exported");
    }
}

#[tokio::test]
async fn readiness_follows_redis_and_recovers_by_itself() {
    let mut stack = stack().await;
    stack.redis.stop().expect("redis stopped");
    wait_ready(&stack.gateway, false, Duration::from_secs(5)).await;
    let (_, body) = stack.gateway.admin_get("/readyz").await.expect("readyz");
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(
        stack
            .gateway
            .admin_get("/healthz")
            .await
            .expect("healthz")
            .0,
        200
    );
    stack.redis.restart_empty().expect("redis back");
    wait_ready(&stack.gateway, true, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn memberships_lost_without_a_reconnect_are_detected_and_repaired() {
    // The heartbeat notices a lost liveness key too (tests/tests/reaping.rs);
    // a long liveness timeout keeps its next beat out of this test, which is
    // about the canary.
    let mut stack = stack_with(|config| config.line("layer", r#"liveness_timeout = "300s""#)).await;
    let mut socket = connect(&stack.gateway, 95).await;
    let repairs = "canary missing while connected";
    let repairs_before = stack.gateway.log_text().matches(repairs).count();
    // Everything gone while every connection stays up: no reconnect event
    // tells the gateway, and the periodic refresh is hours away; only the
    // canary can notice.
    stack.redis.cmd(&["FLUSHALL"]).await.expect("flushall");
    let flushed = Instant::now();
    let mut saw_unready = false;
    let deadline = flushed + Duration::from_secs(15);
    while group_members(&stack.redis, "user_95").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "memberships are re-added by themselves"
        );
        if stack.gateway.admin_get("/readyz").await.expect("readyz").0 != 200 {
            saw_unready = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "membership back {:?} after FLUSHALL (readiness seen false: {saw_unready})",
        flushed.elapsed()
    );
    assert!(
        stack.gateway.log_text().matches(repairs).count() > repairs_before,
        "the repair was triggered by the missing canary"
    );
    stack.notify("user_95", r#""after repair""#).await;
    expect_frame(&mut socket, r#"{"message": "after repair"}"#).await;
}

/// The canary is the gateway's own payload in its own queue key: a key that
/// counts as full for the sender (here `capacity = 0`: every key does) must
/// not stop it, or a busy process would read as one that lost its
/// memberships, turn unready and re-add everything while already behind.
#[tokio::test]
async fn the_canary_ignores_the_senders_capacity() {
    let stack = stack_with(|config| config.capacity(0)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&stack.gateway, "gateway_canaries_received_total ").await < 3.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "canaries come back whatever the capacity"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_ready(&stack.gateway, true, Duration::from_secs(1)).await;
    assert!(
        !stack
            .gateway
            .log_text()
            .contains("canary missing while connected"),
        "no repair was triggered"
    );
}
