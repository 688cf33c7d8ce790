"""The optimizer benchmark's bookkeeping (tests/bench/optimizer.py): family runs, early-stop replay, the real family's registration."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench"
sys.path.insert(0, str(BENCH))

import optimizer as bench  # noqa: E402
from optimizer_families import FAMILIES, PROBLEMS, family_runs  # noqa: E402


def test_bbob_families_run_five_instances_of_each_function_and_keep_seeds_0_to_4() -> None:
    for family in ("bbob-multimodal", "bbob-unimodal"):
        runs = family_runs(family, list(range(5)))
        assert len(runs) == 25 and len(set(runs)) == 25
        assert set(Counter(problem for problem, _ in runs).values()) == {5}
        assert runs[:5] == [(FAMILIES[family][s], s) for s in range(5)], "seeds 0-4 keep their (function, instance)"
        for problem, seed in runs:
            assert FAMILIES[family][seed % 5] == problem
    assert family_runs("legacy", [0, 1]) == [(p, s) for p in FAMILIES["legacy"] for s in (0, 1)]


def test_real_family_is_registered_like_the_others() -> None:
    assert FAMILIES["real"] == ("real-diverse", "real-few-blocks", "real-smooth", "real-edges")
    assert all(problem in PROBLEMS for problem in FAMILIES["real"])
    keys = {bench.run_key("random", p) for p in FAMILIES["real"]}
    assert len(keys) == 4, "each real problem has its own cache key"


def test_stop_point_replays_the_loops_patience() -> None:
    scores = [1.0, 2.0, 3.0] + [0.0] * 100
    assert bench.stop_point(scores, 27) == 3 + 27
    assert bench.stop_point(scores, 54) == 3 + 54
    assert bench.stop_point(scores, None) == len(scores)
    rising = [float(k) for k in range(60)]
    assert bench.stop_point(rising, 27) == 60, "a search that keeps improving runs to the end"
    assert bench.stop_point([5.0, 5.0, 5.0, 6.0] + [1.0] * 10, 3) == 7, "an equal score is no improvement"


def test_paired_comparison_counts_runs_ahead_and_brackets_the_ratio() -> None:
    mine = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    ahead, (low, high) = bench.paired(mine, [g - 0.1 for g in mine])
    assert ahead == 6 and 1.0 < low <= high
    ahead, (low, high) = bench.paired(mine, list(reversed(mine)))
    assert ahead == 3 and low < 1.0 < high, "the same values in another order: a coin flip, the interval spans 1"
    ahead, (low, high) = bench.paired([0.1] * 6, [0.2] * 6)
    assert ahead == 0 and low == high == 0.5
