"""The N-model demo end to end, tiny: models, hidden recipe, a real (short) search, outputs, a verified mixed file."""

from __future__ import annotations

import json
import re

import torch

from lib_mbw.checkpoint import open_checkpoint
from lib_mbw.cli import main
from lib_mbw.demo_models import demo_state_dicts
from lib_mbw.demo_n import demo_state_dicts_n, hidden_mix_recipe
from lib_mbw.merge import verify_file
from lib_mbw.recipe_n import RecipeN, read_recipe_n


def test_first_two_mix_demo_models_are_the_two_model_demo_models() -> None:
    a, b = demo_state_dicts(0)
    models = demo_state_dicts_n(0, 3)
    key = "model.diffusion_model.middle_block.1.proj_out.weight"
    assert torch.equal(models[0][key], a[key]) and torch.equal(models[1][key], b[key])
    assert not torch.equal(models[2][key], a[key]) and not torch.equal(models[2][key], b[key])
    base_key = "first_stage_model.decoder.conv_out.weight"
    assert torch.equal(models[2][base_key], a[base_key])  # one base: shared VAE


def test_hidden_recipe_is_a_grid_recipe_of_three_models() -> None:
    hidden = hidden_mix_recipe(0, 3, ["a", "b", "c"])
    assert hidden.n_models == 3 and len(hidden.shares) == 27
    assert all(w * 20 == round(w * 20) for b in hidden.shares for w in hidden.search_chain(b))


def test_demo_n_models_3_runs_a_search_and_the_mixed_file_verifies(tmp_path, capsys, single_cpu_thread) -> None:
    code = main(["demo", "--n-models", "3", "--evaluations", "3", "--random-samples", "2", "--quiet", "--output", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"demo gap_closed=(-?[\d.]+) seconds=([\d.]+)", last)
    assert match, last
    assert "evaluations:       6" in out and "verify:            identical (offset counter 0)" in out
    run_dir = next(tmp_path.glob("mix3-seed0-*"))
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(0.0 < r["score"] <= 1.0 for r in rows)
    returned = read_recipe_n(str(run_dir / "best.recipe.json"))
    assert returned.n_models == 3 and returned == read_recipe_n(str(run_dir / "best.recipe.txt")).with_models(returned.models)
    assert any(RecipeN.from_dict(r["recipe"]) == returned for r in rows)
    merged = next(run_dir.glob("mix3-*.safetensors"))
    assert verify_file(merged).identical
    with open_checkpoint(merged) as ckpt:
        assert len(json.loads(ckpt.metadata["sd_merge_models"])) == 3
    assert len(list((run_dir / "references").glob("*/0.png"))) == 3
