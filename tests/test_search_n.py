"""The main search over a block mix of 3-5 models: ``start_search`` / ``resume_search`` / ``search A B C``.

The loop tests use the tiny demo models as files (pre-flight, manifest,
merged model) with a cheap deterministic mix generator and scorer (the image
is the recipe's shares, the score their distance to a hidden recipe), so a
kill after every evaluation can be resumed and compared with the
uninterrupted run. The CLI test runs the real pipeline: the diffusers
generator with ``MultiMerger``, the reference scorer and the offline mix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lib_mbw.blocks import BLOCKS
from lib_mbw.cli import main
from lib_mbw.demo import DemoSettings, write_demo_payloads
from lib_mbw.demo_n import ensure_mix_demo_models, hidden_mix_recipe
from lib_mbw.errors import MBWError
from lib_mbw.generators.base import GeneratedImage
from lib_mbw.merge import verify_file
from lib_mbw.recipe_n import RecipeN, read_recipe_n
from lib_mbw.search.history import HistoryError, RunHistory
from lib_mbw.search.session import resume_search, start_search
from lib_mbw.search.settings import SettingsError, settings_from_dict

TARGET = hidden_mix_recipe(3, 3, ["model 1", "model 2", "model 3"])


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the loop catches it."""


@dataclass
class MixFake:
    """Renders an "F" image of the applied recipe's shares (27 x N pixels); killed at apply number ``kill_at``."""

    name: str = "mix-fake"
    kill_at: int = -1
    applied: RecipeN | None = None
    applies: int = 0
    log: list[RecipeN] = field(default_factory=list)

    def apply(self, recipe: RecipeN) -> float:
        assert isinstance(recipe, RecipeN) and recipe.n_models == 3, recipe
        if self.applies == self.kill_at:
            raise Killed
        self.applies += 1
        self.applied = recipe
        self.log.append(recipe)
        return 0.001

    def generate(self, payload: Any, progress: Any = None) -> list[GeneratedImage]:
        assert self.applied is not None
        image = Image.new("F", (len(BLOCKS) * 3, 1))
        image.putdata([s for b in BLOCKS for s in self.applied.shares.get(b, (0.0, 0.0, 1.0))])
        return [GeneratedImage(image, payload, payload.prompt, payload.negative_prompt, payload.seed + i, i) for i in range(payload.batch_size)]

    def restore(self) -> None:
        self.applied = None

    def close(self) -> None:
        pass


class MixScorer:
    name = "mix-distance"
    higher_is_better = True

    def score(self, images: list[GeneratedImage]) -> list[float]:
        target = [s for b in BLOCKS for s in TARGET.shares[b]]
        return [-sum((v - t) ** 2 for v, t in zip(img.image.getdata(), target)) for img in images]

    def unload(self) -> None:
        pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_n")
    models = ensure_mix_demo_models(root / "models", 0, 3)
    payloads = write_demo_payloads(root / "payloads", DemoSettings())
    return root, models, payloads


def settings_for(root: Path, demo: Any, payloads: Path, **extra: Any):
    data = {
        "name": "mix",
        "seed": 2,
        "models": {"a": str(demo.models[0]), "b": str(demo.models[1]), "c": str(demo.models[2]), "family": "sd1"},
        "payloads": {"folder": str(payloads), "names": ["fox"], "wildcards": None},
        "stop": {"max_evaluations": 4, "patience": None},
        "init": {"random": 3},
        "rescore_top": 2,
        "history_dir": str(root / "history"),
        "output": {"model": str(root / "out"), "dtype": "fp32", "save_images": False},
        **extra,
    }
    return settings_from_dict(data, "test settings")


def comparable(rows) -> list[tuple]:
    return [(r.index, r.status, r.source, r.recipe, r.score) for r in rows]


