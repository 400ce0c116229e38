//! Property tests: encode/decode round trips, decoders that never panic on
//! arbitrary bytes, and string rendering that any JSON parser reads back.

mod common;

use common::same_value;
use proptest::collection::{vec, SizeRange};
use proptest::prelude::*;
use rmpv::Value;
use shared_proto::{
    parse_client_frame, render_float, render_str, render_value, Message, PayloadCodec,
    SerializerFormat,
};

fn cases(count: u32) -> ProptestConfig {
    ProptestConfig {
        cases: count,
        ..ProptestConfig::default()
    }
}

fn scalar(include_bytes: bool) -> BoxedStrategy<Value> {
    let mut options: Vec<BoxedStrategy<Value>> = vec![
        Just(Value::Nil).boxed(),
        any::<bool>().prop_map(Value::Boolean).boxed(),
        any::<i64>().prop_map(Value::from).boxed(),
        any::<u64>().prop_map(Value::from).boxed(),
        (-200i64..300).prop_map(Value::from).boxed(),
        any::<f64>().prop_map(Value::F64).boxed(),
        ".{0,40}".prop_map(Value::from).boxed(),
    ];
    if include_bytes {
        options.push(vec(any::<u8>(), 0..40).prop_map(Value::Binary).boxed());
        options.push(
            (0i8..=127, vec(any::<u8>(), 0..20))
                .prop_map(|(code, data)| Value::Ext(code, data))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(options).boxed()
}

/// Nested values as a Python publisher could build them; `include_bytes`
/// adds bin and ext, which only msgpack can carry.
fn nested(include_bytes: bool) -> BoxedStrategy<Value> {
    scalar(include_bytes)
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::Array),
                vec((".{0,12}", inner), 0..6).prop_map(|pairs| {
                    Value::Map(
                        pairs
                            .into_iter()
                            .map(|(key, value)| (Value::from(key), value))
                            .collect(),
                    )
                }),
            ]
        })
        .boxed()
}

fn message(include_bytes: bool, fields: impl Into<SizeRange>) -> impl Strategy<Value = Message> {
    vec((".{0,16}", nested(include_bytes)), fields).prop_map(|pairs| {
        let entries = pairs
            .into_iter()
            .map(|(key, value)| (Value::from(key), value))
            .collect();
        Message::from_value(Value::Map(entries)).expect("generated value is a map")
    })
}

