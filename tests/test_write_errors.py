"""A full disk (ENOSPC) at every write of a search: one clean error line, no traceback, the history intact, the run
resumable once there is room; the merged model's write fails cleanly with the real ``merge`` command to finish it.

Errors are injected in ``lib_mbw.fileio.write_all``, through which every file of a run (history rows, state,
manifest, recipe, plots, images, the merged model) gets its bytes. On main a full disk while writing state.json
ended the CLI with a 25-line traceback.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from lib_mbw import fileio
from lib_mbw.cli import main
from lib_mbw.search.history import read_history_rows

REPO = Path(__file__).resolve().parent.parent
BACKEND = ["--family", "sd1", "--generator", "tests.loop_backend:make_generator", "--scorer", "tests.loop_backend:make_scorer",
           "--strategy", "tests.loop_backend:make_optimizer"]
ARGS = [*BACKEND, "--max-evals", "4", "--patience", "0", "--rescore-top", "1", "--seed", "3", "-q"]

#: A resume needs the plugins its manifest names enabled on the command line.
PLUGINS = [f"--plugin={spec}" for spec in ("tests.loop_backend:make_generator", "tests.loop_backend:make_scorer", "tests.loop_backend:make_optimizer")]


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("AUTO_MBW_HASH_CACHE", "off")
    (tmp_path / "payloads").mkdir()
    (tmp_path / "payloads" / "p.json").write_text(json.dumps({"prompt": "a house", "seed": 1}))
    return tmp_path


REAL_WRITE_ALL = fileio.write_all


class FullDisk:
    """``fileio.write_all`` that works ``allowed`` times, then fails with ENOSPC (the disk stays full)."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.calls = 0
        self.real = REAL_WRITE_ALL

    def __call__(self, fd: int, data) -> None:
        self.calls += 1
        if self.calls > self.allowed:
            os.write(fd, bytes(memoryview(data)[: max(1, len(data) // 2)]))  # a part lands, as on a real full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real(fd, data)


def test_full_disk_at_every_write_point(work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    counter = FullDisk(10**9)
    monkeypatch.setattr(fileio, "write_all", counter)
    assert main(["search", *ARGS, "--history-dir", "reference"]) == 0
    (reference,) = (work / "reference").iterdir()
    expected = [(r.index, r.status, r.score) for r in read_history_rows(reference)]
    total = counter.calls
    assert total >= 10
    capsys.readouterr()
    resumed = 0
    for allowed in range(total):
        base = work / f"runs{allowed}"
        monkeypatch.setattr(fileio, "write_all", FullDisk(allowed))
        code = main(["search", *ARGS, "--history-dir", str(base)])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and "no space left on device" in captured.err.lower(), (allowed, captured.err)
        assert code == 2, (allowed, captured.err)
        runs = list(base.iterdir()) if base.exists() else []
        if not runs or not (runs[0] / "manifest.json").exists():
            assert captured.err.count("\n") == 1, captured.err  # the run could not even start: one line
            continue
        (run,) = runs
        rows = read_history_rows(run)
        assert [r.index for r in rows] == list(range(len(rows))), f"history damaged after write {allowed}"
        assert (run / "history.csv").read_bytes().endswith(b"\n")
        stopped = [line for line in captured.err.splitlines() if line.startswith("error: search stopped (write_error): ")]
        if stopped:
            assert len(stopped) == 1 and "(no space left on device)" in stopped[0]
            assert stopped[0].endswith(f"free some space (or fix the folder), then continue with: python -m lib_mbw search --resume {run}")
            if any(r.status == "ok" for r in rows):
                assert "best recipe (" in captured.out and "canonical: " in captured.out
        # room again: the run resumes and ends as the uninterrupted one did
        monkeypatch.setattr(fileio, "write_all", counter.real)
        assert main(["search", "--resume", str(run), "-q", *PLUGINS]) == 0, capsys.readouterr().err
        capsys.readouterr()
        assert [(r.index, r.status, r.score) for r in read_history_rows(run)] == expected, f"write {allowed}"
        resumed += 1
    assert resumed >= total - 3, "every write after the run's start must have been failed and resumed"


def test_full_disk_while_writing_the_merged_model(work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                  tiny_checkpoints: dict[str, tuple[Path, Path]]) -> None:
    a, b = tiny_checkpoints["sd1"]
    shutil.copy(a, work / "A.safetensors")
    shutil.copy(b, work / "B.safetensors")
    (work / "models").mkdir()
    real = REAL_WRITE_ALL

    def write_all(fd: int, data) -> None:
        if ".safetensors.mbw-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(fileio, "write_all", write_all)
    code = main(["search", "-a", "A.safetensors", "-b", "B.safetensors", "-o", "models", *ARGS[2:]])
    err = capsys.readouterr().err
    (run,) = (work / "csv" / "history").iterdir()
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    out = f"models/A-x-B-{run.name.rsplit('-', 1)[-1]}.safetensors"
    assert code == 2 and line == (
        f"error: could not write the model output: {out}: cannot write the output (no space left on device); nothing was written, "
        f"no partial file was left; merge it later with: python -m lib_mbw merge A.safetensors B.safetensors "
        f"--recipe {run.relative_to(work)}/best.recipe.json -o {out} --dtype fp16"
    )
    assert list((work / "models").iterdir()) == [], "no temp file may be left"
    assert "Traceback" not in err


def test_a_read_only_output_folder_is_not_reported_as_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The merge writer creates its temp file before it checks the space (a read-only mount reports 0 bytes free)."""
    import torch

    from lib_mbw.errors import OutputWriteError
    from lib_mbw.merge import writer

    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args)

    monkeypatch.setattr(writer.os, "open", read_only)
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OutputWriteError) as error:
        writer.SafetensorsWriter(tmp_path / "m.safetensors", [writer.TensorEntry("t", torch.float32, (4,))])
    assert str(error.value) == f"{tmp_path / 'm.safetensors'}: cannot create a file in {tmp_path} (Read-only file system)"
