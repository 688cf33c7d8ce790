"""``python -m lib_mbw search``: flags, config files, outputs, exit codes, and resume after SIGKILL in a subprocess."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from lib_mbw.cli import main
from lib_mbw.recipe import Recipe

REPO = Path(__file__).resolve().parent.parent
BACKEND = [
    "--family", "sd1",
    "--generator", "tests.loop_backend:make_generator",
    "--scorer", "tests.loop_backend:make_scorer",
    "--strategy", "tests.loop_backend:make_optimizer",
]
#: What a resume of a BACKEND run needs: the user enables the plugins the manifest names.
PLUGINS = [f"--plugin={spec}" for spec in BACKEND[3::2]]


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with two payloads (one with a wildcard); the CLI runs inside it."""
    payloads = tmp_path / "payloads"
    (payloads / "wildcards").mkdir(parents=True)
    (payloads / "wildcards" / "animal.txt").write_text("cat\ndog\nfox\n")
    (payloads / "a.json").write_text(json.dumps({"prompt": "a __animal__", "seed": -1, "batch_size": 2, "variants": 2}))
    (payloads / "b.json").write_text(json.dumps({"prompt": "a house", "seed": 5, "weight": 2}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    return tmp_path


def run_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir())


def history_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "history.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def comparable(rows: list[dict[str, str]]) -> list[tuple]:
    drop = {"timestamp", "merge_s", "generate_s", "score_s", "total_s"}
    return [tuple(v for k, v in row.items() if k not in drop) for row in rows]


def test_help_lists_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--resume" in text and "--warm-start" in text and "--abandon-margin" in text


def test_full_search_writes_history_outputs_and_manifest(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["search", *BACKEND, "--max-evals", "12", "--patience", "0", "--rescore-top", "2", "--name", "demo run", "-q"])
    assert code == 0
    (run,) = run_dirs(workdir / "csv" / "history")
    assert "-demo_run-" in run.name
    out = capsys.readouterr().out
    assert f"run folder: {run.relative_to(workdir)}" in out
    rows = history_rows(run)
    assert [r["status"] for r in rows] == ["ok"] * 12 + ["rescore"] * 2 + ["selected"]
    assert list(rows[0])[:6] == ["index", "timestamp", "status", "source", "score", "IN00"]
    assert {"payload:a", "payload:b", "merge_s", "generate_s", "score_s", "worker", "reason"} <= set(rows[0])
    best = json.loads((run / "best.recipe.json").read_text())
    assert Recipe.from_dict(best).weights == Recipe({k: float(rows[-1][k]) for k in best["weights"]}).weights
    assert "rt:" in (run / "best.recipe.txt").read_text()
    for png in ("convergence.png", "best_weights.png"):
        assert Image.open(run / png).format == "PNG"
    assert len(list((run / "best_images").glob("*.png"))) == 5  # a: 2 variants × 2 images, b: 1
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["family"] == "sd1" and manifest["settings"]["stop"]["max_evaluations"] == 12
    keys = [p["name"] + "#" + str(p["variant"]) for p in manifest["payloads"]]
    assert keys == ["a#0", "a#1", "b#0"]
    assert all(len(p["sha256"]) == 64 and "__" not in p["prompt"] for p in manifest["payloads"])
    assert manifest["seeds"]["payloads"]["a"] != -1 and manifest["seeds"]["payloads"]["b"] == 5
    assert "numpy" in manifest["packages"] and manifest["result"]["stop_reason"] == "max_evaluations"
    assert manifest["result"]["rows"] == {"ok": 12, "rescore": 2, "selected": 1}


def test_config_file_with_flags_on_top(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "search.toml").write_text(
        'name = "from-toml"\nseed = 4\n[stop]\nmax_evaluations = 3\npatience = 2\n[tally]\nmethod = "geometric"\n[space]\nfrozen = {OUT = 0.0}\n'
    )
    assert main(["search", "--config", "search.toml", *BACKEND, "--max-evals", "5", "--print-settings"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["name"] == "from-toml" and settings["stop"]["max_evaluations"] == 5 and settings["stop"]["patience"] == 2
    assert settings["tally"]["method"] == "geometric" and settings["space"]["frozen"] == {"OUT": 0.0}
    (workdir / "bad.json").write_text(json.dumps({"stop": {"max_evals": 3}}))
    assert main(["search", "--config", "bad.json", *BACKEND]) == 2
    assert "bad.json: unknown setting(s) stop.max_evals" in capsys.readouterr().err


def test_bad_payloads_are_all_reported_before_anything_runs(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "payloads" / "c.json").write_text(json.dumps({"prompt": "x", "steps": "20x"}))
    (workdir / "payloads" / "d.json").write_text(json.dumps({"prompt": "__nothing__"}))
    (workdir / "payloads" / "e.json").write_text("{")
    assert main(["search", *BACKEND, "-q"]) == 2
    err = capsys.readouterr().err
    assert "c.json: steps must be an integer between 1 and 500" in err and "e.json: invalid JSON" in err
    assert not (workdir / "csv").exists()  # no run folder for a search that never started
    (workdir / "payloads" / "c.json").unlink()
    (workdir / "payloads" / "e.json").unlink()
    assert main(["search", *BACKEND, "-q"]) == 2
    assert "nothing.txt" in capsys.readouterr().err


def test_repeated_failures_stop_with_exit_code_3(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", *BACKEND, "--generator-option", "fail=true", "--max-failures", "2", "-q"]) == 3
    err = capsys.readouterr().err
    assert "2 evaluations failed in a row" in err and "fake generator crashed" in err
    (run,) = run_dirs(workdir / "csv" / "history")
    assert [r["status"] for r in history_rows(run)] == ["failed", "failed"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["result"]["recipe"] is None


def test_resume_refuses_to_change_what_is_measured(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", *BACKEND, "--max-evals", "2", "--rescore-top", "0", "-q"]) == 0
    (run,) = run_dirs(workdir / "csv" / "history")
    assert main(["search", "--resume", str(run), "--tally", "min", "-q"]) == 2
    assert "cannot change tally when resuming" in capsys.readouterr().err
    assert main(["search", "--resume", run.name, "--max-evals", "4", "-q", *PLUGINS]) == 0  # run-id under csv/history works too
    assert [r["status"] for r in history_rows(run)] == ["ok", "ok", "selected", "ok", "ok", "selected"]


def test_warm_start_from_a_seed_csv_and_initial_recipe(workdir: Path) -> None:
    weights = [0.5] * 27
    (workdir / "seed.csv").write_text(",".join(map(str, range(27))) + ",score,eval_times,iter_times\n" + ",".join(map(str, weights)) + ",0.61,1.0,2.0\n")
    code = main(["search", *BACKEND, "--warm-start", "seed.csv", "--initial-recipe", ",".join(["0.25"] * 27), "--max-evals", "2", "--rescore-top", "0", "-q"])
    assert code == 0
    (run,) = run_dirs(workdir / "csv" / "history")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["warm_start"]["scored"][0][1] == 0.61 and manifest["warm_start"]["initial"][0]["weights"]["IN00"] == 0.25
    rows = history_rows(run)
    assert rows[0]["source"] == "initial" and rows[0]["IN00"] == "0.25"


def _search_args(history_dir: Path) -> list[str]:
    return [*BACKEND, "--history-dir", str(history_dir), "--generator-option", "delay=0.02", "--max-evals", "25", "--patience", "0", "--rescore-top", "2", "-q"]


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(workdir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    killed_dir = workdir / "killed"
    process = subprocess.Popen([sys.executable, "-m", "lib_mbw", "search", *_search_args(killed_dir)], cwd=workdir, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        rows_seen = 0
        while time.monotonic() < deadline:
            runs = run_dirs(killed_dir) if killed_dir.exists() else []
            if runs and (runs[0] / "history.csv").exists():
                rows_seen = len((runs[0] / "history.csv").read_text().splitlines()) - 1
                if rows_seen >= 7:
                    break
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    (run,) = run_dirs(killed_dir)
    survived = history_rows(run)
    assert 7 <= len(survived) < 25 and all(r["status"] == "ok" for r in survived)  # at most the evaluation in flight was lost
    assert not (run / "best.recipe.json").exists()

    assert main(["search", "--resume", str(run), "-q", *PLUGINS]) == 0
    resumed = history_rows(run)
    assert main(["search", *_search_args(workdir / "whole")]) == 0
    (whole,) = run_dirs(workdir / "whole")
    uninterrupted = history_rows(whole)
    assert comparable(resumed[: len(survived)]) == comparable(survived)  # nothing rewritten
    assert comparable(resumed) == comparable(uninterrupted)
    assert json.loads((run / "best.recipe.json").read_text())["weights"] == json.loads((whole / "best.recipe.json").read_text())["weights"]


def test_two_workers_from_the_command_line(workdir: Path) -> None:
    args = [*BACKEND, "--worker", "delay=0.01,name=left", "--worker", "delay=0.01,name=right", "--max-evals", "6", "--rescore-top", "0", "-q"]
    assert main(["search", *args]) == 0
    (run,) = run_dirs(workdir / "csv" / "history")
    workers = {r["worker"] for r in history_rows(run) if r["status"] == "ok"}
    assert workers == {"left#0", "right#1"}
    assert json.loads((run / "manifest.json").read_text())["generators"] == ["left", "right"]


def test_architecture_is_detected_from_model_a(workdir: Path, tiny_checkpoints: dict) -> None:
    from lib_mbw.search.session import detect_family
    from lib_mbw.search.settings import SearchSettings

    a, b = tiny_checkpoints["sdxl"]
    settings = SearchSettings()
    settings.models.a, settings.models.b = str(a), str(b)
    assert detect_family(settings, []) == "sdxl"
    code = main(["search", *BACKEND[2:], "-a", str(a), "-b", str(b), "--max-evals", "2", "--rescore-top", "0", "-q"])
    assert code == 0
    (run,) = run_dirs(workdir / "csv" / "history")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["family"] == "sdxl" and len(manifest["models"]["a"]["sha256"]) == 64
    header = history_rows(run)[0].keys()
    assert "IN08" in header and "IN09" not in header  # SDXL's absent blocks are not searched or recorded


class FakeMergeModule:
    """Stands in for lib_mbw.merge until the merge engine is on this branch; records the call."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def merge_to_file(self, a, b, recipe, out, **options):
        self.calls.append((a, b, recipe, Path(out), options))
        if self.fail:
            from lib_mbw.errors import MBWError

            raise MBWError(f"{out}: no space left on device")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(b"model")


def test_merged_model_is_written_through_the_merge_engine(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    import lib_mbw.merge.cli  # noqa: F401  (the parser and pre-flight's hashes need the real package's modules)
    import lib_mbw.merge.hashes  # noqa: F401
    from tests.merge_models import write_micro

    write_micro(workdir / "A.safetensors", seed=1)
    write_micro(workdir / "B.safetensors", seed=2)
    fake = FakeMergeModule()
    monkeypatch.setitem(sys.modules, "lib_mbw.merge", fake)
    args = [*BACKEND, "-a", "A.safetensors", "-b", "B.safetensors", "-o", "models", "--dtype", "bf16", "--max-evals", "3", "--rescore-top", "0", "-q"]
    assert main(["search", *args]) == 0
    (run,) = run_dirs(workdir / "csv" / "history")
    ((a, b, recipe, out, options),) = fake.calls
    assert (a, b) == ("A.safetensors", "B.safetensors") and out.parent == Path("models") and out.name.startswith("A-x-B-")
    assert recipe == Recipe.from_dict(json.loads((run / "best.recipe.json").read_text()))
    assert options["dtype"] == torch.bfloat16 and options["base_from"] == "a" and options["overwrite"] is False
    assert run.name in json.loads(options["extra_metadata"]["auto_mbw_search"])["run_id"]
    assert json.loads((run / "manifest.json").read_text())["result"]["outputs"]["model"] == str(out)
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "lib_mbw.merge", FakeMergeModule(fail=True))
    assert main(["search", *args]) == 2  # the search result is kept; only the model is missing
    err = capsys.readouterr().err
    assert "no space left on device" in err
    assert "merge it later with: python -m lib_mbw merge A.safetensors B.safetensors --recipe csv/history/" in err


def test_host_provides_generators_and_holds_its_lock(workdir: Path) -> None:
    import contextlib

    from lib_mbw.search.session import start_search
    from lib_mbw.search.settings import settings_from_dict
    from tests.loop_backend import FakeGenerator, FakeScorer

    class Host:
        name = "standalone"

        def __init__(self) -> None:
            self.made: list[tuple] = []
            self.locked = False
            self.lock_seen: list[bool] = []

        def make_generator(self, model_a, model_b, options):
            self.made.append((model_a, model_b, dict(options)))
            host = self

            class Watched(FakeGenerator):
                def apply(self, recipe):
                    host.lock_seen.append(host.locked)
                    return super().apply(recipe)

            return Watched()

        @contextlib.contextmanager
        def exclusive(self):
            self.locked = True
            try:
                yield
            finally:
                self.locked = False

        def model_saved(self, path):
            pass

    host = Host()
    settings = settings_from_dict({"models": {"a": "A", "b": "B", "family": "sd1"}, "generator": {"options": {"steps": 4}}, "stop": {"max_evaluations": 2}, "rescore_top": 0, "strategy": "tests.loop_backend:make_optimizer"})
    session = start_search(settings, host=host, scorer=FakeScorer(), plugins={"tests.loop_backend:make_optimizer"})
    outcome = session.execute()
    assert host.made == [("A", "B", {"steps": 4})]
    assert host.lock_seen and all(host.lock_seen) and not host.locked
    assert outcome.result.evaluations == 2 and session.generators[0].closed


def test_ctrl_c_stops_cleanly_and_the_run_can_be_resumed(workdir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [*BACKEND, "--generator-option", "delay=0.02", "--max-evals", "200", "--patience", "0", "--rescore-top", "0", "-q"]
    process = subprocess.Popen([sys.executable, "-m", "lib_mbw", "search", *args], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        history = workdir / "csv" / "history"
        while time.monotonic() < deadline:
            runs = run_dirs(history) if history.exists() else []
            if runs and (runs[0] / "history.csv").exists() and len((runs[0] / "history.csv").read_text().splitlines()) > 3:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "stopped by user (Ctrl-C); continue with: python -m lib_mbw search --resume" in err
    (run,) = run_dirs(workdir / "csv" / "history")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["result"]["stop_reason"] == "user_abort" and (run / "best.recipe.json").exists()
    done = manifest["result"]["evaluations"]
    assert 3 <= done < 200
    assert main(["search", "--resume", str(run), "--max-evals", str(done + 2), "-q", *PLUGINS]) == 0
    assert json.loads((run / "manifest.json").read_text())["result"]["evaluations"] == done + 2


def test_settings_files_with_errors_name_the_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "broken.toml").write_text("[stop\nmax_evaluations = 3\n")
    assert main(["search", "--config", "broken.toml", *BACKEND]) == 2
    assert "broken.toml: invalid TOML" in capsys.readouterr().err
    (workdir / "typed.json").write_text(json.dumps({"stop": {"max_evaluations": "many"}, "seed": 1}))
    assert main(["search", "--config", "typed.json", *BACKEND]) == 2
    assert "typed.json: stop.max_evaluations must be an integer, got 'many'" in capsys.readouterr().err
    assert main(["search", "--config", "missing.toml", *BACKEND]) == 2
    assert "missing.toml: settings file not found" in capsys.readouterr().err


def test_list_strategies_marks_the_default_and_the_seeds_choice(capsys):
    from lib_mbw.search.optimizer import DEFAULT_STRATEGY, SEED_STRATEGY

    assert main(["search", "--list-strategies"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.startswith(DEFAULT_STRATEGY) and "(default)" in line for line in lines)
    assert any(line.startswith(SEED_STRATEGY) and "(seed's choice)" in line for line in lines)
    assert "TPEOptimizer" in out and "CmaEsOptimizer" in out
