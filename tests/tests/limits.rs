//! Abuse resistance: per-process, per-user and per-address socket limits
//! (the proxy header believed only from trusted proxies), the connect rate,
//! the inbound frame rate, and token expiry on open sockets with in-band
//! refresh. Each limit answers with its documented status or close code and
//! is counted under its metric label.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tests::tokens::{claims_for_user, mint};
use tests::{GatewayConfig, RedisServer, TokenIn, WsClient};

async fn gateway_with(lines: &[&str]) -> (RedisServer, tests::GatewayProcess) {
    let redis = RedisServer::start().expect("redis");
    let mut config = GatewayConfig::new(&redis.url()).expect("config");
    for line in lines {
        config = config.line("limits", *line);
    }
    let gateway = start_gateway(&mut config).await;
    (redis, gateway)
}

async fn status_of(gateway: &tests::GatewayProcess, user: u32, headers: &[(&str, &str)]) -> u16 {
    match WsClient::connect_with(
        &gateway.ws_url("/ws/notifications/"),
        TokenIn::Query(token(user)),
        headers,
        WAIT,
    )
    .await
    {
        Ok(mut socket) => {
            let _ = socket.close().await;
            101
        }
        Err(error) => error.status().unwrap_or(0),
    }
}

#[tokio::test]
async fn process_and_user_limits_refuse_before_the_upgrade() {
    let (_redis, gateway) = gateway_with(&["max_sockets = 2", "max_sockets_per_user = 1"]).await;
    let first = connect(&gateway, 1).await;
    let same_user = WsClient::connect(
        &gateway.ws_url("/ws/notifications/"),
        TokenIn::Query(token(1)),
    )
    .await;
    assert_eq!(
        same_user.err().and_then(|e| e.status()),
        Some(429),
        "per-user limit"
    );
    let second = connect(&gateway, 2).await;
    let full = WsClient::connect(
        &gateway.ws_url("/ws/notifications/"),
        TokenIn::Query(token(3)),
    )
    .await;
    assert_eq!(
        full.err().and_then(|e| e.status()),
        Some(503),
        "process full"
    );
    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _again = connect(&gateway, 3).await;
    assert_eq!(
        metric(&gateway, "gateway_connects_total{result=\"user_full\"} ").await,
        1.0
    );
    assert_eq!(
        metric(&gateway, "gateway_connects_total{result=\"process_full\"} ").await,
        1.0
    );
}

