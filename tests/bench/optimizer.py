"""Optimizer benchmark: the default strategy against the peers' optimizers on several families of landscapes.

    python tests/bench/optimizer.py                 # every family, 5 seeds, 270 evaluations (hours: cached per run)
    python tests/bench/optimizer.py --family real --seeds 1   # the real pipeline, one instance of each hidden recipe
    python tests/bench/optimizer.py --quick         # seed 0 of 5 problems (one real), cached baselines (a few minutes)
    python tests/bench/optimizer.py --timing 1000   # step time of the default up to evaluation 1000

Families (optimizer_families.py): the three objectives of the old benchmark
(``legacy``), a smooth multimodal landscape (``multimodal``), COCO's bbob
functions (``bbob-multimodal``, ``bbob-unimodal``; 5 instances per function),
27 blocks x 21 levels, noise 5-20 % of range, and the real pipeline
(``real``, optimizer_real.py: the demo's tiny models, hidden recipes of four
structures, SSIM to references; its noise is the rendering's). Quality =
fraction of the gap closed between a random recipe (0) and the optimum (1;
for ``real`` the hidden recipe), measured with the TRUE value of the recipe
each strategy returns (optimizer_runners.py): ours ``recommend()``, the
peers' their best observed score (NGOpt: its own recommendation).

Early stop: the default's recorded scores are replayed through the loop's
own stop rule (lib_mbw.search.stopping) with patience 27, 54, 81 and none;
per family the evaluations it would run and the gap closed at the stop.

Peers, straight on their libraries: random search, the peer
sd-webui-bayesian-merger's bayes_opt GP and optuna TPE, optuna TPE
(multivariate) and GPSampler, plain CMA-ES (cmaes), nevergrad's NGOpt
(installed apart: tests/bench/requirements-nevergrad.txt says how), and on
``legacy`` the seed's GFO BayesianOptimizer (the runs that finished; it takes
10-70 minutes a run). A peer without every run of a family is listed but left
out of that family's ratio. Every run (baselines and facade strategies) is cached in
tests/bench/results/optimizer_runs.json under a key that hashes the code it
depends on (the runner's functions, the problem's module, for facade runs
lib_mbw/search) and the package versions, so a run is never repeated and
interrupted benchmarks resume; ``--cached-baselines`` runs no baseline.

Step time: everything the optimizer does between two evaluations as the
loop calls it (``tell`` + the next ``ask``), mean over evaluations 261-270,
median over runs; ``--timing N`` measures it to evaluation N (two runs on the
cheap ``smooth`` objective: noisy, and noise-free where the default is
model-led) and reports the slower and the machine's load.

Last line (step_s: the worst family's median wall seconds per step at 270, as
measured under the load given; step_cpu_s_*: CPU seconds from the --timing run):
optimizer worst_ratio_90=<default/best peer at 90, worst family> worst_ratio_270=<...> step_s=<x> step_cpu_s_270=<> step_cpu_s_1000=<> load=<>
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from code_keys import code_hash, package_versions  # noqa: E402
from optimizer_families import FAMILIES, PROBLEMS, family_runs  # noqa: E402
from optimizer_real import REAL_PROBLEMS  # noqa: E402
from optimizer_real import code_hash as real_code_hash  # noqa: E402
from optimizer_runners import COMMON, RUNNERS, facade_checkpoints, run  # noqa: E402

RESULTS = HERE / "results"
CACHE = RESULTS / "optimizer_runs.json"
LATEST = RESULTS / "optimizer_latest.json"
TIMING = RESULTS / "optimizer_timing.json"
PLOT = ROOT / "docs" / "img" / "optimizer-convergence.png"
BASELINES = ("random", "peer-gp", "peer-tpe", "tpe-mv", "optuna-gp", "cma", "ngopt", "seed")
LABELS = {
    "seed": "seed: GFO BayesianOptimizer",
    "random": "random search",
    "peer-gp": "peer: bayes_opt GP",
    "peer-tpe": "peer: optuna TPE",
    "tpe-mv": "optuna TPE multivariate",
    "optuna-gp": "optuna GPSampler",
    "cma": "CMA-ES (cmaes)",
    "ngopt": "nevergrad NGOpt",
}
#: baselines run only on these families (the seed's GFO optimizer takes 10-70 minutes a run)
ONLY_ON = {"seed": ("legacy",)}
CHECKPOINTS = (30, 90, 270)
#: early-stop patiences replayed on the default's recorded scores (27: the seed's; None: never)
PATIENCES = (27, 54, 81, None)
QUICK_PROBLEMS = ("sparse", "multimodal-smooth", "bbob-f3", "bbob-f2", "real-diverse")
PACKAGES = ("numpy", "scipy", "scikit-learn", "torch", "gradient-free-optimizers", "optuna", "bayesian-optimization", "cmaes", "coco-experiment")


# ----- cache keys ----------------------------------------------------------------------------------
def facade_files(strategy: str) -> list[Path]:
    """The files of lib_mbw a facade strategy's runs depend on: the facade, the space, the GP, the two strategies
    the default is built from and the strategy's own module."""
    from lib_mbw.search.optimizer import resolve_strategy

    search = ROOT / "lib_mbw" / "search"
    module = resolve_strategy(strategy).factory.__module__.rsplit(".", 1)[-1]  # type: ignore[union-attr]
    names = ["optimizer.py", "space.py", "strategies/gp.py", "strategies/trust_region.py", "strategies/surrogate_cma.py", f"strategies/{module}.py"]
    return sorted({search / n for n in names})