def test_three_model_search_records_resumes_after_kills_and_writes_a_verified_mix(files, single_cpu_thread) -> None:
    root, models, payloads = files
    whole_session = start_search(settings_for(root, models, payloads), generators=[MixFake()], scorer=MixScorer())
    outcome = whole_session.execute()
    whole = outcome.result
    assert not outcome.errors, outcome.errors
    # the limits count per chain step: 2 x 4 evaluations, then 2 re-scores and the selection
    assert whole.evaluations == 8 and [r.status for r in whole.rows[8:]] == ["rescore", "rescore", "selected"]
    history = RunHistory.open(whole_session.run_dir)
    assert history.n_models == 3 and "IN00@m2" in history.columns and "OUT@m3" in history.columns and "IN00" not in history.columns
    assert all(isinstance(r.recipe, RecipeN) and r.recipe.n_models == 3 for r in history.rows())
    assert comparable(history.rows()) == comparable(whole.rows)
    manifest = json.loads((whole_session.run_dir / "manifest.json").read_text())
    assert set(manifest["models"]) == {"a", "b", "c"} and manifest["models"]["c"]["sha256"]
    assert "runtime_memory" not in manifest  # the fake generator has no runtime mix
    # outputs: recipe JSON with the file names, chain lines that read back to it, plots, the verified mix
    best = read_recipe_n(str(whole_session.run_dir / "best.recipe.json"))
    assert best.models == tuple(p.name for p in models.models) and best == whole.recipe.with_models(best.models)
    assert read_recipe_n(str(whole_session.run_dir / "best.recipe.txt")) == best
    assert (whole_session.run_dir / "best_shares.png").stat().st_size > 1000 and (whole_session.run_dir / "convergence.png").is_file()
    merged = outcome.outputs["model"]
    report = verify_file(merged)
    assert report.identical and set(report.sources) >= {"m1", "m2", "m3"}

    # killed while rendering evaluation k (k = 1..), resumed each time: the same rows as the uninterrupted run
    settings = settings_for(root, models, payloads, output={"merge": False, "save_images": False})
    first = start_search(settings, generators=[MixFake(kill_at=1)], scorer=MixScorer())
    folder = first.run_dir
    with pytest.raises(Killed):
        first.run.run()
    for k in range(2, 10):  # the last kill lands on the second re-score
        session = resume_search(folder, generators=[MixFake(kill_at=1)], scorer=MixScorer())
        with pytest.raises(Killed):
            session.run.run()
        assert comparable(RunHistory.open(folder).rows()) == comparable(whole.rows[:k])
    final = resume_search(folder, generators=[MixFake()], scorer=MixScorer()).execute().result
    assert comparable(final.rows) == comparable(whole.rows) and final.recipe == whole.recipe


def test_warm_start_from_a_mix_run_and_refusals_name_the_file(files, tmp_path) -> None:
    root, models, payloads = files
    first = start_search(settings_for(tmp_path, models, payloads, output={"merge": False, "save_images": False}),
                         generators=[MixFake()], scorer=MixScorer())
    first.execute()
    warm = start_search(settings_for(tmp_path, models, payloads, warm_start=[str(first.run_dir)], output={"merge": False}),
                        generators=[MixFake()], scorer=MixScorer())
    scored = warm.manifest["warm_start"]["scored"]
    assert len(scored) == 8 + 2 and all(r["format"] == "auto-mbw-recipe-n" and "chain" in r for r, _ in scored)
    warm.close()

    # a 4-model search refuses a 3-model run folder and a 3-model recipe, naming them
    four = ensure_mix_demo_models(root / "models4", 0, 4)
    four_models = {"a": str(four.models[0]), "b": str(four.models[1]), "c": str(four.models[2]), "d": str(four.models[3]), "family": "sd1"}
    with pytest.raises(MBWError, match=f"{first.run_dir}/history.csv: is the history of a 3-model search; this search mixes 4"):
        start_search(settings_for(tmp_path, models, payloads, models=four_models, warm_start=[str(first.run_dir)]),
                     generators=[MixFake()], scorer=MixScorer())
    recipe = first.run_dir / "best.recipe.json"
    with pytest.raises(MBWError, match=f"{recipe}: holds a 3-model recipe; this search mixes 4 models"):
        start_search(settings_for(tmp_path, models, payloads, models=four_models, initial_recipes=[str(recipe)]),
                     generators=[MixFake()], scorer=MixScorer())


def test_bad_history_rows_and_settings_are_named(files, tmp_path) -> None:
    root, models, payloads = files
    session = start_search(settings_for(tmp_path, models, payloads, output={"merge": False, "save_images": False}),
                           generators=[MixFake()], scorer=MixScorer())
    session.execute()
    path = session.run_dir / "history.csv"
    text = path.read_text()
    header, first, *rest = text.splitlines()
    # a row with one chain weight missing
    cells = first.split(",")
    cells[header.split(",").index("M00@m3")] = ""
    path.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    with pytest.raises(HistoryError, match=r"history.csv:2: chain weight\(s\) M00@m3 are empty"):
        RunHistory.open(session.run_dir)
    # a header whose shares are for another number of models than the manifest records
    columns = header.split(",")
    dropped = [i for i, c in enumerate(columns) if c.endswith("@m3")]
    keep = lambda line: ",".join(v for i, v in enumerate(line.split(",")) if i not in dropped)  # noqa: E731
    path.write_text("\n".join(keep(line) for line in text.splitlines()) + "\n")
    with pytest.raises(HistoryError, match="history.csv: columns differ from the ones the run's manifest recorded"):
        RunHistory.open(session.run_dir)
    # a chain weight out of range
    cells = first.split(",")
    cells[columns.index("IN00@m2")] = "1.5"
    path.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    with pytest.raises(HistoryError, match="history.csv:2: chain weight 1 of IN00 must be between 0 and 1"):
        RunHistory.open(session.run_dir)

    with pytest.raises(SettingsError, match="setting models.d is set but models.c is not"):
        settings_for(tmp_path, models, payloads, models={"a": "x", "b": "y", "d": "z"})
    with pytest.raises(SettingsError, match="setting space.frozen is for two models; a 3-model search takes space.steps"):
        settings_for(tmp_path, models, payloads, space={"frozen": {"OUT": 0.0}})
    with pytest.raises(SettingsError, match="setting space.steps has 3 entries; 3 models have 2 chain steps"):
        settings_for(tmp_path, models, payloads, space={"steps": [{}, {}, {}]})
    with pytest.raises(SettingsError, match="space.frozen_shares: the shares of OUT sum to 0.9"):
        start_search(settings_for(tmp_path, models, payloads, space={"frozen_shares": {"OUT": [0.5, 0.2, 0.2]}}),
                     generators=[MixFake()], scorer=MixScorer())


