"""Settings of the example ToDo backend. Everything deployment-specific comes
from the environment; the defaults suit `scripts/quickstart`.

The notification side is the seed guide's, unchanged: CHANNEL_LAYERS with the
channels_redis core layer, signals and Celery tasks that group_send to
user_<id>. There is no ASGI application and no consumer: the gateway holds
the WebSockets and must be given the same Redis and the same JWT secret.
"""

import os
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name, default):
    return os.environ.get(name, default)


SECRET_KEY = env("DJANGO_SECRET_KEY", "example-backend-insecure-dev-key")
DEBUG = env("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = env("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "django_gateway",  # django-gateway/: gateway_config, checks, views, helpers, the browser client
    "todos",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "todo.urls"
WSGI_APPLICATION = "todo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": env("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = env("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

STATIC_URL = "static/"
# The browser client comes with the django_gateway app's static files, as
# /static/gateway/notifications.js.
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- Redis: one server for the channel layer and (another db) Celery ----------
REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379")

# As in the seed guide (core layer), plus room for the gateway's channels:
# every socket of one gateway process shares one queue key. socket_timeout
# None: redis-py 8 would time blocking reads out after 5 s (check
# django_gateway.W001); `manage.py gateway_config` leaves it out of the
# gateway's configuration.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "channel_capacity": {"specific.gw-*": 10000},
        },
    },
}

CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL + "/1")
CELERY_TASK_ALWAYS_EAGER = env("CELERY_TASK_ALWAYS_EAGER", "0") == "1"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "due-soon-reminders": {
        "task": "todos.tasks.send_due_soon_reminders",
        "schedule": float(env("REMINDER_SCAN_SECONDS", "30")),
    },
}
# A task due within this many minutes gets one "due soon" reminder.
DUE_SOON_MINUTES = int(env("DUE_SOON_MINUTES", "60"))

# --- Tokens: SimpleJWT, verified by the gateway with the same secret ----------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

SIMPLE_JWT = {
    # Must equal the gateway's auth.jwt_secret (GATEWAY_AUTH_JWT_SECRET).
    "SIGNING_KEY": env("JWT_SIGNING_KEY", env("GATEWAY_AUTH_JWT_SECRET", "demo-secret-change-me")),
    "ALGORITHM": "HS256",
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=5),
}

# Where the page's JavaScript connects: the gateway's public WebSocket URL.
GATEWAY_WS_URL = env("GATEWAY_WS_URL", "ws://127.0.0.1:8000/ws/notifications/")
# A gateway in session mode (auth.session_url = <this backend>/gateway/session/),
# for the /live/?mode=session page; unset: that page uses GATEWAY_WS_URL.
GATEWAY_SESSION_WS_URL = env("GATEWAY_SESSION_WS_URL", GATEWAY_WS_URL)

# The django_gateway app: the template tag's default URL. The variable the
# generated gateway configuration reads the JWT secret from is the package's
# default, JWT_SIGNING_KEY (the one this file reads SIGNING_KEY from).
GATEWAY = {
    "WS_URL": GATEWAY_WS_URL,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"todos": {"handlers": ["console"], "level": "INFO"}},
}