fn codecs() -> [PayloadCodec; 4] {
    [
        PayloadCodec::core_layer(SerializerFormat::Msgpack),
        PayloadCodec::core_layer(SerializerFormat::Json),
        PayloadCodec::pubsub_layer(SerializerFormat::Msgpack),
        PayloadCodec::pubsub_layer(SerializerFormat::Json),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn msgpack_round_trip(message in message(true, 0..8)) {
        let mut rng = rand::rng();
        for prefix in [0, 12] {
            let codec = PayloadCodec::new(SerializerFormat::Msgpack, prefix);
            let payload = codec.encode(&message, &mut rng).unwrap();
            let decoded = codec.decode(&payload).unwrap();
            prop_assert!(same_value(&decoded.into_value(), &message.clone().into_value()));
        }
    }

    #[test]
    fn json_round_trip(message in message(false, 0..8)) {
        let mut rng = rand::rng();
        for prefix in [0, 12] {
            let codec = PayloadCodec::new(SerializerFormat::Json, prefix);
            let payload = codec.encode(&message, &mut rng).unwrap();
            let decoded = codec.decode(&payload).unwrap();
            prop_assert!(same_value(&decoded.into_value(), &message.clone().into_value()));
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..256)) {
        for codec in codecs() {
            let _ = codec.decode(&bytes);
        }
    }

    #[test]
    fn decoding_mutated_payloads_never_panics(
        message in message(true, 1..5),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        for codec in codecs() {
            let Ok(mut payload) = codec.serialize(&message) else { continue };
            for (index, byte) in &flips {
                let position = index.index(payload.len());
                payload[position] ^= byte;
            }
            let _ = codec.deserialize(&payload);
            let _ = codec.deserialize(&payload[..cut.index(payload.len() + 1)]);
        }
    }

    #[test]
    fn rendered_strings_parse_back(text in any::<String>()) {
        let mut out = String::new();
        render_str(&text, &mut out);
        prop_assert!(out.is_ascii());
        let parsed: String = serde_json::from_str(&out).unwrap();
        prop_assert_eq!(parsed, text);
    }

    #[test]
    fn rendered_finite_floats_parse_back(number in any::<f64>().prop_filter("finite", |n| n.is_finite())) {
        let mut out = String::new();
        render_float(number, &mut out);
        let parsed: f64 = out.parse().unwrap();
        prop_assert_eq!(parsed.to_bits(), number.to_bits());
    }

    #[test]
    fn rendered_values_are_valid_json(value in nested(false)) {
        let mut out = String::new();
        if render_value(&value, &mut out).is_ok() && !out.contains("NaN") && !out.contains("Infinity") {
            prop_assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{}", out);
        }
    }

    #[test]
    fn client_frame_parsing_never_panics(text in ".{0,200}") {
        let _ = parse_client_frame(&text);
    }
}

/// A `__asgi_channel__` value as channels_redis writes it (a name or a list
/// of names), plus the malformed shapes a hostile publisher could send.
fn channel_field() -> BoxedStrategy<Value> {
    let name = "specific\\.gw-[a-f0-9]{1,6}![a-f0-9+]{0,4}|.{0,12}";
    prop_oneof![
        4 => vec(name, 0..20).prop_map(|names| Value::Array(names.into_iter().map(Value::from).collect())),
        2 => name.prop_map(Value::from),
        1 => vec(nested(true), 0..6).prop_map(Value::Array),
        1 => nested(true),
    ]
    .boxed()
}

/// An event as the router sees it: maybe a `type` (usually
/// `send_notification`), maybe a `message`, maybe channels, maybe `sent_at`,
/// in any order among other fields, with repeated keys at times (anywhere:
/// the raw map is serialized as is, as a non-Python publisher could).
fn routed_event() -> impl Strategy<Value = Value> {
    let type_value = prop_oneof![
        3 => Just(Value::from("send_notification")),
        1 => Just(Value::from("gateway.canary")),
        1 => ".{0,10}".prop_map(Value::from),
        1 => nested(true),
    ];
    let sent_at = prop_oneof![
        any::<f64>().prop_map(Value::F64),
        any::<f32>().prop_map(Value::F32),
        any::<i64>().prop_map(Value::from),
        nested(true),
    ];
    (
        vec((".{0,6}", nested(true)), 0..4),
        proptest::option::of(type_value),
        proptest::option::of(nested(true)),
        proptest::option::of(channel_field()),
        proptest::option::of(sent_at),
        any::<prop::sample::Index>(),
        proptest::option::of((any::<prop::sample::Index>(), nested(true))),
        any::<bool>(),
    )
        .prop_map(
            |(others, kind, message, channels, sent_at, position, repeat, binary_key)| {
                let mut entries: Vec<(Value, Value)> = others
                    .into_iter()
                    .map(|(key, value)| (Value::from(key), value))
                    .collect();
                let named = [
                    ("type", kind),
                    ("message", message),
                    ("__asgi_channel__", channels),
                    ("sent_at", sent_at),
                ];
                for (key, value) in named {
                    if let Some(value) = value {
                        let at = position.index(entries.len() + 1);
                        entries.insert(at, (Value::from(key), value));
                    }
                }
                if let Some((index, value)) = repeat {
                    if !entries.is_empty() {
                        let key = entries[index.index(entries.len())].0.clone();
                        entries.push((key, value));
                    }
                }
                if binary_key {
                    entries.push((Value::Binary(b"type".to_vec()), Value::from(1)));
                }
                Value::Map(entries)
            },
        )
}

fn packed(value: &Value) -> Vec<u8> {
    let mut body = Vec::new();
    rmpv::encode::write_value(&mut body, value).expect("writing to a Vec");
    body
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn single_pass_routing_matches_the_tree_path(event in routed_event()) {
        let body = packed(&event);
        if let Err(difference) = common::routing_differences(SerializerFormat::Msgpack, &body) {
            prop_assert!(false, "{}\n{:?}", difference, event);
        }
    }

    #[test]
    fn single_pass_routing_matches_for_encoded_messages(message in message(true, 0..8)) {
        for format in [SerializerFormat::Msgpack, SerializerFormat::Json] {
            let Ok(body) = PayloadCodec::pubsub_layer(format).serialize(&message) else { continue };
            if let Err(difference) = common::routing_differences(format, &body) {
                prop_assert!(false, "{}", difference);
            }
        }
    }

    #[test]
    fn single_pass_routing_matches_on_mutated_payloads(
        event in routed_event(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = packed(&event);
        for (index, byte) in &flips {
            let position = index.index(body.len());
            body[position] ^= byte;
        }
        for candidate in [&body[..], &body[..cut.index(body.len() + 1)]] {
            if let Err(difference) = common::routing_differences(SerializerFormat::Msgpack, candidate) {
                prop_assert!(false, "{}\n{:?}", difference, candidate);
            }
        }
    }

    #[test]
    fn single_pass_routing_of_arbitrary_bytes(bytes in vec(any::<u8>(), 0..256)) {
        for format in [SerializerFormat::Msgpack, SerializerFormat::Json] {
            if let Err(difference) = common::routing_differences(format, &bytes) {
                prop_assert!(false, "{}\n{:?}", difference, bytes);
            }
        }
    }
}
