"""Mount with one line: ``path("gateway/", include("django_gateway.urls"))``.

- ``token/``: a short-lived access token for the logged-in user (the browser
  client's ``getToken``);
- ``session/``: who the session cookie belongs to (the gateway's
  ``auth.session_url``).
"""

from django.urls import path

from . import views

app_name = "django_gateway"

urlpatterns = [
    path("token/", views.token, name="token"),
    path("session/", views.session, name="session"),
]
