#!/usr/bin/env python3
"""The package's unit tests with Django's test runner, against the package
as installed (run it with the python of a venv the wheel went into)."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `tests` as a package, not the sources
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"

import django  # noqa: E402
from django.conf import settings  # noqa: E402
from django.test.utils import get_runner  # noqa: E402


def main():
    django.setup()
    # A path label, so a `tests` folder in the working directory is not taken instead.
    runner = get_runner(settings)(verbosity=2, top_level=str(HERE.parent))
    failures = runner.run_tests([str(HERE)])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
