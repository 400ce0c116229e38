#!/usr/bin/env python3
"""Drive the REAL ``channels_redis`` library from a test, over JSON lines.

Started by the Rust harness (``tests/src/python.rs``) with the venv python::

    layer_driver.py --layer core|pubsub --config '<JSON CHANNEL_LAYERS CONFIG>'

It builds ``channels_redis.core.RedisChannelLayer(**config)`` or
``channels_redis.pubsub.RedisPubSubChannelLayer(**config)`` once and keeps ONE
asyncio event loop for its whole life (the layers cache connections per loop).

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout,
strictly in order.  The first line written is a greeting
``{"ok": true, "ready": true, "layer": ..., "versions": {...}}`` (or
``{"ok": false, "error": ...}`` and exit status 2 if the layer cannot be built).
Every reply has ``"ok"``; failures carry ``"error"`` (and ``"traceback"``) and
never end the process.  A request's optional ``"id"`` is echoed back.
Replies that carry a decoded message (receive, deserialize) also carry
``"message_json"``: ``json.dumps`` of it, for callers whose JSON library would
not keep key order.  Nothing else is ever written to stdout (``sys.stdout`` is pointed at stderr);
logging (including channels_redis' INFO "over capacity" line) goes to stderr.

Ops: group_send, group_send_seq, send, group_add, group_discard, new_channel,
receive, flush, expected_frame, serialize, deserialize, mint_jwt, simplejwt,
forge_hmac_jwt, public_jwk, ping, run_snippet, quit.  See ``HANDLERS`` below and tests/src/python.rs for the shapes.
"""

import argparse
import asyncio
import base64
import copy
import json
import logging
import sys
import time
import traceback
from datetime import timedelta

PROTOCOL_OUT = sys.stdout
# Anything a library prints must not corrupt the protocol stream.
sys.stdout = sys.stderr


class RequestError(Exception):
    """A request that is malformed (reported as ok=false, never fatal)."""


def write_reply(reply) -> None:
    PROTOCOL_OUT.write(json.dumps(reply, default=json_default) + "\n")
    PROTOCOL_OUT.flush()


def json_default(value):
    # msgpack can hand back bytes (bin) values; keep them representable.
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes_b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def need(req, key, kind=None):
    if key not in req:
        raise RequestError(f"missing field {key!r}")
    value = req[key]
    if kind is not None and not isinstance(value, kind):
        raise RequestError(f"field {key!r} must be {getattr(kind, '__name__', kind)}")
    return value


def need_message(req, key="message"):
    message = need(req, key, dict)
    if "type" not in message:
        raise RequestError(f"{key!r} must contain a 'type' key")
    return message


# --------------------------------------------------------------------------
# Django (only for simplejwt; the channel layers themselves need no settings)
# --------------------------------------------------------------------------

_DJANGO = {"configured": None}


def simplejwt_params(req):
    lifetime = float(req.get("lifetime_s", 300))
    refresh_lifetime = float(req.get("refresh_lifetime_s", 86400))
    return {
        "SIGNING_KEY": need(req, "signing_key", str),
        "ALGORITHM": req.get("algorithm", "HS256"),
        "ACCESS_TOKEN_LIFETIME": timedelta(seconds=lifetime),
        "REFRESH_TOKEN_LIFETIME": timedelta(seconds=refresh_lifetime),
        "AUDIENCE": req.get("audience"),
        "ISSUER": req.get("issuer"),
    }


def setup_django(params) -> None:
    """Configure minimal Django settings once, with the first request's SIMPLE_JWT."""
    import django
    from django.conf import settings

    if _DJANGO["configured"] is not None:
        return
    if not settings.configured:
        settings.configure(
            SECRET_KEY="layer-driver-not-secret",
            USE_TZ=True,
            # rest_framework_simplejwt.tokens imports django.contrib.auth.models,
            # which needs these two apps; no database is touched.
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
            SIMPLE_JWT=dict(params),
        )
        django.setup()
    _DJANGO["configured"] = dict(params)


class StubUser:
    """What RefreshToken.for_user reads from a user: the id field and is_active."""

    def __init__(self, user_id):
        self.id = user_id
        self.pk = user_id
        self.is_active = True
        self.password = ""


def op_simplejwt(_layer, req):
    params = simplejwt_params(req)
    user_id = need(req, "user_id")
    setup_django(params)

    from rest_framework_simplejwt.backends import TokenBackend
    from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

    refresh_cls = RefreshToken
    path = "settings"
    if params != _DJANGO["configured"]:
        # simplejwt reads its settings once at import (lifetimes are class
        # attributes, the backend a module global): for different parameters in
        # the same process, subclass with the same values it would have used.
        backend = TokenBackend(
            params["ALGORITHM"],
            params["SIGNING_KEY"],
            "",
            params["AUDIENCE"],
            params["ISSUER"],
        )

        class _Access(AccessToken):
            lifetime = params["ACCESS_TOKEN_LIFETIME"]
            _token_backend = backend

        class _Refresh(RefreshToken):
            lifetime = params["REFRESH_TOKEN_LIFETIME"]
            access_token_class = _Access
            _token_backend = backend

        refresh_cls = _Refresh
        path = "override"

    refresh = refresh_cls.for_user(StubUser(user_id))
    access = refresh.access_token
    return {
        "access": str(access),
        "refresh": str(refresh),
        "access_claims": dict(access.payload),
        "path": path,
    }


