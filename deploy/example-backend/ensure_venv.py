#!/usr/bin/env python3
"""Create or refresh the example backend's virtualenv (.venv next to this
file) from requirements.txt and print its python. Idempotent: a stamp file
holds the sha256 of requirements.txt; an flock serialises concurrent runs.
pip's output goes to stderr; only the python path goes to stdout.
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


def main() -> int:
    python = VENV / "bin" / "python"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest() + " " + sys.version.split()[0]
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
            STAMP.write_text(wanted)
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
