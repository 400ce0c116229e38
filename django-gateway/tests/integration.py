#!/usr/bin/env python3
"""The package against a real Django project, real gateways and real Redis.

Starts two redis-servers on free loopback ports (a sharded layer) and stops
them by PID; generates the gateway's configuration with `gateway_config`;
checks it with `gateway check-config`; plants a drift for `--check`; runs
`manage.py check` with each bad setting; starts two gateway processes on
the generated file and drives sockets with `websockets` while Django calls
notify(), disconnect(), is_online() and socket_count().

Usage: integration.py --gateway PATH/TO/gateway   (with the python of a venv
holding the wheel and tests/requirements.txt)
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECRET = "integration-signing-key-0123456789abcdef"
KEYS = ["first fernet key", "second fernet key"]
USER = 42

failures = []


def step(name):
    print(f"--- {name}", flush=True)


def expect(condition, what):
    if condition:
        print(f"ok: {what}", flush=True)
    else:
        print(f"FAIL: {what}", flush=True)
        failures.append(what)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Processes:
    """Everything this test starts, stopped by PID at the end."""

    def __init__(self, logs):
        self.logs = logs
        self.children = []

    def start(self, name, argv, env=None):
        log = open(self.logs / f"{name}.log", "wb")
        child = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.children.append(child)
        return child

    def stop(self, child):
        if child.poll() is None:
            os.kill(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()

    def stop_all(self):
        for child in reversed(self.children):
            self.stop(child)


def redis_server(procs):
    port = free_port()
    procs.start(f"redis-{port}", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no"])
    wait_until(lambda: port_open(port), f"redis on {port}")
    return f"redis://127.0.0.1:{port}/0"


def django_env(redis_urls, bad=""):
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(HERE.parent),
        "DJANGO_SETTINGS_MODULE": "tests.integration_settings",
        "REDIS_URLS": json.dumps(redis_urls),
        "JWT_SIGNING_KEY": SECRET,
        "CHANNEL_LAYER_ENCRYPTION_KEYS": json.dumps(KEYS),
        "INTEGRATION_BAD": bad,
    })
    return env


def manage(env, *args):
    return subprocess.run([sys.executable, "-m", "django", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def start_gateway(procs, gateway, config, env):
    port, admin = free_port(), free_port()
    gateway_env = dict(env, GATEWAY_SERVER_LISTEN=f"127.0.0.1:{port}",
                       GATEWAY_SERVER_ADMIN_LISTEN=f"127.0.0.1:{admin}", RUST_LOG="info")
    child = procs.start(f"gateway-{port}", [gateway, "serve", "--config", str(config)], env=gateway_env)

    def ready():
        if child.poll() is not None:
            raise RuntimeError(f"gateway exited with {child.returncode} (see its log)")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_until(ready, f"gateway /readyz on {admin}")
    return f"ws://127.0.0.1:{port}/ws/notifications/"


def configuration_steps(gateway, env, work):
    step("gateway_config: the generated configuration")
    generated = manage(env, "gateway_config")
    expect(generated.returncode == 0, f"gateway_config exits 0 ({generated.stderr.strip()})")
    text = generated.stdout
    config = work / "gateway.toml"
    config.write_text(text)
    expect(SECRET not in text and not any(key in text for key in KEYS), "no literal secret in the output")
    expect('jwt_secret_env = "JWT_SIGNING_KEY"' in text, "the JWT secret is a reference to JWT_SIGNING_KEY")
    expect('symmetric_encryption_keys_env = "CHANNEL_LAYER_ENCRYPTION_KEYS"' in text,
           "the encryption keys are a reference to CHANNEL_LAYER_ENCRYPTION_KEYS")
    checked = subprocess.run([gateway, "check-config", "--config", str(config)], env=env, capture_output=True,
                             text=True, timeout=60)
    expect(checked.returncode == 0, f"gateway check-config accepts it unchanged ({checked.stderr.strip()[-300:]})")
    expect(SECRET not in checked.stdout + checked.stderr, "check-config shows no secret")

    step("gateway_config --check")
    same = manage(env, "gateway_config", "--check", str(config))
    expect(same.returncode == 0 and "matches" in same.stdout, f"no drift on the generated file ({same.stdout}{same.stderr})")
    lines = text.splitlines()
    first = lines.index("hosts = [") + 1
    lines[first], lines[first + 1] = lines[first + 1], lines[first]
    drifted = work / "drifted.toml"
    drifted.write_text("\n".join(lines) + "\n")
    drift = manage(env, "gateway_config", "--check", str(drifted))
    expect(drift.returncode == 1, "--check exits 1 on hosts in another order")
    expect("layer.hosts" in drift.stdout and "another order" in drift.stdout,
           f"--check names layer.hosts and the order ({drift.stdout.strip()})")
    # The gateway's file points at a variable that holds another secret.
    other = work / "other-secret.toml"
    other.write_text(text.replace('jwt_secret_env = "JWT_SIGNING_KEY"', 'jwt_secret_env = "GATEWAY_SECRET_X"'))
    wrong_key = manage(dict(env, GATEWAY_SECRET_X="another-secret-entirely-0123456789"), "gateway_config",
                       "--check", str(other))
    expect(wrong_key.returncode == 1 and "auth.jwt_secret" in wrong_key.stdout,
           "--check finds a JWT secret the referenced variable holds that is not SimpleJWT's")
    expect("another-secret" not in wrong_key.stdout + wrong_key.stderr, "--check shows no secret")
    return config


def check_steps(redis_urls):
    step("manage.py check: each system check fires on its bad setting, quiet on good ones")
    good = manage(django_env(redis_urls), "check", "--fail-level", "WARNING")
    expect(good.returncode == 0 and "django_gateway" not in good.stdout + good.stderr,
           f"good settings: no django_gateway message ({good.stderr.strip()})")
    import redis

    cases = [("group_expiry", "django_gateway.W002"), ("capacity", "django_gateway.W003")]
    if int(redis.__version__.split(".")[0]) >= 8:
        cases.append(("socket_timeout", "django_gateway.W001"))
    else:
        print(f"note: redis-py {redis.__version__} < 8, W001 cannot fire here (unit-tested)")
    for bad, check_id in cases:
        result = manage(django_env(redis_urls, bad), "check", "--fail-level", "WARNING")
        output = result.stdout + result.stderr
        others = [other for _, other in cases if other != check_id and other in output]
        expect(result.returncode != 0 and check_id in output and not others,
               f"{bad}: {check_id} and only it ({output.strip()[-400:]})")


async def recv_json(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def socket_steps(urls, token):
    import websockets
    from asgiref.sync import sync_to_async

    import django_gateway

    async def becomes(probe, value):
        """Whether ``await probe(USER)`` equals ``value`` within 10 s."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if await probe(USER) == value:
                return True
            await asyncio.sleep(0.05)
        return False

    step("is_online / socket_count before any socket")
    expect(await django_gateway.ais_online(USER) is False, "is_online is False before the first socket")
    expect(await sync_to_async(django_gateway.socket_count)(USER) == 0, "socket_count (sync) is 0")

    step("notify() reaches a socket on each gateway process")
    first = await websockets.connect(f"{urls[0]}?token={token}")
    second = await websockets.connect(f"{urls[1]}?token={token}")
    expect(await django_gateway.asocket_count(USER) == 2, "socket_count is 2 with a socket on each process")
    expect(await sync_to_async(django_gateway.is_online)(USER) is True, "is_online (sync) is True")
    await sync_to_async(django_gateway.notify)(USER, {"text": "hello from Django", "n": 1})
    for name, ws in (("first", first), ("second", second)):
        raw = await asyncio.wait_for(ws.recv(), 10)
        expect(raw == json.dumps({"message": {"text": "hello from Django", "n": 1}}),
               f"{name} process delivered notify() byte for byte ({raw})")
    await django_gateway.anotify(USER, "async too")
    expect((await recv_json(first))["message"] == "async too", "anotify() delivered")
    await recv_json(second)

    step("is_online after the last socket closes")
    await first.close()
    await first.wait_closed()
    expect(await becomes(django_gateway.asocket_count, 1), "socket_count is 1 once one of two sockets closed")
    expect(await django_gateway.ais_online(USER) is True, "is_online stays True while a socket is open")
    await second.close()
    await second.wait_closed()
    expect(await becomes(django_gateway.ais_online, False), "is_online is False once the last socket closed")

    step("disconnect() closes the user's sockets on both gateway processes")
    sockets = [await websockets.connect(f"{url}?token={token}") for url in urls]
    bystander = await websockets.connect(f"{urls[0]}?token={BYSTANDER_TOKEN}")
    expect(await becomes(django_gateway.ais_online, True), "is_online is True again")
    await sync_to_async(django_gateway.disconnect)(USER, code=4003, reason="password changed")
    for index, ws in enumerate(sockets):
        try:
            await asyncio.wait_for(ws.recv(), 10)
            expect(False, f"socket on process {index + 1} was closed")
        except websockets.ConnectionClosed as closed:
            expect((closed.rcvd.code, closed.rcvd.reason) == (4003, "password changed"),
                   f"process {index + 1} closed the socket with 4003 'password changed' ({closed.rcvd})")
    expect(await becomes(django_gateway.ais_online, False), "is_online is False after disconnect()")
    await django_gateway.adisconnect(USER)  # nobody left: harmless
    await django_gateway.anotify(USER + 1, "still here")
    expect((await recv_json(bystander))["message"] == "still here", "another user's socket stays open")
    await bystander.close()


