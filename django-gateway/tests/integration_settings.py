"""The Django project of the integration test (integration.py): everything
the gateway needs comes from the environment, as in a real deployment.
INTEGRATION_BAD names one bad setting for the system-check cases."""

import json
import os

SECRET_KEY = "django-gateway-integration-only"
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django_gateway"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
ROOT_URLCONF = "tests.urls"

BAD = os.environ.get("INTEGRATION_BAD", "")
REDIS_URLS = json.loads(os.environ["REDIS_URLS"])

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [url if BAD == "socket_timeout" else {"address": url, "socket_timeout": None}
                      for url in REDIS_URLS],
            "prefix": "integration",
            "group_expiry": 3600 if BAD == "group_expiry" else 86400,
            "channel_capacity": {"specific.gw-*": 20 if BAD == "capacity" else 10000},
            "symmetric_encryption_keys": json.loads(os.environ["CHANNEL_LAYER_ENCRYPTION_KEYS"]),
        },
    },
}
SIMPLE_JWT = {"SIGNING_KEY": os.environ["JWT_SIGNING_KEY"], "ALGORITHM": "HS256"}
