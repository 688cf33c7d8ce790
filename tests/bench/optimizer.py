"""Optimizer benchmark: the default strategy against the seed's optimizer, random search and the peer's.

    python tests/bench/optimizer.py            # 3 objectives x 5 seeds x 270 evaluations
    python tests/bench/optimizer.py --quick    # 1 seed, 2 objectives (a few minutes with cached baselines)

Three synthetic noisy objectives over 27 blocks x 21 levels (optimizer_objectives.py)
with known optima. Quality = fraction of the gap closed between a random recipe
(0) and the optimum (1), measured with the TRUE value of the recipe each
strategy would return (optimizer_runners.py). Reports per strategy and objective
the median gap closed at 30/90/270 evaluations, evaluations needed to reach the
seed's and the best peer's 270-evaluation value, suggestion seconds at step 270,
and what early stopping (patience 27/54/81/none) saves and loses on the recorded
traces.

Baselines (seed, random, peer-gp, peer-tpe) are slow (the seed's GFO optimizer and
the peer's GP take seconds per step) and use fixed seeds: they are cached in
tests/bench/results/optimizer_baselines.json under a hash of the objective and
runner code (docstrings and comments excluded) and the package versions; a change
recomputes them. Baselines run straight on their libraries, not through auto-MBW.
Runs go in parallel processes (--jobs, default 2), one thread each.
--cached-baselines runs no baseline and uses the seeds each one has cached
(the tables give the number of seeds per row).

Last line:
optimizer evals_ratio=<default/seed, worst objective> peer_ratio=<default/best peer, worst objective> step_s=<x>
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from optimizer_objectives import OBJECTIVES  # noqa: E402
from optimizer_runners import INIT_POINTS, run  # noqa: E402

RESULTS = HERE / "results"
CACHE = RESULTS / "optimizer_baselines.json"
LATEST = RESULTS / "optimizer_latest.json"
PLOT = ROOT / "docs" / "img" / "optimizer-convergence.png"
BASELINES = ("seed", "random", "peer-gp", "peer-tpe")
PEERS = ("peer-gp", "peer-tpe")
LABELS = {
    "seed": "seed: GFO BayesianOptimizer",
    "random": "random search",
    "peer-gp": "peer: bayes_opt GP",
    "peer-tpe": "peer: optuna TPE",
}
PATIENCES = (27, 54, 81, None)
CHECKPOINTS = (30, 90, 270)


def _code_hash(path: Path) -> str:
    """Hash of a Python file's code without its docstrings and comments (so doc edits keep the cache)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def baseline_key(label: str) -> str:
    """Hash of everything the cached runs of ``label`` depend on (bench code, package versions)."""
    digest = hashlib.sha256()
    for path in (HERE / "optimizer_objectives.py", HERE / "optimizer_runners.py"):
        digest.update(_code_hash(path).encode())
    for package in ("numpy", "scipy", "scikit-learn", "gradient-free-optimizers", "optuna", "bayesian-optimization"):
        digest.update(f"{package}={metadata.version(package)};".encode())
    digest.update(platform.python_version().encode())
    return digest.hexdigest()[:16]


def load_cache() -> dict[str, Any]:
    """Cached baseline runs: job id -> {"key": ..., "result": ...}; stale entries are skipped by the caller."""
    if CACHE.is_file():
        return json.loads(CACHE.read_text()).get("entries", {})
    return {}


def save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def job_id(label: str, objective: str, seed: int, evals: int) -> str:
    return f"{label}|{objective}|{seed}|{evals}"


def _run_job(args: tuple[str, str, int, int]) -> tuple[str, dict[str, Any]]:
    label, objective, seed, evals = args
    return job_id(*args), run(label, objective, seed, evals)


def run_jobs(jobs: list[tuple[str, str, int, int]], processes: int, on_result: Any) -> None:
    if not jobs:
        return
    # slow jobs first, so the pool does not end waiting on one long run
    weight = {"seed": 0, "peer-gp": 1}
    jobs = sorted(jobs, key=lambda j: weight.get(j[0], 2))
    context = mp.get_context("spawn")
    with context.Pool(processes, maxtasksperchild=1) as pool:
        for key, result in pool.imap_unordered(_run_job, jobs):
            on_result(key, result)
            print(f"  done {key} in {result['wall_s']:.0f} s", flush=True)


# ----- metrics -------------------------------------------------------------------------------------
def gap_curves(runs: list[dict[str, Any]], objective: str, seeds: list[int], field: str = "returned") -> np.ndarray:
    """Gap closed per run (rows) and evaluation (columns)."""
    rows = []
    for run_data, seed in zip(runs, seeds):
        obj = OBJECTIVES[objective](seed)
        rows.append(obj.gap_closed(np.array(run_data[field])))
    return np.array(rows)


