"""gateway_config: the generated TOML and --check."""

import io
import os
import tempfile
from pathlib import Path

from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import SimpleTestCase, override_settings

from django_gateway.gatewayconf import (
    ConfigurationProblem,
    Options,
    compare,
    desired_configuration,
    render_toml,
)

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

TWO_HOSTS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": ["redis://10.0.0.1:6379/0", ("10.0.0.2", 6380)],
            "prefix": "myapp",
            "expiry": 30,
            "group_expiry": 172800,
            "capacity": 200,
            "serializer_format": "json",
            "symmetric_encryption_keys": ["first key", "second key"],
        },
    }
}


def generate(*args):
    out = io.StringIO()
    call_command("gateway_config", *args, stdout=out)
    return out.getvalue()


def check(text, env=None):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(text)
    out, err = io.StringIO(), io.StringIO()
    saved = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        call_command("gateway_config", "--check", handle.name, stdout=out, stderr=err)
        return True, out.getvalue() + err.getvalue()
    except CommandError as error:
        return False, out.getvalue() + err.getvalue() + str(error)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        Path(handle.name).unlink()


class GenerateTests(SimpleTestCase):
    @override_settings(CHANNEL_LAYERS=TWO_HOSTS)
    def test_every_layer_setting_in_the_same_order(self):
        parsed = tomllib.loads(generate())
        layer = parsed["layer"]
        self.assertEqual(layer["backend"], "core")
        self.assertEqual(layer["hosts"], ["redis://10.0.0.1:6379/0", ["10.0.0.2", 6380]])
        self.assertEqual(
            (layer["prefix"], layer["expiry"], layer["group_expiry"], layer["capacity"], layer["serializer_format"]),
            ("myapp", 30, 172800, 200, "json"),
        )
        self.assertEqual(layer["symmetric_encryption_keys_env"], "CHANNEL_LAYER_ENCRYPTION_KEYS")
        self.assertNotIn("symmetric_encryption_keys", layer)

    @override_settings(CHANNEL_LAYERS=TWO_HOSTS)
    def test_no_literal_secret_unless_asked(self):
        text = generate()
        for secret in ("tests-signing-key-0123456789abcdef", "first key", "second key"):
            self.assertNotIn(secret, text)
        self.assertEqual(tomllib.loads(text)["auth"]["jwt_secret_env"], "JWT_SIGNING_KEY")
        files = generate("--jwt-secret-file", "/run/secrets/jwt", "--encryption-keys-file", "/run/secrets/keys")
        parsed = tomllib.loads(files)
        self.assertEqual(parsed["auth"]["jwt_secret_file"], "/run/secrets/jwt")
        self.assertEqual(parsed["layer"]["symmetric_encryption_keys_file"], "/run/secrets/keys")
        literal = tomllib.loads(generate("--include-secrets"))
        self.assertEqual(literal["auth"]["jwt_secret"], "tests-signing-key-0123456789abcdef")
        self.assertEqual(literal["layer"]["symmetric_encryption_keys"], ["first key", "second key"])

    @override_settings(
        CHANNEL_LAYERS={"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                    "CONFIG": {"hosts": ["redis://user:hunter2@h:6379/0",
                                                         {"address": "rediss://:pw2@h2:6380", "ssl_ca_certs": "/ca.pem"}]}}}
    )
    def test_redis_passwords_are_left_out(self):
        text = generate()
        self.assertNotIn("hunter2", text)
        self.assertNotIn("pw2", text)
        self.assertIn("GATEWAY_LAYER_HOSTS", text)
        hosts = tomllib.loads(text)["layer"]["hosts"]
        self.assertEqual(hosts[0], "redis://user@h:6379/0")
        self.assertEqual(hosts[1], {"address": "rediss://h2:6380", "ssl_ca_certs": "/ca.pem"})
        self.assertIn("hunter2", generate("--include-secrets"))

    @override_settings(
        SIMPLE_JWT={"ALGORITHM": "RS256", "SIGNING_KEY": "private", "VERIFYING_KEY": "-----BEGIN PUBLIC KEY-----\nAAA\n-----END PUBLIC KEY-----\n",
                    "AUDIENCE": "web", "ISSUER": "https://auth.example.com", "LEEWAY": 5, "USER_ID_CLAIM": "uid"}
    )
    def test_simplejwt_claims_and_public_key(self):
        text = generate()
        self.assertNotIn("private", text)
        auth = tomllib.loads(text)["auth"]
        self.assertEqual(auth["algorithms"], ["RS256"])
        self.assertIn("BEGIN PUBLIC KEY", auth["public_key"])
        self.assertEqual((auth["audience"], auth["issuer"], auth["leeway"], auth["user_id_claims"]),
                         (["web"], "https://auth.example.com", 5, ["uid"]))
        self.assertNotIn("jwt_secret_env", auth)

    @override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}})
    def test_an_unsupported_layer_is_refused_by_name(self):
        with self.assertRaisesMessage(CommandError, "InMemoryChannelLayer"):
            generate()

    @override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                                                   "CONFIG": {"hosts": [{"address": "redis://h:1", "socket_timeout": None,
                                                                         "retry_on_timeout": True}]}}})
    def test_pubsub_and_client_only_options(self):
        layer = tomllib.loads(generate())["layer"]
        self.assertEqual(layer["backend"], "pubsub")
        self.assertEqual(layer["hosts"], ["redis://h:1"])
        self.assertNotIn("capacity", layer)

    @override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                                   "CONFIG": {"hosts": [{"address": "redis://h:1", "ssl_keyfile": "k"}]}}})
    def test_an_unknown_host_option_is_named(self):
        with self.assertRaises(ConfigurationProblem) as caught:
            desired_configuration()
        self.assertIn("ssl_keyfile", str(caught.exception))


