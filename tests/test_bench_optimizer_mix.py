"""The N-model optimizer benchmark (tests/bench/optimizer_mix.py): hidden mixes have their structure, the hidden one scores top."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent / "bench"
sys.path.insert(0, str(BENCH))

import optimizer_mix as mix  # noqa: E402

from lib_mbw.blocks import present_blocks  # noqa: E402
from lib_mbw.recipe_n import RecipeN  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_cpu_thread")


def _shares(chain: np.ndarray, n: int) -> np.ndarray:
    """Shares per block (27 x N) of a (N - 1) x 27 chain."""
    blocks = present_blocks("sd1")
    recipe = RecipeN.from_chain([f"m{i}" for i in range(n)], {b: tuple(chain[:, i]) for i, b in enumerate(blocks)})
    return np.array([recipe.shares[b] for b in blocks])


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("kind", mix.KINDS)
def test_hidden_mixes_have_their_structure(kind: str, n: int) -> None:
    chain = mix.hidden_chain(kind, n, 2)
    assert chain.shape == (n - 1, 27)
    assert np.allclose(chain * 20, np.round(chain * 20)), "hidden mixes lie on the 21-level grid"
    shares = _shares(chain, n)
    whole = np.isclose(shares.max(axis=1), 1.0)  # blocks that are all one model
    if kind == "edges":
        assert whole.all() and len(set(shares.argmax(axis=1).tolist())) >= 2
    if kind == "few-blocks":
        assert 22 <= whole.sum() <= 24 and len(set(shares[whole].argmax(axis=1).tolist())) == 1
    if kind == "smooth":
        assert np.abs(np.diff(chain, axis=1)).max() <= 0.25
    if kind == "diverse":
        assert len(set(chain.ravel().tolist())) >= 10
    assert not np.array_equal(chain, mix.hidden_chain(kind, n, 3)), "the seed draws another instance"


def test_random_recipes_are_fixed_and_on_the_grid() -> None:
    sample = mix.random_chains(3, 0, 4)
    assert sample.shape == (4, 54) and np.array_equal(sample, mix.random_chains(3, 0, 4))
    assert np.allclose(sample * 20, np.round(sample * 20))


def test_default_run_scores_the_hidden_mix_top_and_records_what_it_returns(tmp_path: Path) -> None:
    hidden = mix.hidden_chain("few-blocks", 3, 0)
    renderer = mix.MixRenderer(3, hidden, steps=2, work=tmp_path)
    try:
        assert renderer.score(hidden.ravel()) == pytest.approx(1.0)
        others = [renderer.score(x) for x in mix.random_chains(3, 0, 2)]
        assert max(others) < 0.99
        result = mix.run_default(renderer, seed=0, evals=12)
    finally:
        renderer.close()
    assert len(result["observed"]) == 12 and len(result["step_s"]) == 12
    assert result["returned_at"] == [10, 12] and all(0.0 < v <= 1.0 for v in result["returned"])
    assert set(result["returned"]) <= set(renderer.memo.values()), "a returned recipe's score is its rendered score"
    cal = {"hidden": 1.0, "random_mean": float(np.mean(others))}
    assert mix.gap(cal["hidden"], cal) == 1.0 and mix.gap(cal["random_mean"], cal) == 0.0
    run = {"returned_at": [10, 12], "gap_returned": [0.2, 0.3], "gap_observed": [0.0] * 12}
    assert mix.gap_at(run, 11) == 0.2 and mix.gap_at(run, 12) == 0.3
    assert mix.gap_at({"gap_observed": [0.1, 0.4, 0.4]}, 2) == 0.4
