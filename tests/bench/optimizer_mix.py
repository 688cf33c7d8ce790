"""N-model optimizer benchmark: the default strategy on the real pipeline with 2, 3 and 5 tiny demo models.

    python tests/bench/optimizer_mix.py                     # N = 2, 3, 5; 4 hidden-recipe kinds; seed 0 (hours: cached per run)
    python tests/bench/optimizer_mix.py --n 3 --seeds 2     # N = 3, seeds 0 and 1
    python tests/bench/optimizer_mix.py --quick             # N = 2 and 3, two kinds, 90 evaluations per 27 dimensions

Issue 19's question: does the default close the gap on an N-model search as
well as on a two-model one **with the same evaluations per dimension**?
Each problem hides an N-model recipe (chain weights per block and step, on
the 21-level grid), renders the demo's three payloads (64x64, 4 steps, one
batch) with it through the runtime mix of the N demo models
(``lib_mbw.demo_n``: models 1 and 2 are the two-model demo's A and B), and
scores a candidate as ``demo --n-models N`` does: SSIM of each image to its
reference, mean over payloads. Hidden recipe kinds, per block and step
(``hidden_chain``):

* ``diverse``: every chain weight drawn from the 21 levels (the N-model demo's target);
* ``few-blocks``: every block all one model, 3-5 blocks moved to a random mix;
* ``smooth``: each step a smooth profile along the UNet (optimizer_real's ``smooth`` per step);
* ``edges``: every block all one of the N models.

Gap 0 = mean score of 24 fixed random recipes, gap 1 = the hidden recipe
(``calibration``, cached). The default strategy runs through the optimizer
facade over a ``MixSearchSpace`` exactly as the search loop drives it (10
random initial points, ask, evaluate, tell); its returned recipe
(``recommend()`` on a copy, untimed) is scored every 10 evaluations. Peers
on the same problems: plain CMA-ES and random search, their best observed
recipe (the score is deterministic, so observed = true). Evaluations are
given per 27 dimensions: ``--per-dim 270`` runs 270 x (N - 1).

Runs are cached in ``results/optimizer_mix_runs.json`` under a hash of the
code they depend on. Last line:
optimizer_mix n2_90=<median gap, default> n2_270=<> n3_90=<> ... ratio_vs_two_90=<worst N: gap_N / gap_2> ratio_vs_two_270=<>
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from optimizer_objectives import DIM, LEVELS  # noqa: E402
from code_keys import code_text, package_versions  # noqa: E402
from optimizer_real import KINDS, _locked_update, hidden_weights  # noqa: E402
from optimizer_real import code_hash as real_code_hash  # noqa: E402

RESULTS = HERE / "results"
CACHE = RESULTS / "optimizer_mix_runs.json"
CALIBRATION = RESULTS / "optimizer_mix_calibration.json"
LATEST = RESULTS / "optimizer_mix_latest.json"
PLOT = ROOT / "docs" / "img" / "optimizer-mix-convergence.png"
RANDOM_SAMPLES = 24
MODEL_SEED = 0
INIT_POINTS = 10
PER_DIM_CHECKPOINTS = (30, 90, 270)
LABELS = {"default": "default (PortfolioGP)", "cma": "CMA-ES (cmaes)", "random": "random search"}
#: lib_mbw files a score depends on beyond the two-model real family's (the N-model mix), with the definitions of
#: ``MIX_GENERATOR``; the search's files count for the default's runs only (``SEARCH_FILES``)
SCORING_FILES = (
    "lib_mbw/demo_n.py",
    "lib_mbw/recipe_n.py",
    "lib_mbw/merge/mix.py",
    "lib_mbw/runtime/merger.py",
    "lib_mbw/runtime/multi.py",
)
MIX_GENERATOR = ("lib_mbw/search/mix_search.py", ("mix_generator",))
SEARCH_FILES = (
    "lib_mbw/search/optimizer.py",
    "lib_mbw/search/space.py",
    "lib_mbw/search/space_n.py",
    "lib_mbw/search/strategies/gp.py",
    "lib_mbw/search/strategies/portfolio.py",
    "lib_mbw/search/strategies/trust_region.py",
    "lib_mbw/search/strategies/surrogate_cma.py",
)
PACKAGES = ("numpy", "scipy", "scikit-learn", "cmaes")


# ----- problems ------------------------------------------------------------------------------------
def hidden_chain(kind: str, n: int, seed: int) -> np.ndarray:
    """The hidden recipe of ``kind`` as chain weights, shape (N - 1, 27) in the space's block order."""
    steps = n - 1
    rng = np.random.default_rng([seed, 47, n, KINDS.index(kind)])
    if kind in ("diverse", "smooth"):
        return np.stack([hidden_weights(kind, 1000 * seed + 10 * n + k) for k in range(steps)])
    model = rng.integers(0, n, DIM)  # each block all one model (index 0 = model 1)
    if kind == "few-blocks":
        model[:] = rng.integers(0, n)
    chain = np.zeros((steps, DIM))
    for block, m in enumerate(model):
        if m > 0:
            chain[m - 1, block] = 1.0  # the step that adds model m+1 takes all of it; later steps add nothing
    if kind == "few-blocks":
        moved = rng.choice(DIM, size=int(rng.integers(3, 6)), replace=False)
        chain[:, moved] = rng.integers(0, LEVELS, (steps, len(moved))) / (LEVELS - 1)
    elif kind != "edges":
        raise ValueError(f"unknown hidden recipe kind {kind!r}; use one of {', '.join(KINDS)}")
    return chain


