#!/usr/bin/env python3
"""Create or refresh the example backend's virtualenv (.venv next to this
file) from requirements.txt plus the repository's Django package
(django-gateway/, built and installed as a wheel would be, so its static
files hold the browser client from gateway/static/), and print its python.
Idempotent: a stamp file holds the sha256 of requirements.txt and of the
package's sources; an flock serialises concurrent runs. pip's output goes to
stderr; only the python path goes to stdout.
"""

import fcntl
import hashlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
REQUIREMENTS = HERE / "requirements.txt"
STAMP = VENV / ".requirements.sha256"
REPO = HERE.parent.parent
PACKAGE = REPO / "django-gateway"
CLIENT = REPO / "gateway" / "static"


def package_digest():
    """What the installed package was built from: its sources and the client."""
    digest = hashlib.sha256()
    files = [PACKAGE / "pyproject.toml", PACKAGE / "setup.py", CLIENT / "notifications.js",
             CLIENT / "notifications.d.ts"]
    files += sorted(path for path in (PACKAGE / "src").rglob("*")
                    if path.is_file() and "__pycache__" not in path.parts and "static" not in path.parts)
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def main() -> int:
    python = VENV / "bin" / "python"
    wanted = " ".join([hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest(), package_digest(),
                       sys.version.split()[0]])
    with open(HERE / ".venv.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        current = STAMP.read_text() if STAMP.exists() else ""
        if current != wanted or not python.exists():
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, stdout=sys.stderr)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                 "-r", str(REQUIREMENTS)],
                check=True, stdout=sys.stderr,
            )
            subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                 "--no-deps", "--force-reinstall", str(PACKAGE)],
                check=True, stdout=sys.stderr,
            )
            STAMP.write_text(wanted)
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
