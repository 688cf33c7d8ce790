"""Benchmark of the diffusers backend on the tiny demo models: seconds per 64x64 image on the CPU.

The demo must run a whole search (~150 evaluations x a few payloads) in a few
minutes on 2 CPU cores, so an image should take about 0.15 s. Measured, each
as the median of interleaved repeats in one process:

* ``pipeline``: a plain diffusers ``pipe(...)`` call (the baseline);
* ``generate``: ``DiffusersGenerator.generate`` with the same settings (our
  wrapper: sampler mapping, per-image seeds, lock, parameters);
* the parts of one image: prompt encoding, one UNet call (batch 2 for
  classifier-free guidance), VAE decode;
* ``apply``: one full 27-block merge of the tiny UNet through the runtime
  merger (``lib_mbw.runtime`` when present, else the test double).

With ``--quality`` it also measures what the demo's search needs from the
images (mean absolute pixel difference, 0-255): A vs B, another prompt,
another seed, the steps along the line from A to B, and the change when one
block is set to B (the numbers quoted in docs/diffusers.md).

Usage: ``python tests/bench/diffusers_tiny.py [--steps 4] [--threads 1] [--repeats 7] [--quality]``.
Last line: ``diffusers_tiny seconds_per_image=<generate> wrapper_ratio=<generate / pipeline> search_minutes=<150 x 3 images + applies>``
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib_mbw.blocks import BLOCKS  # noqa: E402
from lib_mbw.demo_models import ensure_demo_models  # noqa: E402
from lib_mbw.generators.diffusers import DiffusersGenerator, DiffusersOptions  # noqa: E402
from lib_mbw.payloads import Payload  # noqa: E402
from lib_mbw.recipe import Recipe  # noqa: E402
from tests.runtime_double import merger_factory  # noqa: E402

EVALUATIONS, PAYLOADS = 150, 3


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def distance(a: object, b: object) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def print_quality(gen: DiffusersGenerator, payload: Payload) -> None:
    """Mean absolute pixel differences that show whether a search has a signal."""
    prompts = ("a red cat on a blue sofa", "a mountain lake at dawn", "portrait of a woman, oil painting")

    def render(recipe: Recipe, prompt: str = prompts[0], seed: int = 1) -> object:
        gen.apply(recipe)
        return gen.generate(dataclasses.replace(payload, prompt=prompt, seed=seed))[0].image

    a = {(p, s): render(Recipe.uniform(0.0), p, s) for p in prompts for s in (1, 2)}
    b = {(p, s): render(Recipe.uniform(1.0), p, s) for p in prompts for s in (1, 2)}
    ab = statistics.mean(distance(a[k], b[k]) for k in a)
    prompt = statistics.mean(distance(m[(p, s)], m[(q, s)]) for m in (a, b) for s in (1, 2) for p, q in itertools.combinations(prompts, 2))
    seed = statistics.mean(distance(m[(p, 1)], m[(p, 2)]) for m in (a, b) for p in prompts)
    line = [render(Recipe.uniform(w)) for w in np.linspace(0.0, 1.0, 11)]
    print(f"A vs B {ab:.1f}, another prompt {prompt:.1f}, another seed {seed:.1f} (mean over 3 prompts x 2 seeds)")
    print("from A along the line to B (w = 0, 0.1, ..., 1):", " ".join(f"{distance(line[0], x):.0f}" for x in line))
    print("steps of 0.1:", " ".join(f"{distance(x, y):.1f}" for x, y in zip(line, line[1:])))
    zero = {block: 0.0 for block in BLOCKS}
    effects = {block: distance(line[0], render(Recipe({**zero, block: 1.0}))) for block in BLOCKS}
    print("one block set to B:", ", ".join(f"{block} {value:.1f}" for block, value in effects.items()))
    print_search_signal(gen, payload)
    gen.restore()


def print_search_signal(gen: DiffusersGenerator, payload: Payload, recipes: int = 20) -> None:
    """What the demo's search sees: SSIM to references rendered from a hidden recipe, against recipe distance."""
    from scipy.stats import spearmanr

    from lib_mbw.scorers.reference import ReferenceScorer

    rng = np.random.default_rng(1)
    payloads = [dataclasses.replace(payload, name=f"p{i}", prompt=text, seed=10 + i)
                for i, text in enumerate(("a red cat on a sofa", "a mountain lake", "portrait of a woman"))]
    hidden = {block: float(rng.choice(np.linspace(0.0, 1.0, 21))) for block in BLOCKS}
    gen.apply(Recipe(hidden))
    scorer = ReferenceScorer({(p.name, 0): gen.generate(p)[0].image for p in payloads}, metric="ssim")
    distances, scores = [], []
    for _ in range(recipes):
        step = rng.uniform()
        recipe = {b: float(np.clip(hidden[b] + step * (rng.uniform() - hidden[b]), 0.0, 1.0)) for b in BLOCKS}
        gen.apply(Recipe(recipe))
        scores.append(float(np.mean(scorer.score([image for p in payloads for image in gen.generate(p)]))))
        distances.append(float(np.mean([abs(recipe[b] - hidden[b]) for b in BLOCKS])))
    rho = spearmanr(distances, scores).statistic
    print(f"SSIM to references of a hidden recipe vs mean |recipe - hidden| over {recipes} recipes: Spearman {rho:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--folder", help="demo model folder (default: a temporary one)")
    parser.add_argument("--quality", action="store_true", help="also measure how images depend on model, prompt, seed and blocks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        models = ensure_demo_models(Path(args.folder) if args.folder else Path(tmp) / "demo")
        build = time.perf_counter() - started
        started = time.perf_counter()
        gen = DiffusersGenerator(
            models.model_a, models.model_b, options=DiffusersOptions(config_dir=models.config_dir), merger_factory=merger_factory()
        )
        load = time.perf_counter() - started
        pipe = gen.pipe
        payload = Payload("bench", "a red cat on a blue sofa", steps=args.steps, cfg_scale=args.cfg, width=64, height=64, sampler="Euler", seed=1)
        gen.generate(payload)  # warm up, and fixes the scheduler the raw call reuses

        def raw() -> None:
            pipe(
                prompt=payload.prompt, num_inference_steps=args.steps, guidance_scale=args.cfg, width=64, height=64,
                generator=[torch.Generator("cpu").manual_seed(1)], output_type="pil",
            )

        latents = torch.randn(2, 4, 8, 8)
        with torch.inference_mode():
            context, _ = pipe.encode_prompt(payload.prompt, "cpu", 1, True)
        context = torch.cat([context, context])
        weights = [Recipe.uniform(w) for w in (0.25, 0.75)]
        cases: dict[str, Callable[[], object]] = {
            "pipeline": raw,
            "generate": lambda: gen.generate(payload),
            "encode prompt": lambda: pipe.encode_prompt(payload.prompt, "cpu", 1, True),
            "unet call (batch 2)": lambda: pipe.unet(latents, 500, context),
            "vae decode": lambda: pipe.vae.decode(latents[:1] / pipe.vae.config.scaling_factor),
            "apply (27 blocks)": lambda: gen.apply(weights[int(time.perf_counter() * 1000) % 2]),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        with torch.inference_mode():
            for _ in range(args.repeats):
                for name, case in cases.items():
                    samples[name].append(timed(case))
        if args.quality:
            print_quality(gen, payload)
        gen.close()

    median = {name: statistics.median(values) for name, values in samples.items()}
    print(f"tiny SD1 demo models, 64x64, {args.steps} steps, cfg {args.cfg}, Euler, {args.threads} CPU thread(s), "
          f"median of {args.repeats}; build {build:.2f} s, load {load:.2f} s")
    print(f"{'case':24s} {'seconds':>9s}")
    for name, value in median.items():
        print(f"{name:24s} {value:9.4f}")
    per_image = median["generate"]
    ratio = per_image / median["pipeline"]
    search = (EVALUATIONS * (PAYLOADS * per_image + median["apply (27 blocks)"])) / 60
    print(f"per image {per_image:.3f} s (target 0.15 s: x{per_image / 0.15:.2f}); "
          f"a {EVALUATIONS}-evaluation search with {PAYLOADS} payloads: {search:.1f} min of rendering and merging")
    print(f"diffusers_tiny seconds_per_image={per_image:.4f} wrapper_ratio={ratio:.3f} search_minutes={search:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
