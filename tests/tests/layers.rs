//! channels_redis deployments beyond the default: encrypted payloads (with
//! key rotation and the Fernet TTL) and the JSON serializer — each published
//! by the real Python library configured the way Django would be.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use shared_proto::{Encryption, Message, PayloadCodec, SerializerFormat};
use tests::python::JsonText;
use tests::RedisServer;

#[tokio::test]
async fn encrypted_payloads_decrypt_with_any_configured_key() {
    let mut stack = stack_with(|config| {
        config.line(
            "layer",
            r#"symmetric_encryption_keys = ["new-key", "old-key"]"#,
        )
    })
    .await;
    let mut socket = connect(&stack.gateway, 1).await;
    for keys in [json!(["old-key"]), json!(["new-key", "old-key"])] {
        let mut publisher =
            publisher_for(&stack.redis, json!({ "symmetric_encryption_keys": keys })).await;
        publisher
            .group_send("user_1", notification(r#""secret ✓""#))
            .await
            .expect("group_send");
        expect_frame(&mut socket, r#"{"message": "secret \u2713"}"#).await;
    }

    let mut stranger = publisher_for(
        &stack.redis,
        json!({ "symmetric_encryption_keys": ["other"] }),
    )
    .await;
    stranger
        .group_send("user_1", notification(r#""unreadable""#))
        .await
        .expect("group_send");
    stack
        .notify("user_1", r#""plain text is refused too""#)
        .await;
    socket
        .expect_silence(Duration::from_millis(500))
        .await
        .expect("nothing undecryptable is delivered");
    assert_eq!(
        metric(
            &stack.gateway,
            "gateway_drops_total{reason=\"decode_error\"} "
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn encrypted_payloads_older_than_the_fernet_ttl_are_dropped_and_counted() {
    let stack =
        stack_with(|config| config.line("layer", r#"symmetric_encryption_keys = ["k"]"#)).await;
    let mut socket = connect(&stack.gateway, 2).await;
    let channel = group_members(&stack.redis, "user_2")
        .await
        .pop()
        .expect("member");
    let queue_key = format!("asgi{}", shared_proto::non_local_part(&channel));
    let encryption = Encryption::new(&["k"], Some(70)).expect("keys");
    let codec = PayloadCodec::new(SerializerFormat::Msgpack, 12);
    let now = tests::tokens::now_secs() as u64;
    for (age, text) in [(200, "too old"), (5, "fresh")] {
        let message = Message::from_value(rmpv::Value::Map(vec![
            ("type".into(), "send_notification".into()),
            ("message".into(), text.into()),
            (
                "__asgi_channel__".into(),
                rmpv::Value::Array(vec![channel.as_str().into()]),
            ),
        ]))
        .expect("message");
        let mut payload = vec![7u8; 12];
        payload.extend(encryption.encrypt(&codec.serialize(&message).expect("msgpack"), now - age));
        stack
            .redis
            .cmd_value(&[
                b"ZADD".as_slice(),
                queue_key.as_bytes(),
                now.to_string().as_bytes(),
                &payload,
            ])
            .await
            .expect("zadd");
    }
    expect_frame(&mut socket, r#"{"message": "fresh"}"#).await;
    assert_eq!(
        metric(&stack.gateway, "gateway_drops_total{reason=\"expired\"} ").await,
        1.0
    );
}

#[tokio::test]
async fn the_json_serializer_delivers_the_same_frames() {
    let redis = RedisServer::start().expect("redis");
    let mut config = tests::GatewayConfig::new(&redis.url())
        .expect("config")
        .line("layer", r#"serializer_format = "json""#);
    let gateway = start_gateway(&mut config).await;
    let mut publisher = publisher_for(&redis, json!({ "serializer_format": "json" })).await;
    let mut socket = connect(&gateway, 3).await;
    let value = r#"{"title": "Écrire", "n": [1, 2.5, null, true], "z": {"a": "😀"}}"#;
    let expected = publisher
        .expected_frame(JsonText::new(value))
        .await
        .expect("json.dumps");
    publisher
        .group_send("user_3", notification(value))
        .await
        .expect("group_send");
    expect_frame(&mut socket, &expected).await;
}

#[tokio::test]
async fn a_5000_message_burst_loses_nothing_with_the_documented_channel_capacity() {
    let redis = RedisServer::start().expect("redis");
    let mut config = tests::GatewayConfig::new(&redis.url()).expect("config");
    let gateway = start_gateway(&mut config).await;
    // What the README tells operators to add to CHANNEL_LAYERS.
    let mut publisher = publisher_for(
        &redis,
        json!({ "channel_capacity": { "specific.gw-*": 10000 } }),
    )
    .await;
    let mut socket = connect(&gateway, 4).await;
    send_sequence(&mut publisher, "user_4", 5000).await;
    expect_sequence(&mut socket, 5000).await;
    socket
        .expect_silence(Duration::from_millis(200))
        .await
        .expect("no duplicates");
    let stderr = publisher.stderr_text();
    assert!(
        !stderr.contains("over capacity"),
        "channels_redis dropped nothing: {stderr}"
    );
}
