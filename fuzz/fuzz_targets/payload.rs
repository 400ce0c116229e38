//! Fuzzes the channels_redis payload decoders in `shared_proto::payload`:
//! the tree decoder (`PayloadCodec::decode` / `deserialize`) and the
//! single-pass `RouteView`, for msgpack and JSON, with and without the
//! random prefix. Invariants checked, besides "never panics": the two
//! decoders make the same decision and agree on the type, the channels, both
//! frames and every field (the differential check the property tests use,
//! shared with them), and a decoded message re-encodes and decodes back to
//! the same value. It must not do I/O or relax any of those checks.
#![no_main]

#[path = "../../shared-proto/tests/common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use shared_proto::{PayloadCodec, SerializerFormat};

const FORMATS: [SerializerFormat; 2] = [SerializerFormat::Msgpack, SerializerFormat::Json];

fuzz_target!(|data: &[u8]| {
    for format in FORMATS {
        // Both routing paths on the plaintext body.
        if let Err(difference) = common::routing_differences(format, data) {
            panic!("{format}: single-pass and tree decoders differ: {difference}");
        }
        for prefix in [0, PayloadCodec::CORE_LAYER_PREFIX_LENGTH] {
            let codec = PayloadCodec::new(format, prefix);
            let Ok(message) = codec.decode(data) else {
                continue;
            };
            // What was accepted must re-encode, and decode to the same value.
            let body = match codec.serialize(&message) {
                Ok(body) => body,
                Err(error) => panic!("{format}: decoded message does not re-encode: {error}"),
            };
            match codec.deserialize(&body) {
                Ok(again) => assert!(
                    common::same_value(&again.into_value(), &message.into_value()),
                    "{format}: re-encoded message decodes to another value"
                ),
                Err(error) => panic!("{format}: re-encoded message does not decode: {error}"),
            }
        }
    }
});
