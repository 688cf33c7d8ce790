"""``mix-search`` on the command line: a short N-model search, its outputs, resume from its history, bad input."""

from __future__ import annotations

import json

import pytest

from lib_mbw.cli import main
from lib_mbw.demo import DemoSettings, write_demo_payloads
from lib_mbw.demo_n import ensure_mix_demo_models, hidden_mix_recipe
from lib_mbw.merge import verify_file
from lib_mbw.recipe_n import read_recipe_n
from lib_mbw.search.mix_search import MixSearchError, read_history
from lib_mbw.search.space_n import MixSearchSpace


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_cpu_thread):
    from lib_mbw.generators.diffusers import DiffusersOptions
    from lib_mbw.payloads import load_payloads, prepare_payloads
    from lib_mbw.scorers.reference import save_references
    from lib_mbw.search.mix_search import mix_generator

    root = tmp_path_factory.mktemp("mixsearch")
    models = ensure_mix_demo_models(root / "models", 0, 3)
    payload_dir = write_demo_payloads(root / "payloads", DemoSettings())
    payloads = prepare_payloads(load_payloads(payload_dir), None, 0)
    with mix_generator(models.models, DiffusersOptions(config_dir=models.config_dir, cpu_threads=1)) as generator:
        generator.apply(hidden_mix_recipe(0, 3, [p.name for p in models.models]))
        save_references(root / "refs", [img for p in payloads for img in generator.generate(p)])
    return root, models, payload_dir


def test_mix_search_runs_writes_verified_outputs_and_resumes(setup, capsys) -> None:
    root, models, payload_dir = setup
    run = root / "run"
    common = [*map(str, models.models), "--payloads", str(payload_dir), "--run", str(run), "--scorer", "reference",
              "--scorer-option", f"folder={root / 'refs'}", "--scorer-option", "metric=ssim",
              "--config-dir", str(models.config_dir), "--patience", "0", "--dtype", "fp32", "--quiet"]
    assert main(["mix-search", *common, "--evaluations", "3", "--no-merge"]) == 0
    out = capsys.readouterr().out
    assert "(3 evaluations, 0 from an earlier run)" in out
    space = MixSearchSpace(n_models=3, models=[p.name for p in models.models])
    assert len(read_history(run / "history.jsonl", space)) == 3
    assert main(["mix-search", *common, "--evaluations", "5"]) == 0
    out = capsys.readouterr().out
    assert "(5 evaluations, 3 from an earlier run)" in out and "verify: identical" in out
    rows = read_history(run / "history.jsonl", space)
    assert len(rows) == 5 and all(0 < score <= 1 for _, score in rows)
    best = read_recipe_n(str(run / "best.recipe.json"))
    assert best == read_recipe_n(str(run / "best.recipe.txt")).with_models(best.models)
    assert verify_file(next(run.glob("mix3-*.safetensors"))).identical


def test_history_rows_are_data_and_bad_rows_are_named(setup, tmp_path) -> None:
    space = MixSearchSpace(n_models=3)
    history = tmp_path / "history.jsonl"
    history.write_text('{"score": 0.5, "recipe": {"format": "auto-mbw-recipe-n", "models": ["a", "b"], "shares": {}}}\n{}\n')
    with pytest.raises(MixSearchError, match="line 1: a 2-model row in a 3-model search"):
        read_history(history, space)
    history.write_text('{"score": "x"}\n{"score": 1}\n')
    with pytest.raises(MixSearchError, match="line 1: not a history row"):
        read_history(history, space)
    history.write_text('{"score": 0.1, "recipe": ' + json.dumps(space.recipe((0,) * space.ndim).to_dict()) + '}\n{"score": 0.')
    assert len(read_history(history, space)) == 1  # a row cut off by a crash is dropped


def test_mix_search_refuses_bad_input(setup, capsys, tmp_path) -> None:
    root, models, payload_dir = setup
    assert main(["mix-search", str(models.models[0]), "--payloads", str(payload_dir)]) == 2
    assert "2 to 5 models" in capsys.readouterr().err
    space = tmp_path / "space.json"
    space.write_text('{"steps": [{"ranges": {"M00": [0.7, 0.1]}}]}')
    assert main(["mix-search", *map(str, models.models), "--payloads", str(payload_dir), "--space", str(space)]) == 2
    assert "M00 has min" in capsys.readouterr().err
