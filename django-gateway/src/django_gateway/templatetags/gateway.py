"""``{% load gateway %}``: the browser client on a page in one line.

``{% gateway_client %}`` renders a module script that connects the page to
the gateway (``GATEWAY["WS_URL"]`` or ``url=``) with the package's token view
(or, with ``mode="session"``, the session cookie) and dispatches each
notification to ``document`` as a ``gateway:message`` event (``detail``: the
message), state changes as ``gateway:state`` and recovery reports as
``gateway:recovery``; the client object is ``window.gatewayNotifications``.
``{% gateway_client_src %}`` is the module's URL, for pages that import it
themselves.
"""

from django import template
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import json_script

from ..conf import gateway_setting

register = template.Library()

CLIENT_PATH = "gateway/notifications.js"


@register.simple_tag
def gateway_client_src():
    return static(CLIENT_PATH)


@register.inclusion_tag("django_gateway/client.html")
def gateway_client(url=None, mode=None):
    mode = mode or gateway_setting("AUTH_MODE")
    if mode not in ("token", "session"):
        raise template.TemplateSyntaxError(f"gateway_client mode must be 'token' or 'session', not {mode!r}")
    config = {
        "url": url or gateway_setting("WS_URL"),
        "tokenUrl": reverse("django_gateway:token") if mode == "token" else None,
    }
    return {
        "config": json_script(config, "gateway-client-config"),
        "src": gateway_client_src(),
    }