def run_key(label: str, problem: str) -> str:
    """Hash of everything a cached run of ``label`` on ``problem`` depends on."""
    digest = hashlib.sha256()
    digest.update(code_hash(HERE / "optimizer_objectives.py").encode())
    if problem in REAL_PROBLEMS:  # the rendering code, the demo's and the packages it renders with
        digest.update(f"{problem};{real_code_hash()};".encode())
    elif problem not in ("smooth", "sparse", "near_uniform"):
        maker = "bbob" if problem.startswith("bbob") else "multimodal"
        names = (maker, "_calibrate", "NOISE_BY_SEED", "CALIBRATION_SAMPLES", "WIDTHS")
        digest.update(f"{problem};".encode() + code_hash(HERE / "optimizer_families.py", names).encode())
    if label.startswith("facade:"):
        digest.update(code_hash(HERE / "optimizer_runners.py", COMMON + ("run_facade", "facade_checkpoints")).encode())
        for path in facade_files(label.split(":", 1)[1]):
            digest.update(code_hash(path).encode())
    else:
        digest.update(code_hash(HERE / "optimizer_runners.py", COMMON + RUNNERS[label][1]).encode())
    digest.update(package_versions(PACKAGES).encode())
    digest.update(platform.python_version().encode())
    return digest.hexdigest()[:16]


def load_cache() -> dict[str, Any]:
    if CACHE.is_file():
        return json.loads(CACHE.read_text()).get("entries", {})
    return {}


def save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def add_to_cache(jid: str, entry: dict[str, Any]) -> None:
    """Add one run to the cache file; a lock keeps bench processes running side by side from losing each other's runs."""
    import fcntl

    import tempfile

    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "auto-mbw-optimizer-bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = load_cache()
        entries[jid] = entry
        save_json(CACHE, {"entries": dict(sorted(entries.items()))})


def job_id(label: str, problem: str, seed: int, evals: int) -> str:
    return f"{label}|{problem}|{seed}|{evals}"


def _run_job(args: tuple[str, str, int, int]) -> tuple[str, dict[str, Any]]:
    label, problem, seed, evals = args
    return job_id(*args), run(label, problem, seed, evals)


