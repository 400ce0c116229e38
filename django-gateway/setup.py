"""The build takes the browser client from its one source,
gateway/static/notifications.js (+ .d.ts), into the package's static files
(django_gateway/static/gateway/). An sdist carries the copy, so a wheel
builds from it too; the repository never holds a second copy."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
CLIENT_SOURCE = HERE.parent / "gateway" / "static"
CLIENT_FILES = ("notifications.js", "notifications.d.ts")
CLIENT_TARGET = Path("django_gateway") / "static" / "gateway"


def copy_client(destination):
    """Copies the client next to the package's code; without the repository
    around (a build from an sdist) the sdist's copy must already be there."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in CLIENT_FILES:
        source = CLIENT_SOURCE / name
        if source.is_file():
            shutil.copyfile(source, destination / name)
        elif not (destination / name).is_file():
            raise SystemExit(f"the browser client {name} is missing: expected {source}")


class BuildPy(build_py):
    def run(self):
        super().run()
        copy_client(Path(self.build_lib) / CLIENT_TARGET)


class Sdist(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        copy_client(Path(base_dir) / "src" / CLIENT_TARGET)


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
