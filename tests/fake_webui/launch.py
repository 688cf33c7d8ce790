"""Fake ``launch`` module of the WebUI's launcher, for install.py tests: records what it is asked to do.

``installed`` names the distributions (or import names) that exist; ``run_pip``
records the command and, like the real one, raises RuntimeError when the
command is in ``failing``. ``args.skip_install`` makes run_pip a no-op.
"""

import argparse
import sys

python = sys.executable
args = argparse.Namespace(skip_install=False)
installed: set[str] = set()
failing: set[str] = set()
pip_calls: list[tuple[str, str | None]] = []


def is_installed(package):
    return package in installed


def run_pip(command, desc=None, live=False):
    if args.skip_install:
        return None
    pip_calls.append((command, desc))
    if any(name in command for name in failing):
        raise RuntimeError(f"Couldn't install {desc}.\nCommand: pip {command}\nError code: 1")
    return ""


def reset(present=(), fail=()):
    installed.clear()
    installed.update(present)
    failing.clear()
    failing.update(fail)
    pip_calls.clear()
    args.skip_install = False