def run_jobs(jobs: list[tuple[str, str, int, int]], processes: int, on_result: Any) -> None:
    if not jobs:
        return
    weight = {"seed": 0, "peer-gp": 1, "optuna-gp": 2}
    jobs = sorted(jobs, key=lambda j: weight.get(j[0], 3))
    context = mp.get_context("spawn")
    with context.Pool(processes, maxtasksperchild=1) as pool:
        for key, result in pool.imap_unordered(_run_job, jobs):
            on_result(key, result)
            print(f"  done {key} in {result['wall_s']:.0f} s", flush=True)


# ----- metrics -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def objective(problem: str, seed: int) -> Any:
    """The problem instance, built once per report (a bbob instance calibrates on 5000 random recipes)."""
    return PROBLEMS[problem](seed)


def gap_at(result: dict[str, Any], problem: str, seed: int, evals: int) -> dict[int, float]:
    """Gap closed by the returned recipe at each recorded evaluation count."""
    obj = objective(problem, seed)
    values = np.asarray(result["returned"], dtype=float)
    at = result.get("returned_at") or list(range(1, len(values) + 1))
    gaps = obj.gap_closed(values)
    return {int(k): float(g) for k, g in zip(at, gaps) if k <= evals}


def stop_point(observed: list[float], patience: int | None) -> int:
    """Evaluations the loop runs on these scores before its early stop (lib_mbw.search.stopping, no tolerance)."""
    from lib_mbw.search.stopping import StopSettings, StopTracker

    tracker = StopTracker(StopSettings(max_evaluations=len(observed), patience=patience))
    for score in observed:
        tracker.record(score)
        if tracker.check(0.0) is not None:
            break
    return tracker.evaluations


def early_stop(results: dict[str, dict[str, Any]], planned: list[tuple[str, int]], label: str, evals: int) -> dict[str, Any]:
    """Replay ``label``'s recorded scores with each patience: evaluations run, gap closed at the stop, loss against ``evals``.

    The gap at a stop is the returned recipe's at the last recorded point at or
    before it (facade runs record every 10 evaluations: up to 9 early).
    """
    have = [(p, s) for p, s in planned if job_id(label, p, s, evals) in results]
    table: dict[str, Any] = {}
    for patience in PATIENCES:
        stops, at_stop, losses = [], [], []
        for problem, seed in have:
            result = results[job_id(label, problem, seed, evals)]
            gaps = gap_at(result, problem, seed, evals)
            k = stop_point(result["observed"][:evals], patience)
            gap = gaps[max(at for at in gaps if at <= k)]
            stops.append(k)
            at_stop.append(gap)
            losses.append(gaps[max(gaps)] - gap)
        table[str(patience)] = {
            "evals": float(np.median(stops)),
            "gap": round(float(np.median(at_stop)), 4),
            "loss": round(float(np.median(losses)), 4),
            "worst_loss": round(float(np.max(losses)), 4),
            "runs": len(have),
        }
    return table


def step_time(result: dict[str, Any], evals: int) -> float:
    steps = result["ask_s"][:evals]
    return float(np.mean(steps[max(0, evals - 10) :]))


def paired(mine: list[float], theirs: list[float], resamples: int = 2000) -> tuple[int, tuple[float, float]]:
    """Runs where the default closed more of the gap than the peer on the same (problem, seed), and a 90 % bootstrap
    interval of the ratio of medians (runs resampled in pairs): how far a family's ratio is from a coin flip."""
    a, b = np.asarray(mine, dtype=float), np.asarray(theirs, dtype=float)
    wins = int(np.sum(a > b))
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(a), size=(resamples, len(a)))
    top, bottom = np.median(a[picks], axis=1), np.median(b[picks], axis=1)
    ratios = np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.inf)
    low, high = np.quantile(ratios, [0.05, 0.95])
    return wins, (float(low), float(high))


