//! Both WebSocket drivers (`server.websocket_driver` = `direct`, the
//! default, and `actix-ws`) behave the same on the wire: delivery through the
//! real channels_redis, refusals before the upgrade with their status and
//! JSON reason, the `bearer` subprotocol answer, client pings and the
//! application ping, first-message authentication, fragmented messages, and
//! the close codes for binary (1003), oversized (1009), protocol-breaking
//! (1002), invalid UTF-8 (1007) and unknown-path traffic.

mod common;

use std::time::Duration;

use common::*;
use tests::{TokenIn, WsClient};

const WAIT: Duration = Duration::from_secs(5);

/// Sends `frame` and expects `answer` as the next text frame.
async fn assert_answer(socket: &mut WsClient, frame: &str, answer: &str, driver: &str) {
    socket.send_text(frame).await.expect("send");
    assert_eq!(
        socket.recv_text(WAIT).await.expect("answer"),
        answer,
        "{driver}: answer to {frame}"
    );
}

async fn same_behaviour(driver: &str) {
    let mut stack = stack_with(|config| {
        config
            .line("server", format!("websocket_driver = \"{driver}\""))
            .line("auth", "first_message_timeout = \"2s\"")
    })
    .await;
    let url = stack.gateway.ws_url("/ws/notifications/");

    // Delivery to every socket of the user, from channels_redis.
    let mut first = connect(&stack.gateway, 42).await;
    let mut second = connect(&stack.gateway, 42).await;
    stack.notify("user_42", r#""due soon""#).await;
    expect_frame(&mut first, r#"{"message": "due soon"}"#).await;
    expect_frame(&mut second, r#"{"message": "due soon"}"#).await;
    let threads = receiver_threads(&stack.gateway, 1).await;
    assert!(
        threads.len() == 1 && is_relay_thread(&threads[0]),
        "{driver}: the receiver runs on the relay thread: {threads:?}"
    );

    // A client ping is answered; so is the application ping.
    first.send_ping(b"are you there").await.expect("ping");
    assert_answer(
        &mut first,
        r#"{"type": "ping"}"#,
        r#"{"type": "pong"}"#,
        driver,
    )
    .await;

    // A bad token: 401 with the JSON reason, no upgrade.
    let refused = WsClient::connect(&url, TokenIn::Query("not-a-jwt".into()))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status(), Some(401), "{driver}: {refused}");
    assert!(
        refused.to_string().contains("unauthorized"),
        "{driver}: {refused}"
    );

    // The subprotocol form is answered with `bearer` alone.
    let socket = WsClient::connect(&url, TokenIn::Subprotocol(token(7)))
        .await
        .expect("subprotocol token accepted");
    let selected: Vec<_> = socket
        .response_headers()
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(selected, ["bearer"], "{driver}");

    // First-message authentication, then delivery.
    let mut in_band = WsClient::connect(&url, TokenIn::None)
        .await
        .expect("upgraded without a token");
    let token_frame = format!(r#"{{"token": "{}"}}"#, token(9));
    assert_answer(
        &mut in_band,
        &token_frame,
        r#"{"type": "authenticated"}"#,
        driver,
    )
    .await;
    stack.notify("user_9", r#""in band""#).await;
    expect_frame(&mut in_band, r#"{"message": "in band"}"#).await;

    // Binary and oversized frames close with their codes.
    let mut binary = connect(&stack.gateway, 1).await;
    binary.send_binary(b"\x00\x01").await.expect("sent");
    assert_eq!(
        binary.wait_close(WAIT).await.expect("closed"),
        1003,
        "{driver}"
    );
    let mut oversized = connect(&stack.gateway, 2).await;
    let _ = oversized.send_text(&"x".repeat(10_000)).await;
    assert_eq!(
        oversized.wait_close(WAIT).await.expect("closed"),
        1009,
        "{driver}"
    );

    // A message in fragments, a ping between them, is one message.
    let mut fragmented = connect(&stack.gateway, 3).await;
    fragmented
        .send_frame(false, 0x1, br#"{"type": "#)
        .await
        .expect("sent");
    fragmented
        .send_frame(true, 0x9, b"between")
        .await
        .expect("sent");
    fragmented
        .send_frame(true, 0x0, br#""ping"}"#)
        .await
        .expect("sent");
    assert_eq!(
        fragmented.recv_text(WAIT).await.expect("answer"),
        r#"{"type": "pong"}"#,
        "{driver}: a fragmented ping"
    );
    // Fragments count together against max_inbound_frame (4096 here).
    fragmented
        .send_frame(false, 0x1, &[b'x'; 3000])
        .await
        .expect("sent");
    let _ = fragmented.send_frame(true, 0x0, &[b'x'; 3000]).await;
    assert_eq!(
        fragmented.wait_close(WAIT).await.expect("closed"),
        1009,
        "{driver}: fragments over the bound"
    );
    // Protocol errors close with 1002, invalid UTF-8 with 1007.
    for (what, fin, opcode, payload, code) in [
        ("a reserved opcode", true, 0x3, &b""[..], 1002),
        ("a fragmented ping", false, 0x9, &b""[..], 1002),
        ("a continuation of nothing", true, 0x0, &b"x"[..], 1002),
        ("invalid UTF-8", true, 0x1, &b"\xce\xba\xff"[..], 1007),
    ] {
        let mut socket = connect(&stack.gateway, 4).await;
        let _ = socket.send_frame(fin, opcode, payload).await;
        assert_eq!(
            socket.wait_close(WAIT).await.expect("closed"),
            code,
            "{driver}: {what}"
        );
    }

    // An upgrade on another path is not a socket.
    let elsewhere = WsClient::connect(
        &stack.gateway.ws_url("/ws/elsewhere/"),
        TokenIn::Header(token(3)),
    )
    .await
    .err()
    .expect("no socket there");
    assert_eq!(elsewhere.status(), Some(404), "{driver}: {elsewhere}");
}

#[tokio::test]
async fn the_direct_driver_speaks_the_protocol() {
    same_behaviour("direct").await;
}

#[tokio::test]
async fn the_actix_ws_driver_speaks_the_protocol() {
    same_behaviour("actix-ws").await;
}
