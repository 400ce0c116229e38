"""A one-file Django site with real sessions, for the gateway's session-auth
tests. It serves the view the README tells backends to add
(`/gateway/whoami/`), plus test helpers: `/login/<id>/` logs a user in and
returns the session key, `/calls/` says how often whoami was asked.

Usage: session_site.py DB_PATH migrate | runserver 127.0.0.1:PORT --noreload
"""

import sys

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="session-site-test-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
    ],
    # Django's default stack; CommonMiddleware sets Content-Length, which the
    # gateway's HTTP client needs (it does not read close-delimited bodies).
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[1]}},
    USE_TZ=True,
)
django.setup()

from django.contrib.auth import get_user_model, login  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

WHOAMI_CALLS = {"count": 0}


def gateway_whoami(request):
    """The view the README documents: who does this session cookie belong to."""
    WHOAMI_CALLS["count"] += 1
    if not request.user.is_authenticated:
        return JsonResponse({"error": "not logged in"}, status=401)
    return JsonResponse({"user_id": request.user.id})


def log_in(request, user_id):
    user, _ = get_user_model().objects.get_or_create(id=user_id, defaults={"username": f"user{user_id}"})
    login(request, user)
    request.session.save()
    return JsonResponse({"sessionid": request.session.session_key})


def calls(request):
    return JsonResponse(WHOAMI_CALLS)


urlpatterns = [
    path("gateway/whoami/", gateway_whoami),
    path("login/<int:user_id>/", log_in),
    path("calls/", calls),
]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line([sys.argv[0]] + sys.argv[2:])
