//! Checks shared-proto against vectors produced by the real Python libraries
//! (msgpack, json, channels_redis) — see `testdata/gen_vectors.py`. Nothing
//! here runs Python; the vectors are compiled in.

mod common;
mod vectors;

use common::same_value;

use rmpv::Value;
use shared_proto::{
    group_key, is_valid_channel_name, is_valid_group_name, non_local_part, pubsub_group_channel,
    render_float, render_notification, render_passthrough, render_str, render_value, shard_index,
    Channels, DecodeError, Message, PayloadCodec, SerializerFormat,
};

/// rmpv's own reader is independent of the decoder under test.
fn reference_value(packed: &[u8]) -> Value {
    let mut cursor = packed;
    let value = rmpv::decode::read_value(&mut cursor).expect("vector is valid msgpack");
    assert!(cursor.is_empty(), "vector has trailing bytes");
    value
}

#[test]
fn float_repr_matches_python() {
    let mut out = String::new();
    for (bits, expected) in vectors::FLOAT_REPR {
        out.clear();
        render_float(f64::from_bits(*bits), &mut out);
        assert_eq!(out, *expected, "bits {bits:#018x}");
    }
    out.clear();
    render_float(f64::NAN, &mut out);
    assert_eq!(out, vectors::NAN_JSON);
    assert!(vectors::FLOAT_REPR.len() > 2000);
}

#[test]
fn string_escaping_matches_python() {
    let mut out = String::new();
    for (input, expected) in vectors::JSON_STRINGS {
        out.clear();
        render_str(input, &mut out);
        assert_eq!(out, *expected, "input {input:?}");
    }
}

#[test]
fn value_rendering_matches_python() {
    let mut out = String::new();
    for (what, packed, expected) in vectors::PYJSON_VALUES {
        out.clear();
        render_value(&reference_value(packed), &mut out).unwrap_or_else(|error| {
            panic!("{what}: {error}");
        });
        assert_eq!(out, *expected, "{what}");
    }
}

#[test]
fn values_python_cannot_render_are_errors() {
    let mut out = String::new();
    for (what, packed, python_error) in vectors::PYJSON_ERRORS {
        assert_eq!(*python_error, "TypeError");
        assert!(
            render_value(&reference_value(packed), &mut out).is_err(),
            "{what}"
        );
        assert!(out.is_empty(), "{what} left output behind");
    }
}

#[test]
fn msgpack_encoding_is_byte_identical_to_packb() {
    let codec = PayloadCodec::pubsub_layer(SerializerFormat::Msgpack);
    for packed in vectors::PACKB_MESSAGES {
        let message = Message::from_value(reference_value(packed)).expect("vector is a map");
        assert_eq!(codec.serialize(&message).unwrap(), *packed);
        assert_eq!(codec.decode(packed).unwrap(), message);
    }
}

#[test]
fn big_container_headers_match_packb() {
    let codec = PayloadCodec::pubsub_layer(SerializerFormat::Msgpack);
    for (kind, length, header, total) in vectors::PACKB_BIG_HEADERS {
        let value = match *kind {
            "str" => Value::from("a".repeat(*length)),
            "bin" => Value::Binary(vec![b'a'; *length]),
            "array" => Value::Array(vec![Value::Nil; *length]),
            "map" => Value::Map(
                (0..*length)
                    .map(|index| (Value::from(index.to_string()), Value::Nil))
                    .collect(),
            ),
            "ext" => Value::Ext(9, vec![b'a'; *length]),
            other => panic!("unknown kind {other}"),
        };
        // Wrap in a one-entry map and skip its 3-byte header (fixmap, fixstr "v").
        let message = Message::from_value(Value::Map(vec![(Value::from("v"), value)])).unwrap();
        let encoded = codec.serialize(&message).unwrap();
        assert_eq!(&encoded[..3], b"\x81\xa1v");
        assert_eq!(&encoded[3..3 + header.len()], *header, "{kind} {length}");
        assert_eq!(encoded.len() - 3, *total, "{kind} {length}");
    }
}

#[test]
fn msgpack_decoding_accepts_what_unpackb_accepts() {
    let codec = PayloadCodec::pubsub_layer(SerializerFormat::Msgpack);
    for (what, input, repacked) in vectors::UNPACKB_OK {
        let message = codec
            .decode(input)
            .unwrap_or_else(|error| panic!("{what}: {error}"));
        assert!(
            same_value(&message.clone().into_value(), &reference_value(repacked)),
            "{what}: {message:?}"
        );
        assert_eq!(codec.serialize(&message).unwrap(), *repacked, "{what}");
    }
}