def summarize(
    results: dict[str, dict[str, Any]], labels: list[str], runs: dict[str, list[tuple[str, int]]], evals: int, default: str
) -> tuple[list[str], dict[str, Any]]:
    """Tables per family and the ratios of the default to the best peer."""
    checkpoints = [c for c in CHECKPOINTS if c <= evals]
    summary: dict[str, Any] = {"families": {}, "problems": {}}
    lines: list[str] = []
    worst = {c: math.inf for c in checkpoints}
    worst_step = 0.0
    grid = facade_checkpoints(evals)
    for family, planned in runs.items():
        # every strategy on the runs the default has (a median over other landscapes is no comparison)
        ran = [(p, s) for p, s in planned if job_id(default, p, s, evals) in results]
        short = len(planned) - len(ran) if ran else 0
        planned = ran or planned
        table: dict[str, Any] = {}
        for label in labels:
            have = [(p, s) for p, s in planned if job_id(label, p, s, evals) in results]
            if not have:
                continue
            gaps = [gap_at(results[job_id(label, p, s, evals)], p, s, evals) for p, s in have]
            table[label] = {
                "by_run": dict(zip(have, gaps)),
                "runs": len(have),
                "gap": {c: float(np.median([g[c] for g in gaps])) for c in checkpoints},
                "curve": [float(np.median([g[k] for g in gaps])) for k in grid],
                "step_s": float(np.median([step_time(results[job_id(label, p, s, evals)], evals) for p, s in have])),
                "per_problem": {},
            }
            for problem in sorted({p for p, _ in have}):
                mine = [g for (p, _), g in zip(have, gaps) if p == problem]
                table[label]["per_problem"][problem] = {c: float(np.median([g[c] for g in mine])) for c in checkpoints}
        if default not in table:
            continue
        # a median over other landscapes is no comparison: the best peer is chosen among the peers that ran every run the default ran
        peers = [lb for lb in table if lb in BASELINES and table[lb]["runs"] >= table[default]["runs"]]
        ratios, pairs = {}, {}
        for c in checkpoints:
            best_peer = max(peers, key=lambda lb: table[lb]["gap"][c]) if peers else None
            value = table[default]["gap"][c] / table[best_peer]["gap"][c] if best_peer and table[best_peer]["gap"][c] > 0 else math.inf
            ratios[c] = (value, best_peer)
            if best_peer:
                both = [run for run in table[best_peer]["by_run"] if run in table[default]["by_run"]]
                mine = [table[default]["by_run"][run][c] for run in both]
                theirs = [table[best_peer]["by_run"][run][c] for run in both]
                pairs[c] = (*paired(mine, theirs), len(both))
            if c != checkpoints[0]:
                worst[c] = min(worst[c], value)
        worst_step = max(worst_step, table[default]["step_s"])
        lines += ["", f"### {family} ({', '.join(sorted({p for p, _ in planned}))})", ""]
        if short:
            lines += [f"(the default has {len(planned)} of the family's {len(planned) + short} runs; every strategy is shown on those)", ""]
        head = "| strategy | runs | " + " | ".join(f"gap@{c}" for c in checkpoints) + " | step s @270 |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for label in sorted(table, key=lambda lb: -table[lb]["gap"][checkpoints[-1]]):
            name = LABELS.get(label, label.replace("facade:", ""))
            if label == default:
                name = f"**{name} (default)**"
            cells = " | ".join(f"{table[label]['gap'][c]:.3f}" for c in checkpoints)
            runs_text = f"{table[label]['runs']}" + (" (not all: not in the ratio)" if label in BASELINES and label not in peers else "")
            lines.append(f"| {name} | {runs_text} | {cells} | {table[label]['step_s']:.3f} |")
        ratio_text = ", ".join(f"@{c}: {v:.3f} (best peer {LABELS.get(p, p)})" for c, (v, p) in ratios.items())
        lines.append(f"\n{family}: default / best peer {ratio_text}; step {table[default]['step_s']:.3f} s")
        if pairs:
            lines.append("paired with that peer, run by run: " + ", ".join(
                f"@{c}: ahead in {w}/{n}, ratio 90 % interval {lo:.2f}-{hi:.2f}" for c, (w, (lo, hi), n) in pairs.items()))
        summary["families"][family] = {
            "runs": len(planned),
            "planned_runs": len(planned) + short,
            "ratios": {str(c): {"ratio": round(v, 4), "best_peer": p} for c, (v, p) in ratios.items()},
            "paired": {str(c): {"ahead": w, "runs": n, "ratio_interval_90": [round(lo, 3), round(hi, 3)]}
                       for c, (w, (lo, hi), n) in pairs.items()},
            "strategies": {
                lb: {"runs": t["runs"], "gap": {str(c): round(v, 4) for c, v in t["gap"].items()}, "step_s": round(t["step_s"], 4),
                     "per_problem": {p: {str(c): round(v, 4) for c, v in g.items()} for p, g in t["per_problem"].items()},
                     "curve": [round(v, 4) for v in t["curve"]]}
                for lb, t in table.items()
            },
        }
    lines += ["", f"Early stop of {LABELS.get(default, default.replace('facade:', ''))}: the loop's stop after P evaluations without a new "
              "best score, replayed on the recorded scores; median evaluations run, median gap at the stop (median / worst "
              f"loss against all {evals}):", ""]
    head = "| family | runs | " + " | ".join(f"P={p or 'none'}" for p in PATIENCES) + " |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    summary["early_stop"] = {}
    for family, planned in runs.items():
        if family not in summary["families"]:
            continue
        table = summary["early_stop"][family] = early_stop(results, planned, default, evals)
        cells = [f"{t['evals']:.0f}, {t['gap']:.3f} ({0.0 - t['loss']:+.3f} / {0.0 - t['worst_loss']:+.3f})" for t in table.values()]
        lines.append(f"| {family} | {table['None']['runs']} | " + " | ".join(cells) + " |")
    summary["curve_at"] = grid
    summary["worst_ratio"] = {str(c): (None if not math.isfinite(v) else round(v, 4)) for c, v in worst.items()}
    summary["step_s"] = worst_step
    return lines, summary


