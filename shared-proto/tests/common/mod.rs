//! Helpers shared by the integration tests of shared-proto, and by the
//! `payload` fuzz target (fuzz/fuzz_targets/payload.rs includes this file).

use rmpv::Value;
use shared_proto::{render_notification, render_passthrough, PayloadCodec, SerializerFormat};

/// Equality that treats two NaNs with the same bits as equal.
pub fn same_value(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::F64(a), Value::F64(b)) => a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y))
        }
        (Value::Map(a), Value::Map(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| same_value(ka, kb) && same_value(va, vb))
        }
        _ => left == right,
    }
}

/// Everything the gateway routes on, read through the tree path
/// ([`PayloadCodec::deserialize`]) and through the single-pass path
/// ([`PayloadCodec::route_view`]); `Err` describes the first difference.
/// `body` is a plaintext body (no prefix, not encrypted).
pub fn routing_differences(format: SerializerFormat, body: &[u8]) -> Result<(), String> {
    let codec = PayloadCodec::pubsub_layer(format);
    let (message, view) = match (codec.deserialize(body), codec.route_view(body)) {
        (Ok(message), Ok(view)) => (message, view),
        (Err(tree), Err(fast)) if tree == fast => return Ok(()),
        (tree, fast) => {
            return Err(format!(
                "decisions differ: tree {:?} vs single-pass {:?}",
                tree.err(),
                fast.err()
            ))
        }
    };
    if message.message_type() != view.message_type() {
        return Err(format!(
            "type: {:?} vs {:?}",
            message.message_type(),
            view.message_type()
        ));
    }
    let tree_channels = message
        .channels()
        .map(|channels| channels.iter().collect::<Vec<_>>());
    let fast_channels = view.channels().map(|names| {
        let length = names.len();
        let collected = names.collect::<Vec<_>>();
        (length, collected)
    });
    match (&tree_channels, &fast_channels) {
        (Ok(tree), Ok((length, fast))) if tree == fast && *length == fast.len() => {}
        (Err(tree), Err(fast)) if tree == fast => {}
        _ => return Err(format!("channels: {tree_channels:?} vs {fast_channels:?}")),
    }
    let render = |notification: bool| {
        let mut tree = String::from("prefix:");
        let mut fast = String::from("prefix:");
        let tree_result = if notification {
            render_notification(&message, &mut tree)
        } else {
            render_passthrough(&message, &mut tree)
        };
        let fast_result = if notification {
            view.render_notification(&mut fast)
        } else {
            view.render_passthrough(&mut fast)
        };
        if tree_result != fast_result || tree != fast {
            return Err(format!(
                "{} frame: {tree_result:?} {tree:?} vs {fast_result:?} {fast:?}",
                if notification {
                    "notification"
                } else {
                    "passthrough"
                }
            ));
        }
        Ok(())
    };
    render(true)?;
    render(false)?;
    for (key, value) in message.entries() {
        let Some(key) = key.as_str() else { continue };
        let field = view.field(key);
        let same = field.is_some_and(|field| {
            field.as_str() == value.as_str()
                && field.as_f64().map(f64::to_bits) == value.as_f64().map(f64::to_bits)
                && field
                    .to_value()
                    .is_some_and(|decoded| same_value(&decoded, value))
        });
        if !same {
            return Err(format!("field {key:?}: {value:?} vs {field:?}"));
        }
    }
    match view.to_message() {
        Ok(rebuilt) if same_value(&rebuilt.clone().into_value(), &message.into_value()) => Ok(()),
        other => Err(format!("to_message: {other:?}")),
    }
}
