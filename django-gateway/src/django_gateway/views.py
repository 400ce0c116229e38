"""The two views the gateway and its browser client call."""

import json

from django.http import HttpResponse
from django.utils.module_loading import import_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .conf import gateway_setting


def json_response(body, status=200):
    """JSON with Content-Length set here, whatever the middleware (the
    gateway's HTTP client does not read close-delimited bodies)."""
    payload = json.dumps(body).encode()
    response = HttpResponse(payload, status=status, content_type="application/json")
    response["Content-Length"] = str(len(payload))
    return response


@never_cache
@require_GET
def token(request):
    """A fresh SimpleJWT access token for the session's user: ``{"access":
    ..., "expires_at": <exp>}``, or 401. The client asks before every
    (re)connect and ahead of each expiry."""
    if not request.user.is_authenticated:
        return json_response({"detail": "not logged in"}, status=401)
    from rest_framework_simplejwt.tokens import AccessToken

    access = AccessToken.for_user(request.user)
    return json_response({"access": str(access), "expires_at": access["exp"]})


@never_cache
@require_GET
def session(request):
    """The gateway's session mode (``auth.session_url``): ``{"user_id": ...,
    "groups": [...]}`` for the session cookie it forwards, or 401."""
    if not request.user.is_authenticated:
        return json_response({"error": "not logged in"}, status=401)
    pk = request.user.pk
    body = {"user_id": pk if isinstance(pk, int) else str(pk)}
    groups_path = gateway_setting("SESSION_GROUPS")
    if groups_path:
        groups = import_string(groups_path)(request.user)
        body["groups"] = [str(group) for group in groups]
    return json_response(body)