def random_chains(n: int, seed: int, count: int = RANDOM_SAMPLES) -> np.ndarray:
    """The fixed random recipes whose mean score is gap 0, shape (count, (N - 1) * 27)."""
    rng = np.random.default_rng([seed, 99, 47, n])
    return rng.integers(0, LEVELS, (count, (n - 1) * DIM)) / (LEVELS - 1)


#: the definitions of this file that every score depends on (the files and packages listed above count by content)
SCORED_BY = (
    "RANDOM_SAMPLES", "MODEL_SEED", "hidden_chain", "random_chains", "MixRenderer", "calibration", "gap", "_limit_threads", "run_job",
)
#: the definitions each runner's runs depend on besides ``SCORED_BY`` (the default's: with ``SEARCH_FILES``)
RUN_BY = {
    "default": ("INIT_POINTS", "checkpoints", "run_default"),
    "cma": ("_grid", "run_cma"),
    "random": ("_grid", "run_random"),
}


def scoring_hash() -> str:
    """Hash of what a mix problem's scores depend on: the two-model real family's code, the mixing code, this file's."""
    digest = hashlib.sha256(real_code_hash().encode())
    digest.update(code_text(HERE / "optimizer_mix.py", SCORED_BY).encode())
    for name in SCORING_FILES:
        digest.update(code_text(ROOT / name).encode())
    digest.update(code_text(ROOT / MIX_GENERATOR[0], MIX_GENERATOR[1]).encode())
    digest.update(package_versions(PACKAGES).encode())
    digest.update(platform.python_version().encode())
    return digest.hexdigest()[:16]


def run_key(label: str, scoring: str | None = None) -> str:
    """Hash of what a run of ``label`` depends on: the scores (``scoring_hash``, pass it when already computed) and its
    runner (the default: the search)."""
    digest = hashlib.sha256((scoring or scoring_hash()).encode())
    digest.update(code_text(HERE / "optimizer_mix.py", RUN_BY[label]).encode())
    if label == "default":
        for name in SEARCH_FILES:
            digest.update(code_text(ROOT / name).encode())
    return digest.hexdigest()[:16]