#[tokio::test]
async fn the_address_limit_believes_the_proxy_header_only_from_trusted_proxies() {
    let (_redis, trusting) = gateway_with(&[
        "max_sockets_per_ip = 1",
        "trusted_proxies = [\"127.0.0.0/8\"]",
    ])
    .await;
    let held = WsClient::connect_with(
        &trusting.ws_url("/ws/notifications/"),
        TokenIn::Query(token(1)),
        &[("X-Forwarded-For", "203.0.113.7")],
        WAIT,
    )
    .await
    .expect("first socket of that client");
    assert_eq!(
        status_of(&trusting, 2, &[("X-Forwarded-For", "203.0.113.7")]).await,
        429
    );
    assert_eq!(
        status_of(&trusting, 3, &[("X-Forwarded-For", "198.51.100.9")]).await,
        101
    );
    drop(held);

    let (_redis, untrusting) = gateway_with(&["max_sockets_per_ip = 1"]).await;
    let _held = connect(&untrusting, 1).await;
    assert_eq!(
        status_of(&untrusting, 2, &[("X-Forwarded-For", "198.51.100.9")]).await,
        429,
        "a header from an untrusted peer is ignored"
    );
    assert_eq!(
        metric(
            &untrusting,
            "gateway_connects_total{result=\"address_full\"} "
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn the_connect_rate_is_limited() {
    let (_redis, gateway) = gateway_with(&["connect_rate = 1.0", "connect_burst = 2.0"]).await;
    // Handshakes without a valid token never spend the process's budget:
    // an anonymous flood cannot make the next reconnect of a user a 429.
    let url = gateway.ws_url("/ws/notifications/");
    for credentials in [
        TokenIn::None,
        TokenIn::Query("not.a.token".into()),
        TokenIn::Query(mint("another-secret", claims_for_user(1, 300))),
    ]
    .into_iter()
    .cycle()
    .take(30)
    {
        let refused = WsClient::connect(&url, credentials).await;
        assert_eq!(refused.err().and_then(|error| error.status()), Some(401));
    }
    let statuses = [
        status_of(&gateway, 1, &[]).await,
        status_of(&gateway, 2, &[]).await,
        status_of(&gateway, 3, &[]).await,
    ];
    assert_eq!(statuses, [101, 101, 429]);
    assert_eq!(
        metric(&gateway, "gateway_connects_total{result=\"connect_rate\"} ").await,
        1.0
    );
}

#[tokio::test]
async fn each_client_address_has_its_own_connect_rate_spent_before_the_token() {
    let (_redis, gateway) = gateway_with(&[
        "connect_rate_per_ip = 0.5",
        "connect_burst_per_ip = 2.0",
        "trusted_proxies = [\"127.0.0.0/8\"]",
    ])
    .await;
    let from = |address: &'static str| [("X-Forwarded-For", address)];
    // Two handshakes of any kind from one address, then 429 before the
    // token is even read (no third verification is counted).
    let url = gateway.ws_url("/ws/notifications/");
    for _ in 0..2 {
        let refused = WsClient::connect_with(
            &url,
            TokenIn::Query("not.a.token".into()),
            &from("203.0.113.7"),
            WAIT,
        )
        .await;
        assert_eq!(refused.err().and_then(|error| error.status()), Some(401));
    }
    assert_eq!(status_of(&gateway, 1, &from("203.0.113.7")).await, 429);
    assert_eq!(
        metric(&gateway, "gateway_connects_total{result=\"unauthorized\"} ").await,
        2.0
    );
    assert_eq!(
        metric(
            &gateway,
            "gateway_connects_total{result=\"address_connect_rate\"} "
        )
        .await,
        1.0
    );
    // Other addresses, and another /64 of IPv6, are not held back; one /64
    // is one address.
    assert_eq!(status_of(&gateway, 2, &from("198.51.100.9")).await, 101);
    assert_eq!(status_of(&gateway, 3, &from("2001:db8:1:2::1")).await, 101);
    assert_eq!(status_of(&gateway, 4, &from("2001:db8:1:2::2")).await, 101);
    assert_eq!(status_of(&gateway, 5, &from("2001:db8:1:2::3")).await, 429);
    assert_eq!(status_of(&gateway, 6, &from("2001:db8:1:3::1")).await, 101);
}

#[tokio::test]
async fn a_client_that_talks_too_much_is_closed_with_4007() {
    let (_redis, gateway) = gateway_with(&["inbound_rate = 1.0", "inbound_burst = 3.0"]).await;
    let mut socket = connect(&gateway, 1).await;
    for _ in 0..10 {
        let _ = socket.send_text(r#"{"type": "ping"}"#).await;
    }
    assert_eq!(socket.wait_close(WAIT).await.expect("closed"), 4007);
}

#[tokio::test]
async fn a_client_streaming_pongs_is_closed_with_4007_too() {
    let (_redis, gateway) = gateway_with(&["inbound_rate = 1.0", "inbound_burst = 3.0"]).await;
    let mut socket = connect(&gateway, 1).await;
    for _ in 0..10 {
        let _ = socket.send_frame(true, 0xA, b"").await;
    }
    assert_eq!(socket.wait_close(WAIT).await.expect("closed"), 4007);
}

#[tokio::test]
async fn the_address_limit_reads_every_line_of_the_proxy_header() {
    let (_redis, gateway) = gateway_with(&[
        "max_sockets_per_ip = 1",
        "trusted_proxies = [\"127.0.0.0/8\"]",
    ])
    .await;
    // Each handshake forges a first line; the proxy appends the address it
    // saw on a line of its own (HAProxy's `option forwardfor`).
    let _held = WsClient::connect_with(
        &gateway.ws_url("/ws/notifications/"),
        TokenIn::Query(token(1)),
        &[
            ("X-Forwarded-For", "203.0.113.1"),
            ("X-Forwarded-For", "198.51.100.7"),
        ],
        WAIT,
    )
    .await
    .expect("first socket of that client");
    for forged in ["203.0.113.2", "203.0.113.3, 192.0.2.9", "garbage"] {
        assert_eq!(
            status_of(
                &gateway,
                2,
                &[
                    ("X-Forwarded-For", forged),
                    ("X-Forwarded-For", "198.51.100.7")
                ]
            )
            .await,
            429,
            "forged first line {forged:?}"
        );
    }
}

#[tokio::test]
async fn an_expired_token_closes_the_socket_unless_refreshed_in_band() {
    let (redis, gateway) = gateway_with(&[]).await;
    let short = |user: u32| mint(SECRET, claims_for_user(user, 2));
    let url = gateway.ws_url("/ws/notifications/");

    let mut lapsing = WsClient::connect(&url, TokenIn::Query(short(1)))
        .await
        .expect("open");
    assert_eq!(
        lapsing
            .wait_close(Duration::from_secs(6))
            .await
            .expect("closed"),
        4002
    );

    let mut refreshed = WsClient::connect(&url, TokenIn::Query(short(2)))
        .await
        .expect("open");
    let fresh = mint(SECRET, claims_for_user(2, 300));
    refreshed
        .send_text(&json!({"type": "refresh", "token": fresh}).to_string())
        .await
        .expect("refresh sent");
    let reply = refreshed.recv_json(WAIT).await.expect("refresh answered");
    assert_eq!(reply["type"], "refreshed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut publisher = publisher_for(&redis, json!({})).await;
    publisher
        .group_send("user_2", notification(r#""still here""#))
        .await
        .expect("group_send");
    expect_frame(&mut refreshed, r#"{"message": "still here"}"#).await;

    let mut hijack = WsClient::connect(&url, TokenIn::Query(token(3)))
        .await
        .expect("open");
    hijack
        .send_text(&json!({"type": "refresh", "token": token(4)}).to_string())
        .await
        .expect("sent");
    assert_eq!(
        hijack.wait_close(WAIT).await.expect("closed"),
        4003,
        "a refresh cannot switch users"
    );
}

#[tokio::test]
async fn binary_and_oversized_frames_are_refused_with_their_codes() {
    let (_redis, gateway) = gateway_with(&[]).await;
    let mut binary = connect(&gateway, 1).await;
    binary.send_binary(b"\x00\x01").await.expect("sent");
    assert_eq!(binary.wait_close(WAIT).await.expect("closed"), 1003);

    let mut oversized = connect(&gateway, 2).await;
    // server.max_inbound_frame is 4096 bytes by default.
    let _ = oversized.send_text(&"x".repeat(10_000)).await;
    assert_eq!(oversized.wait_close(WAIT).await.expect("closed"), 1009);
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let redis = RedisServer::start().expect("redis");
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        .line("server", "handshake_timeout = \"1s\"");
    let gateway = start_gateway(&mut config).await;
    let address = gateway
        .ws_url("")
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("tcp");
    stream
        .write_all(b"GET /ws/notifications/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial request");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the gateway closed the slow handshake");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within the handshake timeout"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}
