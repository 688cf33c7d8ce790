"""The optimizer benchmark's real family (tests/bench/optimizer_real.py): its objective ranks the hidden recipe first."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent / "bench"
sys.path.insert(0, str(BENCH))

import optimizer_real as real  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_cpu_thread")


@pytest.mark.parametrize("kind", real.KINDS)
def test_hidden_recipes_have_their_structure(kind: str) -> None:
    weights = real.hidden_weights(kind, 3)
    assert weights.shape == (27,) and weights.min() >= 0.0 and weights.max() <= 1.0
    assert np.allclose(weights * 20, np.round(weights * 20)), "hidden recipes lie on the 21-level grid"
    if kind == "edges":
        assert set(weights.tolist()) <= {0.0, 1.0}
    if kind == "few-blocks":
        base = np.bincount((weights * 20).astype(int)).argmax() / 20
        moved = np.abs(weights - base) >= 0.3 - 1e-9
        assert base in (0.0, 1.0) and 3 <= moved.sum() <= 5 and (weights[~moved] == base).all()
    if kind == "smooth":
        assert np.abs(np.diff(weights)).max() <= 0.25, "a smooth profile has no jumps between neighbouring blocks"
    if kind == "diverse":
        assert len(set(weights.tolist())) >= 10
    assert not np.array_equal(weights, real.hidden_weights(kind, 4)), "the seed draws another instance"


def test_objective_scores_hidden_recipe_top_and_random_recipes_lower(tmp_path: Path) -> None:
    calibration = tmp_path / "calibration.json"
    make = real.real_problem("few-blocks", steps=2, samples=3, path=calibration, work=tmp_path)
    objective = make(0)
    hidden = real.hidden_weights("few-blocks", 0)
    assert objective.true(hidden[None])[0] == pytest.approx(objective.optimum) == pytest.approx(1.0)
    others = np.vstack([real.random_sample(7, 2), 1.0 - hidden])
    values = objective.true(others)
    assert (values < objective.optimum - 0.01).all()
    assert objective.random_mean < objective.optimum - 0.01
    assert objective.gap_closed(objective.optimum) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    assert objective.noisy(hidden, rng)[0] == objective.true(hidden[None])[0], "the score is the rendering's own: no added noise"
    renders = objective.true.renders
    objective.true(hidden[None])
    assert objective.true.renders == renders, "a recipe scored before is not rendered again"
    entry = json.loads(calibration.read_text())["real-few-blocks|0|64x2|3"]
    assert entry["hidden"] == pytest.approx(1.0) and entry["samples"] == 3
    again = make(0)  # the calibration comes from the file: nothing is rendered
    assert again.random_mean == objective.random_mean and again.true.renders == 0
    objective.true.close()
