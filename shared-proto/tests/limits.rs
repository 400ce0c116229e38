//! The deepest input the decoders accept must be fully usable — decoded,
//! re-encoded, rendered, rebuilt and dropped — on an eighth of the 2 MiB
//! stack Rust and Tokio give their threads, in debug builds too.

use shared_proto::{
    render_message, render_notification, Message, PayloadCodec, SerializerFormat, MAX_NESTING,
};

const STACK_BUDGET: usize = 256 * 1024;

fn deepest_json_message() -> Vec<u8> {
    let mut body = b"{\"message\":".repeat(MAX_NESTING - 1);
    body.extend_from_slice(b"[]");
    body.extend_from_slice(&b"}".repeat(MAX_NESTING - 1));
    body
}

#[test]
fn deepest_accepted_input_fits_a_small_stack() {
    let worker = std::thread::Builder::new()
        .stack_size(STACK_BUDGET)
        .spawn(|| {
            let json = PayloadCodec::pubsub_layer(SerializerFormat::Json);
            let message = json.decode(&deepest_json_message()).unwrap();

            let msgpack = PayloadCodec::pubsub_layer(SerializerFormat::Msgpack);
            let packed = msgpack.serialize(&message).unwrap();
            let decoded = msgpack.decode(&packed).unwrap();
            // Comparing bytes, not values: derived `PartialEq` recursion is
            // test-only and not what this budget is about.
            assert_eq!(msgpack.serialize(&decoded).unwrap(), packed);
            drop(message);

            let mut out = String::new();
            render_message(&decoded, &mut out).unwrap();
            out.clear();
            render_notification(&decoded, &mut out).unwrap();

            let rebuilt = Message::from_value(decoded.into_value()).unwrap();
            assert_eq!(
                json.serialize(&rebuilt).unwrap(),
                deepest_json_message_spaced()
            );
        })
        .unwrap();
    assert!(worker.join().is_ok());
}

/// What `json.dumps` makes of [`deepest_json_message`]: the same with `": "`.
fn deepest_json_message_spaced() -> Vec<u8> {
    let mut body = b"{\"message\": ".repeat(MAX_NESTING - 1);
    body.extend_from_slice(b"[]");
    body.extend_from_slice(&b"}".repeat(MAX_NESTING - 1));
    body
}
