"""Time per evaluation of the three pipelines at real sizes on a GPU: random-weight SD1.5 and SDXL.

The companion of ``time_to_quality.py`` for a GPU machine. It builds model A
and model B offline with the real SD1.5 / SDXL shapes and random weights
(``lib_mbw.synthetic.write_checkpoint`` with ``lib_mbw.keyspec.REAL_CONFIGS``,
fp16 files; nothing is downloaded), loads them through the packaged diffusers
configs, and runs the same three pipelines as the CPU benchmark — ours
(``start_search``, runtime merger on the GPU, batched rendering), the seed's
(fp32 CPU per-key merge, HTTP + PNG, one image per pipeline call, GFO) and the
peer's (full checkpoint merged on the CPU, written and reloaded, HTTP + PNG,
bayes_opt) — for a few evaluations of 8 payloads x 1 image x 20 steps
(512x512 for SD1.5, 1024x1024 for SDXL), scoring by SSIM against the hidden
recipe's renders. It prints the per-evaluation time split (merge,
generation, scoring, optimizer, I/O) of each pipeline.

Random weights render images that say nothing about a merge's quality, so
this script measures time per evaluation, not time to quality: the
evaluations each pipeline needs come from the CPU benchmark. The optimizers'
step times here are those of their first evaluations (random initial
points); late in a 270-evaluation search the seed's GFO step takes seconds
(docs/benchmarks.md, "Optimizer").

``--tiny`` runs the same code with tiny models of the same layouts on the CPU
(tests/test_time_to_quality.py does, so the script is known to work before a
GPU is lent).

Usage::

    python tests/bench/time_to_quality_gpu.py --family sd1 --evaluations 4      # about 4 minutes on an H100
    python tests/bench/time_to_quality_gpu.py --family sdxl --evaluations 3
    python tests/bench/time_to_quality_gpu.py --tiny --family sd1 sdxl --evaluations 2 --device cpu

Last line per family: ``time_to_quality_gpu family=<f> ours_s=<s per evaluation> seed_s=<s> peer_s=<s>
seed_per_eval_ratio=<ours/seed> peer_per_eval_ratio=<ours/peer> overhead=<ours' time beyond generation>``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from time_to_quality import PIPELINES, SPLIT, Setup, Trace, hidden_recipe, make_payloads, overhead, run_baseline, run_ours  # noqa: E402

#: Image size and steps of an evaluation at real sizes (8 payloads x 1 image, 20 steps).
REAL_SIZES = {"sd1": 512, "sdxl": 1024}
PAYLOADS, STEPS = 8, 20
TINY_SIZE, TINY_STEPS = 64, 2


def build_models(family: str, folder: Path, tiny: bool) -> tuple[Path, Path, Path | None]:
    """Models A and B (random weights, seeds 1 and 2) and the config folder (None: the packaged one)."""
    from lib_mbw.generators.diffusers_files import write_config_folder
    from lib_mbw.keyspec import REAL_CONFIGS, tiny_config
    from lib_mbw.synthetic import write_checkpoint

    config = tiny_config(family) if tiny else REAL_CONFIGS[family]
    dtype = torch.float32 if tiny else torch.float16
    folder.mkdir(parents=True, exist_ok=True)
    a = write_checkpoint(folder / f"{family}-a.safetensors", config, seed=1, dtype=dtype)
    b = write_checkpoint(folder / f"{family}-b.safetensors", config, seed=2, dtype=dtype)
    config_dir = write_config_folder(config, family, folder / "config") if tiny else None
    return a, b, config_dir


def family_setup(family: str, folder: Path, tiny: bool, device: str, payloads: int) -> Setup:
    a, b, config_dir = build_models(family, folder / "models", tiny)
    size, steps = (TINY_SIZE, TINY_STEPS) if tiny else (REAL_SIZES[family], STEPS)
    return Setup(a, b, config_dir, family, make_payloads(payloads, steps, size), device=device, work=folder)


def mean_split(trace: Trace) -> dict[str, float]:
    return {k: sum(s[k] for s in trace.split) / len(trace.split) for k in SPLIT}


def run_family(setup: Setup, evals: int, say: Any = print) -> dict[str, Any]:
    """Every pipeline for ``evals`` evaluations on one hidden recipe; the mean split per evaluation of each."""
    hidden = hidden_recipe(setup.blocks, 0)
    splits: dict[str, dict[str, float]] = {}
    traces: dict[str, Trace] = {}
    for name in PIPELINES:
        started = time.perf_counter()
        trace = run_ours(setup, hidden, evals, 0) if name == "ours" else run_baseline(name, setup, hidden, evals, 0)
        traces[name] = trace
        splits[name] = mean_split(trace)
        say(f"  {name}: {len(trace.scores)} evaluations, {sum(splits[name].values()):.3f} s each "
            f"({time.perf_counter() - started:.1f} s with set-up)")
    per_eval = {name: sum(split.values()) for name, split in splits.items()}
    return {"splits": splits, "per_eval": per_eval, "overhead": overhead([traces["ours"]])}


def print_family(family: str, setup: Setup, result: dict[str, Any], device: str) -> None:
    payload = setup.payloads[0]
    print(f"\n{family}: {len(setup.payloads)} payloads x 1 image, {payload.width}x{payload.height}, {payload.steps} steps, "
          f"{payload.sampler}, on {device}; mean seconds per evaluation")
    print("| pipeline | " + " | ".join(SPLIT) + " | total |")
    print("|---|" + "---|" * (len(SPLIT) + 1))
    for name in PIPELINES:
        split = result["splits"][name]
        print(f"| {name} | " + " | ".join(f"{split[k]:.3f}" for k in SPLIT) + f" | {result['per_eval'][name]:.3f} |")
    per_eval = result["per_eval"]
    print(f"time_to_quality_gpu family={family} ours_s={per_eval['ours']:.3f} seed_s={per_eval['seed']:.3f} "
          f"peer_s={per_eval['peer']:.3f} seed_per_eval_ratio={per_eval['ours'] / per_eval['seed']:.3f} "
          f"peer_per_eval_ratio={per_eval['ours'] / per_eval['peer']:.3f} overhead={result['overhead']:.3f}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", nargs="+", default=["sd1", "sdxl"], choices=["sd1", "sdxl"])
    parser.add_argument("--evaluations", type=int, default=4, help="evaluations per pipeline")
    parser.add_argument("--payloads", type=int, default=PAYLOADS, help="payloads of one image per evaluation")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cuda, cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models of the same layouts (CPU test)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the models and runs (default: a temporary folder)")
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1 if args.tiny else torch.get_num_threads())
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""), flush=True)
    with tempfile.TemporaryDirectory(prefix="ttq-gpu-", dir=args.work) as tmp:
        for family in args.family:
            started = time.perf_counter()
            setup = family_setup(family, Path(tmp) / family, args.tiny, device, args.payloads)
            print(f"{family}: models built in {time.perf_counter() - started:.1f} s", flush=True)
            result = run_family(setup, args.evaluations, say=lambda text: print(text, flush=True))
            print_family(family, setup, result, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
