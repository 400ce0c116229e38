"""The gateway's configuration as the project's settings imply it.

``desired_configuration()`` reads ``CHANNEL_LAYERS`` and SimpleJWT's
settings and returns what the gateway's ``[layer]`` and ``[auth]`` sections
must say; ``render_toml()`` writes it (secrets as references unless asked
otherwise); ``compare()`` lists every difference from an existing file.
Nothing here writes or connects anywhere.
"""

import json
import math
import os
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from .conf import gateway_setting

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigurationProblem(Exception):
    """A Django setting the gateway cannot be configured to match."""


LAYER_BACKENDS = {
    "channels_redis.core.RedisChannelLayer": "core",
    "channels_redis.pubsub.RedisPubSubChannelLayer": "pubsub",
}

#: Algorithms the gateway verifies (auth.algorithms).
GATEWAY_ALGORITHMS = {
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
}

#: Keys of a ``hosts`` dict the gateway reads (redis-py's names).
HOST_KEYS = {"address", "sentinels", "master_name", "ssl_ca_certs", "username", "password", "db"}
#: redis-py client tunables that mean nothing to the gateway's own client.
CLIENT_ONLY_HOST_KEYS = {
    "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
    "retry_on_timeout", "retry_on_error", "retry", "health_check_interval", "max_connections",
    "client_name", "sentinel_kwargs", "decode_responses", "encoding",
}

#: What the gateway uses when its file leaves a key out.
GATEWAY_DEFAULTS = {
    "layer": {
        "backend": "core",
        "hosts": ["redis://127.0.0.1:6379"],
        "prefix": "asgi",
        "expiry": 60,
        "group_expiry": 86400,
        "capacity": 100,
        "random_prefix_length": 12,
        "serializer_format": "msgpack",
    },
    "auth": {
        "algorithms": [],
        "audience": [],
        "issuer": None,
        "leeway": 0,
        "user_id_claims": ["user_id", "sub"],
        "user_group_template": "user_{user_id}",
        "public_key": None,
        "jwks_url": None,
    },
}

SIMPLEJWT_DEFAULTS = {
    "ALGORITHM": "HS256",
    "SIGNING_KEY": None,  # SECRET_KEY
    "VERIFYING_KEY": "",
    "AUDIENCE": None,
    "ISSUER": None,
    "JWK_URL": None,
    "LEEWAY": 0,
    "USER_ID_CLAIM": "user_id",
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=5),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=1),
}


@dataclass
class Options:
    """How secrets are written: as the name of an environment variable (the
    default), as a file, or (``include_secrets``) literally."""

    include_secrets: bool = False
    jwt_secret_env: str = ""
    jwt_secret_file: str = ""
    encryption_keys_env: str = ""
    encryption_keys_file: str = ""

    def __post_init__(self):
        self.jwt_secret_env = self.jwt_secret_env or gateway_setting("JWT_SECRET_ENV")
        self.encryption_keys_env = self.encryption_keys_env or gateway_setting("ENCRYPTION_KEYS_ENV")


@dataclass
class Desired:
    """The gateway settings the project implies. ``values`` holds the plain
    keys per section; the secrets are kept apart, never in ``values``."""

    values: dict = field(default_factory=lambda: {"layer": {}, "auth": {}})
    jwt_secret: str | None = None
    encryption_keys: list = field(default_factory=list)
    host_passwords: bool = False
    notes: list = field(default_factory=list)


def channel_layer():
    alias = gateway_setting("CHANNEL_LAYER")
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    if alias not in layers:
        raise ConfigurationProblem(f"CHANNEL_LAYERS has no {alias!r} layer (GATEWAY['CHANNEL_LAYER'])")
    layer = layers[alias]
    return layer.get("BACKEND", ""), layer.get("CONFIG", {}) or {}


def simplejwt():
    configured = getattr(settings, "SIMPLE_JWT", None) or {}
    merged = dict(SIMPLEJWT_DEFAULTS)
    merged.update(configured)
    if merged["SIGNING_KEY"] is None:
        merged["SIGNING_KEY"] = settings.SECRET_KEY
    return merged


