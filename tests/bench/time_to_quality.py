"""Wall-clock time to a good merge: auto-MBW against the seed's and the peer's pipelines, in one run.

What a user waits for is the time until the search holds a merge as good as
the one they would have got. This benchmark runs three complete pipelines on
the same tiny offline demo models (``lib_mbw.demo_models``; nothing is
downloaded), the same payloads and the same hidden recipes, scoring images by
SSIM against references rendered with the hidden recipe (as ``python -m
lib_mbw demo`` does), and records after every evaluation the wall-clock time
and the best score so far:

* **ours**: ``start_search`` with default settings (default strategy, runtime
  merger, arithmetic tally, history and state written and fsync'd every
  evaluation), the diffusers generator rendering all payloads of an
  evaluation in one batch (``generate_many``); early stop (patience) off so
  every pipeline runs the same number of evaluations.
* **seed** (auto-MBW-rt, ../shared/seeds/002_*): GFO ``BayesianOptimizer``
  ask/tell on the 21-level grid with 10 random initial points; the merge as
  its runtime-block-merge backend does it with "Force CPU" (forced on in the
  seed): for every UNet key, A and B as fp32 CPU tensors, ``(1 - w) * a + w * b``,
  copied into the live UNet; then one HTTP ``POST /sdapi/v1/txt2img`` per
  payload to a real local HTTP server (127.0.0.1, JSON body, base64 PNG images
  back) that renders one image per pipeline call; a CSV row appended per
  evaluation.
* **peer** (sd-webui-bayesian-merger, ../shared/seeds/004_*): ``bayes_opt``
  GP with its defaults (UCB, Matern 5/2), 10 random initial points, continuous
  weights; every candidate merged on the CPU into a full checkpoint, written to
  disk as safetensors and loaded back into the pipeline (the WebUI reload the
  peer triggers; only the UNet is copied into the live model here, which is
  cheaper than a WebUI model reload), then generated through the same HTTP
  server, one request per payload.

The per-evaluation time is split into merge, generation (pipeline calls,
measured inside the server for seed/peer), scoring, optimizer (ask + tell)
and I/O (HTTP + PNG + JSON, checkpoint write/reload, CSV row; for ours the
history row, state file, events and the rest of the loop).

Quality: ``gap = (best score so far - mean of random recipes) / (hidden
recipe's score - mean of random recipes)``; the hidden recipe scores 1.0
(its own references). Reported: seconds and evaluations to 50/80/90/95 % of
the gap (median over hidden recipes), and

* ``seed_ratio``: seconds ours needs to reach the seed pipeline's final
  quality / the seed pipeline's total seconds (median over hidden recipes;
  the goal is <= 0.2); ``peer_ratio`` likewise (goal <= 0.5);
* ``overhead``: ours' time beyond generation as a fraction of its evaluation
  time (everything but the pipeline calls, summed over evaluations);
* ``fidelity_speedup``: seconds ours needs to reach its own final quality
  without screening / with multi-fidelity screening (pipeline **ours-screen**:
  the same search with ``fidelity.mode = "screen"``, references rendered at
  the cheap rung too, run until it reaches ours' final best score, for at
  most 3x ours' evaluations and 2x ours' wall time: screening makes a
  candidate cheaper, so the same time buys more candidates; median over
  hidden recipes; 0 when the screened run never reaches it). Only full-fidelity scores count as quality: a candidate
  screened out at the cheap rung adds time, not a score. Also printed: the
  same ratio on process CPU time, and on rendering work (steps x images
  rendered, in full evaluations: what the time would be where it follows
  steps and images, as on a GPU at real sizes; a model, not a measurement).

Usage (2-core CPU: run it niced, in the background)::

    nice -n 5 python tests/bench/time_to_quality.py --quick      # ~5 minutes: 2 hidden recipes x 40 evaluations
    nice -n 5 python tests/bench/time_to_quality.py              # 3 hidden recipes x 270 evaluations (hours)
    nice -n 5 python tests/bench/time_to_quality.py --quick --pipelines ours ours-screen   # screening only

Last line: ``time_to_quality seed_ratio=<x> peer_ratio=<x> fidelity_speedup=<x> overhead=<fraction>``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import io
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lib_mbw.blocks import block_of_unet_key, present_blocks  # noqa: E402
from lib_mbw.generators.base import GeneratedImage  # noqa: E402
from lib_mbw.generators.diffusers import LDM_UNET_PREFIX, DiffusersGenerator, DiffusersOptions  # noqa: E402
from lib_mbw.payloads import Payload, payload_from_dict  # noqa: E402
from lib_mbw.recipe import Recipe  # noqa: E402
from lib_mbw.scorers.reference import ReferenceScorer, fidelity_folder, references_from_images, save_references  # noqa: E402
from lib_mbw.search.fidelity import FidelitySettings, reference_label, screen_payloads  # noqa: E402
from lib_mbw.search.settings import from_mapping  # noqa: E402

LEVELS = 21
INIT_POINTS = 10
THRESHOLDS = (0.5, 0.8, 0.9, 0.95)
#: The three pipelines compared (the GPU script runs these).
PIPELINES = ("ours", "seed", "peer")
#: Every pipeline this script runs: ours once more with multi-fidelity screening.
ALL_PIPELINES = ("ours", "ours-screen", "seed", "peer")
#: The screening setting of pipeline ours-screen (``--fidelity`` replaces it).
SCREEN = {"mode": "screen"}
#: Pipeline ours-screen runs until it reaches ours' final best score, for at most this many times ours' evaluations
#: and ``SCREEN_BUDGET`` times ours' wall time (a search that screens is cheaper per candidate: it may use more).
SCREEN_EVALUATIONS = 3
SCREEN_BUDGET = 2.0
SPLIT = ("merge", "generate", "score", "optimizer", "io")
#: The demo's prompts (lib_mbw.demo): name, prompt, seed.
PROMPTS = (
    ("castle", "a castle on a hill at sunset, oil painting", 11),
    ("fox", "a red fox sitting in fresh snow, photo", 23),
    ("city", "a city street at night with neon lights", 37),
    ("lake", "a mountain lake at dawn, watercolor", 41),
    ("robot", "a small robot reading a book, 3d render", 53),
    ("market", "a busy market in the rain, film photo", 67),
    ("ship", "an old sailing ship in a storm", 71),
    ("garden", "a garden full of sunflowers, impressionist", 83),
)


# ----------------------------------------------------------------------------- set-up


@dataclass
class Setup:
    """Models, payloads and device shared by the three pipelines."""

    model_a: Path
    model_b: Path
    config_dir: Path | None
    family: str
    payloads: list[Payload]
    device: str = "cpu"
    dtype: str | None = None
    work: Path = Path(".")

    @property
    def blocks(self) -> list[str]:
        return list(present_blocks(self.family))

    def options(self, **extra: Any) -> DiffusersOptions:
        return DiffusersOptions(config_dir=self.config_dir, device=self.device, dtype=self.dtype, **extra)

    def generator(self, merged: bool) -> DiffusersGenerator:
        """Ours: A with B merged in by the runtime merger; seed/peer: A alone, weights written by the pipeline."""
        threads = 1 if self.device == "cpu" else None
        return DiffusersGenerator(self.model_a, self.model_b if merged else None, options=self.options(cpu_threads=threads))


def make_payloads(count: int, steps: int, size: int, images: int = 1, sampler: str = "Euler") -> list[Payload]:
    """``count`` payloads of the demo's kind (distinct prompts and seeds), ``images`` images each."""
    if count > len(PROMPTS):
        raise SystemExit(f"at most {len(PROMPTS)} payloads")
    return [Payload(name=name, prompt=prompt, seed=seed, steps=steps, width=size, height=size, sampler=sampler,
                    cfg_scale=7.0, batch_size=images) for name, prompt, seed in PROMPTS[:count]]


