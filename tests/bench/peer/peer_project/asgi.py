"""ASGI entry point of the benchmark peer, shaped like the seed's asgi.py with
the JWT query-string middleware in place of the session AuthMiddlewareStack
(browsers of the product authenticate with ?token=JWT)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peer_project.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

import notifications.routing  # noqa: E402
from peer_project.jwt_auth import JwtQueryAuthMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": JwtQueryAuthMiddleware(
            URLRouter(notifications.routing.websocket_urlpatterns)
        ),
    }
)