def op_mint_jwt(_layer, req):
    import jwt

    claims = need(req, "claims", dict)
    key = need(req, "key", str)
    algorithm = req.get("algorithm", "HS256")
    headers = req.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise RequestError("field 'headers' must be an object")
    token = jwt.encode(claims, key, algorithm=algorithm, headers=headers)
    return {"token": token}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def op_forge_hmac_jwt(_layer, req):
    """An HMAC-signed token over ANY key bytes, e.g. a PEM public key: the
    algorithm-confusion attack. PyJWT itself refuses to HMAC with a PEM key,
    so this signs by hand (header + "." + payload, HMAC-SHA2, base64url)."""
    import hashlib
    import hmac

    claims = need(req, "claims", dict)
    key = need(req, "key", str).encode("utf-8")
    algorithm = req.get("algorithm", "HS256")
    digests = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    if algorithm not in digests:
        raise RequestError("algorithm must be HS256, HS384 or HS512")
    header = {"alg": algorithm, "typ": "JWT", **(req.get("headers") or {})}
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = hmac.new(key, signing_input.encode("ascii"), digests[algorithm]).digest()
    return {"token": signing_input + "." + b64url(signature)}


def op_public_jwk(_layer, req):
    """PyJWT's JWK (a dict) for a PEM public key, with optional kid/alg/use."""
    from jwt.algorithms import get_default_algorithms

    algorithm = need(req, "algorithm", str)
    implementation = get_default_algorithms().get(algorithm)
    if implementation is None:
        raise RequestError(f"unknown algorithm {algorithm!r}")
    key = implementation.prepare_key(need(req, "pem", str))
    jwk = implementation.to_jwk(key, as_dict=True)
    for field in ("kid", "alg", "use"):
        if req.get(field) is not None:
            jwk[field] = req[field]
    return {"jwk": jwk}


# --------------------------------------------------------------------------
# Channel layer ops
# --------------------------------------------------------------------------


async def op_group_send(layer, req):
    await layer.group_send(need(req, "group", str), need_message(req))
    return {}


# Concurrent group_sends of one round of op_group_send_seq.
SEND_CONCURRENCY = 32


async def op_group_send_seq(layer, req):
    # One group, or several in turn: message i goes to every group before
    # message i + 1 goes to any.
    groups = req.get("groups") or [need(req, "group", str)]
    if not all(isinstance(group, str) for group in groups):
        raise RequestError("'groups' must be a list of strings")
    count = need(req, "count", int)
    template = need_message(req)
    index_field = req.get("index_field", "seq")
    timestamp_field = req.get("timestamp_field")
    start = req.get("start", 0)
    if count < 0:
        raise RequestError("'count' must be >= 0")
    if "message" not in template:
        raise RequestError("group_send_seq needs message['message'] to number")
    began = time.time()
    for i in range(start, start + count):
        message = copy.deepcopy(template)
        inner = message["message"]
        if isinstance(inner, dict):
            inner[index_field] = i
            if timestamp_field:
                inner[timestamp_field] = time.time()
        else:
            message["message"] = f"{inner} #{i}"
        # Many groups: sent concurrently in slices (as async Django code
        # with gather would), each group's messages still one after another.
        for start_at in range(0, len(groups), SEND_CONCURRENCY):
            await asyncio.gather(
                *(
                    layer.group_send(group, copy.deepcopy(message))
                    for group in groups[start_at : start_at + SEND_CONCURRENCY]
                )
            )
    return {"count": count, "elapsed_s": time.time() - began}


async def op_send(layer, req):
    await layer.send(need(req, "channel", str), need_message(req))
    return {}


async def op_group_add(layer, req):
    await layer.group_add(need(req, "group", str), need(req, "channel", str))
    return {}


async def op_group_discard(layer, req):
    await layer.group_discard(need(req, "group", str), need(req, "channel", str))
    return {}


async def op_new_channel(layer, _req):
    return {"channel": await layer.new_channel()}


async def op_receive(layer, req):
    channel = need(req, "channel", str)
    timeout = float(req.get("timeout", 5))
    try:
        message = await asyncio.wait_for(layer.receive(channel), timeout)
    except asyncio.TimeoutError:
        return {"timeout": True}
    return {"message": message, "message_json": json.dumps(message, default=json_default)}


async def op_flush(layer, _req):
    await layer.flush()
    return {}


