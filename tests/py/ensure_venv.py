#!/usr/bin/env python3
"""Create or refresh the repository's test virtualenv and print its python.

Idempotent and safe to run from many processes at once:

* the venv lives at ``<repo>/.venv`` (the repo root is found from this file's
  location, never from the working directory);
* an exclusive ``fcntl`` lock on ``<repo>/.venv.lock`` serialises creation and
  installs, so parallel test binaries never race on ``pip``;
* a stamp file ``<repo>/.venv/.requirements.sha256`` holds the sha256 of
  ``tests/py/requirements.txt`` (plus the interpreter version); when a pin
  changes, the requirements are installed again into the existing venv; a venv
  whose interpreter no longer runs is recreated.

Only the venv python path is printed on stdout (as the last line); everything
else (pip's output) goes to stderr.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "tests" / "py" / "requirements.txt"
VENV = REPO / ".venv"
LOCK = REPO / ".venv.lock"
STAMP = VENV / ".requirements.sha256"


def venv_python() -> Path:
    # Not resolved on purpose: bin/python is a symlink to the base interpreter,
    # and only the unresolved path activates the venv.
    return VENV / "bin" / "python"


def wanted_stamp() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    version = ".".join(str(part) for part in sys.version_info[:3])
    return f"{digest} python-{version}\n"


def stamp_ok(wanted: str) -> bool:
    try:
        current = STAMP.read_text()
    except OSError:
        return False
    return current == wanted and venv_python().exists()


def python_runs() -> bool:
    try:
        subprocess.run(
            [str(venv_python()), "-c", "import sys"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def run(cmd) -> None:
    print("+ " + " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    subprocess.run([str(c) for c in cmd], check=True, stdout=sys.stderr)


def build(wanted: str) -> None:
    if VENV.exists() and not python_runs():
        print(f"ensure_venv: {VENV} is broken, recreating", file=sys.stderr)
        shutil.rmtree(VENV)
    if not VENV.exists():
        run([sys.executable, "-m", "venv", VENV])
    try:
        STAMP.unlink()
    except FileNotFoundError:
        pass
    run(
        [
            venv_python(),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "-r",
            REQUIREMENTS,
        ]
    )
    tmp = STAMP.with_name(STAMP.name + f".tmp{os.getpid()}")
    tmp.write_text(wanted)
    os.replace(tmp, STAMP)


def main() -> int:
    wanted = wanted_stamp()
    if not stamp_ok(wanted):
        with open(LOCK, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                # Someone else may have finished while we waited for the lock.
                if not stamp_ok(wanted):
                    build(wanted)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    print(venv_python())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as err:
        print(f"ensure_venv: command failed: {err}", file=sys.stderr)
        sys.exit(1)
