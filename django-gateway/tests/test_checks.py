"""The system checks fire on their bad setting and stay quiet on good ones."""

from unittest import mock

from django.core import checks
from django.test import SimpleTestCase, override_settings

GOOD_HOST = {"address": "redis://127.0.0.1:6379", "socket_timeout": None}


def layer(**config):
    config.setdefault("hosts", [GOOD_HOST])
    return {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": config}}


def ids():
    return sorted(message.id for message in checks.run_checks() if message.id.startswith("django_gateway."))


class CheckTests(SimpleTestCase):
    def test_good_settings_are_quiet(self):
        with mock.patch("django_gateway.checks.redis_py_major", return_value=8):
            self.assertEqual(ids(), [])

    @override_settings(CHANNEL_LAYERS=layer(hosts=["redis://127.0.0.1:6379", ("h", 6379)]))
    def test_w001_redis_py_8_without_socket_timeout(self):
        with mock.patch("django_gateway.checks.redis_py_major", return_value=8):
            self.assertEqual(ids(), ["django_gateway.W001"])
            message = [m for m in checks.run_checks() if m.id == "django_gateway.W001"][0]
            self.assertIn("[0, 1]", message.msg)
            self.assertIn("socket_timeout", message.hint)
        with mock.patch("django_gateway.checks.redis_py_major", return_value=7):
            self.assertEqual(ids(), [])

    @override_settings(CHANNEL_LAYERS=layer(hosts=["redis://127.0.0.1:6379?socket_timeout=60"]))
    def test_w001_quiet_when_the_url_sets_the_timeout(self):
        with mock.patch("django_gateway.checks.redis_py_major", return_value=8):
            self.assertEqual(ids(), [])

    @override_settings(CHANNEL_LAYERS=layer(group_expiry=3600))
    def test_w002_group_expiry_shorter_than_a_session(self):
        self.assertEqual(ids(), ["django_gateway.W002"])
        with override_settings(SIMPLE_JWT={"SIGNING_KEY": "k", "REFRESH_TOKEN_LIFETIME": 1800}):
            self.assertEqual(ids(), [])
        with override_settings(GATEWAY={"AUTH_MODE": "session"}, SESSION_COOKIE_AGE=1800):
            self.assertEqual(ids(), [])
        with override_settings(GATEWAY={"AUTH_MODE": "session"}):  # two weeks, Django's default
            self.assertEqual(ids(), ["django_gateway.W002"])

    def test_w003_tight_capacity_for_the_gateways_channels(self):
        with override_settings(CHANNEL_LAYERS=layer(channel_capacity={"specific.gw-*": 10})):
            self.assertEqual(ids(), ["django_gateway.W003"])
        with override_settings(CHANNEL_LAYERS=layer(capacity=50)):
            self.assertEqual(ids(), ["django_gateway.W003"])
        with override_settings(CHANNEL_LAYERS=layer(capacity=50, channel_capacity={"specific.gw-*": 10000})):
            self.assertEqual(ids(), [])
        with override_settings(CHANNEL_LAYERS=layer(channel_capacity={"http.*": 5})):
            self.assertEqual(ids(), [])

    def test_w003_does_not_apply_to_the_pubsub_layer(self):
        pubsub = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                              "CONFIG": {"hosts": [GOOD_HOST], "capacity": 5}}}
        with override_settings(CHANNEL_LAYERS=pubsub):
            self.assertEqual(ids(), [])

    def test_e001_settings_the_gateway_cannot_follow(self):
        with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}):
            self.assertEqual(ids(), ["django_gateway.E001"])
        with override_settings(SIMPLE_JWT={"ALGORITHM": "ES512", "VERIFYING_KEY": "k"}):
            self.assertEqual(ids(), ["django_gateway.E001"])

    def test_e002_unknown_gateway_keys(self):
        with override_settings(GATEWAY={"WS_ULR": "ws://typo"}):
            self.assertEqual(ids(), ["django_gateway.E002"])
        with override_settings(GATEWAY={"WS_URL": "ws://fine"}):
            self.assertEqual(ids(), [])
