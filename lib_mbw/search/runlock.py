"""The run lock: one process at a time writes a run folder.

A search (new or resumed) holds an OS file lock on ``<run>/.run.lock``
(``filelock``: ``flock`` on POSIX, ``msvcrt.locking`` on Windows) from the
moment its history is opened until the session ends; the operating system
drops it when the process dies, so a killed search never leaves a stale
lock. Next to it, ``.run.lock.owner`` records who holds it (pid, host,
start time, command), so a second process — another ``search --resume``, or
the UI's Past runs → Resume — is refused with one line naming the holder
instead of writing every history row a second time.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import MBWError

log = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
OWNER_FILE = ".run.lock.owner"


class RunLockedError(MBWError):
    """Another process is searching in this run folder."""


def _owner() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200],
    }


def describe_holder(folder: Path) -> str:
    """'process 123 on host h since 2026-...' from the owner file (or what is known of it)."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        return f"process {int(owner['pid'])} on host {str(owner['host'])[:100]} since {str(owner['started'])[:40]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its pid is not recorded yet)"


class RunLock:
    """The lock of one run folder, held by this process until ``release()`` (or process exit)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._lock = FileLock(str(self.folder / LOCK_FILE), thread_local=False, fallback_to_soft=False)
        self.held = False

    def acquire(self) -> "RunLock":
        """Take the lock now or raise RunLockedError naming the holder; never waits."""
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunLockedError(
                f"{self.folder}: this run is in use by {describe_holder(self.folder)}; "
                "wait for that search to end (or stop it), then resume"
            ) from None
        except OSError as exc:  # a file system without locks: go on unlocked rather than refuse every search
            log.warning("%s: cannot lock the run folder (%s); make sure no other process resumes it", self.folder, exc)
            return self
        self.held = True
        try:
            (self.folder / OWNER_FILE).write_text(json.dumps(_owner()) + "\n", encoding="utf-8")
        except OSError as exc:
            log.warning("%s: cannot record the lock's owner (%s)", self.folder, exc)
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            (self.folder / OWNER_FILE).unlink()
        except OSError:
            pass
        self._lock.release(force=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_run_free(folder: str | os.PathLike[str]) -> None:
    """Raise RunLockedError if another process holds ``folder``'s lock (probe: takes and drops it)."""
    with RunLock(folder):
        pass
