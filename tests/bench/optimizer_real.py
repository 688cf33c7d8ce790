"""The real pipeline as an optimizer-benchmark family (``real``): tiny demo models, hidden recipes, SSIM to references.

Each problem hides a recipe of one structure, renders reference images with
it on the tiny offline demo models (``lib_mbw.demo_models``, model seed 0),
and scores a candidate recipe exactly as ``python -m lib_mbw demo`` does:
merge the live UNet to the recipe (runtime merge), render the demo's three
payloads (64x64, 4 steps) in one batch (``generate_many``, as the loop
renders), SSIM of each image to its reference, mean over payloads.

Hidden recipe structures (``seed`` draws the instance; block order = the
search space's, IN00..IN11, M00, OUT00..OUT11, TIME_EMBED, OUT):

* ``real-diverse``: every block drawn independently from the 21 levels;
* ``real-few-blocks``: all blocks at A (0) or B (1), 3-5 blocks moved at
  least 0.3 away from it;
* ``real-smooth``: a smooth profile along the UNet (two low-frequency
  cosines over the block order, clipped to [0, 1], on the grid);
* ``real-edges``: every block at 0 or 1 (the grid's edges).

The score is deterministic (same seeds, same images), so the objective's
``true`` IS the score and its noise is 0: what noise there is, is the
rendering's. Gap 1 = the hidden recipe's score (its own references: 1.0
where rendering is deterministic), gap 0 = the mean score of a fixed sample
of ``RANDOM_SAMPLES`` random grid recipes. Both are cached in
``results/optimizer_real_calibration.json`` under a hash of the code they
depend on (``code_hash``), so reading a cached run's gap renders nothing.
Within a run, scores of identical recipes are memoized (a search that
proposes a recipe twice renders it once, as a score cache would).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from code_keys import code_text, package_versions
from optimizer_objectives import DIM, LEVELS, Objective

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CALIBRATION = HERE / "results" / "optimizer_real_calibration.json"
RANDOM_SAMPLES = 24
MODEL_SEED = 0
KINDS = ("diverse", "few-blocks", "smooth", "edges")
#: lib_mbw files a score depends on besides this module (with the rendering packages' versions: ``code_hash``);
#: the runtime merger (a lerp per block) is left out, so that its refactors keep the cache
DEPENDS_ON = (
    "lib_mbw/demo.py",
    "lib_mbw/demo_models.py",
    "lib_mbw/synthetic.py",
    "lib_mbw/keyspec.py",
    "lib_mbw/scorers/reference.py",
    "lib_mbw/generators/diffusers.py",
    "lib_mbw/generators/diffusers_samplers.py",
)
PACKAGES = ("torch", "diffusers", "transformers", "torchmetrics")


#: the definitions of this file that a real problem's scores depend on (editing the rest keeps the cached runs;
#: the files and packages listed above count by content)
SCORED_BY = (
    "RANDOM_SAMPLES", "MODEL_SEED", "KINDS", "_grid", "hidden_weights", "random_sample", "Renderer", "calibration", "real_problem",
    "REAL_PROBLEMS",
)


def code_hash() -> str:
    """Hash of what a real problem's scores depend on: ``SCORED_BY``, the demo's code, the rendering packages."""
    digest = hashlib.sha256(code_text(HERE / "optimizer_real.py", SCORED_BY).encode())
    for name in DEPENDS_ON:
        digest.update(code_text(ROOT / name).encode())
    digest.update(package_versions(PACKAGES).encode())
    return digest.hexdigest()[:16]


def _grid(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0.0, 1.0) * (LEVELS - 1)) / (LEVELS - 1)


def hidden_weights(kind: str, seed: int) -> np.ndarray:
    """The hidden recipe of structure ``kind`` (module docstring), as 27 grid weights in the space's block order."""
    rng = np.random.default_rng([seed, 31, KINDS.index(kind)])
    if kind == "diverse":
        return rng.integers(0, LEVELS, DIM) / (LEVELS - 1)
    if kind == "few-blocks":
        base = float(rng.integers(0, 2))
        weights = np.full(DIM, base)
        moved = rng.choice(DIM, size=int(rng.integers(3, 6)), replace=False)
        distance = rng.integers(6, LEVELS, len(moved)) / (LEVELS - 1)
        weights[moved] = np.abs(base - distance)
        return weights
    if kind == "smooth":
        t = np.linspace(0.0, 1.0, DIM)
        profile = 0.5 + sum(
            rng.uniform(0.2, 0.4) * np.cos(np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0.0, 2 * np.pi)) for _ in range(2)
        )
        return _grid(profile)
    if kind == "edges":
        return rng.integers(0, 2, DIM).astype(float)
    raise ValueError(f"unknown hidden recipe structure {kind!r}; use one of {', '.join(KINDS)}")


