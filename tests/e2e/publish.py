"""Reads {"group": G, "message": M} lines on stdin and group_sends each one
through the real channels_redis core layer, exactly as the Django backend
does; prints one line per send. Usage: publish.py REDIS_URL
"""

import json
import sys

from asgiref.sync import async_to_sync
from channels_redis.core import RedisChannelLayer


def main() -> None:
    layer = RedisChannelLayer(
        hosts=[sys.argv[1]], channel_capacity={"specific.gw-*": 10000}
    )
    send = async_to_sync(layer.group_send)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        send(
            request["group"],
            {"type": "send_notification", "message": request["message"]},
        )
        print("sent", flush=True)


if __name__ == "__main__":
    main()
