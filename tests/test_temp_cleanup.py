"""Temp files of killed writers: named with the writer's pid, removed (and reported) by the next merge or search
into that folder; a live writer's temp file is left alone (on main a killed merge left its hidden temp file forever)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib_mbw.fileio import remove_stale_temps, temp_name

REPO = Path(__file__).resolve().parent.parent

WRITER = """
import sys, time, torch
from lib_mbw.merge.writer import SafetensorsWriter, TensorEntry
entries = [TensorEntry(f"t{i}", torch.float32, (256, 256)) for i in range(8)]
writer = SafetensorsWriter(sys.argv[1], entries)
writer.write("t0", torch.ones(256, 256))
print("ready", flush=True)
time.sleep(600)
"""


def killed_writer(out: Path) -> tuple[int, Path]:
    """Start a merge write into ``out`` in a subprocess, SIGKILL it mid-write; its pid and the temp file it left."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.kill()
        child.wait(timeout=60)
    (temp,) = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.mbw-{child.pid}.")]
    assert temp.stat().st_size > 256 * 256 * 4
    return child.pid, temp


def test_merge_removes_a_killed_merges_temp_file(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 tiny_checkpoints: dict[str, tuple[Path, Path]]) -> None:
    from lib_mbw.cli import main

    out = tmp_path / "models" / "merged.safetensors"
    out.parent.mkdir()
    pid, temp = killed_writer(out)
    a, b = tiny_checkpoints["sd1"]
    with caplog.at_level(logging.WARNING, logger="lib_mbw.fileio"):
        assert main(["merge", str(a), str(b), "-o", str(out), "--alpha", "0.5", "--quiet"]) == 0
    assert not temp.exists() and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["merged.safetensors"]
    assert re.fullmatch(
        rf"removed the leftover temp file {re.escape(str(temp))} \(\d+\.\d MB\): its process {pid} is no longer running",
        caplog.messages[0],
    )


def test_search_removes_leftovers_in_its_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                      tiny_checkpoints: dict[str, tuple[Path, Path]]) -> None:
    from lib_mbw.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    (tmp_path / "payloads").mkdir()
    (tmp_path / "payloads" / "p.json").write_text(json.dumps({"prompt": "a house", "seed": 1}))
    for name, path in zip("AB", tiny_checkpoints["sd1"]):
        shutil.copy(path, tmp_path / f"{name}.safetensors")
    (tmp_path / "models").mkdir()
    pid, temp = killed_writer(tmp_path / "models" / "old.safetensors")
    with caplog.at_level(logging.WARNING, logger="lib_mbw.fileio"):
        code = main(["search", "-a", "A.safetensors", "-b", "B.safetensors", "-o", "models", "--generator", "tests.loop_backend:make_generator",
                     "--scorer", "tests.loop_backend:make_scorer", "--strategy", "tests.loop_backend:make_optimizer", "--max-evals", "2",
                     "--rescore-top", "0", "-q"])
    assert code == 0 and not temp.exists()
    assert f"its process {pid} is no longer running" in caplog.text


def test_live_writers_and_other_files_are_kept(tmp_path: Path) -> None:
    mine = tmp_path / f"{temp_name(tmp_path / 'x.safetensors')}abc123.tmp"  # this process: alive
    mine.write_bytes(b"x")
    foreign = tmp_path / ".x.safetensors.1a2b3c4d.tmp"  # not ours (no pid): never touched
    foreign.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == []
    assert mine.exists() and foreign.exists()
    day_old = time.time() - 25 * 3600
    os.utime(mine, (day_old, day_old))  # same pid, but untouched for a day: a leftover (pid reused)
    assert remove_stale_temps(tmp_path) == [(mine, 1)]