def random_sample(seed: int, count: int = RANDOM_SAMPLES) -> np.ndarray:
    """The fixed random grid recipes whose mean score is gap 0."""
    rng = np.random.default_rng([seed, 99, 31])
    return rng.integers(0, LEVELS, (count, DIM)) / (LEVELS - 1)


class Renderer:
    """Scores recipes against references of a hidden recipe on the tiny demo models (loaded on first use)."""

    def __init__(self, hidden: np.ndarray, size: int = 64, steps: int = 4, work: Path | None = None) -> None:
        self.hidden = hidden
        self.size = size
        self.steps = steps
        self.work = work or Path(tempfile.gettempdir()) / "auto-mbw-bench-real"
        self.memo: dict[tuple[float, ...], float] = {}
        self.renders = 0
        self._state: tuple[Any, Any, Any, list[str]] | None = None

    def _setup(self) -> tuple[Any, Any, Any, list[str]]:
        from lib_mbw.demo import DemoSettings, render_payloads, write_demo_payloads
        from lib_mbw.demo_models import ensure_demo_models
        from lib_mbw.generators.diffusers import DiffusersGenerator, DiffusersOptions
        from lib_mbw.payloads import load_payloads, prepare_payloads
        from lib_mbw.recipe import Recipe
        from lib_mbw.scorers.reference import ReferenceScorer
        from lib_mbw.search.space import SearchSpace

        models = ensure_demo_models(self.work / f"models-{MODEL_SEED}", seed=MODEL_SEED)
        folder = write_demo_payloads(Path(tempfile.mkdtemp(prefix="payloads-", dir=self.work)), DemoSettings(size=self.size, steps=self.steps))
        payloads = prepare_payloads(load_payloads(folder), None, MODEL_SEED)
        generator = DiffusersGenerator(models.model_a, models.model_b, options=DiffusersOptions(config_dir=models.config_dir, cpu_threads=1))
        blocks = list(SearchSpace(levels=LEVELS).blocks)
        generator.apply(Recipe(dict(zip(blocks, self.hidden.tolist())), source="hidden benchmark recipe"))
        references = [image for images in render_payloads(generator, payloads) for image in images]
        scorer = ReferenceScorer({(img.payload.name, img.index): img.image for img in references}, metric="ssim")
        return generator, scorer, payloads, blocks

    def score(self, x: np.ndarray) -> float:
        """The demo's score of one recipe (27 weights in [0, 1]), memoized."""
        from lib_mbw.demo import _evaluate
        from lib_mbw.recipe import Recipe

        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        key = tuple(np.round(x, 9).tolist())
        if key not in self.memo:
            if self._state is None:
                self._state = self._setup()
            generator, scorer, payloads, blocks = self._state
            self.memo[key] = float(_evaluate(generator, scorer, payloads, Recipe(dict(zip(blocks, key)))))
            self.renders += 1
        return self.memo[key]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.array([self.score(row) for row in np.atleast_2d(x)])

    def close(self) -> None:
        if self._state is not None:
            self._state[0].close()
            self._state = None


def _locked_update(path: Path, key: str, value: dict[str, Any]) -> None:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "auto-mbw-optimizer-real.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[key] = value
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n")
        os.replace(tmp, path)


def calibration(name: str, seed: int, renderer: Renderer, samples: int = RANDOM_SAMPLES, path: Path = CALIBRATION) -> dict[str, Any]:
    """The hidden recipe's score and the random sample's mean score (cached under ``code_hash``)."""
    key = f"{name}|{seed}|{renderer.size}x{renderer.steps}|{samples}"
    digest = code_hash()
    if path.is_file():
        entry = json.loads(path.read_text()).get(key)
        if entry and entry.get("code") == digest:
            return entry
    sample = renderer(random_sample(seed, samples))
    entry = {
        "code": digest,
        "hidden": float(renderer.score(renderer.hidden)),
        "random_mean": float(sample.mean()),
        "random_sd": float(sample.std()),
        "random_max": float(sample.max()),
        "samples": len(sample),
    }
    _locked_update(path, key, entry)
    return entry


def real_problem(
    kind: str, size: int = 64, steps: int = 4, samples: int = RANDOM_SAMPLES, path: Path = CALIBRATION, work: Path | None = None
) -> Callable[[int], Objective]:
    """The factory ``seed -> Objective`` of structure ``kind``: true = the demo's score, no added noise.

    ``size``, ``steps`` and ``samples`` (random recipes of gap 0) are the
    demo's unless a test asks for less; ``work``: models and payloads folder.
    """

    def make(seed: int = 0) -> Objective:
        hidden = hidden_weights(kind, seed)
        renderer = Renderer(hidden, size=size, steps=steps, work=work)
        cal = calibration(f"real-{kind}", seed, renderer, samples, path)
        return Objective(f"real-{kind}", renderer, cal["hidden"], hidden, random_mean=cal["random_mean"], noise_sd=0.0)

    return make


REAL_PROBLEMS: dict[str, Callable[[int], Objective]] = {f"real-{kind}": real_problem(kind) for kind in KINDS}
