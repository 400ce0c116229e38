"""The package's own settings: one optional ``GATEWAY`` dict in the Django
settings. Every key has a default, so a project that sets nothing works."""

from django.conf import settings

DEFAULTS = {
    # Which CHANNEL_LAYERS alias the gateway reads and the helpers publish on.
    "CHANNEL_LAYER": "default",
    # The gateway's auth.user_group_template: the group of one user's sockets.
    "USER_GROUP_TEMPLATE": "user_{user_id}",
    # The gateway's public WebSocket URL, for the template tag.
    "WS_URL": "ws://127.0.0.1:8000/ws/notifications/",
    # "token" (the page asks the token view) or "session" (the gateway asks
    # the session view with the page's cookie).
    "AUTH_MODE": "token",
    # Names the generated gateway configuration refers to instead of holding
    # a secret: the environment variable with SimpleJWT's SIGNING_KEY, and
    # the one with the channel layer's symmetric_encryption_keys.
    "JWT_SECRET_ENV": "JWT_SIGNING_KEY",
    "ENCRYPTION_KEYS_ENV": "CHANNEL_LAYER_ENCRYPTION_KEYS",
    # Dotted path of a callable(user) -> list of extra group names the
    # session view hands the gateway (checked there by auth.allowed_groups).
    "SESSION_GROUPS": None,
}


def gateway_setting(name):
    configured = getattr(settings, "GATEWAY", None) or {}
    if not isinstance(configured, dict):
        raise TypeError("settings.GATEWAY must be a dict")
    return configured.get(name, DEFAULTS[name])


def group_for(user_or_id):
    """The group of one user's sockets, as the gateway names it."""
    user_id = getattr(user_or_id, "pk", user_or_id)
    if user_id is None:
        raise ValueError("the user has no primary key (not saved, or anonymous)")
    return gateway_setting("USER_GROUP_TEMPLATE").format(user_id=user_id)
