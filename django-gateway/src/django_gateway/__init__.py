"""Django side of the notification gateway: configuration, checks, views,
helpers and the browser client.

``notify``, ``disconnect``, ``is_online`` and ``socket_count`` (and their
``a``-prefixed async twins) publish through the project's own channel layer.
"""

__version__ = "0.1.0"

__all__ = [
    "adisconnect",
    "ais_online",
    "anotify",
    "asocket_count",
    "disconnect",
    "is_online",
    "notify",
    "socket_count",
]


def __getattr__(name):
    # Lazy, so `INSTALLED_APPS` can name the package before settings load.
    if name in __all__:
        from . import helpers

        return getattr(helpers, name)
    raise AttributeError(name)