def seconds(value, name):
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, (int, float)) or value < 0:
        raise ConfigurationProblem(f"{name} must be a number of seconds or a timedelta, not {value!r}")
    return int(math.ceil(value))


def url_password(url):
    return urlsplit(url).password


def without_password(url):
    """The URL with its password removed (user names stay)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    if user:
        netloc = f"{user}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def gateway_host(entry, index):
    """One channels_redis ``hosts`` entry in the gateway's form."""
    where = f"CHANNEL_LAYERS hosts[{index}]"
    if isinstance(entry, str):
        return entry
    if isinstance(entry, (tuple, list)) and len(entry) == 2:
        host, port = entry
        if not isinstance(host, str) or not isinstance(port, int):
            raise ConfigurationProblem(f"{where}: expected (host, port), got {entry!r}")
        return [host, port]
    if isinstance(entry, dict):
        unknown = set(entry) - HOST_KEYS - CLIENT_ONLY_HOST_KEYS
        if unknown:
            raise ConfigurationProblem(
                f"{where}: the gateway has no setting for {', '.join(sorted(unknown))}"
            )
        table = {}
        for key in ("address", "master_name", "ssl_ca_certs", "username", "password", "db"):
            if entry.get(key) is not None:
                table[key] = str(entry[key]) if key == "ssl_ca_certs" else entry[key]
        if entry.get("sentinels"):
            table["sentinels"] = [[str(host), int(port)] for host, port in entry["sentinels"]]
        if "address" not in table and "sentinels" not in table:
            raise ConfigurationProblem(f"{where}: needs an address or sentinels")
        if set(table) == {"address"}:
            return table["address"]  # only client tunables beside it: the plain URL
        return table
    raise ConfigurationProblem(f"{where}: unsupported form {entry!r}")


def desired_configuration():
    backend, config = channel_layer()
    if backend not in LAYER_BACKENDS:
        raise ConfigurationProblem(
            f"CHANNEL_LAYERS BACKEND {backend!r}: the gateway speaks channels_redis' "
            f"core and pubsub layers only ({', '.join(LAYER_BACKENDS)})"
        )
    desired = Desired()
    layer = desired.values["layer"]
    layer["backend"] = LAYER_BACKENDS[backend]
    hosts = config.get("hosts") or [("localhost", 6379)]
    layer["hosts"] = [gateway_host(entry, index) for index, entry in enumerate(hosts)]
    desired.host_passwords = any(host_password(host) for host in layer["hosts"])
    layer["prefix"] = config.get("prefix", "asgi")
    if layer["backend"] == "core":
        layer["expiry"] = int(config.get("expiry", 60))
        layer["group_expiry"] = int(config.get("group_expiry", 86400))
        layer["capacity"] = int(config.get("capacity", 100))
        layer["random_prefix_length"] = int(config.get("random_prefix_length", 12))
    layer["serializer_format"] = config.get("serializer_format", "msgpack")
    if layer["serializer_format"] not in ("msgpack", "json"):
        raise ConfigurationProblem(
            f"CHANNEL_LAYERS serializer_format {layer['serializer_format']!r}: the gateway reads msgpack and json"
        )
    desired.encryption_keys = [str(key) for key in config.get("symmetric_encryption_keys") or []]

    jwt = simplejwt()
    auth = desired.values["auth"]
    algorithm = jwt["ALGORITHM"]
    if algorithm not in GATEWAY_ALGORITHMS:
        raise ConfigurationProblem(
            f"SIMPLE_JWT ALGORITHM {algorithm!r}: the gateway verifies {', '.join(sorted(GATEWAY_ALGORITHMS))}"
        )
    auth["algorithms"] = [algorithm]
    if jwt["JWK_URL"]:
        auth["jwks_url"] = jwt["JWK_URL"]
    elif algorithm.startswith("HS"):
        desired.jwt_secret = str(jwt["SIGNING_KEY"])
    else:
        verifying = jwt["VERIFYING_KEY"]
        if isinstance(verifying, bytes):
            verifying = verifying.decode()
        if not verifying:
            raise ConfigurationProblem(f"SIMPLE_JWT ALGORITHM {algorithm} needs VERIFYING_KEY (or JWK_URL)")
        auth["public_key"] = verifying
    audience = jwt["AUDIENCE"]
    auth["audience"] = [] if not audience else [audience] if isinstance(audience, str) else list(audience)
    if jwt["ISSUER"]:
        auth["issuer"] = jwt["ISSUER"]
    auth["leeway"] = seconds(jwt["LEEWAY"], "SIMPLE_JWT LEEWAY")
    auth["user_id_claims"] = [jwt["USER_ID_CLAIM"]]
    auth["user_group_template"] = gateway_setting("USER_GROUP_TEMPLATE")
    return desired


