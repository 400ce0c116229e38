//! Fuzzes the decryption path of channels_redis' `symmetric_encryption_keys`
//! (`shared_proto::Encryption::decrypt` and `PayloadCodec::decode_with`),
//! which reads untrusted bytes from Redis before anything is decoded.
//! Invariants: never panics, with or without a TTL; a token this module
//! encrypted decrypts back to the same bytes with any key list that holds
//! its key. It must not do I/O.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_proto::{Encryption, PayloadCodec, SerializerFormat};

/// A fixed "now" well past every timestamp a seed carries, and a TTL.
const NOW: u64 = 1_800_000_000;
const TTL: u64 = 70;

fuzz_target!(|data: &[u8]| {
    let keys: [&[u8]; 2] = [b"old key", b"current key"];
    let Ok(with_ttl) = Encryption::new(&keys, Some(TTL)) else {
        return;
    };
    let Ok(without_ttl) = Encryption::new(&keys, None) else {
        return;
    };
    let _ = with_ttl.decrypt(data, NOW);
    let _ = without_ttl.decrypt(data, NOW);
    let _ = without_ttl.decrypt(data, 0);
    let _ = with_ttl.decrypt(data, u64::MAX);
    for format in [SerializerFormat::Msgpack, SerializerFormat::Json] {
        let _ = PayloadCodec::core_layer(format).decode_with(data, Some(&with_ttl), NOW);
    }

    // Round trip: the input as plaintext, encrypted with the first key.
    let Ok(single) = Encryption::new(&[b"current key"], Some(TTL)) else {
        return;
    };
    let token = single.encrypt(data, NOW);
    match with_ttl.decrypt(&token, NOW) {
        Ok(plain) => assert_eq!(plain, data, "round trip changed the plaintext"),
        Err(error) => panic!("a fresh token does not decrypt: {error}"),
    }
});
