"""Stop reasons say what happened: repeated failures are ``failures`` (exit 3), not a user abort (130), and a run
in which no evaluation succeeded never exits 0 (on main: exit 0, or exit 3 labelled ``user_abort`` with
"fix the cause, then resume", which cannot help when every evaluation failed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_mbw.cli import main
from tests.conftest import LOOP_PLUGINS

BACKEND = ["--family", "sd1", "--generator", "tests.loop_backend:make_generator", "--scorer", "tests.loop_backend:make_scorer",
           "--strategy", "tests.loop_backend:make_optimizer", "-q"]
CRASH = "RuntimeError: fake generator crashed on p"

PLUGINS = LOOP_PLUGINS  # a resume needs the plugins its manifest names enabled


def manifest(work: Path) -> dict:
    (run,) = (work / "csv" / "history").iterdir()
    return json.loads((run / "manifest.json").read_text())


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_every_evaluation_failing_is_stop_reason_failures(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["search", *BACKEND, "--generator-option", "fail=true", "--max-failures", "2"])
    err = capsys.readouterr().err
    assert code == 3
    assert error_lines(err) == [
        f"error: search stopped (failures): 2 evaluations failed in a row (last: {CRASH}) and none has succeeded: the models, "
        "payloads or settings are likely wrong, and a resume cannot change them; fix the cause and start a new search"
    ]
    assert "then resume" not in err and "Traceback" not in err
    assert manifest(work)["result"]["stop_reason"] == "failures"


def test_no_evaluation_succeeded_does_not_exit_0(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["search", *BACKEND, "--generator-option", "fail=true", "--max-evals", "2", "--max-failures", "3"])
    err = capsys.readouterr().err
    assert code == 3
    assert error_lines(err) == [f"error: no evaluation succeeded: 2 of 2 evaluations failed (last: {CRASH}); nothing to merge"]


def test_failures_after_successes_can_be_resumed(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["search", *BACKEND, "--generator-option", "fail_after=3", "--max-failures", "2", "--max-evals", "20", "--patience", "0"])
    captured = capsys.readouterr()
    assert code == 3
    assert error_lines(captured.err) == [f"error: search stopped (failures): 2 evaluations failed in a row (last: {CRASH}); fix the cause, then resume the run"]
    assert manifest(work)["result"]["stop_reason"] == "failures"
    assert "best recipe (" in captured.out  # the best of the 3 good evaluations is still returned
    (run,) = (work / "csv" / "history").iterdir()
    assert main(["search", "--resume", str(run), "--generator-option", "fail_after=100", "-q", *PLUGINS]) == 0
