"""Benchmark of the search loop itself: what early abandon saves and costs, and the loop's own overhead.

Runs on the CPU with test doubles (tests/loop_backend.py), so it measures the
loop and not image generation:

1. Early abandon. A fake generator whose time per payload is known (a
   virtual clock: 1 s per payload, 8 payloads per evaluation) and a fake
   scorer with a known objective plus per-payload noise (sd = 10 % of the
   objective's range over random recipes). The same seeded search (random
   search proposals, 270 evaluations) runs without abandon (the baseline) and
   with several margins; for each: rendering seconds, evaluations abandoned,
   and the true objective of the recipe the search returns (re-scoring of the
   top 3 included). Ratios are to the baseline of the same run.
2. Overhead. A search with a zero-cost generator and scorer, history on disk
   (every row and state fsync'd): milliseconds the loop adds per evaluation
   (ask, tell, tally, CSV row + fsync, state file + fsync, events), reported
   against a 1-second evaluation (a small payload on a fast GPU).

Usage: ``python tests/bench/loop.py [--evaluations 270] [--seeds 3]``. Last line:
``loop abandon_time_ratio=<margin 1 sd / baseline> abandon_quality_ratio=<gap closed, margin 1 sd / baseline> overhead_ms=<per evaluation>``
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lib_mbw.blocks import BLOCKS  # noqa: E402
from lib_mbw.payloads import Payload  # noqa: E402
from lib_mbw.search.history import RunHistory  # noqa: E402
from lib_mbw.search.loop import LoopSettings, SearchRun  # noqa: E402
from lib_mbw.search.settings import AbandonSettings  # noqa: E402
from lib_mbw.search.stopping import StopSettings  # noqa: E402
from tests.loop_backend import FakeGenerator, FakeScorer, RandomGridOptimizer, VirtualClock, true_score  # noqa: E402

PAYLOADS = [Payload(name=f"p{i}", prompt=f"prompt {i}", seed=100 + i) for i in range(8)]


class NoisyScorer(FakeScorer):
    """The fake objective plus Gaussian noise per image, seeded by the image (deterministic)."""

    def __init__(self, sd: float) -> None:
        super().__init__()
        self.sd = sd

    def score(self, images):
        clean = super().score(images)
        noisy = []
        for item, value in zip(images, clean):
            key = hash((tuple(item.image.getdata()), item.payload.seed, item.index))
            noisy.append(value + random.Random(key).gauss(0.0, self.sd))
        return noisy


def random_recipe_scores(seed: int = 0, count: int = 1000) -> list[float]:
    """True objective of random grid recipes (what a search starts from)."""
    optimizer = RandomGridOptimizer(BLOCKS, seed=seed)
    return [true_score(r) for r in optimizer.ask(count)]


def abandon_run(seed: int, evaluations: int, margin: float | None, noise: float) -> dict[str, float]:
    clock = VirtualClock()
    generator = FakeGenerator(clock=clock, virtual_seconds=1.0)
    run = SearchRun(
        PAYLOADS,
        RandomGridOptimizer(BLOCKS, seed=seed),
        generator,
        NoisyScorer(noise),
        stop=StopSettings(max_evaluations=evaluations, patience=None),
        settings=LoopSettings(rescore_top=3, abandon=AbandonSettings(margin=margin)),
        clock=clock,
    )
    result = run.run()
    abandoned = sum(1 for r in result.rows if r.status == "abandoned")
    assert result.recipe is not None
    return {"seconds": clock.now, "abandoned": abandoned, "true": true_score(result.recipe)}


def overhead_run(evaluations: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        history = RunHistory.create(Path(folder), BLOCKS, [p.name for p in PAYLOADS[:2]])
        generator, scorer = FakeGenerator(), FakeScorer()
        run = SearchRun(
            PAYLOADS[:2],
            RandomGridOptimizer(BLOCKS, seed=1),
            generator,
            scorer,
            stop=StopSettings(max_evaluations=evaluations, patience=None),
            settings=LoopSettings(rescore_top=0),
            history=history,
        )
        started = time.perf_counter()
        result = run.run()
        total = time.perf_counter() - started
        render = sum(r.generate_s + r.score_s + r.merge_s for r in result.rows)
    return (total - render) / evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluations", type=int, default=270)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    randoms = random_recipe_scores()
    spread = max(randoms) - min(randoms)
    sd = statistics.pstdev(randoms)
    noise = 0.1 * spread
    print(f"true objective of random recipes: range {spread:.3f}, sd {sd:.3f}, optimum 0; per-image noise sd {noise:.3f} (10 % of the range)")
    print(f"{args.evaluations} evaluations x {len(PAYLOADS)} payloads x 1 s (virtual), random-search proposals, "
          f"abandon checks from payload 4 on, top-3 re-scoring, mean of {args.seeds} seeds\n")
    margins: list[float | None] = [None, 0.5 * sd, 1.0 * sd, 2.0 * sd]
    labels = ["off (baseline)", "0.5 sd", "1 sd", "2 sd"]
    table: dict[str, dict[str, float]] = {}
    for label, margin in zip(labels, margins):
        runs = [abandon_run(seed, args.evaluations, margin, noise) for seed in range(args.seeds)]
        table[label] = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
    base = table[labels[0]]
    print(f"{'abandon margin':<16}{'render s':>10}{'ratio':>8}{'abandoned':>11}{'true score':>12}{'gap vs base':>13}")
    for label in labels:
        row = table[label]
        print(
            f"{label:<16}{row['seconds']:>10.0f}{row['seconds'] / base['seconds']:>8.2f}{row['abandoned']:>11.1f}"
            f"{row['true']:>12.4f}{row['true'] - base['true']:>13.4f}"
        )
    mid = table[labels[2]]
    random_mean = statistics.mean(randoms)
    quality_ratio = (mid["true"] - random_mean) / (base["true"] - random_mean)  # share of the gap closed, vs baseline

    overhead = overhead_run(min(args.evaluations, 200))
    print(f"\nloop overhead per evaluation (ask, tell, tally, history row fsync'd, state file): {overhead * 1000:.2f} ms")
    print(f"= {overhead / 1.0 * 100:.2f} % of a 1 s evaluation (target: everything but generation <= 3 %)")
    print(
        f"loop abandon_time_ratio={mid['seconds'] / base['seconds']:.3f} "
        f"abandon_quality_ratio={quality_ratio:.3f} overhead_ms={overhead * 1000:.2f}"
    )


if __name__ == "__main__":
    main()
