"""Human rating: a person rates each image of an iteration (1-10 by default), optionally mixed with an automatic score.

The scorer asks a ``Rater`` (a callable the host provides) for one rating per
image. The UI passes its own rater (a gallery with sliders); the CLI uses
``ConsoleRater``, which writes the images to files and reads ratings from
standard input. A rater answers ``None`` for an image it got no rating for
(skipped, or the time ran out).

* Mixing: with ``auto_weight`` w > 0 and an automatic scorer, the score is
  ``(1 - w) * rating + w * auto_on_scale``, where ``auto_on_scale`` maps the
  automatic score's ``auto_range`` (default: its ``typical_range``) linearly
  onto the rating scale, clipped to it.
* Timeout policy for images without a rating: ``on_missing="fail"`` raises
  ``EvaluationFailed`` (the evaluation is skipped, nothing is recorded as a
  score); ``on_missing="auto"`` uses ``auto_on_scale`` instead.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Protocol, Sequence

from ..errors import EvaluationFailed, ScorerError
from ..fileio import png_bytes, write_atomic
from ..generators.base import GeneratedImage
from .base import Scorer
from .checks import check_images, check_scores, image_label

OnMissing = Literal["fail", "auto"]
#: ``ask(prompt, timeout_s)`` -> the line typed, or None when the time ran out / input ended.
AskFunction = Callable[[str, "float | None"], "str | None"]
SKIP_WORDS = ("", "s", "skip")


@dataclass(frozen=True)
class RatingRequest:
    """What a rater is asked: rate each of ``images`` from ``low`` to ``high`` within ``timeout_s`` (None: no limit)."""

    images: Sequence[GeneratedImage]
    low: int
    high: int
    timeout_s: float | None


class Rater(Protocol):
    """Shows the images of a request to a person and returns one rating (or None) per image, in order."""

    def __call__(self, request: RatingRequest) -> Sequence[float | None]: ...


@dataclass
class HumanSettings:
    """Rating scale, time limit, what to do without a rating, and the weight of the automatic score."""

    low: int = 1
    high: int = 10
    timeout_s: float | None = None
    on_missing: OnMissing = "fail"
    auto_weight: float = 0.0
    auto_range: tuple[float, float] | None = None


class HumanScorer:
    """Ratings from a person (through ``rater``), optionally mixed with ``auto``'s scores; higher is better."""

    name = "human"
    higher_is_better = True

    def __init__(self, rater: Rater, settings: HumanSettings | None = None, auto: Scorer | None = None) -> None:
        self.rater = rater
        self.settings = settings = settings or HumanSettings()
        self.auto = auto
        if settings.low >= settings.high:
            raise ScorerError(f"human: rating scale low ({settings.low}) must be below high ({settings.high})")
        if not 0.0 <= settings.auto_weight <= 1.0:
            raise ScorerError(f"human: auto_weight must be between 0 and 1, got {settings.auto_weight}")
        if settings.on_missing not in ("fail", "auto"):
            raise ScorerError(f"human: on_missing must be 'fail' or 'auto', not {settings.on_missing!r}")
        needs_auto = settings.auto_weight > 0 or settings.on_missing == "auto"
        if needs_auto and auto is None:
            raise ScorerError("human: auto_weight > 0 or on_missing='auto' needs an automatic scorer (auto=...)")
        if auto is not None and not auto.higher_is_better:
            raise ScorerError(f"human: the automatic scorer {auto.name} must be higher-is-better")
        self.auto_range = settings.auto_range or (getattr(auto, "typical_range", None) if auto is not None else None)
        if needs_auto and self.auto_range is None:
            raise ScorerError(f"human: set auto_range, the range of {auto.name} scores that maps onto the rating scale")
        self.typical_range = (float(settings.low), float(settings.high))

    def unload(self) -> None:
        """Unload the automatic scorer, if any (ratings hold no memory)."""
        if self.auto is not None:
            self.auto.unload()

    def auto_on_scale(self, value: float) -> float:
        """An automatic score mapped linearly from ``auto_range`` onto the rating scale, clipped."""
        assert self.auto_range is not None
        (a_low, a_high), (low, high) = self.auto_range, (self.settings.low, self.settings.high)
        mapped = low + (value - a_low) * (high - low) / (a_high - a_low)
        return min(float(high), max(float(low), mapped))

    def score(self, images: Sequence[GeneratedImage]) -> list[float]:
        """Ask for ratings, then mix them with the automatic scores as configured."""
        check_images(self.name, images)
        if not images:
            return []
        settings = self.settings
        ratings = list(self.rater(RatingRequest(images, settings.low, settings.high, settings.timeout_s)))
        if len(ratings) != len(images):
            raise EvaluationFailed(f"human: the rater returned {len(ratings)} ratings for {len(images)} images")
        for item, rating in zip(images, ratings):
            if rating is not None and not settings.low <= float(rating) <= settings.high:
                raise EvaluationFailed(
                    f"human: rating {rating} for {image_label(item)} is outside {settings.low}..{settings.high}"
                )
        missing = [item for item, rating in zip(images, ratings) if rating is None]
        if missing and settings.on_missing == "fail":
            limit = f" within {settings.timeout_s:g} s" if settings.timeout_s else ""
            raise EvaluationFailed(
                f"human: no rating{limit} for {', '.join(image_label(item) for item in missing)}; "
                "the evaluation is skipped"
            )
        needs_auto = self.auto is not None and (settings.auto_weight > 0 or bool(missing))
        auto = [self.auto_on_scale(v) for v in self.auto.score(images)] if needs_auto else None
        scores = []
        for position, rating in enumerate(ratings):
            if rating is None:
                assert auto is not None
                scores.append(auto[position])
            elif auto is not None and settings.auto_weight > 0:
                scores.append((1 - settings.auto_weight) * float(rating) + settings.auto_weight * auto[position])
            else:
                scores.append(float(rating))
        return check_scores(self.name, images, scores)


