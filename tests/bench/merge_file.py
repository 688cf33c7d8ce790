"""Benchmark: offline merge of two SD1.5-sized checkpoints, our streaming engine vs a naive load-all merge.

Writes two random fp16 checkpoints with SD1.5's exact keys and shapes
(``lib_mbw.keyspec.SD1``: 859.5M-parameter UNet, CLIP text encoder, VAE;
about 2.1 GB each) into ``--workdir`` (reused when present), then merges them
with one block-weighted recipe twice, each in its own subprocess so that
peak RSS is that merge's alone:

* ours: ``lib_mbw.merge.merge_to_file`` (hashes the sources, streams tensors,
  writes metadata and hashes the output as it writes);
* naive: ``safetensors.torch.load_file`` both models, merge every tensor
  (the same fp32 lerp per block), ``save_file``.

Peak RSS is each child's ``ru_maxrss`` (which counts mapped file pages too),
reported by the child itself; CPU seconds are the child's user + system time
(all threads), which a busy machine inflates less than wall time. Both outputs must hold identical tensors. The
last line is ``merge_file peak_rss_ratio=<ours peak RSS / one input's size>
time_ratio=<ours seconds / naive seconds>``.

    python tests/bench/merge_file.py --workdir /tmp/auto-mbw-bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RECIPE_SEED = 7


def bench_recipe():
    import random

    from lib_mbw.blocks import BLOCKS
    from lib_mbw.recipe import Recipe

    rng = random.Random(RECIPE_SEED)
    return Recipe({b: round(rng.random(), 3) for b in BLOCKS}, source="bench recipe")


def write_random_checkpoint(path: Path, seed: int) -> None:
    """An SD1.5-shaped fp16 checkpoint written tensor by tensor (little memory)."""
    import torch

    from lib_mbw.keyspec import SD1, checkpoint_layout
    from lib_mbw.merge.writer import SafetensorsWriter, TensorEntry
    from lib_mbw.synthetic import random_tensor

    layout = checkpoint_layout(SD1)

    def dtype_of(key: str):
        return torch.int64 if key.endswith("position_ids") else torch.float16

    entries = [TensorEntry(k, dtype_of(k), tuple(s)) for k, s in layout.items()]
    with SafetensorsWriter(path, entries, {"format": "pt"}, overwrite=True) as writer:
        for name in writer.order:
            writer.write(name, random_tensor(name, tuple(layout[name]), seed, dtype_of(name)))
        writer.commit()


def ensure_inputs(workdir: Path) -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, seed in (("sd15-a.safetensors", 1), ("sd15-b.safetensors", 2)):
        path = workdir / name
        if not path.exists():
            print(f"writing {path} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            write_random_checkpoint(path, seed)
            print(f"  {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        paths.append(path)
    return paths[0], paths[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_now_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_ours(a: Path, b: Path, out: Path) -> dict:
    import torch

    from lib_mbw.merge import merge_to_file

    recipe = bench_recipe()
    baseline = rss_now_mib()
    cpu, started = cpu_seconds(), time.perf_counter()
    report = merge_to_file(a, b, recipe, out, dtype=torch.float16, overwrite=True)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu,
        "hash_seconds": report.hash_seconds,
        "baseline_rss_mib": baseline,
    }


def child_naive(a: Path, b: Path, out: Path) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    from lib_mbw.blocks import detect_architecture, group_of_key

    recipe = bench_recipe()
    baseline = rss_now_mib()
    cpu, started = cpu_seconds(), time.perf_counter()
    theta_a = load_file(str(a))
    theta_b = load_file(str(b))
    arch = detect_architecture({k: tuple(v.shape) for k, v in theta_a.items()})
    merged = {}
    for key, ta in theta_a.items():
        group = group_of_key(key, arch)
        if group in recipe.weights and ta.is_floating_point():
            merged[key] = torch.lerp(ta.float(), theta_b[key].float(), recipe.weights[group]).to(torch.float16)
        else:
            merged[key] = ta.to(torch.float16) if ta.is_floating_point() else ta
    del theta_a, theta_b
    save_file(merged, str(out), metadata={"format": "pt"})
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu,
        "hash_seconds": 0.0,
        "baseline_rss_mib": baseline,
    }


def run_child(kind: str, a: Path, b: Path, out: Path) -> dict:
    if out.exists():
        out.unlink()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(a), str(b), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} merge failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def outputs_equal(x: Path, y: Path) -> tuple[bool, int]:
    import torch

    from lib_mbw.checkpoint import open_checkpoint

    differing = 0
    with open_checkpoint(x) as cx, open_checkpoint(y) as cy:
        if set(cx.keys) != set(cy.keys):
            return False, -1
        for key in cx.keys:
            if not torch.equal(cx.get(key), cy.get(key)):
                differing += 1
    return differing == 0, differing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/auto-mbw-bench"), help="where inputs/outputs live")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "A", "B", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--keep-outputs", action="store_true", help="keep the two merged files")
    args = parser.parse_args()
    if args.child:
        kind, a, b, out = args.child
        result = (child_ours if kind == "ours" else child_naive)(Path(a), Path(b), Path(out))
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    a, b = ensure_inputs(args.workdir)
    model_mib = a.stat().st_size / 2**20
    out_ours, out_naive = args.workdir / "merged-ours.safetensors", args.workdir / "merged-naive.safetensors"
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = {}
    for kind, out in (("ours", out_ours), ("naive", out_naive)):
        print(f"running {kind} merge ...", file=sys.stderr, flush=True)
        results[kind] = run_child(kind, a, b, out)
    equal, differing = outputs_equal(out_ours, out_naive)
    if not args.keep_outputs:
        out_ours.unlink()
        out_naive.unlink()

    ours, naive = results["ours"], results["naive"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"offline merge of two SD1.5-sized fp16 checkpoints ({model_mib:.0f} MiB each), "
        f"cpu_count={os.cpu_count()}, load average before the runs {load_before:.1f}, after {load:.1f}"
    )
    print(
        f"{'engine':<8}{'wall s':>8}{'CPU s':>8}{'hashing s':>11}{'peak RSS MiB':>14}"
        f"{'RSS after imports':>19}{'peak/model':>12}"
    )
    for kind, r in (("ours", ours), ("naive", naive)):
        print(
            f"{kind:<8}{r['seconds']:>8.1f}{r['cpu_seconds']:>8.1f}{r['hash_seconds']:>11.1f}{r['peak_rss_mib']:>14.0f}"
            f"{r['baseline_rss_mib']:>19.0f}{r['peak_rss_mib'] / model_mib:>12.2f}"
        )
    print(f"outputs identical: {equal}" + ("" if equal else f" ({differing} tensors differ)"))
    if not equal:
        return 1
    print(
        f"merge_file peak_rss_ratio={ours['peak_rss_mib'] / model_mib:.3f} "
        f"time_ratio={ours['seconds'] / naive['seconds']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
