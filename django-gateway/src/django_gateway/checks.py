"""System checks (``manage.py check``): Django settings that lose messages
or break the gateway. Ids ``django_gateway.E0xx`` (the gateway cannot work)
and ``django_gateway.W0xx`` (it works, but messages can be lost)."""

import fnmatch
import re
from importlib import metadata

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .conf import DEFAULTS, gateway_setting
from .gatewayconf import ConfigurationProblem, channel_layer, desired_configuration, seconds, simplejwt

#: A channel name of the shape the gateway's sockets have.
SAMPLE_GATEWAY_CHANNEL = "specific.gw-0123456789abcdef!q0"
#: channels_redis' own default capacity: below it the gateway's per-user
#: queue keys are tighter than what Channels consumers had.
DEFAULT_CAPACITY = 100


def redis_py_major():
    try:
        return int(metadata.version("redis").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return None


def host_sets_socket_timeout(host):
    if isinstance(host, dict):
        return "socket_timeout" in host
    if isinstance(host, str):
        return "socket_timeout=" in host.partition("?")[2]
    return False


def capacity_for(config, channel):
    """The capacity channels_redis applies to ``channel`` (its own rule:
    the first ``channel_capacity`` pattern that matches, else ``capacity``)."""
    for pattern, value in (config.get("channel_capacity") or {}).items():
        regex = pattern if hasattr(pattern, "match") else re.compile(fnmatch.translate(pattern))
        if regex.match(channel):
            return value
    return config.get("capacity", DEFAULT_CAPACITY)


@register(Tags.compatibility)
def gateway_settings(app_configs, **kwargs):
    configured = getattr(settings, "GATEWAY", None) or {}
    if not isinstance(configured, dict) or set(configured) - set(DEFAULTS):
        unknown = sorted(set(configured) - set(DEFAULTS)) if isinstance(configured, dict) else configured
        return [
            Error(
                f"settings.GATEWAY must be a dict of known keys; unknown: {unknown}",
                hint=f"The keys are {', '.join(DEFAULTS)} (django-gateway/README.md, Settings).",
                id="django_gateway.E002",
            )
        ]
    problems = []
    alias = gateway_setting("CHANNEL_LAYER")
    try:
        desired = desired_configuration()
    except ConfigurationProblem as problem:
        return [
            Error(
                f"The notification gateway cannot be configured from these settings: {problem}",
                hint="Use channels_redis' core or pubsub layer and a SimpleJWT setup the gateway "
                "verifies (README: 'Pointing an existing Django backend at it').",
                id="django_gateway.E001",
            )
        ]
    layer = desired.values["layer"]
    # What desired does not carry: the hosts as written (with their client
    # options) and channel_capacity.
    _, config = channel_layer()
    hosts = config.get("hosts") or [("localhost", 6379)]

    major = redis_py_major()
    if major is not None and major >= 8:
        without = [index for index, host in enumerate(hosts) if not host_sets_socket_timeout(host)]
        if without:
            problems.append(
                Warning(
                    f"redis-py {major} reads with a 5 s socket timeout by default, which breaks "
                    f"channels_redis' blocking reads (BZPOPMIN; channels_redis#422): every "
                    f"consumer in this project that receives from CHANNEL_LAYERS[{alias!r}] fails "
                    f"every few seconds. Hosts without socket_timeout: {without}.",
                    hint='Write each host as a dict with "socket_timeout": None, e.g. '
                    '{"address": "redis://redis:6379", "socket_timeout": None} '
                    "(manage.py gateway_config leaves the option out of the gateway's file).",
                    id="django_gateway.W001",
                )
            )

    if layer["backend"] == "core":
        group_expiry = layer["group_expiry"]
        if gateway_setting("AUTH_MODE") == "session":
            session_seconds, what = settings.SESSION_COOKIE_AGE, "SESSION_COOKIE_AGE"
        else:
            session_seconds = seconds(simplejwt()["REFRESH_TOKEN_LIFETIME"], "SIMPLE_JWT REFRESH_TOKEN_LIFETIME")
            what = "SIMPLE_JWT REFRESH_TOKEN_LIFETIME"
        if group_expiry < session_seconds:
            problems.append(
                Warning(
                    f"CHANNEL_LAYERS group_expiry ({group_expiry} s) is shorter than a session "
                    f"({what}, {session_seconds} s): channels_redis drops a group member "
                    "group_expiry after it joined, so a consumer that stays connected longer "
                    "stops receiving its user's messages without noticing, and a gateway "
                    "process stalled past it loses its memberships until its next refresh.",
                    hint=f"Raise group_expiry to at least {session_seconds} (the gateway re-adds "
                    "its memberships every group_expiry / 4; keep its layer.group_expiry equal).",
                    id="django_gateway.W002",
                )
            )
        capacity = capacity_for(config, SAMPLE_GATEWAY_CHANNEL)
        if capacity < DEFAULT_CAPACITY:
            problems.append(
                Warning(
                    f"The gateway's channels (specific.gw-*) get a capacity of {capacity} messages: "
                    "channels_redis' sender drops a message silently once a queue key holds that "
                    "many, so a burst of more than that to one user while the gateway is behind "
                    "is lost.",
                    hint='Give the gateway\'s channels room: CONFIG["channel_capacity"] = '
                    '{"specific.gw-*": 10000} (and do not lower "capacity" below 100).',
                    id="django_gateway.W003",
                )
            )
    return problems