def host_password(host):
    if isinstance(host, str):
        return url_password(host)
    if isinstance(host, dict):
        return host.get("password") or (url_password(host["address"]) if "address" in host else None)
    return None


def host_without_password(host):
    if isinstance(host, str):
        return without_password(host)
    if isinstance(host, dict):
        shown = {key: value for key, value in host.items() if key != "password"}
        if "address" in shown:
            shown["address"] = without_password(shown["address"])
        return shown
    return host


# --- TOML ------------------------------------------------------------------


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def secret_lines(key, value, options, file, env, file_note, env_note):
    """A secret setting as the gateway should read it: the value itself only
    with ``--include-secrets``, else a reference to a file or an environment
    variable, with a comment saying what it holds."""
    if options.include_secrets:
        return [f"{key} = {toml_value(value)}"]
    if file:
        return [f"# {file_note}", f"{key}_file = {toml_value(file)}"]
    return [f"# {env_note}", f"{key}_env = {toml_value(env)}"]


def render_toml(desired, options):
    lines = [
        "# The gateway's [layer] and [auth] sections, generated by `manage.py gateway_config`",
        "# from this project's CHANNEL_LAYERS and SIMPLE_JWT. Check for drift with",
        "# `manage.py gateway_config --check FILE`.",
    ]
    for note in desired.notes:
        lines.append(f"# {note}")
    lines += ["", "[layer]"]
    for key, value in desired.values["layer"].items():
        if key == "hosts":
            if desired.host_passwords and not options.include_secrets:
                lines.append(
                    "# The hosts carry Redis passwords, left out here: give the gateway the full list"
                )
                lines.append(
                    "# in GATEWAY_LAYER_HOSTS (it replaces this one), or rerun with --include-secrets."
                )
                value = [host_without_password(host) for host in value]
            lines.append("hosts = [")
            lines += [f"  {toml_value(host)}," for host in value]
            lines.append("]")
            continue
        lines.append(f"{key} = {toml_value(value)}")
    if desired.encryption_keys:
        lines += secret_lines(
            "symmetric_encryption_keys",
            desired.encryption_keys,
            options,
            options.encryption_keys_file,
            options.encryption_keys_env,
            "The file holds the keys, one per line, in CHANNEL_LAYERS' order.",
            "A JSON list of the keys, or one key per line, in CHANNEL_LAYERS' order.",
        )
    lines += ["", "[auth]"]
    if desired.jwt_secret is not None:
        lines += secret_lines(
            "jwt_secret",
            desired.jwt_secret,
            options,
            options.jwt_secret_file,
            options.jwt_secret_env,
            "The file holds SimpleJWT's SIGNING_KEY.",
            "The environment variable holds SimpleJWT's SIGNING_KEY.",
        )
    for key, value in desired.values["auth"].items():
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


# --- drift ------------------------------------------------------------------


def canonical_host(host):
    """A comparable form of one hosts entry (URL, pair or table); passwords
    are compared apart, and never shown."""
    host = host_without_password(host)
    if isinstance(host, (list, tuple)) and len(host) == 2:
        return f"redis://{host[0]}:{host[1]}"
    if isinstance(host, str):
        return host.rstrip("/") if host.count("/") == 3 and host.endswith("/") else host
    if isinstance(host, dict):
        if set(host) == {"address"}:
            return canonical_host(host["address"])
        return json.dumps(host, sort_keys=True)
    return repr(host)


