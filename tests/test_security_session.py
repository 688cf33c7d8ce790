"""A run folder is data: resuming or warm-starting from one never loads code, and resume checks the models.

Each gadget of issue 16 against the CLI (``python -m lib_mbw search``): a
manifest naming ``subprocess:run`` as its scorer (with ``shell: true``), a
plugin named in a settings file, a model file swapped under a run. Each is
refused with one line, before anything runs (a marker file stays absent).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lib_mbw.cli import main
from tests.test_search_cli import BACKEND, PLUGINS, run_dirs, workdir  # noqa: F401


def marker_command(marker: Path) -> dict:
    return {"name": "subprocess:run", "options": {"args": f"touch {marker}", "shell": True}}


def short_run(history: Path, *extra: str) -> Path:
    assert main(["search", *BACKEND, "--history-dir", str(history), "--max-evals", "3", "--rescore-top", "0", "-q", *extra]) == 0
    (run,) = run_dirs(history)
    return run


def edit_manifest(run: Path, change) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    change(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("kind", ["scorer", "generator", "strategy"])
def test_resume_never_imports_a_plugin_written_in_the_manifest(workdir: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    run, marker = short_run(workdir / "h"), workdir / "pwned"

    def plant(manifest: dict) -> None:
        if kind == "strategy":
            manifest["settings"]["strategy"] = "subprocess:run"
            manifest["settings"]["strategy_options"] = marker_command(marker)["options"]
        else:
            manifest["settings"][kind] = marker_command(marker)

    edit_manifest(run, plant)
    capsys.readouterr()
    assert main(["search", "--resume", str(run), "-q", *PLUGINS]) == 2
    (line,) = error_lines(capsys)
    assert line == (
        f"error: {run}/manifest.json: {kind} 'subprocess:run' is a plugin (code), and plugins are never loaded from a file "
        "or a UI client: if you trust that code, enable it when you start auto-MBW with --plugin subprocess:run"
    )
    assert not marker.exists()


def test_resume_of_a_plugin_run_needs_the_plugins_on_the_command_line(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = short_run(workdir / "h")
    capsys.readouterr()
    assert main(["search", "--resume", str(run), "-q"]) == 2
    (line,) = error_lines(capsys)
    assert ("strategy 'tests.loop_backend:make_optimizer', generator 'tests.loop_backend:make_generator', "
            "scorer 'tests.loop_backend:make_scorer' are plugins (code)") in line
    assert line.endswith("--plugin tests.loop_backend:make_optimizer --plugin tests.loop_backend:make_generator --plugin tests.loop_backend:make_scorer")
    assert main(["search", "--resume", str(run), "--max-evals", "4", "-q", *PLUGINS]) == 0


def test_a_settings_file_cannot_enable_a_plugin(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = workdir / "pwned"
    (workdir / "search.json").write_text(json.dumps({"scorer": marker_command(marker)}))
    generator_and_strategy = [a for a in BACKEND if "make_scorer" not in a and a != "--scorer"]
    assert main(["search", "--config", "search.json", *generator_and_strategy, "--max-evals", "2", "-q"]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("error: settings: scorer 'subprocess:run' is a plugin (code)")
    assert not marker.exists() and not (workdir / "csv").exists()


def test_warm_start_from_a_run_folder_reads_only_its_history(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, marker = short_run(workdir / "h"), workdir / "pwned"
    edit_manifest(run, lambda m: m["settings"].update(scorer=marker_command(marker), strategy="subprocess:run"))
    assert main(["search", *BACKEND, "--history-dir", str(workdir / "h2"), "--warm-start", str(run), "--max-evals", "2",
                 "--rescore-top", "0", "-q"]) == 0
    assert not marker.exists()


@pytest.fixture()
def models(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("AUTO_MBW_HASH_CACHE", "off")
    a, b = workdir / "A.safetensors", workdir / "B.safetensors"
    a.write_bytes(os.urandom(4096))
    b.write_bytes(os.urandom(4096))
    return a, b


def test_resume_refuses_a_model_that_changed_since_the_run_started(workdir: Path, models, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = models
    run = short_run(workdir / "h", "-a", str(a), "-b", str(b))
    recorded = json.loads((run / "manifest.json").read_text())["models"]["b"]
    assert recorded["size"] == 4096 and recorded["mtime_ns"] == b.stat().st_mtime_ns

    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))  # touched, same bytes: hashed, accepted
    assert main(["search", "--resume", str(run), "--max-evals", "4", "-q", *PLUGINS]) == 0

    rows_before = (run / "history.csv").read_text()
    b.write_bytes(os.urandom(4096))  # same size, other bytes
    capsys.readouterr()
    assert main(["search", "--resume", str(run), "--max-evals", "5", "-q", *PLUGINS]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"error: {run}/manifest.json: model B {b} changed since the run started (sha256 ")
    assert line.endswith("resume needs the same file (start a new search to use this one)")

    b.write_bytes(os.urandom(100))
    assert main(["search", "--resume", str(run), "--max-evals", "5", "-q", *PLUGINS]) == 2
    (line,) = error_lines(capsys)
    assert f"model B {b} changed since the run started (size 100 bytes, recorded 4096)" in line
    assert (run / "history.csv").read_text() == rows_before  # the refused resumes added nothing