class MixRenderer:
    """Scores flat chain vectors ((N - 1) * 27, step-major) against references of a hidden N-model recipe."""

    def __init__(self, n: int, hidden: np.ndarray, size: int = 64, steps: int = 4, work: Path | None = None) -> None:
        self.n = n
        self.hidden = hidden.reshape(-1)
        self.size = size
        self.steps = steps
        self.work = work or Path(tempfile.gettempdir()) / "auto-mbw-bench-mix"
        self.memo: dict[tuple[float, ...], float] = {}
        self._state: tuple[Any, Any, Any, list[str], list[str]] | None = None

    def _setup(self) -> tuple[Any, Any, Any, list[str], list[str]]:
        from lib_mbw.blocks import present_blocks
        from lib_mbw.demo import DEMO_FAMILY, DemoSettings, render_payloads, write_demo_payloads
        from lib_mbw.demo_n import ensure_mix_demo_models
        from lib_mbw.generators.diffusers import DiffusersOptions
        from lib_mbw.payloads import load_payloads, prepare_payloads
        from lib_mbw.scorers.reference import ReferenceScorer
        from lib_mbw.search.mix_search import mix_generator

        models = ensure_mix_demo_models(self.work / f"mix{self.n}-seed{MODEL_SEED}", MODEL_SEED, self.n)
        self.work.mkdir(parents=True, exist_ok=True)
        folder = write_demo_payloads(Path(tempfile.mkdtemp(prefix="payloads-", dir=self.work)), DemoSettings(size=self.size, steps=self.steps))
        payloads = prepare_payloads(load_payloads(folder), None, MODEL_SEED)
        generator = mix_generator(models.models, DiffusersOptions(config_dir=models.config_dir, cpu_threads=1))
        blocks = list(present_blocks(DEMO_FAMILY))
        names = [p.name for p in models.models]
        generator.apply(self._recipe(names, blocks, self.hidden))
        references = [image for images in render_payloads(generator, payloads) for image in images]
        scorer = ReferenceScorer({(img.payload.name, img.index): img.image for img in references}, metric="ssim")
        return generator, scorer, payloads, blocks, names

    def _recipe(self, names: list[str], blocks: list[str], x: np.ndarray) -> Any:
        from lib_mbw.recipe_n import RecipeN

        chain = np.asarray(x, dtype=float).reshape(self.n - 1, len(blocks))
        return RecipeN.from_chain(names, {b: tuple(chain[:, i].tolist()) for i, b in enumerate(blocks)}, "benchmark recipe")

    def score(self, x: np.ndarray) -> float:
        """The demo's score of one flat chain vector, memoized."""
        from lib_mbw.demo import render_payloads

        key = tuple(np.round(np.clip(np.asarray(x, dtype=float), 0.0, 1.0), 9).tolist())
        if key not in self.memo:
            if self._state is None:
                self._state = self._setup()
            generator, scorer, payloads, blocks, names = self._state
            generator.apply(self._recipe(names, blocks, np.array(key)))
            means = [float(np.mean(scorer.score(images))) for images in render_payloads(generator, payloads)]
            self.memo[key] = float(np.mean(means))
        return self.memo[key]

    def close(self) -> None:
        if self._state is not None:
            self._state[0].close()
            self._state = None


def calibration(n: int, kind: str, seed: int, renderer: MixRenderer) -> dict[str, Any]:
    """The hidden recipe's score and the random recipes' mean score (cached under ``scoring_hash``)."""
    key = f"mix{n}-{kind}|{seed}|{renderer.size}x{renderer.steps}|{RANDOM_SAMPLES}"
    digest = scoring_hash()
    if CALIBRATION.is_file():
        entry = json.loads(CALIBRATION.read_text()).get(key)
        if entry and entry.get("code") == digest:
            return entry
    sample = np.array([renderer.score(x) for x in random_chains(n, seed)])
    entry = {
        "code": digest,
        "hidden": renderer.score(renderer.hidden),
        "random_mean": float(sample.mean()),
        "random_sd": float(sample.std()),
        "random_max": float(sample.max()),
    }
    _locked_update(CALIBRATION, key, entry)
    return entry


def gap(value: float, cal: dict[str, Any]) -> float:
    return (value - cal["random_mean"]) / (cal["hidden"] - cal["random_mean"])


# ----- runners -------------------------------------------------------------------------------------
def _limit_threads() -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


def checkpoints(evals: int) -> list[int]:
    return sorted(set(range(10, evals + 1, 10)) | {evals})


def run_default(renderer: MixRenderer, seed: int, evals: int) -> dict[str, Any]:
    """The default strategy through the facade over the mix space, driven as the loop drives it."""
    from lib_mbw.search.optimizer import InitSettings, make_optimizer
    from lib_mbw.search.space_n import MixSearchSpace

    space = MixSearchSpace(levels=LEVELS, n_models=renderer.n)
    optimizer = make_optimizer("default", space, seed=seed, init=InitSettings(random=INIT_POINTS))

    def flat(recipe: Any) -> np.ndarray:
        return np.array([recipe.chain[b][k] for k in range(renderer.n - 1) for b in space.blocks])

    wanted = set(checkpoints(evals))
    observed, step_s, returned, returned_at = [], [], [], []
    start = time.perf_counter()
    recipe = optimizer.ask(1)[0]
    for k in range(1, evals + 1):
        step_s.append(time.perf_counter() - start)
        score = renderer.score(flat(recipe))
        observed.append(score)
        start = time.perf_counter()
        optimizer.tell(recipe, score)
        if k < evals:
            recipe = optimizer.ask(1)[0]
        pause = time.perf_counter()
        if k in wanted:
            returned.append(renderer.score(flat(copy.deepcopy(optimizer).recommend().recipe)))
            returned_at.append(k)
        start += time.perf_counter() - pause
    return {"observed": observed, "returned": returned, "returned_at": returned_at, "step_s": step_s}