def reach(curve: np.ndarray, target: float) -> int | None:
    """First evaluation count from which ``curve`` stays at or above ``target`` until the end."""
    below = np.nonzero(curve < target - 1e-12)[0]
    if len(below) == 0:
        return 1
    k = int(below[-1]) + 2
    return k if k <= len(curve) else None


def stop_point(observed: list[float], patience: int | None) -> int:
    """Evaluations a search runs when it stops after ``patience`` evaluations without a new best score."""
    if patience is None:
        return len(observed)
    best, last = -math.inf, 0
    for k, score in enumerate(observed, start=1):
        if score > best:
            best, last = score, k
        elif k - last >= patience and k > INIT_POINTS:
            return k
    return len(observed)


def fmt_ratio(value: float) -> str:
    return "inf" if not math.isfinite(value) else f"{value:.3f}"


def summarize(
    results: dict[str, dict[str, Any]], labels: list[str], objectives: list[str], seeds: list[int], evals: int, default: str
) -> tuple[list[str], dict[str, Any]]:
    lines: list[str] = []
    summary: dict[str, Any] = {"objectives": {}}
    curves: dict[tuple[str, str], np.ndarray] = {}
    have: dict[tuple[str, str], list[int]] = {}  # seeds with a run (all, unless --cached-baselines left some out)
    for objective in objectives:
        for label in labels:
            have[(label, objective)] = [s for s in seeds if job_id(label, objective, s, evals) in results]
            runs = [results[job_id(label, objective, s, evals)] for s in have[(label, objective)]]
            curves[(label, objective)] = gap_curves(runs, objective, have[(label, objective)])
    checkpoints = [c for c in CHECKPOINTS if c <= evals]
    header = "| strategy | objective | seeds | " + " | ".join(f"gap@{c}" for c in checkpoints)
    header += " | evals to seed@270 | evals to best peer@270 | best-observed gap@270 | suggest s @270 |"
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    worst_seed, worst_peer, worst_step = 0.0, 0.0, 0.0
    for objective in objectives:
        median = {label: np.median(curves[(label, objective)], axis=0) for label in labels}
        seed_target = float(median["seed"][-1])
        peer_target = max(float(median[p][-1]) for p in PEERS)
        per_objective: dict[str, Any] = {"seed_target": seed_target, "peer_target": peer_target, "strategies": {}}
        for label in labels:
            runs = [results[job_id(label, objective, s, evals)] for s in have[(label, objective)]]
            best_obs = np.median(gap_curves(runs, objective, have[(label, objective)], "best_observed"), axis=0)
            k_seed, k_peer = reach(median[label], seed_target), reach(median[label], peer_target)
            step = float(np.median([np.mean(r["ask_s"][max(0, evals - 10) :]) for r in runs]))
            cells = [f"{median[label][c - 1]:.3f}" for c in checkpoints]
            row = f"| {LABELS.get(label, label)} | {objective} | {len(runs)} | " + " | ".join(cells)
            row += f" | {k_seed or '>' + str(evals)} | {k_peer or '>' + str(evals)} | {best_obs[-1]:.3f} | {step:.3f} |"
            lines.append(row)
            per_objective["strategies"][label] = {
                "gap": {str(c): round(float(median[label][c - 1]), 4) for c in checkpoints},
                "evals_to_seed": k_seed,
                "evals_to_peer": k_peer,
                "best_observed_gap": round(float(best_obs[-1]), 4),
                "seeds": len(runs),
                "step_s": round(step, 4),
            }
            if label == default:
                worst_seed = max(worst_seed, (k_seed or math.inf) / evals)
                worst_peer = max(worst_peer, (k_peer or math.inf) / evals)
                worst_step = max(worst_step, step)
        summary["objectives"][objective] = per_objective

    lines += ["", "Early stop (stop after P evaluations without a new best score), median over seeds:", ""]
    head = "| strategy | objective | " + " | ".join(f"P={p or 'none'}: evals, gap" for p in PATIENCES) + " |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    early: dict[str, Any] = {}
    for label in labels:
        for objective in objectives:
            runs = [results[job_id(label, objective, s, evals)] for s in have[(label, objective)]]
            gaps = gap_curves(runs, objective, have[(label, objective)])
            cells = []
            for patience in PATIENCES:
                stops = [stop_point(r["observed"], patience) for r in runs]
                at_stop = [g[k - 1] for g, k in zip(gaps, stops)]
                cells.append(f"{int(np.median(stops))}, {np.median(at_stop):.3f}")
                early.setdefault(label, {}).setdefault(objective, {})[str(patience)] = {
                    "evals": float(np.median(stops)),
                    "gap": round(float(np.median(at_stop)), 4),
                    "loss": round(float(np.median(gaps[:, -1] - np.array(at_stop))), 4),
                }
            lines.append(f"| {LABELS.get(label, label)} | {objective} | " + " | ".join(cells) + " |")
    summary["early_stop"] = early
    summary["evals_ratio"] = worst_seed
    summary["peer_ratio"] = worst_peer
    summary["step_s"] = worst_step
    summary["curves"] = {f"{label}|{objective}": curves[(label, objective)].tolist() for label, objective in curves}
    return lines, summary


