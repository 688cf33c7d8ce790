"""Recipes: named weights, every positional/preset format, round trips and errors."""

from __future__ import annotations

import json
import random

import pytest

from lib_mbw.blocks import BLOCKS, present_blocks
from lib_mbw.errors import RecipeError
from lib_mbw.recipe import (
    ORDERS,
    Recipe,
    from_positional,
    from_preset,
    parse_recipe_text,
    read_recipe,
    to_positional,
    to_preset,
)


def random_recipe(seed: int = 0, base: float | None = 0.3) -> Recipe:
    rng = random.Random(seed)
    return Recipe({b: round(rng.random(), 3) for b in BLOCKS}, base=base, models={"a": "A.safetensors", "b": "B.safetensors"})


def test_seed_orders_place_time_embed_and_out_where_the_seed_tools_did() -> None:
    values = [str(i) for i in range(27)]
    # auto-MBW-rt: IN00..IN11, M00, TIME_EMBED, OUT00..OUT11, OUT -> value "13" is TIME_EMBED
    rt = from_positional([i / 100 for i in range(27)], "rt")
    assert rt.weights["TIME_EMBED"] == 0.13 and rt.weights["OUT00"] == 0.14 and rt.weights["OUT"] == 0.26
    fork = from_positional([i / 100 for i in range(27)], "rt-fork")
    assert fork.weights["OUT"] == 0.13 and fork.weights["TIME_EMBED"] == 0.26
    canonical = from_positional([i / 100 for i in range(27)], "canonical")
    assert canonical.weights["OUT00"] == 0.13 and canonical.weights["TIME_EMBED"] == 0.25
    assert len(values) == 27


@pytest.mark.parametrize("order", list(ORDERS))
def test_positional_round_trip(order: str) -> None:
    recipe = random_recipe(1, base=None).replace(models={})
    text = to_positional(recipe, order)
    assert from_positional(text, order) == recipe
    assert parse_recipe_text(text, order=order) == recipe


def test_reading_in_the_wrong_order_moves_weights() -> None:
    recipe = random_recipe(2, base=None).replace(models={})
    misread = from_positional(to_positional(recipe, "rt"), "canonical")
    assert misread != recipe and misread.weights["OUT00"] == recipe.weights["TIME_EMBED"]


def test_json_round_trip_keeps_base_method_and_models() -> None:
    recipe = random_recipe(3)
    again = Recipe.from_json(recipe.to_json())
    assert again == recipe and again.base == 0.3 and again.models["b"] == "B.safetensors"
    assert list(json.loads(recipe.to_json())["weights"]) == list(BLOCKS)


def test_text_form_round_trip() -> None:
    recipe = random_recipe(4).replace(models={})
    assert parse_recipe_text(recipe.describe()) == recipe


def test_preset_26_with_mbw_fold() -> None:
    values = [0.9] + [i / 100 for i in range(25)]
    recipe = from_preset(values)
    assert recipe.base == 0.9
    assert recipe.weights["IN00"] == 0.0 and recipe.weights["M00"] == 0.12 and recipe.weights["OUT11"] == 0.24
    assert recipe.weights["TIME_EMBED"] == recipe.weights["IN00"]
    assert recipe.weights["OUT"] == recipe.weights["OUT11"]


def test_preset_sd_mecha_fold_takes_time_embed_from_base() -> None:
    recipe = from_preset([0.9] + [0.1] * 25, fold="sd-mecha")
    assert recipe.weights["TIME_EMBED"] == 0.9
    with pytest.raises(RecipeError, match="no BASE value"):
        from_preset([0.1] * 25, fold="sd-mecha")


def test_sdxl_presets_have_19_or_20_values() -> None:
    recipe = from_preset([0.5] + [0.2] * 19)
    assert set(recipe.weights) == set(present_blocks("sdxl"))
    assert recipe.weights["OUT"] == recipe.weights["OUT08"]
    text, warnings = to_preset(recipe, "sdxl")
    assert len(text.split(",")) == 20 and warnings == []


def test_preset_export_round_trips_and_warns_when_lossy() -> None:
    folded = from_preset([0.4] + [round(i / 30, 3) for i in range(25)])
    text, warnings = to_preset(folded)
    assert warnings == [] and from_preset(text) == folded
    lossy = folded.replace(weights={**folded.weights, "TIME_EMBED": 0.99, "OUT": 0.01})
    _, warnings = to_preset(lossy)
    assert len(warnings) == 2 and "TIME_EMBED" in warnings[0] and "OUT" in warnings[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.1,0.2,0.3", "3 numbers is no known recipe format"),
        (",".join(["0.5"] * 26 + ["1.5"]), "between 0 and 1"),
        (",".join(["0.5"] * 26 + ["x"]), "item 27 is not a number"),
        ('{"weights": {"IN99": 0.5}}', "unknown block name"),
        ('{"weights": [0.5]}', "'weights' object"),
        ("{nope", "invalid JSON"),
        ("IN00=0.5, OUTX=0.2", "unknown block name"),
        ("", "empty recipe"),
    ],
)
def test_recipe_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_recipe_text(text)


def test_wrong_count_for_an_order_names_it() -> None:
    with pytest.raises(RecipeError, match="'rt' order needs 27 values"):
        from_positional([0.5] * 26, "rt")


def test_nan_and_unknown_method_are_refused() -> None:
    with pytest.raises(RecipeError, match="between 0 and 1"):
        Recipe({"IN00": float("nan")})
    with pytest.raises(RecipeError, match="unknown merge method"):
        Recipe({"IN00": 0.5}, method="magic")


def test_read_recipe_from_file_and_missing_file(tmp_path) -> None:
    path = tmp_path / "best.recipe.json"
    recipe = random_recipe(5)
    path.write_text(recipe.to_json())
    assert read_recipe(str(path)) == recipe
    with pytest.raises(RecipeError, match="not found"):
        read_recipe(str(tmp_path / "missing.json"))


def test_for_family_drops_absent_sdxl_blocks_and_requires_present_ones() -> None:
    recipe = random_recipe(6)
    assert list(recipe.for_family("sdxl").weights) == list(present_blocks("sdxl"))
    partial = Recipe({"IN00": 0.5})
    with pytest.raises(RecipeError, match="no weight for"):
        partial.for_family("sd1")


def test_changed_blocks() -> None:
    a = Recipe.uniform(0.5)
    b = a.replace(weights={**a.weights, "OUT03": 0.25})
    assert b.changed_blocks(a) == ["OUT03"] and len(b.changed_blocks(None)) == 27


def test_recipes_pickle_for_optimizer_state() -> None:
    import pickle

    recipe = random_recipe(7)
    again = pickle.loads(pickle.dumps(recipe))
    assert again == recipe and again.base == recipe.base and dict(again.models) == dict(recipe.models)
