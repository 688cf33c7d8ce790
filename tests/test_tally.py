"""Tallies: every method's value on known inputs, weights, and negative ImageReward-like scores."""

from __future__ import annotations

import math

import pytest

from lib_mbw.errors import EvaluationFailed
from lib_mbw.scorers.tally import TALLIES, Tally, TallyError, tally


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logit(s: float) -> float:
    return math.log(s / (1.0 - s))


def test_arithmetic_is_weighted_mean() -> None:
    assert tally([1.0, 2.0, 4.0], [1, 1, 2]) == pytest.approx(11 / 4)


def test_payload_with_weight_zero_is_left_out() -> None:
    for method in TALLIES:
        assert tally([0.3, -50.0], [1, 0], method) == pytest.approx(0.3)


@pytest.mark.parametrize("method", list(TALLIES))
def test_equal_scores_tally_to_that_score(method: str) -> None:
    # a run whose payloads all score x must tally to x under every method, on the scorer's own scale
    for x in (-1.7, 0.0, 0.4, 6.5):
        assert tally([x, x, x], [1, 2, 3], method) == pytest.approx(x, abs=1e-9)


def test_power_means_match_their_definition_in_sigmoid_space() -> None:
    xs, ws = [-1.2, -0.3, 0.8], [1.0, 1.0, 2.0]
    s = [sigmoid(x) for x in xs]
    w = sum(ws)
    geometric = math.exp(sum(wi * math.log(si) for wi, si in zip(ws, s)) / w)
    harmonic = w / sum(wi / si for wi, si in zip(ws, s))
    quadratic = math.sqrt(sum(wi * si * si for wi, si in zip(ws, s)) / w)
    assert tally(xs, ws, "geometric") == pytest.approx(logit(geometric))
    assert tally(xs, ws, "harmonic") == pytest.approx(logit(harmonic))
    assert tally(xs, ws, "quadratic") == pytest.approx(logit(quadratic))


def test_negative_scores_do_not_flip_the_order() -> None:
    # candidate A is better than B on every payload; every tally must rank A above B
    a = [-0.2, -0.5, -1.0]
    b = [-0.4, -0.9, -1.6]
    for method in TALLIES:
        assert tally(a, method=method) > tally(b, method=method), method


def test_power_means_order_harmonic_geometric_arithmetic_quadratic() -> None:
    xs = [-2.0, -0.5, 1.5]
    h, g, q = (tally(xs, method=m) for m in ("harmonic", "geometric", "quadratic"))
    assert h < g < q
    # penalising the worst payload more: geometric/harmonic sit below the plain mean of sigmoids
    assert g < logit(sum(sigmoid(x) for x in xs) / 3)


def test_huge_scores_stay_finite() -> None:
    assert math.isfinite(tally([100.0, 200.0], method="geometric"))
    assert math.isfinite(tally([-500.0, 1.0], method="harmonic"))


def test_raw_power_mean_refuses_non_positive_scores_with_advice() -> None:
    assert Tally("geometric", positive="none")([1.0, 4.0]) == pytest.approx(2.0)
    assert Tally("harmonic", positive="none")([1.0, 4.0]) == pytest.approx(1.6)
    with pytest.raises(EvaluationFailed, match="positive='sigmoid'"):
        Tally("geometric", positive="none")([1.0, -0.5])


def test_weighted_median_min_and_trimmed() -> None:
    assert tally([3.0, 1.0, 2.0], method="median") == 2.0
    assert tally([1.0, 2.0], [3, 1], method="median") == 1.0
    assert tally([1.0, 2.0], [1, 1], method="median") == 1.5
    assert tally([0.5, -3.0, 2.0], [5, 0.1, 1], method="min") == -3.0
    # 25 % trimmed of 1,2,3,100 drops 1 and 100
    assert Tally("trimmed", trim=0.25)([1.0, 2.0, 3.0, 100.0]) == pytest.approx(2.5)
    # trimming by weight: the heavy middle value dominates
    assert Tally("trimmed", trim=0.2)([0.0, 1.0, 10.0], [1, 3, 1]) == pytest.approx(1.0)


def test_bad_settings_and_inputs_are_clear() -> None:
    with pytest.raises(TallyError, match="unknown tally 'mode'"):
        Tally("mode")
    with pytest.raises(TallyError, match="trim"):
        Tally("trimmed", trim=0.5)
    with pytest.raises(TallyError, match="weights"):
        tally([1.0], [-1.0])
    with pytest.raises(TallyError, match="nothing to tally"):
        tally([1.0], [0.0])
    with pytest.raises(EvaluationFailed, match="non-finite"):
        tally([float("nan"), 1.0])