def plot(summary: dict[str, Any], labels: list[str], default: str, path: Path) -> None:
    """One panel per family (and one file per family); a strategy has the same colour in every panel, the default black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {label: f"C{i % 10}" for i, label in enumerate(lb for lb in labels if lb != default)}
    colours[default] = "black"
    x = summary["curve_at"]

    def draw(ax: Any, family: str) -> None:
        for label in labels:
            data = summary["families"][family]["strategies"].get(label)
            if data is not None:
                name = LABELS.get(label, label.replace("facade:", "")) + (" (default)" if label == default else "")
                ax.plot(x, data["curve"], label=name, color=colours[label], lw=2.4 if label == default else 1.1)
        ax.set_xlabel("evaluations")
        ax.grid(alpha=0.3)

    families = list(summary["families"])
    fig, axes = plt.subplots(1, len(families), figsize=(4.6 * len(families), 4.4), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, family in zip(axes, families):
        draw(ax, family)
        ax.set_title(family)
    axes[0].set_ylabel("gap closed by the returned recipe (median)")
    handles = {h.get_label(): h for ax in axes for h in ax.get_lines()}
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 8), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    _save(fig, path)
    for family in families:  # and one file per family
        one, ax = plt.subplots(figsize=(5.5, 4))
        draw(ax, family)
        ax.set_title(f"{family}: median gap closed by the returned recipe")
        ax.legend(loc="lower right", fontsize=7)
        one.tight_layout()
        _save(one, path.with_name(f"{path.stem}-{family}.png"))
    plt.close("all")


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def timing(strategy: str, evals: int) -> int:
    """Step time of ``strategy`` (``tell`` + next ``ask``, as the loop calls them) up to ``evals`` evaluations.

    Two runs on the cheap ``smooth`` objective, one thread: with the
    benchmark's noise (the default runs its CMA-ES/EI portfolio) and without
    (exact scores, as from fixed seeds: the default turns model-led, two GP
    fits per refit). Records wall and CPU seconds per step: on a shared
    machine the wall time depends on the load (reported), the CPU time is
    what a step costs on a free core. The summary per mark is the slower run.
    """
    runs = {kind: _time_steps(strategy, evals, noisy=kind == "noisy") for kind in ("noisy", "noise-free")}
    data: dict[str, Any] = {"strategy": strategy, "evals": evals}
    for field in ("wall_s", "cpu_s", "wall_s_50", "cpu_s_50"):
        data[field] = {k: max(r[field][k] for r in runs.values()) for k in runs["noisy"][field]}
    data["max_wall_s"] = max(r["max_wall_s"] for r in runs.values())
    data["load_before"] = runs["noisy"]["load_before"]
    data["load_after"] = runs["noise-free"]["load_after"]
    data["cpus"] = os.cpu_count()
    data["runs"] = runs
    print(json.dumps(data, indent=1))
    save_json(TIMING, data)
    return 0


def _time_steps(strategy: str, evals: int, noisy: bool) -> dict[str, Any]:
    from optimizer_runners import _limit_threads

    from lib_mbw.search.optimizer import InitSettings, make_optimizer
    from lib_mbw.search.space import SearchSpace

    _limit_threads()
    objective = PROBLEMS["smooth"](0)
    space = SearchSpace()
    rng = np.random.default_rng(7)
    optimizer = make_optimizer(strategy, space, seed=0, init=InitSettings(random=10))
    load_before = os.getloadavg()
    wall, cpu = [], []
    recipe = optimizer.ask(1)[0]
    print(f"{'noisy' if noisy else 'noise-free'} scores:", flush=True)
    for k in range(1, evals + 1):
        x = np.array([recipe.weights[b] for b in space.blocks])
        score = float(objective.noisy(x, rng)[0] if noisy else objective.true(x[None])[0])
        w0, c0 = time.perf_counter(), time.process_time()
        optimizer.tell(recipe, score)
        recipe = optimizer.ask(1)[0]
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
        if k % 100 == 0:
            print(f"  {k}: wall {np.mean(wall[-10:]):.3f} s, cpu {np.mean(cpu[-10:]):.3f} s per step (last 10), load {os.getloadavg()[0]:.1f}", flush=True)
    marks = [k for k in (90, 270, 500, 1000) if k <= evals]
    return {
        "noisy": noisy,
        "model_led": bool(optimizer.describe().get("model_led", False)),
        "wall_s": {str(k): round(float(np.mean(wall[k - 10 : k])), 4) for k in marks},
        "cpu_s": {str(k): round(float(np.mean(cpu[k - 10 : k])), 4) for k in marks},
        "wall_s_50": {str(k): round(float(np.mean(wall[max(0, k - 50) : k])), 4) for k in marks},
        "cpu_s_50": {str(k): round(float(np.mean(cpu[max(0, k - 50) : k])), 4) for k in marks},
        "max_wall_s": round(float(np.max(wall)), 3),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    from lib_mbw.search.optimizer import DEFAULT_STRATEGY

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seed 0 of 5 problems (one of them real), cached baselines only")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="tune on other seeds than the reported 0..4")
    parser.add_argument("--evals", type=int, default=270)
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes")
    parser.add_argument("--families", "--family", default=",".join(FAMILIES), help="families to run, comma separated")
    parser.add_argument("--problems", default="", help="only these problems (comma separated)")
    parser.add_argument("--baselines", default=",".join(BASELINES), help="which baselines to compare")
    parser.add_argument("--default", default=DEFAULT_STRATEGY, help="facade strategy measured as the default")
    parser.add_argument("--extra", default="", help="more facade strategies to compare, comma separated")
    parser.add_argument("--no-write", action="store_true", help="write neither the cache nor the results")
    parser.add_argument("--only-baselines", action="store_true", help="fill the cache with baseline runs and stop")
    parser.add_argument("--cached-baselines", action="store_true", help="run no baseline; use the runs the cache has")
    parser.add_argument("--report-only", action="store_true", help="run nothing: report the runs the cache has")
    parser.add_argument("--timing", type=int, default=0, help="measure the default's step time up to this evaluation and stop")
    args = parser.parse_args(argv)
    if args.timing:
        return timing(args.default, args.timing)

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    families = [f for f in args.families.split(",") if f]
    wanted = set(args.problems.split(",")) - {""}
    if args.quick:
        seeds, wanted, args.cached_baselines = [0], set(QUICK_PROBLEMS), True
    runs = {f: [(p, s) for p, s in family_runs(f, seeds) if not wanted or p in wanted] for f in families}
    runs = {f: r for f, r in runs.items() if r}
    default = f"facade:{args.default}"
    baselines = [b for b in args.baselines.split(",") if b]
    labels = baselines + [f"facade:{s}" for s in args.extra.split(",") if s] + [default]
    if args.only_baselines:
        labels = baselines
    evals = args.evals

    cache = load_cache()
    results: dict[str, dict[str, Any]] = {}
    jobs = []
    keys: dict[tuple[str, str], str] = {}
    for family, planned in runs.items():
        for label in labels:
            if family not in ONLY_ON.get(label, (family,)):
                continue
            for problem, seed in planned:
                jid = job_id(label, problem, seed, evals)
                if (label, problem) not in keys:  # a key hashes several files: once per (label, problem), not per seed
                    keys[(label, problem)] = run_key(label, problem)
                key = keys[(label, problem)]
                entry = cache.get(jid)
                if entry and entry.get("key") == key:
                    results[jid] = entry["result"]
                elif label in BASELINES and (args.cached_baselines or label == "seed"):
                    continue
                else:
                    jobs.append((label, problem, seed, evals))
    print(f"optimizer bench: {sum(map(len, runs.values()))} (problem, seed) runs in {len(runs)} families x {evals} evaluations, "
          f"{len(jobs)} runs to do ({sum(j[0] in BASELINES for j in jobs)} baselines), {args.jobs} processes, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)

    def on_result(jid: str, result: dict[str, Any]) -> None:
        results[jid] = result
        label, problem = jid.split("|")[:2]
        if not args.no_write:
            add_to_cache(jid, {"key": keys[(label, problem)], "result": result})

    start = time.perf_counter()
    if args.report_only:
        jobs = []
    run_jobs(jobs, args.jobs, on_result)
    if args.only_baselines:
        print(f"baselines cached in {time.perf_counter() - start:.0f} s")
        return 0
    lines, summary = summarize(results, labels, runs, evals, default)
    print(f"ran in {time.perf_counter() - start:.0f} s; machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print("\n".join(lines))
    if not args.no_write and not args.quick and args.first_seed == 0:
        save_json(LATEST, {"default": args.default, "seeds": seeds, "evals": evals, "summary": summary})
        plot(summary, labels, default, PLOT)
        print(f"wrote {LATEST.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")
    extra = ""
    if TIMING.is_file():  # the --timing run: CPU seconds per step (what a free core takes) at 270 and 1000
        timed = json.loads(TIMING.read_text())
        cpu = timed.get("cpu_s_50", {})
        print(f"step time of {timed['strategy']} (--timing, tell + ask, mean of the 50 steps before; the slower of noisy and noise-free scores): "
              + ", ".join(f"@{k}: wall {timed['wall_s_50'][k]:.3f} s, CPU {v:.3f} s" for k, v in cpu.items())
              + f"; load {timed['load_before'][0]:.1f} -> {timed['load_after'][0]:.1f} on {timed['cpus']} CPUs")
        extra = "".join(f" step_cpu_s_{k}={cpu[k]:.3f}" for k in ("270", "1000") if k in cpu)
    w = summary["worst_ratio"]
    print(
        "optimizer "
        + " ".join(f"worst_ratio_{c}={'inf' if w[str(c)] is None else format(w[str(c)], '.3f')}" for c in CHECKPOINTS[1:] if str(c) in w)
        + f" step_s={summary['step_s']:.3f}{extra} load={os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
