"""Publishes a notification every few seconds exactly as the Django ToDo
backend does: async_to_sync(channel_layer.group_send) through the real
channels_redis core layer. Stand-in for the example backend.

Usage: demo_publisher.py REDIS_URL USER_ID [INTERVAL_SECONDS]
"""

import sys
import time

from asgiref.sync import async_to_sync
from channels_redis.core import RedisChannelLayer


def main() -> None:
    redis_url, user_id = sys.argv[1], sys.argv[2]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    channel_layer = RedisChannelLayer(hosts=[redis_url])
    count = 0
    while True:
        count += 1
        async_to_sync(channel_layer.group_send)(
            f"user_{user_id}",
            {
                "type": "send_notification",
                "message": f"You have a task due soon! (#{count})",
            },
        )
        print(f"sent notification #{count} to group user_{user_id}", flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    main()
