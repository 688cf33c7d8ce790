"""Human ratings with scripted answers: mixing, the timeout policy and the console rater."""

from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest
from PIL import Image

from lib_mbw.errors import EvaluationFailed, ScorerError
from lib_mbw.payloads import Payload
from lib_mbw.scorers import ConsoleRater, HumanScorer, HumanSettings, RatingRequest
from lib_mbw.scorers.human import stdin_ask
from tests.scorer_fixtures import FixedScorer, batch, generated, picture


class Script:
    """A rater that answers from a list and records what it was asked."""

    def __init__(self, *answers: list[float | None]) -> None:
        self.answers: Iterator[list[float | None]] = iter(answers)
        self.requests: list[RatingRequest] = []

    def __call__(self, request: RatingRequest) -> list[float | None]:
        self.requests.append(request)
        return next(self.answers)


def test_ratings_become_scores_in_order() -> None:
    rater = Script([7, 3.5, 10, 1])
    images = batch(4)
    assert HumanScorer(rater, HumanSettings(timeout_s=60)).score(images) == [7.0, 3.5, 10.0, 1.0]
    request = rater.requests[0]
    assert (request.low, request.high, request.timeout_s) == (1, 10, 60) and list(request.images) == images


def test_mix_with_an_automatic_score_on_the_rating_scale() -> None:
    auto = FixedScorer("imagereward", [-2.0, 0.0, 2.0, 5.0], typical_range=(-2.0, 2.0))
    scorer = HumanScorer(Script([8, 8, 8, 8]), HumanSettings(auto_weight=0.25), auto=auto)
    # auto on the 1..10 scale: 1, 5.5, 10, 10 (clipped)
    assert scorer.score(batch(4)) == pytest.approx([6.25, 7.375, 8.5, 8.5])
    assert scorer.auto_on_scale(0.0) == 5.5
    custom = HumanScorer(Script([2, 2]), HumanSettings(auto_weight=0.5, auto_range=(0.0, 1.0)),
                         auto=FixedScorer("clip", [0.5, 1.0]))
    assert custom.score(batch(2)) == pytest.approx([3.75, 6.0])


def test_missing_ratings_fail_the_evaluation_by_default() -> None:
    scorer = HumanScorer(Script([6, None, None]), HumanSettings(timeout_s=30))
    expected = r"no rating within 30 s for payload 'city' image 0, payload 'city' image 1;"
    with pytest.raises(EvaluationFailed, match=expected):
        scorer.score(batch(3))


def test_missing_ratings_can_fall_back_to_the_automatic_score() -> None:
    auto = FixedScorer("imagereward", [1.0, 2.0, -2.0], typical_range=(-2.0, 2.0))
    scorer = HumanScorer(Script([6, None, None]), HumanSettings(on_missing="auto"), auto=auto)
    assert scorer.score(batch(3)) == pytest.approx([6.0, 10.0, 1.0])
    assert auto.calls == 1
    fallback_only = HumanScorer(Script([6, 7, 8]), HumanSettings(on_missing="auto"), auto=auto)
    assert fallback_only.score(batch(3)) == [6.0, 7.0, 8.0]
    assert auto.calls == 1  # every image rated: the automatic scorer is not run


def test_bad_answers_and_settings_are_refused() -> None:
    with pytest.raises(EvaluationFailed, match="rating 11 for payload 'city' image 0 is outside 1..10"):
        HumanScorer(Script([5, 11])).score(batch(2))
    with pytest.raises(EvaluationFailed, match="returned 1 ratings for 2 images"):
        HumanScorer(Script([5])).score(batch(2))
    with pytest.raises(ScorerError, match="needs an automatic scorer"):
        HumanScorer(Script(), HumanSettings(on_missing="auto"))
    with pytest.raises(ScorerError, match="auto_weight must be between 0 and 1"):
        HumanScorer(Script(), HumanSettings(auto_weight=1.5), auto=FixedScorer("a", []))
    with pytest.raises(ScorerError, match="low .* must be below high"):
        HumanScorer(Script(), HumanSettings(low=5, high=5))
    with pytest.raises(ScorerError, match="set auto_range"):
        HumanScorer(Script(), HumanSettings(auto_weight=0.5), auto=FixedScorer("a", [], typical_range=None))
    with pytest.raises(EvaluationFailed, match="all black"):
        black = generated(Payload(name="p", prompt="x", width=8, height=8), [Image.new("RGB", (8, 8))])
        HumanScorer(Script([5])).score(black)


