"""What a resume costs now that no optimizer state is saved: replaying N recorded evaluations through ask/tell.

For each strategy: an uninterrupted search of N ask/tell steps on the
synthetic objective (the optimizer time a user waited for during the run),
then ``optimizer.replay`` of the same N records into a new optimizer (the
time ``--resume`` spends before its first new evaluation). Prints both, the
ratio, and whether the replay was exact (its next proposal equals the
uninterrupted optimizer's).

    .venv/bin/python tests/bench/resume_replay.py --evaluations 270 SurrogateCMA TrustRegionGP TPEOptimizer
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from lib_mbw.search.optimizer import InitSettings, Told, make_optimizer, replay  # noqa: E402
from lib_mbw.search.space import SearchSpace  # noqa: E402

CENTER = np.linspace(0.2, 0.8, 27)


def objective(recipe, space: SearchSpace, rng: np.random.Generator) -> float:
    x = np.array([recipe.weights[b] for b in space.blocks])
    return -float(np.mean((x - CENTER[: len(x)]) ** 2)) + 0.002 * float(rng.normal())


def measure(strategy: str, evaluations: int, seed: int = 0) -> dict:
    space = SearchSpace(levels=21)
    make = lambda: make_optimizer(strategy, space, seed, init=InitSettings(random=10))  # noqa: E731
    rng = np.random.default_rng(seed)
    straight = make()
    records: list[Told] = []
    started = time.perf_counter()
    for index in range(evaluations):
        (recipe,) = straight.ask(1)
        score = objective(recipe, space, rng)
        straight.tell(recipe, score)
        records.append(Told(recipe, score, asked=True, row=index))
    run_s = time.perf_counter() - started
    started = time.perf_counter()
    replayed = replay(make, records)
    replay_s = time.perf_counter() - started
    exact = replayed.exact and replayed.optimizer.ask(1) == straight.ask(1)
    return {"strategy": strategy, "evaluations": evaluations, "run_s": run_s, "replay_s": replay_s, "exact": exact}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("strategies", nargs="*", default=["SurrogateCMA"])
    parser.add_argument("--evaluations", type=int, default=270)
    args = parser.parse_args()
    for strategy in args.strategies:
        r = measure(strategy, args.evaluations)
        print(f"{r['strategy']:<16} {r['evaluations']} evaluations: optimizer time during the run {r['run_s']:.1f} s, "
              f"replay on resume {r['replay_s']:.1f} s (ratio {r['replay_s'] / r['run_s']:.2f}), exact: {r['exact']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