def write_payload_files(folder: Path, payloads: Sequence[Payload]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in payloads:
        body = {"prompt": p.prompt, "negative_prompt": p.negative_prompt, "steps": p.steps, "cfg_scale": p.cfg_scale,
                "sampler_name": p.sampler, "width": p.width, "height": p.height, "seed": p.seed, "batch_size": p.batch_size}
        (folder / f"{p.name}.json").write_text(json.dumps(body))
    return folder


def hidden_recipe(blocks: Sequence[str], seed: int) -> Recipe:
    """A random grid recipe (the demo's kind of target)."""
    rng = random.Random(f"time-to-quality-hidden-{seed}")
    return Recipe({b: rng.randrange(LEVELS) / (LEVELS - 1) for b in blocks}, source="hidden")


def random_recipes(blocks: Sequence[str], seed: int, count: int) -> list[Recipe]:
    rng = random.Random(f"time-to-quality-random-{seed}")
    return [Recipe({b: rng.randrange(LEVELS) / (LEVELS - 1) for b in blocks}) for _ in range(count)]


def render_all(generator: DiffusersGenerator, payloads: Sequence[Payload], batched: bool) -> list[GeneratedImage]:
    if batched:
        return [image for images in generator.generate_many(payloads) for image in images]
    return [image for payload in payloads for image in one_by_one(generator, payload)[0]]


def one_by_one(generator: DiffusersGenerator, payload: Payload) -> tuple[list[GeneratedImage], float]:
    """A payload's images with one pipeline call per image (the seed's and the peer's WebUI); and the seconds."""
    started = time.perf_counter()
    images = []
    for i in range(payload.batch_size):
        image = generator.generate(dataclasses.replace(payload, seed=payload.seed + i, batch_size=1))[0]
        images.append(dataclasses.replace(image, payload=payload, index=i))
    return images, time.perf_counter() - started


def work(payloads: Sequence[Payload]) -> float:
    """Rendering work of ``payloads`` when time follows steps x images (a GPU at real sizes)."""
    return float(sum(p.steps * p.batch_size for p in payloads))


def warmed_scorer(references: Sequence[GeneratedImage], fidelities: dict[str, Sequence[GeneratedImage]] | None = None) -> ReferenceScorer:
    """The SSIM reference scorer, run once on the references themselves (imports and first-call costs out of the timing).

    ``fidelities``: references rendered at a cheap screening rung, by label (``ReferenceScorer.for_fidelity``).
    """
    scorer = ReferenceScorer(references_from_images(references), metric="ssim",
                             fidelities={label: references_from_images(images) for label, images in (fidelities or {}).items()})
    scores = scorer.score(references)
    if min(scores) < 0.999:
        raise AssertionError(f"references do not score 1 against themselves: {min(scores)}")
    return scorer


def mean_score(scorer: ReferenceScorer, images: Sequence[GeneratedImage]) -> float:
    """The search's default tally: arithmetic mean over payloads of the mean image score."""
    per_payload: dict[str, list[float]] = {}
    for image, score in zip(images, scorer.score(images)):
        per_payload.setdefault(image.payload.name, []).append(float(score))
    return statistics.fmean(statistics.fmean(s) for s in per_payload.values())


# ----------------------------------------------------------------------------- records


@dataclass
class Trace:
    """One pipeline's search on one hidden recipe: per evaluation the time since start, the score and the split."""

    pipeline: str
    hidden: int
    elapsed: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    split: list[dict[str, float]] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    screened: int = 0  #: evaluations screened out at the cheap rung (ours-screen)
    #: Per evaluation, its rendering work in full evaluations when time follows steps x images (a GPU at real sizes).
    units: list[float] = field(default_factory=list)

    def add(self, elapsed: float, score: float, split: dict[str, float], cpu: float | None = None, units: float = 1.0) -> None:
        """One evaluation: wall seconds and process CPU seconds (all threads) since the search started."""
        self.elapsed.append(elapsed)
        self.scores.append(score)
        self.split.append(split)
        self.cpu.append(elapsed if cpu is None else cpu)
        self.units.append(units)

    def clock(self, name: str) -> list[float]:
        """Wall seconds, CPU seconds or rendering work (``units``, summed) since the start, per evaluation."""
        if name == "units":
            return list(np.cumsum(self.units))
        return self.cpu if name == "cpu" else self.elapsed

    @property
    def best(self) -> list[float]:
        return list(np.maximum.accumulate(self.scores)) if self.scores else []

    def reach(self, target: float, clock: str = "wall") -> tuple[int, float] | None:
        """(evaluations, seconds on ``clock``: wall or cpu) at which the best score first reaches ``target``."""
        for k, value in enumerate(self.best):
            if value >= target - 1e-12:
                return k + 1, self.clock(clock)[k]
        return None


class Stopwatch:
    """Adds the seconds of ``with watch("merge"):`` blocks to a split."""

    def __init__(self) -> None:
        self.split = {name: 0.0 for name in SPLIT}

    def __call__(self, name: str) -> "_Timed":
        return _Timed(self.split, name)


class _Timed:
    def __init__(self, split: dict[str, float], name: str) -> None:
        self.split, self.name = split, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.split[self.name] += time.perf_counter() - self.started


# ----------------------------------------------------------------------------- the WebUI stand-in (HTTP)


class RenderServer:
    """A local HTTP server answering ``POST /sdapi/v1/txt2img`` like the WebUI API: JSON in, base64 PNGs out.

    Renders with ``generator`` one image per pipeline call and returns the
    seconds the pipeline took in ``render_s``, so a client can split its
    round trip into generation and I/O.
    """

    def __init__(self, generator: DiffusersGenerator) -> None:
        self.generator = generator
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                if self.path != "/sdapi/v1/txt2img":
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                payload = payload_from_dict(body, body.pop("name", "payload"), "request")
                images, seconds = one_by_one(server.generator, payload)
                encoded = []
                for item in images:
                    buffer = io.BytesIO()
                    item.image.save(buffer, format="PNG")
                    encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
                data = json.dumps({"images": encoded, "info": json.dumps({"seed": payload.seed}), "render_s": seconds}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def http_render(session: Any, url: str, payload: Payload) -> tuple[list[GeneratedImage], float]:
    """One txt2img request: the payload's decoded images and the server's pipeline seconds."""
    from PIL import Image

    response = session.post(f"{url}/sdapi/v1/txt2img", json={"name": payload.name, **payload.to_webui()}, timeout=600)
    response.raise_for_status()
    data = response.json()
    images = []
    for i, text in enumerate(data["images"]):
        image = Image.open(io.BytesIO(base64.b64decode(text)))
        image.load()
        images.append(GeneratedImage(image.convert("RGB"), payload, payload.prompt, payload.negative_prompt, payload.seed + i, i))
    return images, float(data["render_s"])


# ----------------------------------------------------------------------------- merges of the seed and the peer


def read_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class SeedMerge:
    """The seed's merge (runtime-block-merge, "Force CPU"): per UNet key, fp32 CPU lerp, copied into the live UNet."""

    def __init__(self, generator: DiffusersGenerator, setup: Setup) -> None:
        unet = generator.loaded.unet
        a, b = read_state(setup.model_a), read_state(setup.model_b)
        self.family = setup.family
        self.slots = []
        for name, param in unet.named_parameters():
            key = generator.key_map[name]
            self.slots.append((param, block_of_unet_key(key, setup.family),
                               a[LDM_UNET_PREFIX + key].float().cpu(), b[LDM_UNET_PREFIX + key].float().cpu()))

    @torch.no_grad()
    def apply(self, recipe: Recipe) -> None:
        for param, block, a, b in self.slots:
            w = recipe.weights[block]
            param.copy_((1 - w) * a + w * b)
        if self.slots and self.slots[0][0].is_cuda:
            torch.cuda.synchronize()


class PeerMerge:
    """The peer's merge: a full checkpoint merged on the CPU, written to disk, loaded back into the pipeline."""

    def __init__(self, generator: DiffusersGenerator, setup: Setup, folder: Path) -> None:
        self.generator = generator
        self.a, self.b = read_state(setup.model_a), read_state(setup.model_b)
        self.family = setup.family
        self.path = folder / "bbwm-candidate.safetensors"
        self.params = dict(generator.loaded.unet.named_parameters())

    @torch.no_grad()
    def merge(self, recipe: Recipe) -> dict[str, torch.Tensor]:
        merged = {}
        for key, a in self.a.items():
            if key.startswith(LDM_UNET_PREFIX):
                w = recipe.weights[block_of_unet_key(key[len(LDM_UNET_PREFIX):], self.family)]
                merged[key] = ((1 - w) * a.float() + w * self.b[key].float()).to(a.dtype)
            else:
                merged[key] = a.clone()
        return merged

    @torch.no_grad()
    def write_and_reload(self, merged: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        save_file(merged, str(self.path))
        loaded = read_state(self.path)
        for name, param in self.params.items():
            param.copy_(loaded[LDM_UNET_PREFIX + self.generator.key_map[name]])
        if param.is_cuda:
            torch.cuda.synchronize()


# ----------------------------------------------------------------------------- the three pipelines


def run_ours(setup: Setup, hidden: Recipe, evals: int, seed: int, fidelity: dict[str, Any] | None = None,
             target: float | None = None, budget_s: float | None = None) -> Trace:
    """auto-MBW as a user runs it: ``start_search`` with default settings, batched rendering.

    ``fidelity``: the ``fidelity`` setting (pipeline ours-screen); references are rendered at its cheap rung too.
    ``target``/``budget_s``: stop once the best full score reaches ``target`` or after ``budget_s`` seconds
    (up to ``SCREEN_EVALUATIONS`` x ``evals`` evaluations): a cheaper search may use more evaluations.
    """
    from lib_mbw.search.events import IterationDone
    from lib_mbw.search.session import start_search
    from lib_mbw.search.settings import settings_from_dict

    trace = Trace("ours-screen" if fidelity else "ours", seed)
    generator = setup.generator(merged=True)
    try:
        generator.apply(hidden)
        references = render_all(generator, setup.payloads, batched=True)
        cheap: dict[str, list[GeneratedImage]] = {}
        cheap_units, reuses = 0.0, False
        if fidelity:
            screen = from_mapping(FidelitySettings, fidelity, "--fidelity")
            cheap_payloads = screen_payloads(setup.payloads, screen)
            cheap_units = work(cheap_payloads) / work(setup.payloads)
            label = reference_label(screen, setup.payloads)
            reuses = label is None and all(c.batch_size == p.batch_size for c, p in zip(cheap_payloads, setup.payloads))
            if label is not None:
                cheap[label] = render_all(generator, screen_payloads(setup.payloads, screen), batched=True)
        generator.restore()
        ref_dir = setup.work / f"ours-refs-{seed}"
        save_references(ref_dir, references, overwrite=True)
        for label, images in cheap.items():
            save_references(fidelity_folder(ref_dir, label), images, overwrite=True)
        scorer = warmed_scorer(references, cheap)
        settings = settings_from_dict(
            {
                "name": f"ttq-{seed}",
                "seed": seed,
                "models": {"a": str(setup.model_a), "b": str(setup.model_b), "family": setup.family},
                "payloads": {"folder": str(write_payload_files(setup.work / "payloads", setup.payloads)), "wildcards": None},
                "stop": {"max_evaluations": evals if target is None else SCREEN_EVALUATIONS * evals, "patience": None,
                         "target_score": target, "max_minutes": None if budget_s is None else budget_s / 60},
                "rescore_top": 0,
                **({"fidelity": fidelity} if fidelity else {}),
                "generator": {"name": "diffusers", "options": {"config_dir": str(setup.config_dir or "")}},
                "scorer": {"name": "reference", "options": {"folder": str(ref_dir), "metric": "ssim"}},
                "history_dir": str(setup.work / "history"),
                "output": {"merge": False},
            },
            source="time-to-quality settings",
        )
        session = start_search(settings, generators=[generator], scorer=scorer)
        timed = TimedOptimizer(session.run.optimizer)
        session.run.optimizer = timed
        started = time.perf_counter()
        cpu_started = time.process_time()
        last = started

        def on_event(event: Any) -> None:
            nonlocal last
            if not isinstance(event, IterationDone) or event.phase != "search" or event.score is None:
                return
            # quality counts full-fidelity scores only: a screened-out candidate's score is an estimate
            score = float(event.score) if event.status in ("ok", "cached") else -math.inf
            trace.screened += event.status == "screened"
            now = time.perf_counter()
            t = event.timings
            optimizer_s, timed.seconds = timed.seconds, 0.0
            wall = now - last
            split = {"merge": t.merge_s, "generate": t.generate_s, "score": t.score_s, "optimizer": optimizer_s}
            split["io"] = max(0.0, wall - sum(split.values()))
            units = {"screen": cheap_units, "full": 1.0 if reuses else 1.0 + cheap_units}.get(event.rung, 1.0)
            trace.add(now - started, score, split, time.process_time() - cpu_started, units)
            last = now

        session.run.add_listener(on_event)
        session.execute()
    finally:
        generator.close()
    return trace


class TimedOptimizer:
    """Passes everything to the optimizer and adds up the seconds of ask/tell/tell_failed."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name not in ("ask", "tell", "tell_failed") or not callable(value):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def gfo_proposals(blocks: Sequence[str], seed: int) -> Iterator[tuple[dict[str, float], Callable[[float], None]]]:
    """The seed's optimizer: 10 random grid points, then GFO BayesianOptimizer; a repeat is answered from memory."""
    from gradient_free_optimizers.ask_tell import BayesianOptimizer

    init_rng = np.random.default_rng([seed, 8])
    values = np.round(np.linspace(0.0, 1.0, LEVELS), 6)
    memory: dict[tuple[float, ...], float] = {}
    initial = []
    for _ in range(INIT_POINTS):
        point = dict(zip(blocks, np.round(init_rng.random(len(blocks)) * (LEVELS - 1)) / (LEVELS - 1)))
        box: list[float] = []
        yield point, box.append
        memory[tuple(point.values())] = box[0]
        initial.append((point, box[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = BayesianOptimizer({b: values for b in blocks}, initial_evaluations=initial, random_state=seed)
        while True:
            params = optimizer.ask(1)[0]
            point = {b: float(params[b]) for b in blocks}
            known = memory.get(tuple(point.values()))
            if known is not None:  # Hyperactive's memory: no new evaluation
                optimizer.tell([known])
                continue
            box = []
            yield point, box.append
            memory[tuple(point.values())] = box[0]
            optimizer.tell([box[0]])


def bayes_opt_proposals(blocks: Sequence[str], seed: int) -> Iterator[tuple[dict[str, float], Callable[[float], None]]]:
    """The peer's optimizer: ``bayes_opt.BayesianOptimization`` with its defaults, 10 random initial points.

    Sped up about 3x with bit-identical suggestions by the optimizer
    benchmark's ``fast_bayes_opt`` (tests/bench/optimizer_runners.py): this
    favours the peer, whose real optimizer step is slower.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from optimizer_runners import fast_bayes_opt

    from sklearn.gaussian_process import GaussianProcessRegressor

    if not hasattr(GaussianProcessRegressor, "_original_predict"):
        fast_bayes_opt()
    from bayes_opt import BayesianOptimization

    init_rng = np.random.default_rng([seed, 8])
    optimizer = BayesianOptimization(f=None, pbounds={b: (0.0, 1.0) for b in blocks}, random_state=seed, verbose=0)
    step = 0
    while True:
        if step < INIT_POINTS:
            params = dict(zip(blocks, init_rng.random(len(blocks))))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params = optimizer.suggest()
        box: list[float] = []
        yield {b: float(params[b]) for b in blocks}, box.append
        optimizer.register(params=params, target=box[0])
        step += 1


def run_baseline(name: str, setup: Setup, hidden: Recipe, evals: int, seed: int) -> Trace:
    """The seed's or the peer's pipeline (module docstring), timed per evaluation."""
    import requests

    trace = Trace(name, seed)
    generator = setup.generator(merged=False)
    server = RenderServer(generator)
    http = requests.Session()
    folder = Path(tempfile.mkdtemp(prefix=f"ttq-{name}-", dir=setup.work))
    proposals: Iterator[Any] | None = None
    try:
        seed_merge = SeedMerge(generator, setup) if name == "seed" else None
        peer_merge = PeerMerge(generator, setup, folder) if name == "peer" else None
        (seed_merge.apply if seed_merge else lambda r: peer_merge.write_and_reload(peer_merge.merge(r)))(hidden)
        references = render_all(generator, setup.payloads, batched=False)
        scorer = warmed_scorer(references)
        proposals = gfo_proposals(setup.blocks, seed) if name == "seed" else bayes_opt_proposals(setup.blocks, seed)
        log_path = folder / "history.csv"
        started = time.perf_counter()
        cpu_started = time.process_time()
        for _ in range(evals):
            watch = Stopwatch()
            with watch("optimizer"):
                point, tell = next(proposals)
            recipe = Recipe(point)
            if seed_merge is not None:
                with watch("merge"):
                    seed_merge.apply(recipe)
            else:
                with watch("merge"):
                    merged = peer_merge.merge(recipe)
                with watch("io"):
                    peer_merge.write_and_reload(merged)
            images: list[GeneratedImage] = []
            for payload in setup.payloads:
                round_trip = time.perf_counter()
                got, render_s = http_render(http, server.url, payload)
                watch.split["generate"] += render_s
                watch.split["io"] += time.perf_counter() - round_trip - render_s
                images.extend(got)
            with watch("score"):
                score = mean_score(scorer, images)
            with watch("io"):
                with log_path.open("a", newline="") as handle:
                    csv.writer(handle).writerow([*point.values(), score, time.time()])
            with watch("optimizer"):
                tell(score)
            trace.add(time.perf_counter() - started, score, watch.split, time.process_time() - cpu_started)
    finally:
        if proposals is not None:
            proposals.close()
        server.close()
        http.close()
        generator.close()
    return trace


def random_baseline(setup: Setup, hidden: Recipe, count: int, seed: int) -> tuple[float, float]:
    """(hidden recipe's score, mean score of ``count`` random grid recipes), with ours' rendering."""
    generator = setup.generator(merged=True)
    try:
        generator.apply(hidden)
        references = render_all(generator, setup.payloads, batched=True)
        scorer = ReferenceScorer(references_from_images(references), metric="ssim")
        hidden_score = mean_score(scorer, render_all(generator, setup.payloads, batched=True))
        scores = []
        for recipe in random_recipes(setup.blocks, seed, count):
            generator.apply(recipe)
            scores.append(mean_score(scorer, render_all(generator, setup.payloads, batched=True)))
    finally:
        generator.close()
    return hidden_score, statistics.fmean(scores)


def batching_speedup(setup: Setup, repeats: int = 7) -> tuple[float, float, int, int]:
    """Median seconds to render the payloads one by one and batched (interleaved, same generator); pixels that differ, and by how much at most."""
    generator = setup.generator(merged=True)
    try:
        generator.apply(hidden_recipe(setup.blocks, 0))
        single_s, batched_s = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            single = render_all(generator, setup.payloads, batched=False)
            single_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            batched = render_all(generator, setup.payloads, batched=True)
            batched_s.append(time.perf_counter() - started)
        diffs = [np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)) for a, b in zip(single, batched)]
    finally:
        generator.close()
    differ = sum(int(d.any(axis=-1).sum()) for d in diffs)
    return statistics.median(single_s), statistics.median(batched_s), differ, max(int(d.max()) for d in diffs)


def fidelity_probe(setup: Setup, count: int, seed: int = 0) -> dict[str, Any]:
    """How well cheap renders rank candidates: Spearman correlation of low- and full-fidelity scores, and the cost ratio.

    Cheap renders (half the steps; a third of the payloads) are scored
    against references rendered the same cheap way, as a multi-fidelity
    search would have to do. This decides whether screening can pay: the
    cheap score must rank candidates like the full one, at a fraction of the
    time.
    """
    from scipy.stats import spearmanr

    variants = {
        "full": setup.payloads,
        "half steps": [dataclasses.replace(p, steps=max(1, p.steps // 2)) for p in setup.payloads],
        "first payload": setup.payloads[:1],
    }
    hidden = hidden_recipe(setup.blocks, seed)
    recipes = random_recipes(setup.blocks, seed + 100, count)
    generator = setup.generator(merged=True)
    out: dict[str, Any] = {}
    try:
        scores: dict[str, list[float]] = {}
        for name, payloads in variants.items():
            generator.apply(hidden)
            scorer = warmed_scorer(render_all(generator, payloads, batched=True))
            values, started = [], time.perf_counter()
            for recipe in recipes:
                generator.apply(recipe)
                values.append(mean_score(scorer, render_all(generator, payloads, batched=True)))
            scores[name] = values
            out[name] = {"seconds_per_eval": (time.perf_counter() - started) / count}
        for name in variants:
            out[name]["spearman"] = float(spearmanr(scores["full"], scores[name]).statistic)
            top = set(np.argsort(scores["full"])[-max(1, count // 5):])
            kept = set(np.argsort(scores[name])[-max(1, count // 2):])
            out[name]["top_fifth_kept_by_best_half"] = len(top & kept) / len(top)
    finally:
        generator.close()
    return out


# ----------------------------------------------------------------------------- summary


@dataclass
class HiddenResult:
    seed: int
    hidden_score: float
    random_mean: float
    traces: dict[str, Trace]

    def target(self, fraction: float) -> float:
        return self.random_mean + fraction * (self.hidden_score - self.random_mean)

    def gap(self, score: float) -> float:
        return (score - self.random_mean) / (self.hidden_score - self.random_mean)


def ratio_to(result: HiddenResult, baseline: str, clock: str = "wall") -> float:
    """Seconds ours needs to reach ``baseline``'s final best score / ``baseline``'s total seconds (inf: never)."""
    base = result.traces[baseline]
    hit = result.traces["ours"].reach(base.best[-1], clock)
    return math.inf if hit is None else hit[1] / base.clock(clock)[-1]


def fidelity_speedup(result: HiddenResult, clock: str = "wall") -> float | None:
    """Seconds ours needs to reach its own final best without screening / with it (0: never with it); None: not run."""
    if "ours-screen" not in result.traces:
        return None
    target = result.traces["ours"].best[-1]
    plain = result.traces["ours"].reach(target, clock)
    screened = result.traces["ours-screen"].reach(target, clock)
    assert plain is not None
    return 0.0 if screened is None else plain[1] / screened[1]


def overhead(traces: Sequence[Trace]) -> float:
    """Ours' evaluation time beyond generation, as a fraction of the evaluation time."""
    total = sum(sum(s.values()) for t in traces for s in t.split)
    generate = sum(s["generate"] for t in traces for s in t.split)
    return (total - generate) / total if total else 0.0


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "never"
    return f"{value:.{digits}f}"


def median_or_none(values: list[float | None]) -> float | None:
    """Median where every hidden recipe reached the level; None (printed '-') otherwise."""
    if not values or any(v is None for v in values):
        return None
    return statistics.median(values)  # type: ignore[arg-type]


def summarize(results: Sequence[HiddenResult], evals: int) -> dict[str, Any]:
    """Tables and ratios over the hidden recipes, for the pipelines every result has (ours always)."""
    present = [name for name in ALL_PIPELINES if all(name in r.traces for r in results)]
    rows = {}
    for name in present:
        traces = [r.traces[name] for r in results]
        row: dict[str, Any] = {}
        for q in THRESHOLDS:
            hits = [r.traces[name].reach(r.target(q)) for r in results]
            row[f"evals_{q}"] = median_or_none([h[0] if h else None for h in hits])
            row[f"seconds_{q}"] = median_or_none([h[1] if h else None for h in hits])
            row[f"reached_{q}"] = sum(h is not None for h in hits)
        row["final_gap"] = statistics.median(r.gap(r.traces[name].best[-1]) for r in results)
        row["total_s"] = statistics.median(t.elapsed[-1] for t in traces)
        row["total_cpu_s"] = statistics.median(t.cpu[-1] for t in traces)
        count = sum(len(t.split) for t in traces)
        row["split"] = {k: sum(s[k] for t in traces for s in t.split) / count for k in SPLIT}
        row["per_eval_s"] = sum(row["split"].values())
        rows[name] = row
    return {
        "evaluations": evals,
        "hidden": [{**hidden_record(r), **{f"{b}_ratio{suffix}": ratio_to(r, b, clock) for b in present if b in ("seed", "peer")
                                           for suffix, clock in (("", "wall"), ("_cpu", "cpu"))},
                    **{f"fidelity_speedup{suffix}": fidelity_speedup(r, clock) for suffix, clock in (("", "wall"), ("_cpu", "cpu"), ("_work", "units"))}}
                   for r in results],
        "pipelines": rows,
        **{f"{b}_ratio{suffix}": (statistics.median(ratio_to(r, b, clock) for r in results) if b in present else None)
           for b in ("seed", "peer") for suffix, clock in (("", "wall"), ("_cpu", "cpu"))},
        **{f"fidelity_speedup{suffix}": (statistics.median(fidelity_speedup(r, clock) for r in results) if "ours-screen" in present else None)
           for suffix, clock in (("", "wall"), ("_cpu", "cpu"), ("_work", "units"))},
        "overhead": overhead([r.traces["ours"] for r in results]),
    }


def print_summary(summary: dict[str, Any], n_hidden: int) -> None:
    rows = summary["pipelines"]
    print(f"\nTime to quality: median over {n_hidden} hidden recipes, {summary['evaluations']} evaluations per pipeline")
    head = " | ".join(f"{int(q * 100)} % s (evals)" for q in THRESHOLDS)
    print(f"| pipeline | {head} | final gap | total s |")
    print("|---|" + "---|" * (len(THRESHOLDS) + 2))
    for name in rows:
        row = rows[name]
        cells = []
        for q in THRESHOLDS:
            seconds, count = row[f"seconds_{q}"], row[f"evals_{q}"]
            missing = n_hidden - row[f"reached_{q}"]
            cell = f"{fmt(seconds)} ({fmt(count, 0)})" if seconds is not None else f"- ({missing} of {n_hidden} never)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + f" | {row['final_gap']:.3f} | {row['total_s']:.1f} |")
    print("\nPer-evaluation time split (mean seconds)")
    print("| pipeline | " + " | ".join(SPLIT) + " | total |")
    print("|---|" + "---|" * (len(SPLIT) + 1))
    for name in rows:
        split = rows[name]["split"]
        print(f"| {name} | " + " | ".join(f"{split[k]:.4f}" for k in SPLIT) + f" | {rows[name]['per_eval_s']:.4f} |")
    print("\nPer hidden recipe: ours' seconds to the baseline's final quality / the baseline's total seconds")
    for item in summary["hidden"]:
        print(f"  hidden {item['seed']}: hidden score {item['hidden_score']:.4f}, random mean {item['random_mean']:.4f}, "
              f"seed_ratio {fmt(item.get('seed_ratio'), 3)}, peer_ratio {fmt(item.get('peer_ratio'), 3)} "
              f"(CPU time: {fmt(item.get('seed_ratio_cpu'), 3)}, {fmt(item.get('peer_ratio_cpu'), 3)}), "
              f"fidelity_speedup {fmt(item.get('fidelity_speedup'), 2)} (CPU time: {fmt(item.get('fidelity_speedup_cpu'), 2)}; "
              f"rendering work, time following steps x images: {fmt(item.get('fidelity_speedup_work'), 2)})")
    print(f"  median on process CPU time (what an idle machine would take): seed_ratio {fmt(summary['seed_ratio_cpu'], 3)}, "
          f"peer_ratio {fmt(summary['peer_ratio_cpu'], 3)}; total CPU s: "
          + ", ".join(f"{n} {rows[n]['total_cpu_s']:.1f}" for n in rows))
    if summary.get("fidelity_speedup") is not None:
        screened = [f"{item['traces']['ours-screen']['screened']} of {len(item['traces']['ours-screen']['scores'])}" for item in summary["hidden"]]
        print(f"  fidelity_speedup (median): wall {fmt(summary['fidelity_speedup'], 2)}, process CPU {fmt(summary['fidelity_speedup_cpu'], 2)}, "
              f"rendering work (time following steps x images) {fmt(summary['fidelity_speedup_work'], 2)}; "
              f"screened out per run: {', '.join(screened)}")


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ours": "tab:green", "ours-screen": "tab:olive", "seed": "tab:red", "peer": "tab:blue"}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for item in summary["hidden"]:
        gap = item["hidden_score"] - item["random_mean"]
        for name, trace in item["traces"].items():
            best = np.maximum.accumulate(trace["scores"])
            ax.step(trace["elapsed"], (best - item["random_mean"]) / gap, where="post", color=colours[name], alpha=0.7,
                    label=name if item is summary["hidden"][0] else None)
    for q in THRESHOLDS:
        ax.axhline(q, color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("wall-clock seconds since the search started (log)")
    ax.set_ylabel("gap closed by the best merge so far")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Time to quality, tiny demo models on the CPU ({summary['evaluations']} evaluations)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def run_all(setup: Setup, hidden_seeds: Sequence[int], evals: int, random_samples: int, pipelines: Sequence[str] = ALL_PIPELINES,
            say: Callable[[str], None] = print, fidelity: dict[str, Any] | None = None) -> list[HiddenResult]:
    results = []
    for seed in hidden_seeds:
        hidden = hidden_recipe(setup.blocks, seed)
        hidden_score, random_mean = random_baseline(setup, hidden, random_samples, seed)
        say(f"hidden {seed}: scores {hidden_score:.4f}; {random_samples} random recipes {random_mean:.4f}")
        traces = {}
        for name in sorted(pipelines, key=ALL_PIPELINES.index):  # ours before ours-screen: its final best is the target
            if name == "ours-screen" and "ours" in traces:
                plain = traces["ours"]
                trace = run_ours(setup, hidden, evals, seed, fidelity or SCREEN, target=plain.best[-1], budget_s=SCREEN_BUDGET * plain.elapsed[-1])
            elif name.startswith("ours"):
                trace = run_ours(setup, hidden, evals, seed, (fidelity or SCREEN) if name == "ours-screen" else None)
            else:
                trace = run_baseline(name, setup, hidden, evals, seed)
            traces[name] = trace
            best = trace.best[-1]
            screened = f" ({trace.screened} screened out)" if name == "ours-screen" else ""
            say(f"  {name}: {len(trace.scores)} evaluations{screened} in {trace.elapsed[-1]:.1f} s, best {best:.4f} "
                f"(gap {(best - random_mean) / (hidden_score - random_mean):.3f})")
        results.append(HiddenResult(seed, hidden_score, random_mean, traces))
    return results


def hidden_record(result: HiddenResult) -> dict[str, Any]:
    return {"seed": result.seed, "hidden_score": result.hidden_score, "random_mean": result.random_mean,
            "traces": {n: {"elapsed": t.elapsed, "cpu": t.cpu, "scores": t.scores, "split": t.split, "screened": t.screened, "units": t.units}
                       for n, t in result.traces.items()}}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=lambda v: None if math.isinf(v) else v))


def join_results(results: Sequence[HiddenResult]) -> list[HiddenResult]:
    """One result per hidden recipe, with the traces of runs that each ran some of the pipelines."""
    joined: dict[int, HiddenResult] = {}
    for result in results:
        if result.seed in joined:
            joined[result.seed].traces.update(result.traces)
        else:
            joined[result.seed] = result
    missing = [seed for seed, r in joined.items() if "ours" not in r.traces]
    if missing:
        raise SystemExit(f"--combine: hidden recipes {missing} have no run of ours")
    return list(joined.values())


def load_results(path: Path) -> list[HiddenResult]:
    """The hidden-recipe results a ``--json`` file holds (for ``--combine``)."""
    data = json.loads(path.read_text())
    results = []
    for item in data["hidden"]:
        traces = {}
        for name, raw in item["traces"].items():
            trace = Trace(name, item["seed"], screened=int(raw.get("screened", 0)))
            for elapsed, score, split, cpu, units in zip(raw["elapsed"], raw["scores"], raw["split"], raw.get("cpu", raw["elapsed"]),
                                                         raw.get("units", [1.0] * len(raw["scores"]))):
                trace.add(elapsed, score, split, cpu, units)
            traces[name] = trace
        results.append(HiddenResult(item["seed"], item["hidden_score"], item["random_mean"], traces))
    return results


def final_line(summary: dict[str, Any]) -> str:
    return (f"time_to_quality seed_ratio={fmt(summary['seed_ratio'], 3)} peer_ratio={fmt(summary['peer_ratio'], 3)} "
            f"fidelity_speedup={fmt(summary.get('fidelity_speedup'), 2)} overhead={summary['overhead']:.3f}")


def demo_setup(work: Path, payloads: int, steps: int, size: int) -> Setup:
    from lib_mbw.demo_models import ensure_demo_models

    models = ensure_demo_models(work / "models", seed=0)
    return Setup(models.model_a, models.model_b, models.config_dir, "sd1", make_payloads(payloads, steps, size), work=work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 hidden recipes x 40 evaluations (a few minutes)")
    parser.add_argument("--evaluations", type=int, default=None, help="evaluations per pipeline (default 270; --quick 40)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden recipes (default 3; --quick 2)")
    parser.add_argument("--payloads", type=int, default=3, help="payloads of one 64x64 image (the demo's three)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--random-samples", type=int, default=None, help="random recipes for the gap's zero (default 12; --quick 6)")
    parser.add_argument("--hidden-seeds", type=int, nargs="+", default=None, help="which hidden recipes (default 0..hidden-1)")
    parser.add_argument("--pipelines", nargs="+", default=list(ALL_PIPELINES), choices=ALL_PIPELINES,
                        help="run only these (for runs split over processes; --combine joins them)")
    parser.add_argument("--combine", type=Path, nargs="+", default=None,
                        help="summarize the --json files of earlier runs together (traces of one hidden recipe are joined)")
    parser.add_argument("--fidelity-probe", type=int, default=0, metavar="N",
                        help="only measure how cheap renders rank N random recipes against full ones, then exit")
    parser.add_argument("--fidelity", type=json.loads, default=None, metavar="JSON",
                        help=f"the fidelity setting of pipeline ours-screen (default {json.dumps(SCREEN)})")
    parser.add_argument("--json", type=Path, default=None, help="write the summary (with every trace) here")
    parser.add_argument("--plot", type=Path, default=None, help="write the time-to-quality plot here")
    args = parser.parse_args(argv)
    evals = args.evaluations or (40 if args.quick else 270)
    hidden = args.hidden or (2 if args.quick else 3)
    samples = args.random_samples or (6 if args.quick else 12)
    torch.set_num_threads(1)
    if args.fidelity_probe:
        with tempfile.TemporaryDirectory(prefix="ttq-") as tmp:
            probe = fidelity_probe(demo_setup(Path(tmp), args.payloads, args.steps, 64), args.fidelity_probe)
        for name, row in probe.items():
            print(f"{name}: {row['seconds_per_eval']:.3f} s per evaluation, Spearman with full {row['spearman']:.3f}, "
                  f"full-fidelity top fifth kept in the cheap best half {row['top_fifth_kept_by_best_half']:.2f}")
        return 0
    if args.combine:
        results = join_results([result for path in args.combine for result in load_results(path)])
        evals = min(len(t.scores) for r in results for n, t in r.traces.items() if n != "ours-screen")
    else:
        seeds = args.hidden_seeds or list(range(hidden))
        with tempfile.TemporaryDirectory(prefix="ttq-") as tmp:
            setup = demo_setup(Path(tmp), args.payloads, args.steps, 64)
            print(f"{len(setup.payloads)} payloads x 1 image, 64x64, {args.steps} steps, Euler, cfg 7; {evals} evaluations per "
                  f"pipeline; hidden recipes {seeds}; torch {torch.__version__}, 1 thread", flush=True)
            single_s, batched_s, differ, most = batching_speedup(setup)
            print(f"batching: {len(setup.payloads)} payloads one by one {single_s:.3f} s, in one call {batched_s:.3f} s "
                  f"(x{single_s / batched_s:.2f}); {differ} of {len(setup.payloads) * 64 * 64} pixels differ, by {most} grey level(s) at most",
                  flush=True)
            results = run_all(setup, seeds, evals, samples, args.pipelines, say=lambda text: print(text, flush=True), fidelity=args.fidelity)
        if "ours" not in args.pipelines:
            if args.json:
                write_json(args.json, {"evaluations": evals, "hidden": [hidden_record(r) for r in results]})
            return 0
    summary = summarize(results, evals)
    print_summary(summary, len(results))
    if args.json:
        write_json(args.json, summary)
    if args.plot:
        plot(summary, args.plot)
    print(final_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
