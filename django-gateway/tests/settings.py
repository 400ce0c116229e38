"""Settings of the package's own tests (runtests.py): an in-memory channel
layer for the helpers, SimpleJWT for the token view."""

SECRET_KEY = "django-gateway-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "django_gateway",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "tests.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
STATIC_URL = "/static/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": "redis://127.0.0.1:1", "socket_timeout": None}],
            "channel_capacity": {"specific.gw-*": 10000},
        },
    },
    "memory": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
}
SIMPLE_JWT = {"SIGNING_KEY": "tests-signing-key-0123456789abcdef", "ALGORITHM": "HS256"}
GATEWAY = {"WS_URL": "ws://127.0.0.1:8000/ws/notifications/"}