#[test]
fn msgpack_decoding_rejects_what_unpackb_rejects() {
    let codec = PayloadCodec::pubsub_layer(SerializerFormat::Msgpack);
    for (what, input, python_error) in vectors::UNPACKB_ERRORS {
        let result = codec.decode(input);
        assert!(
            matches!(result, Err(DecodeError::Msgpack { .. })),
            "{what} (Python: {python_error}): {result:?}"
        );
    }
}

#[test]
fn nesting_limit_is_pythons() {
    assert_eq!(vectors::UNPACKB_MAX_NESTING, shared_proto::MAX_NESTING);
    let codec = PayloadCodec::pubsub_layer(SerializerFormat::Msgpack);
    let mut at_limit = b"\x81\xa1a".repeat(shared_proto::MAX_NESTING - 1);
    at_limit.push(0x90);
    assert!(codec.decode(&at_limit).is_ok());
    let mut beyond = b"\x81\xa1a".repeat(shared_proto::MAX_NESTING);
    beyond.push(0x90);
    assert_eq!(
        codec.decode(&beyond).is_ok(),
        vectors::UNPACKB_EMPTY_CONTAINER_BEYOND_LIMIT_OK
    );
}

#[test]
fn json_decoding_matches_json_loads() {
    let codec = PayloadCodec::pubsub_layer(SerializerFormat::Json);
    for (what, input, repacked) in vectors::JSON_LOADS_OK {
        let message = codec
            .decode(input)
            .unwrap_or_else(|error| panic!("{what}: {error}"));
        assert!(
            same_value(&message.into_value(), &reference_value(repacked)),
            "{what}"
        );
    }
}

#[test]
fn json_decoding_rejections() {
    let codec = PayloadCodec::pubsub_layer(SerializerFormat::Json);
    for (what, input, expected, python) in vectors::JSON_LOADS_REJECTED {
        let result = codec.decode(input);
        match *expected {
            "NotAMap" => assert!(
                matches!(result, Err(DecodeError::NotAMap { .. })),
                "{what}: {result:?}"
            ),
            _ => assert!(
                matches!(result, Err(DecodeError::Json { .. })),
                "{what} (Python: {python}): {result:?}"
            ),
        }
    }
}

#[test]
fn json_encoding_is_byte_identical_to_json_dumps() {
    let codec = PayloadCodec::pubsub_layer(SerializerFormat::Json);
    for serialized in vectors::JSON_SERIALIZED {
        let message = codec.decode(serialized).unwrap();
        let encoded = codec.serialize(&message).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&encoded),
            String::from_utf8_lossy(serialized)
        );
    }
}

#[test]
fn real_channels_redis_payloads() {
    for case in vectors::LAYER_PAYLOADS {
        let format: SerializerFormat = case.format.parse().unwrap();
        let codec = PayloadCodec::new(format, case.prefix_length);
        let message = codec
            .decode(case.payload)
            .unwrap_or_else(|error| panic!("{}: {error}", case.what));
        assert_eq!(
            message.message_type(),
            Some(case.message_type),
            "{}",
            case.what
        );

        match (message.channels(), case.channels) {
            (Ok(channels), Some(expected)) => {
                assert_eq!(matches!(channels, Channels::One(_)), case.single_channel);
                let names: Vec<&str> = channels.iter().map(Result::unwrap).collect();
                assert_eq!(names, expected, "{}", case.what);
            }
            (Err(_), None) => {}
            (got, expected) => panic!("{}: {got:?} vs {expected:?}", case.what),
        }

        let mut frame = String::new();
        match (render_notification(&message, &mut frame), case.notification) {
            (Ok(()), Some(expected)) => assert_eq!(frame, expected, "{}", case.what),
            (Err(_), None) => assert!(frame.is_empty()),
            (got, expected) => panic!("{}: {got:?} vs {expected:?}", case.what),
        }

        frame.clear();
        render_passthrough(&message, &mut frame).unwrap();
        assert_eq!(frame, case.passthrough, "{}", case.what);

        // What we write must read back identically through the same codec.
        let body = codec.strip_random_prefix(case.payload).unwrap();
        assert_eq!(codec.serialize(&message).unwrap(), body, "{}", case.what);
    }
}

