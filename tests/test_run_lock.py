"""The run lock with real processes: a second ``search --resume`` of a running run is refused naming the holder,
and a killed holder leaves no stale lock (on main both processes wrote every index)."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib_mbw.search.runlock import RunLock, RunLockedError

REPO = Path(__file__).resolve().parent.parent
BACKEND = ["--family", "sd1", "--generator", "tests.loop_backend:make_generator", "--scorer", "tests.loop_backend:make_scorer",
           "--strategy", "tests.loop_backend:make_optimizer"]


def cli(workdir: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "lib_mbw", "search", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "history.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def wait_rows(folder: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (folder / "history.csv").is_file() and len(rows(folder)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} rows in {folder} after {timeout}s")

#: A resume needs the plugins its manifest names enabled on the command line.
PLUGINS = [f"--plugin={spec}" for spec in ("tests.loop_backend:make_generator", "tests.loop_backend:make_scorer", "tests.loop_backend:make_optimizer")]


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "payloads").mkdir()
    (tmp_path / "payloads" / "p.json").write_text(json.dumps({"prompt": "a house", "seed": 1}))
    return tmp_path


def test_second_process_is_refused_naming_the_holder(workdir: Path) -> None:
    first = cli(workdir, *BACKEND, "--generator-option", "delay=0.05", "--max-evals", "400", "--patience", "0", "--rescore-top", "0", "-q")
    try:
        history = workdir / "csv" / "history"
        deadline = time.monotonic() + 60
        while not (history.is_dir() and any(history.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        (run,) = list(history.iterdir())
        wait_rows(run, 2)
        second = cli(workdir, "--resume", str(run), "--max-evals", "400", "-q", *PLUGINS)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {run}: this run is in use by process {first.pid} on host {socket.gethostname()} since ")
        assert lines[0].endswith("; wait for that search to end (or stop it), then resume")
        # the UI's Resume asks the same lock
        with pytest.raises(RunLockedError, match=f"in use by process {first.pid}"):
            RunLock(run).acquire()
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    indexes = [r["index"] for r in rows(run)]
    assert len(indexes) == len(set(indexes)) and [r["status"] for r in rows(run)].count("selected") == 1


def test_a_killed_holder_leaves_no_stale_lock(workdir: Path) -> None:
    first = cli(workdir, *BACKEND, "--generator-option", "delay=0.05", "--max-evals", "400", "--patience", "0", "--rescore-top", "0", "-q")
    history = workdir / "csv" / "history"
    deadline = time.monotonic() + 60
    while not (history.is_dir() and any(history.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    (run,) = list(history.iterdir())
    wait_rows(run, 3)
    first.kill()
    first.communicate(timeout=60)
    done = len(rows(run))
    second = cli(workdir, "--resume", str(run), "--max-evals", str(done + 2), "-q", *PLUGINS)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    indexes = [int(r["index"]) for r in rows(run)]
    assert indexes == list(range(len(indexes)))
    assert not (run / ".run.lock.owner").exists()
