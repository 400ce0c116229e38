"""The token view, the session view and the template tag."""

import jwt
from django.contrib.auth import get_user_model
from django.template import Context, Template
from django.test import TestCase, override_settings


def extra_groups(user):
    return [f"team_{user.pk}", "everyone"]


class ViewTests(TestCase):
    def setUp(self):
        self.user = get_user_model().objects.create_user("alice", password="pw")

    def test_token_view(self):
        response = self.client.get("/gateway/token/")
        self.assertEqual(response.status_code, 401)
        self.client.force_login(self.user)
        response = self.client.get("/gateway/token/")
        self.assertEqual(response.status_code, 200)
        self.assertIn("no-cache", response["Cache-Control"])
        body = response.json()
        claims = jwt.decode(body["access"], "tests-signing-key-0123456789abcdef", algorithms=["HS256"])
        self.assertEqual((claims["user_id"], claims["token_type"], claims["exp"]),
                         (str(self.user.pk) if isinstance(claims["user_id"], str) else self.user.pk,
                          "access", body["expires_at"]))
        self.assertEqual(self.client.post("/gateway/token/").status_code, 405)

    def test_session_view_answers_with_content_length(self):
        response = self.client.get("/gateway/session/")
        self.assertEqual(response.status_code, 401)
        self.assertEqual(int(response["Content-Length"]), len(response.content))
        self.client.force_login(self.user)
        response = self.client.get("/gateway/session/")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"user_id": self.user.pk})
        self.assertEqual(int(response["Content-Length"]), len(response.content))

    @override_settings(GATEWAY={"SESSION_GROUPS": "tests.test_views.extra_groups"})
    def test_session_view_extra_groups(self):
        self.client.force_login(self.user)
        self.assertEqual(self.client.get("/gateway/session/").json(),
                         {"user_id": self.user.pk, "groups": [f"team_{self.user.pk}", "everyone"]})


class TemplateTagTests(TestCase):
    def render(self, text):
        return Template("{% load gateway %}" + text).render(Context({}))

    def test_token_mode(self):
        html = self.render("{% gateway_client %}")
        self.assertIn('import { connect } from "/static/gateway/notifications.js"', html)
        self.assertIn('"url": "ws://127.0.0.1:8000/ws/notifications/"', html)
        self.assertIn('"tokenUrl": "/gateway/token/"', html)
        self.assertIn("gateway:message", html)

    def test_session_mode_and_url(self):
        html = self.render('{% gateway_client url="wss://n.example.com/ws/notifications/" mode="session" %}')
        self.assertIn('"tokenUrl": null', html)
        self.assertIn("wss://n.example.com/ws/notifications/", html)
        self.assertEqual(self.render("{% gateway_client_src %}"), "/static/gateway/notifications.js")
