"""Benchmark: ImageReward images per second, batched (lib_mbw) vs one at a time (the seed's way).

Uses the full-size ImageReward model (the package's class, 447M parameters,
random weights built offline: the same compute as the real one). The seed
calls the package's ``score(prompt, [image])`` once per image with autograd on;
``lib_mbw.scorers.ImageRewardScorer`` runs the same modules on whole batches
under ``torch.inference_mode``. A middle row shows the package's one-by-one
path under inference mode, to separate batching from no-grad.

    python tests/bench/scorers.py                      # CPU, 8 images of 512x512
    python tests/bench/scorers.py --device cuda --images 16

Last line: ``scorers imagereward_batch_speedup=<batched / seed images per second>``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from lib_mbw.generators.base import GeneratedImage  # noqa: E402
from lib_mbw.payloads import Payload  # noqa: E402
from lib_mbw.scorers import ImageRewardScorer, ImageRewardSettings  # noqa: E402
from lib_mbw.scorers.offline import build_imagereward  # noqa: E402
from tests.scorer_fixtures import generated, picture  # noqa: E402

PROMPTS = ("a photo of a cat sitting on a red chair, detailed", "a city street at night, masterpiece")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--images", type=int, default=8, help="images per iteration")
    parser.add_argument("--size", type=int, default=512, help="image width and height")
    parser.add_argument("--batch-size", type=int, default=None, help="scorer batch size (default: all images)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method (best is reported)")
    return parser.parse_args()


def best_seconds(run: Callable[[list[GeneratedImage]], list[float]], images: list[GeneratedImage], repeats: int,
                 device: torch.device) -> tuple[float, list[float]]:
    """Fastest of ``repeats`` timed runs over ``images`` after a warm-up on two of them, and that run's scores."""
    run(images[:2])
    best, scores = float("inf"), []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        scores = run(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, scores


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main() -> int:
    args = parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    payloads = [Payload(name=f"p{i}", prompt=p, width=args.size, height=args.size, batch_size=args.images // 2)
                for i, p in enumerate(PROMPTS)]
    images = [item for n, payload in enumerate(payloads)
              for item in generated(payload, [picture(100 * n + i, (args.size, args.size))
                                              for i in range(payload.batch_size)])]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        model = build_imagereward(folder, "full", seed=0)
        build_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters()) / 1e6

    rows: list[tuple[str, str, float, list[float]]] = []
    fp32 = ImageRewardScorer(ImageRewardSettings(device=str(device), dtype="float32",
                                                 batch_size=args.batch_size or len(images)), model=model)
    fp32.load()  # placed on the device, fp32: the dtype the seed ran in

    def seed_way(chunk: list[GeneratedImage]) -> list[float]:
        return [model.score(item.prompt, [item.image]) for item in chunk]

    def one_by_one_no_grad(chunk: list[GeneratedImage]) -> list[float]:
        with torch.inference_mode():
            return [model.score(item.prompt, [item.image]) for item in chunk]

    for label, run in (("seed: package score(prompt, [img]) per image", seed_way),
                       ("package per image, inference_mode", one_by_one_no_grad),
                       ("lib_mbw batched", fp32.score)):
        seconds, scores = best_seconds(run, images, args.repeats, device)
        rows.append((label, "float32", seconds, scores))
    if device.type == "cuda":
        fp32.unload()
        half = ImageRewardScorer(ImageRewardSettings(device=str(device), dtype="float16",
                                                     batch_size=args.batch_size or len(images)), model=model)
        seconds, scores = best_seconds(half.score, images, args.repeats, device)
        rows.append(("lib_mbw batched", "float16", seconds, scores))

    seed_scores = rows[0][3]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"ImageReward full size ({params:.0f}M parameters, random weights, built in {build_s:.1f} s)")
    print(f"device {device} ({device_name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(images)} images of {args.size}x{args.size}, {len(PROMPTS)} prompts, best of {args.repeats}")
    print(f"{'method':<46} {'dtype':<8} {'seconds':>8} {'images/s':>9} {'vs seed':>8} {'max |diff|':>11}")
    for label, dtype, seconds, scores in rows:
        diff = max(abs(a - b) for a, b in zip(scores, seed_scores))
        print(f"{label:<46} {dtype:<8} {seconds:8.2f} {len(images) / seconds:9.2f} "
              f"{rows[0][2] / seconds:7.2f}x {diff:11.2e}")
    speedup = rows[0][2] / rows[2][2]
    print(f"scorers imagereward_batch_speedup={speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