def plot(summary: dict[str, Any], labels: list[str], objectives: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(objectives), figsize=(5 * len(objectives), 4), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, objective in zip(axes, objectives):
        for label in labels:
            data = np.array(summary["curves"][f"{label}|{objective}"])
            x = np.arange(1, data.shape[1] + 1)
            med = np.median(data, axis=0)
            ax.plot(x, med, label=LABELS.get(label, label), lw=2 if label not in BASELINES else 1.2)
            ax.fill_between(x, np.quantile(data, 0.25, axis=0), np.quantile(data, 0.75, axis=0), alpha=0.15)
        ax.set_title(objective)
        ax.set_xlabel("evaluations")
        ax.set_ylim(-0.2, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gap closed (true value of the returned recipe)")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    from lib_mbw.search.optimizer import DEFAULT_STRATEGY

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, two objectives")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--evals", type=int, default=270)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--default", default=DEFAULT_STRATEGY, help="facade strategy measured as the default")
    parser.add_argument("--extra", default="", help="more facade strategies to compare, comma separated")
    parser.add_argument("--no-write", action="store_true", help="do not write results and the plot")
    parser.add_argument("--only-baselines", action="store_true", help="fill the baseline cache and stop")
    parser.add_argument(
        "--cached-baselines",
        action="store_true",
        help="run no baseline: each baseline uses the seeds it has in the cache (the tables say how many)",
    )
    args = parser.parse_args(argv)

    objectives = args.objectives.split(",")
    seeds = list(range(args.seeds))
    if args.quick:
        seeds, objectives = [0], ["smooth", "near_uniform"]
    default = f"facade:{args.default}"
    labels = list(BASELINES) + [f"facade:{s}" for s in args.extra.split(",") if s] + [default]
    if args.only_baselines:
        labels = list(BASELINES)
    evals = args.evals

    keys = {label: baseline_key(label) for label in BASELINES}
    cache = load_cache()
    results: dict[str, dict[str, Any]] = {}
    jobs = []
    for label in labels:
        for objective in objectives:
            for seed in seeds:
                jid = job_id(label, objective, seed, evals)
                entry = cache.get(jid)
                if label in BASELINES and entry and entry.get("key") == keys[label]:
                    results[jid] = entry["result"]
                elif label in BASELINES and args.cached_baselines:
                    continue
                else:
                    jobs.append((label, objective, seed, evals))
    print(f"optimizer bench: {len(objectives)} objectives x {len(seeds)} seeds x {evals} evaluations, "
          f"{len(jobs)} runs to do ({sum(j[0] in BASELINES for j in jobs)} baselines), {args.jobs} processes", flush=True)

    def on_result(jid: str, result: dict[str, Any]) -> None:
        results[jid] = result
        label = jid.split("|")[0]
        if label in BASELINES and not args.no_write:
            cache[jid] = {"key": keys[label], "result": result}
            save_json(CACHE, {"entries": dict(sorted(cache.items()))})

    start = time.perf_counter()
    run_jobs(jobs, args.jobs, on_result)
    if args.only_baselines:
        print(f"baselines cached in {time.perf_counter() - start:.0f} s")
        return 0
    lines, summary = summarize(results, labels, objectives, seeds, evals, default)
    print(f"ran in {time.perf_counter() - start:.0f} s; machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print("\n".join(lines))
    if not args.no_write and not args.quick:
        save_json(LATEST, {"default": args.default, "seeds": seeds, "evals": evals, "summary": summary})
        plot(summary, labels, objectives, PLOT)
        print(f"wrote {LATEST.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")
    print(
        f"optimizer evals_ratio={fmt_ratio(summary['evals_ratio'])} "
        f"peer_ratio={fmt_ratio(summary['peer_ratio'])} step_s={summary['step_s']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