def stdin_ask(prompt: str, timeout_s: float | None) -> str | None:
    """Print ``prompt`` and read a line from standard input; None at end of input or after ``timeout_s``.

    The timeout needs ``select`` on standard input (POSIX); on Windows it waits without a limit.
    """
    sys.stdout.write(prompt)
    sys.stdout.flush()
    if timeout_s is not None and os.name == "posix":
        import select

        ready, _, _ = select.select([sys.stdin], [], [], max(0.0, timeout_s))
        if not ready:
            sys.stdout.write("\n")
            return None
    line = sys.stdin.readline()
    return line.rstrip("\r\n") if line else None


def _file_part(text: str) -> str:
    """``text`` reduced to a safe file-name part (no separators, no leading dots)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:60] or "payload"


class ConsoleRater:
    """The CLI's rater: saves each image as a PNG in ``folder`` and asks for its rating on the console.

    Files are named ``<round>-<payload>-<index>.png`` and never overwrite
    existing ones. Typing ``s`` (or nothing) skips an image; anything outside
    the scale is asked again. When the request's time is up, the remaining
    images get None.
    """

    def __init__(self, folder: str | Path, ask: AskFunction = stdin_ask, say: Callable[[str], None] = print) -> None:
        self.folder = Path(folder)
        self.ask = ask
        self.say = say
        self.round = 0

    def __call__(self, request: RatingRequest) -> list[float | None]:
        self.round += 1
        paths = [self._save(item) for item in request.images]
        deadline = None if request.timeout_s is None else time.monotonic() + request.timeout_s
        limit = f", {request.timeout_s:g} s in all" if request.timeout_s else ""
        self.say(
            f"rate {len(paths)} images from {request.low} to {request.high} (s = skip{limit}); files in {self.folder}"
        )
        ratings: list[float | None] = []
        for item, path in zip(request.images, paths):
            ratings.append(self._ask_one(item, path, request, deadline))
            if deadline is not None and time.monotonic() >= deadline:
                break
        return ratings + [None] * (len(request.images) - len(ratings))

    def _ask_one(
        self, item: GeneratedImage, path: Path, request: RatingRequest, deadline: float | None
    ) -> float | None:
        scale = f"{request.low}-{request.high}"
        question = f"{image_label(item)} ({path.name}), prompt {item.prompt[:60]!r}: rating {scale}? "
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            answer = self.ask(question, remaining)
            if answer is None or answer.strip().lower() in SKIP_WORDS:
                return None
            try:
                value = float(answer.strip())
            except ValueError:
                self.say(f"'{answer.strip()}' is not a number; type {request.low}-{request.high}, or s to skip")
                continue
            if request.low <= value <= request.high:
                return value
            self.say(f"{value:g} is outside {request.low}-{request.high}")

    def _save(self, item: GeneratedImage) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f"{self.round:04d}-{_file_part(item.payload.name)}-{item.index}"
        target, copy = self.folder / f"{stem}.png", 1
        while target.exists():
            copy += 1
            target = self.folder / f"{stem}-{copy}.png"
        return write_atomic(target, png_bytes(item.image), overwrite=False, durable=False)
