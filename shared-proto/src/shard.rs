//! Which Redis host of a sharded channels_redis deployment a name lives on:
//! a bit-exact port of `channels_redis.utils._consistent_hash`.
//!
//! This module owns that formula only. It must not decide which name to hash
//! (group name, non-local channel part, full pub/sub channel name — see the
//! wire spec), nor know about connections.

/// CRC-32 is folded to this many buckets before being spread over the ring.
const BUCKETS: u32 = 4096;

/// `_consistent_hash(name, ring_size)` for a text name (hashed as UTF-8).
pub fn shard_index(name: &str, ring_size: usize) -> usize {
    shard_index_bytes(name.as_bytes(), ring_size)
}

/// `_consistent_hash(value, ring_size)` for raw bytes.
///
/// Python computes `int((crc32(value) & 0xFFF) / (4096 / float(ring_size)))`;
/// the same f64 operations are done here so every ring size rounds alike. A
/// ring of one (or, defensively, zero) hosts is always index 0.
pub fn shard_index_bytes(name: &[u8], ring_size: usize) -> usize {
    if ring_size <= 1 {
        return 0;
    }
    let bucket = crc32fast::hash(name) & (BUCKETS - 1);
    // usize → f64 is exact for any realistic ring size (below 2^53).
    let ring_divisor = f64::from(BUCKETS) / ring_size as f64;
    let index = (f64::from(bucket) / ring_divisor) as usize;
    // The quotient is mathematically below ring_size; keep that a guarantee.
    index.min(ring_size - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_host_is_zero() {
        assert_eq!(shard_index("anything", 1), 0);
        assert_eq!(shard_index("anything", 0), 0);
    }

    #[test]
    fn index_is_in_range() {
        for ring_size in 2..40 {
            for name in ["", "a", "user_42", "specific.abc!"] {
                assert!(shard_index(name, ring_size) < ring_size);
            }
        }
    }
}
