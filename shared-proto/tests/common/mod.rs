//! Helpers shared by the integration tests of shared-proto.

use rmpv::Value;

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