def _grid(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * (LEVELS - 1)) / (LEVELS - 1)


def run_cma(renderer: MixRenderer, seed: int, evals: int) -> dict[str, Any]:
    """Plain CMA-ES from the centre, step 0.25, restarted when it stops; candidates snapped to the grid."""
    from cmaes import CMA

    dim = (renderer.n - 1) * DIM

    def fresh(offset: int) -> Any:
        return CMA(mean=np.full(dim, 0.5), sigma=0.25, bounds=np.tile([0.0, 1.0], (dim, 1)), seed=seed + offset)

    cma, observed, generation = fresh(0), [], []
    while len(observed) < evals:
        if cma.should_stop():
            cma = fresh(len(observed))
        x = cma.ask()
        score = renderer.score(_grid(x))
        observed.append(score)
        generation.append((x, -score))
        if len(generation) == cma.population_size:
            cma.tell(generation)
            generation = []
    return {"observed": observed}


def run_random(renderer: MixRenderer, seed: int, evals: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 7, renderer.n])
    return {"observed": [renderer.score(_grid(rng.random((renderer.n - 1) * DIM))) for _ in range(evals)]}


RUNNERS: dict[str, Callable[[MixRenderer, int, int], dict[str, Any]]] = {"default": run_default, "cma": run_cma, "random": run_random}


def job_id(label: str, n: int, kind: str, seed: int, evals: int) -> str:
    return f"{label}|mix{n}-{kind}|{seed}|{evals}"


def run_job(job: tuple[str, int, str, int, int]) -> tuple[str, dict[str, Any]]:
    """One run with its problem's calibration, in a fresh process (one thread)."""
    label, n, kind, seed, evals = job
    _limit_threads()
    started = time.perf_counter()
    renderer = MixRenderer(n, hidden_chain(kind, n, seed))
    try:
        cal = calibration(n, kind, seed, renderer)
        result = RUNNERS[label](renderer, seed, evals)
    finally:
        renderer.close()
    result["gap_observed"] = [round(gap(v, cal), 5) for v in np.maximum.accumulate(result["observed"])]
    if "returned" in result:
        result["gap_returned"] = [round(gap(v, cal), 5) for v in result.pop("returned")]
    result["observed"] = [round(v, 6) for v in result["observed"]]
    result["step_s"] = [round(v, 4) for v in result.get("step_s", [])]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return job_id(*job), result


def load_cache() -> dict[str, Any]:
    return json.loads(CACHE.read_text()) if CACHE.is_file() else {}


def gap_at(result: dict[str, Any], evals: int) -> float:
    """Gap closed by the recipe the strategy would return after ``evals`` evaluations."""
    if "gap_returned" in result:
        at = [k for k in result["returned_at"] if k <= evals]
        return result["gap_returned"][result["returned_at"].index(max(at))]
    return result["gap_observed"][evals - 1]


# ----- report --------------------------------------------------------------------------------------
def summarize(results: dict[str, Any], ns: list[int], kinds: list[str], seeds: list[int], labels: list[str], per_dim: int) -> tuple[list[str], dict[str, float]]:
    lines, medians = [], {}
    marks = [c for c in PER_DIM_CHECKPOINTS if c <= per_dim]
    lines.append(f"{'N':>2} {'strategy':<24}" + "".join(f" {'@' + str(c) + '/27d':>10}" for c in marks) + "  runs")
    for n in ns:
        evals = per_dim * (n - 1)
        for label in labels:
            runs = [results[j] for j in (job_id(label, n, k, s, evals) for k in kinds for s in seeds) if j in results]
            if not runs:
                continue
            row = [float(np.median([gap_at(r, c * (n - 1)) for r in runs])) for c in marks]
            if label == "default":
                medians.update({f"n{n}_{c}": v for c, v in zip(marks, row)})
            lines.append(f"{n:>2} {LABELS[label]:<24}" + "".join(f" {v:>10.3f}" for v in row) + f"  {len(runs)}")
    for n in ns:
        evals = per_dim * (n - 1)
        for kind in kinds:
            runs = [results[j] for j in (job_id("default", n, kind, s, evals) for s in seeds) if j in results]
            if runs:
                tail = [float(np.mean(r["step_s"][-10:])) for r in runs]
                lines.append(f"N={n} {kind:<11} default gap@{per_dim}/27d " + " ".join(f"{gap_at(r, evals):.3f}" for r in runs)
                             + f"  step_s at the end {np.median(tail):.3f}")
    return lines, medians


