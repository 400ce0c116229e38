"""The JWT work the gateway does, done the Channels way: verify the HS256
token from ``?token=`` (signature and ``exp`` required, a SimpleJWT refresh
token refused) and put a user whose ``id`` is the ``user_id`` claim into the
scope.  An unauthenticated handshake is refused before the consumer runs
(Daphne answers 403)."""

from types import SimpleNamespace
from urllib.parse import parse_qs

import jwt
from django.conf import settings


def user_from_query(query_string: bytes):
    values = parse_qs(query_string.decode("latin-1")).get("token")
    if not values:
        return None
    try:
        claims = jwt.decode(
            values[0],
            settings.PEER_JWT_SECRET,
            algorithms=["HS256"],
            options={"require": ["exp"]},
        )
    except jwt.PyJWTError:
        return None
    if claims.get("token_type", "access") != "access":
        return None
    user_id = claims.get("user_id")
    if user_id is None:
        return None
    return SimpleNamespace(id=user_id, pk=user_id, is_authenticated=True)


class JwtQueryAuthMiddleware:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        user = user_from_query(scope.get("query_string", b""))
        if user is None:
            message = await receive()
            if message.get("type") == "websocket.connect":
                await send({"type": "websocket.close", "code": 4001})
            return
        return await self.inner(dict(scope, user=user), receive, send)
