"""Fake ``launch`` module of the WebUI's launcher, for install.py tests: records what it is asked to do.

``installed`` names the distributions (or import names) that exist; ``run_pip``
records the command and, like the real one, raises RuntimeError when the
command is in ``failing``. ``args.skip_install`` makes run_pip a no-op.
"""

import argparse
import re
import sys
from pathlib import Path

python = sys.executable
args = argparse.Namespace(skip_install=False)
installed: set[str] = set()
failing: set[str] = set()
pip_calls: list[tuple[str, str | None]] = []
constraints_seen: list[str] = []  #: text of every ``-c FILE`` given to pip, read while the call runs
failure_text: str | None = None  #: what a failing run_pip raises (default: the launcher's first lines only)


def is_installed(package):
    return package in installed


def run_pip(command, desc=None, live=False):
    if args.skip_install:
        return None
    pip_calls.append((command, desc))
    match = re.search(r'-c "([^"]+)"', command)
    if match:
        constraints_seen.append(Path(match.group(1)).read_text())
    if any(name in command for name in failing):
        raise RuntimeError(failure_text or f"Couldn't install {desc}.\nCommand: pip {command}\nError code: 1")
    return ""


def reset(present=(), fail=()):
    installed.clear()
    installed.update(present)
    failing.clear()
    failing.update(fail)
    pip_calls.clear()
    constraints_seen.clear()
    args.skip_install = False