#[test]
fn consistent_hash_matches_channels_redis() {
    for (name, indices) in vectors::CONSISTENT_HASH {
        for (ring_size, expected) in (1..=7).zip(indices) {
            assert_eq!(
                shard_index(name, ring_size),
                *expected,
                "{name:?} ring {ring_size}"
            );
        }
    }
    for (name, ring_size, expected) in vectors::CONSISTENT_HASH_BIG_RINGS {
        assert_eq!(
            shard_index(name, *ring_size),
            *expected,
            "{name:?} ring {ring_size}"
        );
    }
}

#[test]
fn keys_match_channels_redis() {
    for (prefix, group, core_key, pubsub_channel) in vectors::GROUP_KEYS {
        assert_eq!(group_key(prefix, group), *core_key);
        assert_eq!(pubsub_group_channel(prefix, group), *pubsub_channel);
    }
}

#[test]
fn name_rules_match_channels_for_ascii_names() {
    for (name, non_local, valid_channel, valid_group) in vectors::NAME_SAMPLES {
        assert_eq!(non_local_part(name), *non_local, "{name:?}");
        assert_eq!(is_valid_channel_name(name), *valid_channel, "{name:?}");
        assert_eq!(is_valid_group_name(name), *valid_group, "{name:?}");
    }
}

#[test]
fn names_python_accepts_but_the_gateway_rejects() {
    for (name, python_channel_ok, python_group_ok) in vectors::PYTHON_LENIENT_NAMES {
        assert!(
            *python_channel_ok || *python_group_ok,
            "{name:?} is not lenient"
        );
        assert!(!is_valid_channel_name(name), "{name:?}");
        assert!(!is_valid_group_name(name), "{name:?}");
    }
}

/// The single-pass routing reader agrees with the tree path on every body
/// Python produced or refused.
#[test]
fn single_pass_routing_matches_the_tree_path_on_every_vector() {
    let mut single_pass = 0;
    let mut check = |format: SerializerFormat, what: &str, body: &[u8]| {
        if let Err(difference) = common::routing_differences(format, body) {
            panic!("{what}: {difference}");
        }
        let codec = PayloadCodec::pubsub_layer(format);
        if codec
            .route_view(body)
            .is_ok_and(|view| view.is_single_pass())
        {
            single_pass += 1;
        }
    };
    let msgpack = SerializerFormat::Msgpack;
    let json = SerializerFormat::Json;
    for packed in vectors::PACKB_MESSAGES {
        check(msgpack, "packb message", packed);
    }
    for (what, input, repacked) in vectors::UNPACKB_OK {
        check(msgpack, what, input);
        check(msgpack, what, repacked);
    }
    for (what, input, _) in vectors::UNPACKB_ERRORS {
        check(msgpack, what, input);
    }
    for (what, packed, _) in vectors::PYJSON_VALUES.iter().chain(vectors::PYJSON_ERRORS) {
        check(msgpack, what, packed);
    }
    for (what, input, repacked) in vectors::JSON_LOADS_OK {
        check(json, what, input);
        check(msgpack, what, repacked);
    }
    for (what, input, _, _) in vectors::JSON_LOADS_REJECTED {
        check(json, what, input);
    }
    for serialized in vectors::JSON_SERIALIZED {
        check(json, "json.dumps message", serialized);
    }
    for case in vectors::LAYER_PAYLOADS {
        let format: SerializerFormat = case.format.parse().unwrap();
        let body = PayloadCodec::new(format, case.prefix_length)
            .strip_random_prefix(case.payload)
            .unwrap();
        check(format, case.what, body);
        let view = PayloadCodec::new(format, 0).route_view(body).unwrap();
        let names: Option<Vec<&str>> = view
            .channels()
            .ok()
            .map(|names| names.map(Result::unwrap).collect());
        assert_eq!(names.as_deref(), case.channels, "{}", case.what);
        let mut frame = String::new();
        match (view.render_notification(&mut frame), case.notification) {
            (Ok(()), Some(expected)) => assert_eq!(frame, expected, "{}", case.what),
            (Err(_), None) => assert!(frame.is_empty()),
            (got, expected) => panic!("{}: {got:?} vs {expected:?}", case.what),
        }
    }
    assert!(
        single_pass > 50,
        "only {single_pass} bodies took the single pass"
    );
}
