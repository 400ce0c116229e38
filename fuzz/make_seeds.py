#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/<target>/.

Payload seeds are the byte strings of the Python-generated vectors in
shared-proto/tests/vectors/mod.rs (msgpack and JSON bodies, and whole
channels_redis payloads with their random prefix); the other targets' seeds
are written out here. Fernet seeds are well-formed tokens signed with the
fuzz target's key (random ciphertext, so they fail only at the padding),
built with the standard library alone. Re-running it rewrites the seeds; it
reads and writes nothing outside the repository.
"""

import ast
import base64
import hashlib
import hmac
import pathlib
import re
import struct

ROOT = pathlib.Path(__file__).resolve().parent
VECTORS = ROOT.parent / "shared-proto" / "tests" / "vectors" / "mod.rs"
MAX_SEEDS = 40
MAX_SEED_BYTES = 2048


def write(target, seeds):
    folder = ROOT / "seeds" / target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    unique = []
    for seed in seeds:
        if seed not in unique and len(seed) <= MAX_SEED_BYTES:
            unique.append(seed)
    for seed in unique[:MAX_SEEDS]:
        (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    print(f"{target}: {min(len(unique), MAX_SEEDS)} seeds")


def payload_seeds():
    source = VECTORS.read_text(encoding="utf-8")
    literals = re.findall(r'\bb"(?:[^"\\]|\\.)*"', source)
    # Rust byte-string escapes are a subset of Python's bytes escapes.
    values = [ast.literal_eval(literal) for literal in literals]
    layer = [v for v in values if len(v) > 12 and v[12:13] in (b"\x83", b"\x84", b"{")]
    rest = [v for v in values if v not in layer]
    # Whole payloads first, then alternate bodies so both formats get room.
    json_bodies = [v for v in rest if v[:1] in (b"{", b" ", b"[", b"\xef")]
    msgpack_bodies = [v for v in rest if v not in json_bodies]
    mixed = []
    for pair in zip(msgpack_bodies, json_bodies):
        mixed.extend(pair)
    return layer[:8] + mixed


def fernet_token(key, timestamp, plaintext_blocks):
    derived = base64.urlsafe_b64decode(base64.urlsafe_b64encode(hashlib.sha256(key).digest()))
    signing_key = derived[:16]
    iv = hashlib.sha256(b"iv" + key).digest()[:16]
    ciphertext = hashlib.sha256(b"ct").digest()[: 16 * plaintext_blocks]
    body = b"\x80" + struct.pack(">Q", timestamp) + iv + ciphertext
    mac = hmac.new(signing_key, body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(body + mac)


def fernet_seeds():
    now = 1_800_000_000
    seeds = []
    for key in (b"current key", b"old key", b"unknown key"):
        for timestamp in (now, now - 60, now - 3600, 0, 2**64 - 1):
            seeds.append(fernet_token(key, timestamp, 1))
    seeds.append(fernet_token(b"current key", now, 2))
    seeds.append(b"0123456789ab" + fernet_token(b"current key", now, 1))
    seeds += [b"", b"gAAAAA", b"gAAAAAB", b"not base64!", b"====", b"gA=="]
    return seeds


def client_frame_seeds():
    return [
        b'{"token": "eyJhbGciOiJIUzI1NiJ9.e30.sig"}',
        b'{"type": "refresh", "token": "eyJ.e30.x"}',
        b'{"type": "ping"}',
        b'{"type": "ping", "token": 1}',
        b'{"type": "refresh"}',
        b'{"type": "refresh", "token": ""}',
        b'{"type": 7}',
        b'{"type": "' + b"x" * 80 + b'"}',
        b'{"type": "\\u00e9\\ud83d\\ude00"}',
        b'{"token": null}',
        b'{"token": "a", "token": "b"}',
        b"{}",
        b"[]",
        b'"token"',
        b"null",
        b'{"token": "a"',
        b'{"a": [[[[[[[[{}]]]]]]]]}',
        b' \t{"type":"ping"}\n',
        b'{"type": "ping"} trailing',
        b'{"token": "\\u0000"}',
    ]


def handshake_seeds():
    lines = [
        ["token=abc.def.ghi"],
        ["a=1&token=abc%2Edef&b=2"],
        ["token=%zz&token=ok"],
        ["token=a+b%20c"],
        ["", "Authorization: Bearer abc.def"],
        ["", "Authorization: bearer   spaced  "],
        ["", "Authorization: Basic Zm9vOmJhcg=="],
        ["", "Sec-WebSocket-Protocol: bearer, tok.en"],
        ["", "Sec-WebSocket-Protocol: chat, bearer", "Sec-WebSocket-Protocol: tok.en"],
        ["", "Sec-WebSocket-Protocol: bearer, bearer"],
        ["", "Cookie: a=1; access_token=\"tok\"; b=2"],
        ["", "Cookie: access_token="],
        ["", "Origin: https://app.example.com", "@allow https://*.example.com"],
        ["", "Origin: https://a/b.example.com", "@allow https://*.example.com"],
        ["", "Origin: null", "@allow null"],
        ["", "Origin: HTTPS://APP.EXAMPLE.COM:8443", "@allow https://app.example.com:*"],
        ["", "Origin: https://a.example.com", "Origin: https://b.example.com"],
        ["", "@deny-missing", "@allow https://example.com"],
        ["", "@peer 10.1.2.3", "X-Forwarded-For: 203.0.113.9, 10.0.0.7"],
        ["", "@peer 10.1.2.3", "X-Forwarded-For: 10.0.0.5, 10.0.0.7"],
        ["", "@peer 198.51.100.1", "X-Forwarded-For: 203.0.113.9"],
        ["", "@peer fd00::1", "@proxy 2001:db8::/32", "X-Forwarded-For: 2001:db8::1, ::1"],
        ["", "@peer 127.0.0.1", "@proxy 127.0.0.1", "X-Forwarded-For: garbage, 192.0.2.4 "],
        # Several lines: a forged first line, the proxy's own line after it.
        ["", "@peer 10.0.0.9", "X-Forwarded-For: 6.6.6.6", "X-Forwarded-For: 203.0.113.9"],
        ["", "@peer 10.0.0.9", "X-Forwarded-For: 6.6.6.6, 203.0.113.9:443", "X-Forwarded-For: 10.0.0.7"],
        ["", "@peer 10.0.0.9", "X-Forwarded-For: 6.6.6.6", "X-Forwarded-For: [2001:db8::1]:8443, 10.1.1.1"],
        ["", "@peer 10.0.0.9", "X-Forwarded-For: 203.0.113.9", "X-Forwarded-For: unknown", "X-Forwarded-For: 10.0.0.7"],
        ["", "@peer 10.0.0.9", "X-Forwarded-For: [2001:db8::1]x, 10.0.0.2", "X-Forwarded-For: 10.0.0.3"],
        [
            "token=q",
            "Authorization: Bearer h",
            "Sec-WebSocket-Protocol: bearer, s",
            "Cookie: access_token=c",
            "Origin: https://x.example.com",
            "@allow https://*.example.com",
        ],
    ]
    return ["\n".join(seed).encode() for seed in lines]


def main():
    write("payload", payload_seeds())
    write("fernet", fernet_seeds())
    write("client_frame", client_frame_seeds())
    write("handshake", handshake_seeds())


if __name__ == "__main__":
    main()