def scripted_console(answers: list[str | None]) -> tuple[list[tuple[str, float | None]], list[str], callable]:
    asked: list[tuple[str, float | None]] = []
    said: list[str] = []
    replies = iter(answers)

    def ask(prompt: str, timeout_s: float | None) -> str | None:
        asked.append((prompt, timeout_s))
        return next(replies)

    return asked, said, ask


def test_console_rater_saves_images_and_reads_ratings(tmp_path) -> None:
    asked, said, ask = scripted_console(["7", "ten", "12", "9.5", "s", "", "3"])
    rater = ConsoleRater(tmp_path / "rate", ask=ask, say=said.append)
    images = batch(4)
    request = RatingRequest(images, 1, 10, None)
    assert rater(request) == [7.0, 9.5, None, None]
    names = sorted(p.name for p in (tmp_path / "rate").iterdir())
    assert names == ["0001-cat-0.png", "0001-cat-1.png", "0001-city-0.png", "0001-city-1.png"]
    assert Image.open(tmp_path / "rate" / "0001-city-0.png").tobytes() == images[1].image.tobytes()
    assert "payload 'cat' image 0 (0001-cat-0.png)" in asked[0][0] and asked[0][1] is None
    assert any("'ten' is not a number" in line for line in said) and any("12 is outside 1-10" in line for line in said)
    assert rater(RatingRequest(images[:1], 1, 10, None)) == [3.0]
    assert (tmp_path / "rate" / "0002-cat-0.png").is_file()


def test_console_rater_never_overwrites_and_sanitises_names(tmp_path) -> None:
    folder = tmp_path / "rate"
    folder.mkdir()
    (folder / "0001-evil_name-0.png").write_bytes(b"keep me")
    payload = Payload(name="../evil name", prompt="x", width=64, height=64)
    _, _, ask = scripted_console(["5"])
    rater = ConsoleRater(folder, ask=ask, say=lambda _: None)
    assert rater(RatingRequest(generated(payload, [picture(1)]), 1, 10, 5)) == [5.0]
    assert (folder / "0001-evil_name-0.png").read_bytes() == b"keep me"
    assert (folder / "0001-evil_name-0-2.png").is_file() and not (tmp_path / "evil name").exists()


def test_console_rater_timeout_leaves_the_rest_unrated(tmp_path, monkeypatch) -> None:
    clock = iter([100.0, 100.0, 104.0, 104.0, 111.0, 111.0, 111.0])
    monkeypatch.setattr("lib_mbw.scorers.human.time.monotonic", lambda: next(clock))
    asked, said, ask = scripted_console(["4", None])
    ratings = ConsoleRater(tmp_path, ask=ask, say=said.append)(RatingRequest(batch(3), 1, 10, 10.0))
    assert ratings == [4.0, None, None]
    assert [timeout for _, timeout in asked] == [10.0, 6.0]  # the second question gets what is left of 10 s


def test_human_scorer_with_console_rater_end_to_end(tmp_path) -> None:
    _, _, ask = scripted_console(["8", None])
    auto = FixedScorer("imagereward", [0.0, 2.0], typical_range=(-2.0, 2.0))
    scorer = HumanScorer(ConsoleRater(tmp_path, ask=ask, say=lambda _: None),
                         HumanSettings(timeout_s=20, on_missing="auto", auto_weight=0.5), auto=auto)
    assert scorer.score(batch(2)) == pytest.approx([6.75, 10.0])


@pytest.mark.skipif(os.name != "posix", reason="the console timeout uses select on standard input (POSIX)")
def test_stdin_ask_reads_a_line_times_out_and_ends(monkeypatch, capsys) -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "r") as stdin, os.fdopen(write_end, "w") as feed:
        monkeypatch.setattr(sys, "stdin", stdin)
        feed.write("7\n")
        feed.flush()
        assert stdin_ask("rating? ", 5.0) == "7"
        assert stdin_ask("rating? ", 0.05) is None  # nothing typed in time
        feed.close()
        assert stdin_ask("rating? ", None) is None  # end of input
    assert capsys.readouterr().out.startswith("rating? rating? ")
