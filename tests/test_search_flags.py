"""``search`` flags: out-of-range and non-finite values are refused naming the flag; config-file errors name the file;
``--print-settings`` checks what the search would (on main these were accepted or blamed on the config file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_mbw.cli import main

FAKE = ["--family", "sd1", "--generator", "tests.loop_backend:make_generator", "--scorer", "tests.loop_backend:make_scorer",
        "--strategy", "tests.loop_backend:make_optimizer"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--patience", "-5"], "--patience must be ≥ 0 (0 turns early stop off), got -5"),
        (["--max-minutes", "nan"], "--max-minutes must be a finite number, got nan"),
        (["--max-minutes", "0"], "--max-minutes must be > 0, got 0"),
        (["--tol-abs", "inf"], "--tol-abs must be a finite number, got inf"),
        (["--max-evals", "0"], "--max-evals must be ≥ 1, got 0"),
        (["--levels", "5000"], "--levels must be from 2 to 1001 (grid levels per block), got 5000"),
        (["--rescore-top", "-1"], "--rescore-top must be ≥ 0 (0 turns re-scoring off), got -1"),
        (["--abandon-margin", "nan"], "--abandon-margin must be a finite number, got nan"),
        (["--freeze", "IN00=nan"], "--freeze takes finite numbers, got 'IN00=nan'"),
    ],
)
def test_bad_flag_is_named(work: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    (work / "search.json").write_text(json.dumps({"stop": {"max_evaluations": 5}}))
    code = main(["search", "--config", "search.json", *FAKE, *flags, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {message}\n"
    assert "search.json" not in err, "a bad flag must not be blamed on the config file"
    assert not (work / "csv").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"stop": {"patience": -5}}, "search.json: stop.patience must be ≥ 1 (or None to disable early stop), got -5"),
        ({"stop": {"max_minutes": "nan"}}, "search.json: stop.max_minutes must be a number (or null), got 'nan'"),
        ({"space": {"levels": 1}}, "search.json: setting space.levels must be from 2 to 1001, got 1"),
    ],
)
def test_bad_config_value_names_the_file(work: Path, capsys: pytest.CaptureFixture[str], config: dict, message: str) -> None:
    (work / "search.json").write_text(json.dumps(config))
    code = main(["search", "--config", "search.json", *FAKE, "-q"])
    assert code == 2 and capsys.readouterr().err == f"error: {message}\n"


def test_nan_in_a_toml_config_is_refused(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "search.toml").write_text("[stop]\nmax_minutes = nan\n")
    code = main(["search", "--config", "search.toml", *FAKE, "-q"])
    assert code == 2 and capsys.readouterr().err == "error: search.toml: stop.max_minutes must be a finite number, got nan\n"


def test_print_settings_runs_the_preflight(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "payloads" / "p.json").write_text(json.dumps({"prompt": "a {fox|cat", "seed": 1}))
    code = main(["search", *FAKE, "--print-settings"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "prompt has broken variant syntax" in captured.err
    code = main(["search", *FAKE, "-b", "missing.safetensors", "--print-settings"])
    assert code == 2 and capsys.readouterr().err == "error: model B: missing.safetensors: file not found; check -b/--model-b (models.b)\n"
    code = main(["search", *FAKE[2:], "--strategy", "no-such-strategy", "--print-settings"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: strategy (--strategy): unknown optimizer strategy 'no-such-strategy'; choose one of:")


def test_print_settings_prints_valid_settings_and_creates_nothing(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", *FAKE, "-o", "out/models", "--print-settings"]) == 0
    assert json.loads(capsys.readouterr().out)["output"]["model"] == "out/models"
    assert not (work / "out").exists() and not (work / "csv").exists()
