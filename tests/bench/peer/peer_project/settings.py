"""Settings of the benchmark peer: the seed's Channels consumer under Daphne.

Everything the benchmark varies comes from the environment (set by
scripts/bench): the Redis of the channel layer, the JWT secret, the layer's
capacity.  No database, no HTTP views: this project only serves the
notification WebSocket the gateway replaces.
"""

import os

SECRET_KEY = "benchmark-peer-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "channels",
    "notifications",
]

DATABASES = {}
ROOT_URLCONF = "peer_project.urls"
ASGI_APPLICATION = "peer_project.asgi.application"

# The same HS256 secret the gateway verifies with (SimpleJWT's SIGNING_KEY).
PEER_JWT_SECRET = os.environ.get("PEER_JWT_SECRET", "")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6390")],
            "capacity": int(os.environ.get("PEER_CAPACITY", "100")),
        },
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
