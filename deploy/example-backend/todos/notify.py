"""Publishing, exactly as the seed guide does it: group_send to user_<id>
through the channels_redis layer. The gateway relays it to every open socket
of that user as {"message": ...}."""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def notify_user(user_id, message):
    channel_layer = get_channel_layer()
    try:
        async_to_sync(channel_layer.group_send)(
            f"user_{user_id}",
            {
                "type": "send_notification",
                "message": message,
            },
        )
    except Exception:  # a notification must never break the request that caused it
        log.exception("group_send to user_%s failed", user_id)
