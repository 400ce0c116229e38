"""Publishing to the gateway through the project's own channel layer, and
asking it who is online. Each helper has an async twin (``a`` prefix); the
sync ones must not be called from a running event loop (use the async ones
there), exactly like ``async_to_sync``.

``user_or_id`` is a user object (its ``pk``) or the id itself.
"""

import re

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from .conf import gateway_setting, group_for

#: Close codes a backend may send with ``gateway.disconnect``.
DISCONNECT_CODES = range(4000, 5000)
#: Every channel the gateway adds to a group starts with this.
GATEWAY_CHANNEL = "specific.gw-"


class PresenceUnavailable(Exception):
    """The channel layer keeps no memberships the gateway's presence can be
    read from (the pub/sub layer)."""


def layer():
    return get_channel_layer(gateway_setting("CHANNEL_LAYER"))


async def anotify(user_or_id, message):
    """Every open socket of the user receives ``{"message": message}``."""
    await layer().group_send(group_for(user_or_id), {"type": "send_notification", "message": message})


async def adisconnect(user_or_id, code=4006, reason=None):
    """Closes every socket of the user on every gateway process, with
    ``code`` (4000-4999; the client does not reconnect by itself on 4003 and
    4006) and an optional ``reason``."""
    if not isinstance(code, int) or code not in DISCONNECT_CODES:
        raise ValueError(f"code must be an integer from 4000 to 4999, not {code!r}")
    event = {"type": "gateway.disconnect", "code": code}
    if reason is not None:
        if len(str(reason).encode()) > 120:
            raise ValueError("reason must be at most 120 bytes (a close frame's limit)")
        event["reason"] = str(reason)
    await layer().group_send(group_for(user_or_id), event)


async def asocket_count(user_or_id):
    """Sockets the user has open on live gateway processes, all processes
    together (accurate within the gateway's ``layer.liveness_timeout`` after
    a crash). Core layer only: the pub/sub layer keeps no memberships."""
    channel_layer = layer()
    if not hasattr(channel_layer, "consistent_hash") or not hasattr(channel_layer, "connection"):
        raise PresenceUnavailable(
            f"{type(channel_layer).__name__} keeps no group memberships in Redis; "
            "presence needs channels_redis' core layer (RedisChannelLayer)"
        )
    group = group_for(user_or_id)
    connection = channel_layer.connection(channel_layer.consistent_hash(group))
    channels = await connection.zrange(f"{channel_layer.prefix}:group:{group}", 0, -1)
    per_process = {}
    for channel in channels:
        name = channel.decode() if isinstance(channel, bytes) else channel
        if not name.startswith(GATEWAY_CHANNEL):
            continue  # a Channels consumer's channel, or a recovery replay member
        process = re.split(r"[.!]", name[len("specific."):], maxsplit=1)[0]
        per_process[process] = per_process.get(process, 0) + 1
    if not per_process:
        return 0
    processes = list(per_process)
    alive = await connection.mget([f"{channel_layer.prefix}:gw:alive:{process}" for process in processes])
    return sum(per_process[process] for process, key in zip(processes, alive) if key is not None)


async def ais_online(user_or_id):
    """Whether the user has at least one socket open on a live gateway process."""
    return await asocket_count(user_or_id) > 0


def notify(user_or_id, message):
    async_to_sync(anotify)(user_or_id, message)


def disconnect(user_or_id, code=4006, reason=None):
    async_to_sync(adisconnect)(user_or_id, code=code, reason=reason)


def socket_count(user_or_id):
    return async_to_sync(asocket_count)(user_or_id)


def is_online(user_or_id):
    return async_to_sync(ais_online)(user_or_id)
