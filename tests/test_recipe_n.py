"""N-model recipes: shares per block, the exact chain conversion both ways, JSON and chain-line text."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from lib_mbw.blocks import BLOCKS, present_blocks
from lib_mbw.errors import RecipeError
from lib_mbw.recipe import Recipe, to_positional
from lib_mbw.recipe_n import (
    RecipeN,
    chain_of,
    parse_chain_text,
    parse_recipe_n_text,
    read_recipe_n,
    shares_of,
    to_chain_text,
)

GRID = [i / 20 for i in range(21)]


def grid_recipe(rng: random.Random, n: int) -> RecipeN:
    return RecipeN.from_chain([f"m{i}" for i in range(n)], {b: tuple(rng.choice(GRID) for _ in range(n - 1)) for b in BLOCKS})


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_grid_chains_convert_to_shares_and_back_exactly(n) -> None:
    rng = random.Random(n)
    for _ in range(300):
        chain = tuple(rng.choice(GRID[1:-1]) for _ in range(n - 1))  # interior: the chain is unique
        shares = shares_of(chain)
        assert abs(sum(shares) - 1.0) < 1e-12 and min(shares) >= 0
        assert chain_of(shares) == chain


def test_chain_formula_matches_the_sequential_merge() -> None:
    """share_k is what model k contributes to lerp(...lerp(lerp(m1, m2, w1), m3, w2)..., mN, w_{N-1})."""
    chain = (0.3, 0.25, 0.6)
    coeffs = [1.0, 0.0, 0.0, 0.0]
    for k, w in enumerate(chain, start=1):
        coeffs = [c * (1 - w) for c in coeffs]
        coeffs[k] += w
    assert shares_of(chain) == pytest.approx(coeffs, abs=1e-15)


@pytest.mark.parametrize(
    "shares, chain",
    [
        ((1.0, 0.0, 0.0), (0.0, 0.0)),
        ((0.0, 1.0, 0.0), (1.0, 0.0)),
        ((0.0, 0.0, 1.0), (0.0, 1.0)),  # w1 undefined (0/0): 0
        ((0.0, 0.5, 0.5), (1.0, 0.5)),
        ((0.5, 0.0, 0.5), (0.0, 0.5)),
        ((0.0, 0.0, 0.0, 0.0, 1.0), (0.0, 0.0, 0.0, 1.0)),
        ((0.0, 0.0, 0.25, 0.75, 0.0), (0.0, 1.0, 0.75, 0.0)),
    ],
)
def test_degenerate_zero_shares(shares, chain) -> None:
    assert chain_of(shares) == chain
    assert shares_of(chain) == shares


def test_every_chain_with_a_one_maps_to_the_same_shares_and_the_recipe_keeps_the_chain() -> None:
    """Chains that differ only before a weight of 1 are one recipe; the recipe remembers the chain it came from."""
    recipes = [RecipeN.from_chain("abc", {"IN00": (w, 1.0)}) for w in (0.0, 0.3, 1.0)]
    assert all(r == recipes[0] for r in recipes)
    assert [r.search_chain("IN00") for r in recipes] == [(0.0, 1.0), (0.3, 1.0), (1.0, 1.0)]
    assert all(r.chain_weights("IN00") == (0.0, 1.0) for r in recipes)


def test_json_round_trip_is_exact_and_the_format_is_documented() -> None:
    recipe = grid_recipe(random.Random(1), 4)
    data = json.loads(recipe.to_json())
    assert data["format"] == "auto-mbw-recipe-n" and data["models"] == ["m0", "m1", "m2", "m3"]
    assert set(data["shares"]) == set(BLOCKS) and all(len(v) == 4 for v in data["shares"].values())
    back = parse_recipe_n_text(recipe.to_json())
    assert back == recipe and all(back.chain_weights(b) == recipe.chain_weights(b) for b in BLOCKS)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_chain_lines_are_exact_on_a_grid_and_read_back(n, tmp_path) -> None:
    recipe = grid_recipe(random.Random(n), n)
    text, problems = to_chain_text(recipe)
    assert problems == []
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert len(lines) == n - 1 and all(len(ln.split(",")) == 27 for ln in lines)
    path = tmp_path / "r.txt"
    path.write_text(text)
    back = read_recipe_n(str(path))
    assert back == recipe and back.models == recipe.models


def test_chain_lines_say_when_they_are_not_exact() -> None:
    third = RecipeN(("a", "b", "c"), {b: (0.1, 0.2, 0.7) for b in BLOCKS})  # w1 = 2/3
    text, problems = to_chain_text(third)
    assert problems and "more than 6 decimals" in problems[0]
    back = parse_chain_text(text)
    assert back != third
    assert max(abs(x - y) for b in BLOCKS for x, y in zip(back.shares[b], third.shares[b])) < 1e-6


def test_first_chain_line_is_the_two_model_line_of_models_1_and_2() -> None:
    recipe = grid_recipe(random.Random(3), 3)
    text, _ = to_chain_text(recipe)
    first = [ln for ln in text.splitlines() if not ln.startswith("#")][0]
    two = Recipe({b: recipe.chain_weights(b)[0] for b in BLOCKS})
    assert first == to_positional(two)


def test_two_model_recipes_are_the_n2_case(tmp_path) -> None:
    two = Recipe({b: GRID[i % 21] for i, b in enumerate(BLOCKS)}, models={"a": "A.safetensors", "b": "B.safetensors"})
    n = RecipeN.from_two_model(two, ("A.safetensors", "B.safetensors"))
    assert n.n_models == 2 and n.shares["IN01"] == (0.95, 0.05)
    assert n.to_two_model().weights == two.weights
    path = tmp_path / "old.json"
    path.write_text(two.to_json())
    assert read_recipe_n(str(path)) == n
    assert read_recipe_n(to_positional(two)).to_two_model().weights == two.weights
    assert Recipe.from_json(two.to_json()) == two  # the two-model format itself is unchanged


@pytest.mark.parametrize(
    "data, message",
    [
        ({"models": ["a"], "shares": {}}, "2 to 5 models"),
        ({"models": list("abcdef"), "shares": {}}, "2 to 5 models"),
        ({"models": ["a", "b"], "shares": {"IN00": [0.5, 0.6]}}, "sum to 1.1"),
        ({"models": ["a", "b"], "shares": {"IN00": [1.5, -0.5]}}, "between 0 and 1"),
        ({"models": ["a", "b", "c"], "shares": {"IN00": [0.5, 0.5]}}, "2 shares for 3 models"),
        ({"models": ["a", "b"], "shares": {"XX": [0.5, 0.5]}}, "unknown block"),
        ({"models": ["a", "b"], "shares": {"IN00": "0.5,0.5"}}, "needs a list"),
        ({"models": "ab", "shares": {}}, "'models': a list"),
        ({"models": ["a", "b"], "shares": [0.5]}, "'shares' object"),
    ],
)
def test_bad_recipes_get_one_clear_error(data, message) -> None:
    with pytest.raises(RecipeError, match=message):
        RecipeN.from_dict({"format": "auto-mbw-recipe-n", "version": 1, **data}, "r.json")


def test_chain_text_errors() -> None:
    with pytest.raises(RecipeError, match="27 values"):
        parse_chain_text("0.5,0.5\n0.5,0.5")
    with pytest.raises(RecipeError, match="1-4 lines"):
        parse_chain_text("\n".join([",".join(["0.5"] * 27)] * 5))
    with pytest.raises(RecipeError, match="between 0 and 1"):
        parse_chain_text(",".join(["0.5"] * 27) + "\n" + ",".join(["1.5"] * 27))


def test_sdxl_recipe_and_uniform() -> None:
    uni = RecipeN.uniform("abc", present_blocks("sdxl"))
    assert all(s == pytest.approx((1 / 3,) * 3) for s in uni.shares.values())
    text, _ = to_chain_text(uni)
    back = parse_chain_text(text, family="sdxl")
    assert set(back.shares) == set(present_blocks("sdxl"))
    with pytest.raises(RecipeError, match="no shares for IN09"):
        uni.for_family("sd1")


def test_every_corner_of_the_simplex_round_trips() -> None:
    for n in (2, 3, 4, 5):
        for k in range(n):
            shares = tuple(1.0 if i == k else 0.0 for i in range(n))
            assert shares_of(chain_of(shares)) == shares
        for i, j in itertools.combinations(range(n), 2):
            shares = tuple(0.5 if t in (i, j) else 0.0 for t in range(n))
            assert shares_of(chain_of(shares)) == shares