class CheckTests(SimpleTestCase):
    @override_settings(CHANNEL_LAYERS=TWO_HOSTS)
    def test_the_generated_file_matches(self):
        ok, output = check(generate(), env={"JWT_SIGNING_KEY": "tests-signing-key-0123456789abcdef",
                                            "CHANNEL_LAYER_ENCRYPTION_KEYS": "first key\nsecond key\n"})
        self.assertTrue(ok, output)
        self.assertIn("matches", output)

    @override_settings(CHANNEL_LAYERS=TWO_HOSTS)
    def test_hosts_in_another_order_are_drift(self):
        text = generate().replace('"redis://10.0.0.1:6379/0",', "@@").replace('["10.0.0.2", 6380],', '"redis://10.0.0.1:6379/0",').replace("@@", '["10.0.0.2", 6380],')
        ok, output = check(text, env={"JWT_SIGNING_KEY": "tests-signing-key-0123456789abcdef",
                                      "CHANNEL_LAYER_ENCRYPTION_KEYS": '["first key", "second key"]'})
        self.assertFalse(ok, output)
        self.assertIn("layer.hosts", output)
        self.assertIn("another order", output)
        self.assertIn("1 difference", output)

    @override_settings(CHANNEL_LAYERS=TWO_HOSTS)
    def test_every_difference_is_reported_and_no_secret_shown(self):
        text = (generate("--include-secrets")
                .replace('prefix = "myapp"', 'prefix = "asgi"')
                .replace("capacity = 200", "capacity = 100")
                .replace('"tests-signing-key-0123456789abcdef"', '"another-key"')
                .replace('["first key", "second key"]', '["second key", "first key"]')
                .replace('algorithms = ["HS256"]', 'algorithms = ["HS512"]'))
        ok, output = check(text)
        self.assertFalse(ok, output)
        for key in ("layer.prefix", "layer.capacity", "auth.jwt_secret", "layer.symmetric_encryption_keys",
                    "auth.algorithms", "5 difference"):
            self.assertIn(key, output)
        for secret in ("another-key", "tests-signing-key-0123456789abcdef", "first key"):
            self.assertNotIn(secret, output)

    @override_settings(CHANNEL_LAYERS=TWO_HOSTS)
    def test_a_key_the_file_leaves_out_counts_with_the_gateways_default(self):
        text = generate().replace("group_expiry = 172800\n", "")
        ok, output = check(text, env={"JWT_SIGNING_KEY": "tests-signing-key-0123456789abcdef",
                                      "CHANNEL_LAYER_ENCRYPTION_KEYS": "first key\nsecond key"})
        self.assertFalse(ok)
        self.assertIn("layer.group_expiry: Django has 172800, the gateway 86400", output)

    def test_an_unset_reference_is_noted_not_hidden(self):
        ok, output = check(render_toml(desired_configuration(), Options(jwt_secret_env="SURELY_UNSET_VAR_X")))
        self.assertTrue(ok, output)
        self.assertIn("not verified", output)

    def test_a_missing_secret_is_drift(self):
        text = render_toml(desired_configuration(), Options()).replace('jwt_secret_env = "JWT_SIGNING_KEY"\n', "")
        differences, _ = compare(desired_configuration(), text)
        self.assertTrue(any("auth.jwt_secret" in line for line in differences), differences)
