"""Publishing: django_gateway.notify, a group_send of
{"type": "send_notification", "message": ...} to user_<id> through the
project's channels_redis layer, exactly as the seed guide does. The gateway
relays it to every open socket of that user as {"message": ...}."""

import logging

from django_gateway import notify

log = logging.getLogger(__name__)


def notify_user(user_id, message):
    try:
        notify(user_id, message)
    except Exception:  # a notification must never break the request that caused it
        log.exception("notify(user_%s) failed", user_id)
