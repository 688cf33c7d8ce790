"""Resume refuses a damaged history (one line naming the file and what is wrong) and never trusts a state the
history does not back: a state ahead of the history, or one it refuses, is set aside and the history replayed.
On main a deleted block column and a duplicated row were accepted, a state ahead of the history steered the
result, and a state with an unknown stop reason ended the resume with a traceback."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from lib_mbw.cli import main
from tests.conftest import LOOP_PLUGINS

BACKEND = ["--family", "sd1", "--generator", "tests.loop_backend:make_generator", "--scorer", "tests.loop_backend:make_scorer",
           "--strategy", "tests.loop_backend:make_optimizer", "--patience", "0", "--rescore-top", "0", "--seed", "3", "-q"]

PLUGINS = LOOP_PLUGINS  # a resume needs the plugins its manifest names enabled


def new_run(work: Path, evals: int, name: str) -> Path:
    assert main(["search", *BACKEND, "--max-evals", str(evals), "--history-dir", name]) == 0
    (run,) = (work / name).iterdir()
    return run


def table(run: Path) -> list[list[str]]:
    with open(run / "history.csv", encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def write_table(run: Path, rows: list[list[str]]) -> None:
    with open(run / "history.csv", "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def comparable(run: Path) -> list[tuple[str, ...]]:
    header, *rows = table(run)
    keep = [i for i, c in enumerate(header) if c not in ("timestamp", "merge_s", "generate_s", "score_s", "total_s")]
    return [tuple(row[i] for i in keep) for row in rows]


def test_a_deleted_block_column_is_refused(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = new_run(work, 3, "runs")
    rows = table(run)
    at = rows[0].index("IN05")
    write_table(run, [row[:at] + row[at + 1 :] for row in rows])
    capsys.readouterr()
    assert main(["search", "--resume", str(run), "--max-evals", "5", "-q", *PLUGINS]) == 2
    assert capsys.readouterr().err == (
        f"error: {run}/history.csv: columns differ from the ones the run's manifest recorded (missing IN05); "
        "the history was edited or damaged: restore it, or start a new search\n"
    )
    assert len(table(run)) == 5, "nothing may be appended to a refused history"


def test_a_duplicated_row_is_refused(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = new_run(work, 3, "runs")
    rows = table(run)
    write_table(run, rows + [rows[-1]])
    capsys.readouterr()
    assert main(["search", "--resume", str(run), "--max-evals", "5", "-q", *PLUGINS]) == 2
    assert capsys.readouterr().err == (
        f"error: {run}/history.csv:6: row index 3 repeats an earlier row (expected 4); a row was duplicated, removed or moved: "
        "restore the history, or start a new search\n"
    )


def test_a_state_ahead_of_the_history_does_not_steer_the_resume(work: Path) -> None:
    short = new_run(work, 4, "short")
    long = new_run(work, 8, "long")
    control = work / "control" / short.name
    shutil.copytree(short, control)
    (control / "state.json").unlink()  # the reference: resume from the history alone
    shutil.copy(long / "state.json", short / "state.json")  # a state that covers 8 evaluations the history lacks
    assert main(["search", "--resume", str(control), "--max-evals", "8", "-q", *PLUGINS]) == 0
    assert main(["search", "--resume", str(short), "--max-evals", "8", "-q", *PLUGINS]) == 0
    assert comparable(short) == comparable(control)


@pytest.mark.parametrize("damage", [{"stop_reason": "bogus"}, {"phase": "elsewhere"}, {"rows": -1}])
def test_a_refused_state_is_replayed_from_the_history(work: Path, damage: dict, caplog: pytest.LogCaptureFixture) -> None:
    run = new_run(work, 4, "runs")
    control = work / "control" / run.name
    shutil.copytree(run, control)
    (control / "state.json").unlink()
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, **damage}))
    assert main(["search", "--resume", str(control), "--max-evals", "6", "-q", *PLUGINS]) == 0
    assert main(["search", "--resume", str(run), "--max-evals", "6", "-q", *PLUGINS]) == 0
    assert comparable(run) == comparable(control)
    assert "not a valid search state file" in caplog.text and "replaying the whole history instead" in caplog.text
