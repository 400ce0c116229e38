#!/usr/bin/env python3
"""What permessage-deflate (RFC 7692) would do to the gateway's frames.

Prints, for typical notification frames, the size on the wire with and
without compression and the CPU time of compressing one frame, in the two
forms the extension allows:

- no context takeover: each message compressed alone, so one compressed
  frame could be shared by every socket (as the gateway shares frame bytes)
  and no per-socket state is kept;
- context takeover: one compressor per socket, each message compressed
  against the previous ones (per-socket CPU, per-socket state).

Also prints zlib's documented memory per compressor and decompressor for the
window sizes a client may ask for. Uses Python's zlib (the same C library a
Rust server would link through flate2's zlib backend). Run:
`python3 tests/bench/deflate.py`; docs/permessage-deflate.md quotes it.
"""

import json
import time
import zlib

FRAMES = {
    "the seed's notification": {"message": "You have a task due soon!"},
    "a comment notification": {
        "message": {
            "id": 184467,
            "kind": "comment",
            "title": "Ana replied to your post",
            "body": "Thanks, that fixed it \u2014 see the thread for details.",
            "url": "/posts/9921#c184467",
            "sent_at": 1764000000.123456,
            "read": False,
        }
    },
    "a task with its assignees": {
        "message": {
            "task": {
                "id": 9921,
                "title": "Renew the insurance",
                "due": "2026-12-05T09:00:00Z",
                "list": "Home",
                "assignees": [{"id": 7, "name": "Ana"}, {"id": 42, "name": "Ben"}],
            },
            "text": "You have a task due soon!",
        }
    },
}
ROUNDS = 20000
STREAM = 50


def deflate_message(compressor, data):
    """One message as permessage-deflate sends it: a sync flush, its
    trailing 00 00 ff ff removed (RFC 7692 section 7.2.1)."""
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4] if out.endswith(b"\x00\x00\xff\xff") else out


def main():
    print("| frame | bytes | no context takeover: bytes (ratio) | CPU µs per message | context takeover: bytes per message, over 50 alike |")
    print("|---|---|---|---|---|")
    for name, frame in FRAMES.items():
        data = json.dumps(frame).encode()
        alone = deflate_message(zlib.compressobj(6, zlib.DEFLATED, -15), data)
        started = time.perf_counter()
        for _ in range(ROUNDS):
            deflate_message(zlib.compressobj(6, zlib.DEFLATED, -15), data)
        per_message = (time.perf_counter() - started) / ROUNDS * 1e6
        stream = zlib.compressobj(6, zlib.DEFLATED, -15)
        total = 0
        for index in range(STREAM):
            alike = data.replace(b"Renew", b"Renew%d" % index).replace(b"184467", b"%d" % (184467 + index))
            total += len(deflate_message(stream, alike))
        print(f"| {name} | {len(data)} | {len(alone)} ({len(alone) / len(data):.2f}) | {per_message:.1f} | {total / STREAM:.1f} |")
    print()
    print("| window bits | deflate state, bytes (memLevel 8) | inflate state, bytes |")
    print("|---|---|---|")
    for bits in (15, 12, 9):
        deflate = (1 << (bits + 2)) + (1 << (8 + 9))
        inflate = (1 << bits) + 7 * 1024
        print(f"| {bits} | {deflate:,} | {inflate:,} |")


if __name__ == "__main__":
    main()
