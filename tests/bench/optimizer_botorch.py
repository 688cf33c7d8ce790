"""BoTorch beside the optimizer benchmark's strategies, at 90 evaluations (its GP is refitted every step: seconds a step).

    python tests/bench/optimizer_botorch.py                          # multimodal family, seeds 0-4, 90 evaluations
    python tests/bench/optimizer_botorch.py --families bbob-multimodal --seeds 1 --jobs 2

Runs ``optimizer_runners.run_botorch`` (install: tests/bench/requirements-botorch.txt)
into the optimizer benchmark's cache (label ``botorch``, its own evaluation
count) and compares, on the runs BoTorch has, the gap closed by the returned
recipe at 30 and 90 evaluations with the default's and the peers' cached
270-evaluation runs (none of them knows its budget, so their first 90
evaluations are a 90-evaluation search). Last line:
``optimizer_botorch ratio_90=<default / BoTorch, worst family> runs=<n>``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import numpy as np

import optimizer as bench
from optimizer_families import FAMILIES, family_runs

LABEL = "botorch"
FULL = 270


def compare(family: str, runs: list[tuple[str, int]], results: dict[str, dict[str, Any]], evals: int, default: str) -> tuple[list[str], float]:
    """Median gap at 30 and ``evals`` of BoTorch and of every strategy that has all of BoTorch's runs; default / BoTorch."""
    have = [(p, s) for p, s in runs if bench.job_id(LABEL, p, s, evals) in results]
    checkpoints = [c for c in (30, 90) if c <= evals]
    rows: list[tuple[str, dict[int, float]]] = []
    for label in [LABEL, default, *bench.BASELINES]:
        jobs = [bench.job_id(label, p, s, evals if label == LABEL else FULL) for p, s in have]
        if not have or not all(j in results for j in jobs):
            continue
        gaps = [bench.gap_at(results[j], p, s, FULL) for j, (p, s) in zip(jobs, have)]
        rows.append((label, {c: float(np.median([g[c] for g in gaps])) for c in checkpoints}))
    if not rows or rows[0][0] != LABEL:
        return [], math.nan
    lines = ["", f"### {family}: {len(have)} runs", "", "| strategy | " + " | ".join(f"gap@{c}" for c in checkpoints) + " |",
             "|---|" + "---|" * len(checkpoints)]
    for label, gap in sorted(rows, key=lambda r: -r[1][checkpoints[-1]]):
        name = "BoTorch (SingleTaskGP + qLogNEI)" if label == LABEL else bench.LABELS.get(label, label.replace("facade:", ""))
        lines.append(f"| {'**' + name + ' (default)**' if label == default else name} | " + " | ".join(f"{gap[c]:.3f}" for c in checkpoints) + " |")
    gaps = dict(rows)
    ratio = gaps[default][evals] / gaps[LABEL][evals] if default in gaps and gaps[LABEL][evals] > 0 else math.nan
    lines.append(f"\n{family}: default / BoTorch @{evals}: {ratio:.3f}")
    return lines, ratio


def main(argv: list[str] | None = None) -> int:
    from lib_mbw.search.optimizer import DEFAULT_STRATEGY

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="multimodal")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--evals", type=int, default=90)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    default = f"facade:{DEFAULT_STRATEGY}"
    cache = bench.load_cache()
    results = {jid: entry["result"] for jid, entry in cache.items()}
    families = {f: family_runs(f, list(range(args.seeds))) for f in args.families.split(",") if f in FAMILIES}
    keys: dict[str, str] = {}
    jobs = []
    for runs in families.values():
        for problem, seed in runs:
            if problem not in keys:  # once per problem, not per seed
                keys[problem] = bench.run_key(LABEL, problem)
            key = keys[problem]
            jid = bench.job_id(LABEL, problem, seed, args.evals)
            if cache.get(jid, {}).get("key") != key:
                results.pop(jid, None)
                jobs.append((LABEL, problem, seed, args.evals))
    print(f"optimizer_botorch: {len(jobs)} runs to do, {args.jobs} processes", flush=True)

    def on_result(jid: str, result: dict[str, Any]) -> None:
        results[jid] = result
        bench.add_to_cache(jid, {"key": keys[jid.split("|")[1]], "result": result})

    if not args.report_only:
        bench.run_jobs(jobs, args.jobs, on_result)
    worst, total = math.inf, 0
    for family, runs in families.items():
        lines, ratio = compare(family, runs, results, args.evals, default)
        print("\n".join(lines))
        if not math.isnan(ratio):
            worst = min(worst, ratio)
            total += sum(bench.job_id(LABEL, p, s, args.evals) in results for p, s in runs)
    print(f"optimizer_botorch ratio_{args.evals}={worst:.3f} runs={total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