BYSTANDER_TOKEN = ""


def main():
    global BYSTANDER_TOKEN
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("redis-server is required")
    work = Path(tempfile.mkdtemp(prefix="django-gateway-it-"))
    procs = Processes(work)
    try:
        redis_urls = [redis_server(procs), redis_server(procs)]
        env = django_env(redis_urls)
        config = configuration_steps(args.gateway, env, work)
        check_steps(redis_urls)

        step("two gateway processes on the generated configuration")
        urls = [start_gateway(procs, args.gateway, config, env) for _ in range(2)]
        os.environ.update({key: env[key] for key in
                           ("DJANGO_SETTINGS_MODULE", "REDIS_URLS", "JWT_SIGNING_KEY",
                            "CHANNEL_LAYER_ENCRYPTION_KEYS", "INTEGRATION_BAD")})
        sys.path.insert(0, str(HERE.parent))
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from rest_framework_simplejwt.tokens import AccessToken

        token = str(AccessToken.for_user(get_user_model()(pk=USER, username="alice")))
        BYSTANDER_TOKEN = str(AccessToken.for_user(get_user_model()(pk=USER + 1, username="bob")))
        asyncio.run(socket_steps(urls, token))
        procs.stop_all()
        logs = "".join(path.read_text(errors="replace") for path in work.glob("gateway-*.log"))
        expect(all(secret not in logs for secret in (token, BYSTANDER_TOKEN, SECRET, *KEYS)),
               "no token, JWT secret or encryption key in the gateways' logs")
    except Exception as error:  # report and fail; the processes are stopped below
        failures.append(f"{type(error).__name__}: {error}")
        print(f"FAIL: {type(error).__name__}: {error}", flush=True)
    finally:
        procs.stop_all()
    if failures:
        for path in sorted(work.glob("*.log")):
            print(f"--- {path.name} (last lines)")
            print("\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        shutil.rmtree(work, ignore_errors=True)
        print(f"{len(failures)} failure(s)")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
