"""The N-model family on the real pipeline: ``demo --n-models N`` for several N and seeds.

    python tests/bench/mix_demo.py                       # N = 3, 4, 5; seed 0; default evaluations 150 x (N-1)
    python tests/bench/mix_demo.py --n 3 --seeds 0 1 2 --evaluations-per-step 100

Each run is the N-model demo (tiny demo models, a hidden N-model grid recipe,
reference images, the default strategy over ``MixSearchSpace``, the runtime
mix, the diffusers generator): the same evaluations per dimension as the
two-model demo (150 for 27 dimensions). Prints gap closed, evaluations and
seconds per run and the median per N. Last line:
mix_demo n3=<median gap> n4=<...> n5=<...>
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from lib_mbw.demo import DemoSettings
from lib_mbw.demo_n import run_mix_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--evaluations-per-step", type=int, default=150)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    root = args.output or Path(tempfile.mkdtemp(prefix="mix-demo-bench-"))
    medians = {}
    for n in args.n:
        gaps = []
        for seed in args.seeds:
            settings = DemoSettings(seed=seed, output=root / f"n{n}-seed{seed}", quiet=True, merge=False)
            report = run_mix_demo(settings, n, args.evaluations_per_step * (n - 1))
            gaps.append(report.gap_closed)
            print(f"N={n} seed={seed}: gap_closed={report.gap_closed:.3f} evaluations={report.evaluations} "
                  f"returned={report.returned_score:.4f} hidden={report.hidden_score:.4f} random={report.random_mean:.4f} "
                  f"seconds={report.seconds:.0f}", flush=True)
        medians[n] = statistics.median(gaps)
    print("mix_demo " + " ".join(f"n{n}={g:.3f}" for n, g in medians.items()))


if __name__ == "__main__":
    main()