def plot(results: dict[str, Any], ns: list[int], kinds: list[str], seeds: list[int], labels: list[str], per_dim: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.4), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], ns):
        evals = per_dim * (n - 1)
        for label in labels:
            runs = [results[j] for j in (job_id(label, n, k, s, evals) for k in kinds for s in seeds) if j in results]
            if not runs:
                continue
            xs = [c for c in checkpoints(evals)]
            ys = [float(np.median([gap_at(r, c) for r in runs])) for c in xs]
            ax.plot([c / (n - 1) for c in xs], ys, label=LABELS[label])
        ax.set_title(f"{n} models ({(n - 1) * DIM} dimensions)")
        ax.set_xlabel("evaluations per 27 dimensions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("gap closed (median over problems)")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..S-1 per problem")
    parser.add_argument("--per-dim", type=int, default=270, help="evaluations per 27 dimensions")
    parser.add_argument("--labels", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cached", action="store_true", help="run nothing; report the cached runs")
    parser.add_argument("--quick", action="store_true", help="N = 2 and 3, kinds diverse and few-blocks, 90 per 27 dimensions, default only")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.kinds, args.per_dim, args.labels = [2, 3], ["diverse", "few-blocks"], 90, ["default"]
    seeds = list(range(args.seeds))
    scoring = scoring_hash()
    keys = {label: run_key(label, scoring) for label in RUNNERS}
    cache = {k: v for k, v in load_cache().items() if v.get("code") == keys.get(k.split("|")[0])}
    jobs = [(label, n, kind, seed, args.per_dim * (n - 1)) for n in args.n for kind in args.kinds for seed in seeds for label in args.labels]
    todo = [] if args.cached else [j for j in jobs if job_id(*j) not in cache]
    todo.sort(key=lambda j: (j[0] != "default", -j[1]))  # long default runs first
    print(f"optimizer_mix: {len(jobs)} runs, {len(todo)} to run, code {scoring}", flush=True)
    if todo:
        import fcntl

        from lib_mbw.demo_n import ensure_mix_demo_models

        for n in sorted({job[1] for job in todo}):  # built once here: workers building one folder side by side collide
            ensure_mix_demo_models(MixRenderer(n, np.zeros(0)).work / f"mix{n}-seed{MODEL_SEED}", MODEL_SEED, n)

        with mp.get_context("spawn").Pool(args.processes, maxtasksperchild=1) as pool:
            for key, result in pool.imap_unordered(run_job, todo):
                result["code"] = keys[key.split("|")[0]]
                with open(Path(tempfile.gettempdir()) / "auto-mbw-optimizer-mix.lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    data = load_cache()
                    data[key] = result
                    tmp = CACHE.with_suffix(".tmp")
                    CACHE.parent.mkdir(parents=True, exist_ok=True)
                    tmp.write_text(json.dumps(dict(sorted(data.items())), separators=(",", ":")))
                    os.replace(tmp, CACHE)
                cache[key] = result
                print(f"  done {key} in {result['wall_s']:.0f} s: gap {gap_at(result, len(result['observed'])):.3f}", flush=True)
    lines, medians = summarize(cache, args.n, args.kinds, seeds, args.labels, args.per_dim)
    print("\n".join(lines))
    if not args.quick:
        plot(cache, args.n, args.kinds, seeds, args.labels, args.per_dim)
    LATEST.write_text(json.dumps({"lines": lines, "medians": medians, "code": keys}, indent=1) + "\n")
    ratios = {}
    for c in PER_DIM_CHECKPOINTS:
        two = medians.get(f"n2_{c}")
        others = [medians[f"n{n}_{c}"] / two for n in args.n if n > 2 and f"n{n}_{c}" in medians and two]
        if others:
            ratios[c] = min(others)
    line = " ".join(f"{k}={v:.3f}" for k, v in sorted(medians.items(), key=lambda kv: (kv[0][:2], int(kv[0].split("_")[1]))))
    line += "".join(f" ratio_vs_two_{c}={v:.3f}" for c, v in ratios.items() if c in (90, 270))
    print(f"optimizer_mix {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
