"""Which parametrization of a per-block simplex point does the default optimizer search best?

    python tests/bench/mix_parametrization.py                 # N=3, 3 seeds, 120 evaluations
    python tests/bench/mix_parametrization.py --n 4 --evaluations 160 --seeds 2

A synthetic objective over 27 blocks: a hidden N-model recipe (random chain
weights on the 21-level grid), block importances drawn like real merges (a
few blocks matter a lot, most little), and the score of a recipe is minus the
importance-weighted L1 distance of its shares to the hidden shares, plus
Gaussian noise. Three ways to turn box coordinates into shares, each searched
by the default strategy through the optimizer facade:

* ``chain``: N-1 chain weights per block (``MixSearchSpace``, what auto-MBW uses);
* ``softmax``: N logits per block on [-4, 4], shares = softmax(logits);
* ``normalized``: N values per block on [0, 1], shares = values / sum (equal shares where all are 0).

Quality = fraction of the gap closed between the mean random recipe (0) and
the hidden recipe (1), using the TRUE (noise-free) value of the recipe the
optimizer recommends. Last line:
mix_parametrization chain=<median> softmax=<median> normalized=<median>
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from lib_mbw.blocks import present_blocks
from lib_mbw.search.optimizer import InitSettings, make_optimizer
from lib_mbw.search.space_n import MixSearchSpace

BLOCKS = present_blocks("sd1")


def hidden_shares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, n, 1])
    space = MixSearchSpace(n_models=n)
    recipe = space.recipe(tuple(int(v) for v in rng.integers(0, 21, space.ndim)))
    importance = rng.pareto(1.5, len(BLOCKS)) + 0.05
    return np.array([recipe.shares[b] for b in BLOCKS]), importance / importance.sum()


def decode(kind: str, n: int, space: MixSearchSpace, recipe) -> np.ndarray:
    """Shares per block (27 x n) of a point of ``space`` read as ``kind``."""
    if kind == "chain":
        return np.array([recipe.shares[b] for b in BLOCKS])
    x = np.array([recipe.search_chain(b) for b in BLOCKS])  # 27 x n: the box coordinates
    if kind == "softmax":
        logits = 8.0 * (x - 0.5)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    total = x.sum(axis=1, keepdims=True)
    return np.where(total > 0, x / np.where(total > 0, total, 1.0), 1.0 / n)


def run(kind: str, n: int, seed: int, evaluations: int, noise: float) -> float:
    target, weight = hidden_shares(n, seed)
    # chain: n-1 dims per block; softmax / normalized: n dims per block (a space of n+1 models has n chain dims)
    space = MixSearchSpace(n_models=n if kind == "chain" else n + 1)
    rng = np.random.default_rng([seed, 99])

    def true_value(shares: np.ndarray) -> float:
        return -float((weight * np.abs(shares - target).sum(axis=1)).sum())

    opt = make_optimizer("default", space, seed, init=InitSettings(random=10))
    for _ in range(evaluations):
        recipe = opt.ask(1)[0]
        opt.tell(recipe, true_value(decode(kind, n, space, recipe)) + noise * rng.normal())
    returned = true_value(decode(kind, n, space, opt.recommend().recipe))
    # the gap is measured against uniform random recipes of the chain space (the demo's baseline) for every kind
    chain_space = MixSearchSpace(n_models=n)
    random_chain = statistics.fmean(
        true_value(decode("chain", n, chain_space, chain_space.recipe(tuple(int(v) for v in p))))
        for p in chain_space.random_points(rng, 200)
    )
    return (returned - random_chain) / (0.0 - random_chain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=120)
    parser.add_argument("--noise", type=float, default=0.01)
    args = parser.parse_args()
    medians = {}
    for kind in ("chain", "softmax", "normalized"):
        started = time.perf_counter()
        gaps = [run(kind, args.n, seed, args.evaluations, args.noise) for seed in range(args.seeds)]
        medians[kind] = statistics.median(gaps)
        print(f"{kind:<11} gap closed per seed {', '.join(f'{g:.3f}' for g in gaps)}; median {medians[kind]:.3f} ({time.perf_counter() - started:.0f} s)")
    print("mix_parametrization " + " ".join(f"{k}={v:.3f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