def test_frozen_shares_and_steps_shape_the_search(files, tmp_path) -> None:
    root, models, payloads = files
    space = {"frozen_shares": {"OUT": [1, 0, 0]}, "steps": [{"ranges": {"M00": [0, 0.5]}}, {"frozen": {"IN00": 0.25}}]}
    session = start_search(settings_for(tmp_path, models, payloads, space=space, output={"merge": False, "save_images": False}),
                           generators=[MixFake()], scorer=MixScorer())
    result = session.execute().result
    for row in result.rows:
        assert row.recipe.shares["OUT"] == (1.0, 0.0, 0.0)
        assert row.recipe.chain_weights("M00")[0] <= 0.5 and row.recipe.search_chain("IN00")[1] == 0.25


def test_search_command_mixes_three_models_end_to_end(files, tmp_path, monkeypatch, capsys, single_cpu_thread) -> None:
    """``search A B C``: the diffusers generator mixes at run time, the reference scorer scores, the mix is verified."""
    from lib_mbw.generators.diffusers import DiffusersOptions
    from lib_mbw.payloads import load_payloads, prepare_payloads
    from lib_mbw.scorers.reference import save_references
    from lib_mbw.search.mix_search import mix_generator

    root, models, payloads = files
    names = [p.name for p in models.models]
    prepared = [p for p in prepare_payloads(load_payloads(payloads), None, 0) if p.name == "fox"]
    with mix_generator(models.models, DiffusersOptions(config_dir=models.config_dir, cpu_threads=1)) as generator:
        generator.apply(hidden_mix_recipe(0, 3, names))
        save_references(tmp_path / "refs", [img for p in prepared for img in generator.generate(p)])
    monkeypatch.chdir(tmp_path)
    code = main([
        "search", *map(str, models.models), "--payloads", str(payloads), "--payload", "fox", "--wildcards", "",
        "--scorer", "reference", "--scorer-option", f"folder={tmp_path / 'refs'}", "--scorer-option", "metric=ssim",
        "--generator-option", f"config_dir={models.config_dir}", "--generator-option", "cpu_threads=1",
        "--max-evals", "2", "--patience", "0", "--init-random", "2", "--rescore-top", "1", "--levels", "21",
        "--history-dir", str(tmp_path / "history"), "-o", str(tmp_path / "out"), "--dtype", "fp32", "--no-images", "-q",
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    run = next((tmp_path / "history").iterdir())
    rows = RunHistory.open(run).rows()
    assert [r.status for r in rows] == ["ok"] * 4 + ["rescore", "selected"]
    assert all(0 < r.score <= 1 for r in rows[:4])
    manifest = json.loads((run / "manifest.json").read_text())
    assert "runtime_memory" in manifest and "beyond the loaded model" in manifest["runtime_memory"][0]
    merged = next((tmp_path / "out").glob("*.safetensors"))
    assert verify_file(merged).identical
    assert read_recipe_n(str(run / "best.recipe.json")).models == tuple(names)
    assert "# model 3: tiny-sd1-c.safetensors" in captured.out

    assert main(["search", *map(str, models.models), str(models.models[0]), str(models.models[1]), str(models.models[2]),
                 "--payloads", str(payloads)]) == 2
    assert "search takes 2 to 5 models (MODEL arguments), got 6" in capsys.readouterr().err


def test_three_model_search_with_screening_records_rungs_and_returns_a_fully_rendered_mix(files, single_cpu_thread) -> None:
    """Multi-fidelity screening works for a mix: rungs in the chain-column history, a screened mix is never returned."""
    root, models, payloads = files
    screen = {"mode": "screen", "steps_fraction": 0.5, "warmup": 2, "promote_quantile": 0.9, "min_promote": 0.1}
    session = start_search(settings_for(root, models, payloads, stop={"max_evaluations": 6, "patience": None}, fidelity=screen,
                                        output={"merge": False, "save_images": False}),
                           generators=[MixFake()], scorer=MixScorer())
    result = session.execute().result
    rows = RunHistory.open(session.run_dir).rows()
    search = [r for r in rows if r.source in ("initial", "optimizer")]
    rendered = [r for r in search if r.status != "cached"]  # the default's re-score of its best mix renders nothing
    assert {r.rung for r in rendered} == {"screen", "full"}
    assert all(isinstance(r.recipe, RecipeN) for r in rows)
    full = {r.recipe for r in rows if r.status in ("ok", "rescore")}
    assert result.recipe in full, "the returned mix was rendered in full"