def as_list(value):
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def read_reference(section, base, parsed, parse):
    """The secret an existing configuration holds or points at:
    ``(value, None)`` or ``(None, why it cannot be read here)``."""
    if base in parsed:
        return parse(parsed[base], literal=True), None
    if f"{base}_env" in parsed:
        name = parsed[f"{base}_env"]
        if name not in os.environ:
            return None, f"{section}.{base}_env names {name}, which is not set here"
        return parse(os.environ[name], literal=False), None
    if f"{base}_file" in parsed:
        path = parsed[f"{base}_file"]
        try:
            with open(path, encoding="utf-8") as handle:
                return parse(handle.read(), literal=False), None
        except OSError as error:
            return None, f"{section}.{base}_file {path}: {error.strerror}"
    return None, None


def parse_secret(value, literal):
    if literal:
        return value
    return value[:-1] if value.endswith("\n") else value


def parse_key_list(value, literal):
    if literal:
        return [str(key) for key in as_list(value)]
    text = value.strip()
    if text.startswith("["):
        return [str(key) for key in json.loads(text)]
    return [line.rstrip("\r") for line in value.splitlines() if line.rstrip("\r")]


def compare(desired, text):
    """Every difference between the project's settings and an existing
    gateway configuration (TOML text): ``(differences, unverified)``, each a
    list of human-readable lines that never show a secret."""
    parsed = tomllib.loads(text)
    differences, unverified = [], []
    for section in ("layer", "auth"):
        have = parsed.get(section, {})
        defaults = GATEWAY_DEFAULTS[section]
        wanted_keys = list(desired.values[section])
        # The auth keys that are only present for some setups: compared
        # against their defaults when Django leaves them out.
        wanted_keys += [key for key in ("issuer", "public_key", "jwks_url")
                        if key in defaults and key not in wanted_keys]
        for key in wanted_keys:
            want = desired.values[section].get(key, defaults.get(key))
            got = have.get(key, defaults.get(key))
            if section == "auth" and key == "algorithms":
                got = as_list(got) or [have.get("jwt_algorithm", "HS256")]
            if key in ("hosts", "audience", "user_id_claims"):
                got = as_list(got)
            if key == "hosts":
                want_c = [canonical_host(host) for host in want]
                got_c = [canonical_host(host) for host in got]
                if want_c != got_c:
                    differences.append(
                        f"layer.hosts: Django has {want_c}, the gateway {got_c}"
                        + (" (same hosts, another order: the shard ring differs)"
                           if sorted(want_c) == sorted(got_c) else "")
                    )
                else:
                    for index, (w, g) in enumerate(zip(want, got)):
                        if host_password(g) is not None and host_password(g) != host_password(w):
                            differences.append(f"layer.hosts[{index}]: the password differs from Django's")
                continue
            if key == "public_key" and isinstance(want, str) and isinstance(got, str):
                if want.strip() != got.strip():
                    differences.append("auth.public_key differs from SIMPLE_JWT VERIFYING_KEY")
                continue
            if want != got:
                differences.append(f"{section}.{key}: Django has {json.dumps(want)}, the gateway {json.dumps(got)}")
    layer = parsed.get("layer", {})
    keys, why = read_reference("layer", "symmetric_encryption_keys", layer, parse_key_list)
    if keys is None:
        keys = []
    if why:
        unverified.append(f"layer.symmetric_encryption_keys not verified: {why}")
    elif keys != desired.encryption_keys:
        differences.append(
            f"layer.symmetric_encryption_keys: Django has {len(desired.encryption_keys)} key(s), "
            f"the gateway {len(keys)}" + (" (same count, other keys or order)" if len(keys) == len(desired.encryption_keys) else "")
        )
    auth = parsed.get("auth", {})
    if desired.jwt_secret is not None:
        secret, why = read_reference("auth", "jwt_secret", auth, parse_secret)
        if why:
            unverified.append(f"auth.jwt_secret not verified: {why}")
        elif secret is None:
            differences.append("auth.jwt_secret: the gateway has none, SimpleJWT signs with SIGNING_KEY")
        elif secret != desired.jwt_secret:
            differences.append("auth.jwt_secret: differs from SimpleJWT's SIGNING_KEY")
    return differences, unverified