def op_expected_frame(layer, req):
    value = need(req, "message")
    # What the replaced consumer sees is the event after the layer's own
    # serialise/deserialise round trip; then it does
    # self.send(text_data=json.dumps({"message": event["message"]})).
    event = layer.deserialize(layer.serialize({"type": "send_notification", "message": value}))
    return {"frame": json.dumps({"message": event["message"]})}


def op_serialize(layer, req):
    payload = layer.serialize(need(req, "message", dict))
    return {"payload_b64": base64.b64encode(payload).decode("ascii")}


def op_deserialize(layer, req):
    raw = base64.b64decode(need(req, "payload_b64", str), validate=True)
    message = layer.deserialize(raw)
    return {"message": message, "message_json": json.dumps(message, default=json_default)}


def op_ping(_layer, _req):
    return {}


async def op_run_snippet(layer, req):
    """Runs documented Python (``code``) as a Django project would: defines
    it, then awaits ``function(layer, *args)`` and returns its result."""
    namespace = {}
    exec(need(req, "code", str), namespace)  # noqa: S102 - test-supplied code
    function = namespace.get(need(req, "function", str))
    if not callable(function):
        raise RequestError("the snippet does not define that function")
    result = function(layer, *req.get("args", []))
    if asyncio.iscoroutine(result):
        result = await result
    return {"result": result}


HANDLERS = {
    "group_send": op_group_send,
    "group_send_seq": op_group_send_seq,
    "send": op_send,
    "group_add": op_group_add,
    "group_discard": op_group_discard,
    "new_channel": op_new_channel,
    "receive": op_receive,
    "flush": op_flush,
    "expected_frame": op_expected_frame,
    "serialize": op_serialize,
    "deserialize": op_deserialize,
    "mint_jwt": op_mint_jwt,
    "simplejwt": op_simplejwt,
    "forge_hmac_jwt": op_forge_hmac_jwt,
    "public_jwk": op_public_jwk,
    "ping": op_ping,
    "run_snippet": op_run_snippet,
}


def describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


async def handle_line(layer, line: bytes):
    """Returns (reply, quit)."""
    req_id = None
    try:
        try:
            req = json.loads(line)
        except ValueError as err:
            raise RequestError(f"bad JSON: {err}") from None
        if not isinstance(req, dict):
            raise RequestError("a request must be a JSON object")
        req_id = req.get("id")
        op = req.get("op")
        if op == "quit":
            reply, stop = {"ok": True}, True
        else:
            handler = HANDLERS.get(op)
            if handler is None:
                raise RequestError(f"unknown op {op!r}")
            result = handler(layer, req)
            if asyncio.iscoroutine(result):
                result = await result
            reply, stop = {"ok": True, **result}, False
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # noqa: B902 - a bad request must not kill us
        reply = {"ok": False, "error": describe(err)}
        if not isinstance(err, RequestError):
            reply["traceback"] = traceback.format_exc()
        stop = False
    if req_id is not None:
        reply["id"] = req_id
    return reply, stop


async def serve(layer) -> None:
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.buffer
    while True:
        line = await loop.run_in_executor(None, stdin.readline)
        if not line:
            return  # EOF: the harness went away
        if not line.strip():
            continue
        reply, stop = await handle_line(layer, line)
        try:
            write_reply(reply)
        except (TypeError, ValueError) as err:
            write_reply({"ok": False, "error": f"reply not JSON-encodable: {describe(err)}"})
        if stop:
            return


def build_layer(kind: str, config: dict):
    if kind == "core":
        from channels_redis.core import RedisChannelLayer

        return RedisChannelLayer(**config)
    if kind == "pubsub":
        from channels_redis.pubsub import RedisPubSubChannelLayer

        return RedisPubSubChannelLayer(**config)
    raise ValueError(f"unknown layer {kind!r} (core|pubsub)")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": ".".join(str(p) for p in sys.version_info[:3])}
    for dist in ("channels", "channels-redis", "redis", "msgpack", "PyJWT",
                 "djangorestframework-simplejwt", "Django", "cryptography"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


async def amain(args) -> int:
    try:
        config = json.loads(args.config)
        if not isinstance(config, dict):
            raise ValueError("--config must be a JSON object")
        layer = build_layer(args.layer, config)
        if args.layer == "pubsub":
            # The pubsub layer builds its per-loop state lazily; build it now so
            # that a bad CONFIG fails here instead of at the first request.
            layer._get_layer()
    except Exception as err:  # noqa: BLE001
        write_reply({"ok": False, "error": describe(err), "traceback": traceback.format_exc()})
        return 2
    write_reply({"ok": True, "ready": True, "layer": args.layer, "versions": versions()})
    await serve(layer)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", choices=["core", "pubsub"], default="core")
    parser.add_argument("--config", default="{}")
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="layer_driver %(levelname)s %(name)s: %(message)s",
    )
    # Closing the loop also closes the layer's Redis connections (channels_redis
    # wraps loop.close for that).
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
