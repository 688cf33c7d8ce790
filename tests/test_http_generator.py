"""HTTP workers: HTTPGenerator against local fake-WebUI worker processes (our real routes + the WebUI's txt2img schema).

Covers: images equal to what the worker's model renders for the recipe,
auth, clear errors, several workers evaluating at once (speedup measured),
and a worker killed mid-search: the evaluation pauses with
WorkerUnavailableError and resumes on the restarted worker with nothing lost.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests

from lib_mbw.errors import EvaluationFailed, MBWError, WorkerUnavailableError
from lib_mbw.generators.base import Generator
from lib_mbw.generators.http import HTTPGenerator, WorkerSettings
from lib_mbw.recipe import Recipe
from tests.fake_webui.harness import TEMPLATE_ENV, fake_checkpoint, template_folder
from tests.webui_support import expected_unet, payload, recipe, reference_image

ROOT = Path(__file__).resolve().parents[1]
AUTH = ("mbw", "pa:ss")
DELAY = 1.0  #: seconds of "GPU time" per txt2img in the speedup test (the payload's test_delay)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """One fake WebUI worker process."""

    def __init__(self, root: Path, flavour: str = "a1111") -> None:
        self.root = root
        self.flavour = flavour
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Worker":
        command = [sys.executable, "-m", "tests.fake_webui.worker_app", "--root", str(self.root), "--port", str(self.port),
                   "--flavour", self.flavour, "--api-auth", f"{AUTH[0]}:{AUTH[1]}"]
        env = {**os.environ, TEMPLATE_ENV: str(template_folder())}  # killed workers leave no template folder behind
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if requests.get(self.url + "/auto-mbw/v1/status", auth=AUTH, timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"worker on {self.url} did not start in {timeout} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def settings(self, **overrides) -> WorkerSettings:
        values = dict(auth=AUTH, retries=1, backoff=0.2, connect_timeout=2.0, timeout=60.0)
        values.update(overrides)
        return WorkerSettings(self.url, **values)


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    pool = [Worker(tmp_path_factory.mktemp(f"worker{i}"), flavour) for i, flavour in enumerate(("a1111", "forge", "a1111"))]
    for worker in pool:
        worker.start()
    try:
        for worker in pool:
            worker.wait_ready()
        yield pool
    finally:
        for worker in pool:
            worker.kill()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return fake_checkpoint(folder / "a.safetensors", 1), fake_checkpoint(folder / "b.safetensors", 2)


def score(images) -> float:
    """A deterministic stand-in for a scorer: mean brightness of the batch."""
    return float(np.mean([np.asarray(g.image, dtype=np.float64).mean() for g in images]))


# ------------------------------------------------------------------ a small driver over several generators


@dataclass
class BatchResult:
    scores: dict[int, float] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)
    paused_by: WorkerUnavailableError | None = None


def evaluate(generators, recipes: list[Recipe], p, after_each=None, only=None) -> BatchResult:
    """Evaluate recipes over generators, one thread each; pause everything when a worker is unavailable.

    Stands in for the search loop's batch evaluation (lib_mbw/search/loop.py) in these tests.
    """
    todo: queue.Queue[int] = queue.Queue()
    for i in only if only is not None else range(len(recipes)):
        todo.put(i)
    result = BatchResult()
    paused = threading.Event()
    lock = threading.Lock()

    def run(gen) -> None:
        while not paused.is_set():
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                gen.apply(recipes[i])
                value = score(gen.generate(p))
            except WorkerUnavailableError as error:
                with lock:
                    result.pending.append(i)
                    result.paused_by = error
                paused.set()
                return
            with lock:
                result.scores[i] = value
            if after_each:
                after_each(len(result.scores))

    threads = [threading.Thread(target=run, args=(g,)) for g in generators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while not todo.empty():
        result.pending.append(todo.get_nowait())
    return result


# ------------------------------------------------------------------ tests


def test_worker_images_are_the_merge_of_a_and_b(workers, checkpoints):
    for worker in workers[:2]:  # an A1111 and a Forge worker
        gen = HTTPGenerator(worker.settings(), "a.safetensors", "b.safetensors")
        assert isinstance(gen, Generator)
        r = recipe(0.3, IN05=0.9, OUT=0.0)
        assert gen.apply(r) >= 0
        images = gen.generate(payload(batch_size=2, seed=21))
        assert [g.seed for g in images] == [21, 22] and images[0].params["source"] == worker.url
        want = reference_image(expected_unet(*checkpoints, r), "a red fox", 21, 16)
        assert images[0].image.tobytes() == want.tobytes()
        status = gen.status()
        assert status["host"] == worker.flavour and status["session"]["recipe"]["weights"]["IN05"] == 0.9
        gen.close()
        assert requests.get(worker.url + "/auto-mbw/v1/status", auth=AUTH).json()["session"] is None


def test_progress_is_polled_from_the_worker(workers):
    gen = HTTPGenerator(workers[0].settings(progress_interval=0.05), "a.safetensors", "b.safetensors")
    reports = []
    gen.apply(recipe(0.5))
    gen.generate(payload(batch_size=1, steps=5), progress=lambda done, total: reports.append((done, total)))
    assert reports[-1] == (5, 5)


def test_credentials_and_bad_choices_give_clear_errors(workers):
    no_auth = HTTPGenerator(workers[0].settings(auth=None), "a.safetensors", "b.safetensors")
    with pytest.raises(MBWError, match="credentials"):
        no_auth.apply(recipe(0.5))
    wrong = HTTPGenerator(workers[0].settings(), "a.safetensors", "nope.safetensors")
    with pytest.raises(MBWError, match="'nope.safetensors' is not in the WebUI's list"):
        wrong.apply(recipe(0.5))


def test_a_worker_that_is_down_makes_the_search_pause(tmp_path):
    gen = HTTPGenerator(WorkerSettings(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.05, connect_timeout=0.5), "a", "b")
    t0 = time.perf_counter()
    with pytest.raises(WorkerUnavailableError, match="cannot connect after 3 attempts.*resume"):
        gen.apply(recipe(0.5))
    assert time.perf_counter() - t0 >= 0.05 + 0.1, "backs off between attempts"


def test_several_workers_evaluate_at_once(workers, capsys):
    recipes = [recipe(v) for v in np.linspace(0.1, 0.9, 6)]
    p = payload(batch_size=1, extra={"test_delay": DELAY})
    one = [HTTPGenerator(workers[0].settings(), "a.safetensors", "b.safetensors")]
    three = [HTTPGenerator(w.settings(), "a.safetensors", "b.safetensors") for w in workers]
    for gen in three:  # open each worker's merge session first: the timing is about evaluations
        gen.apply(recipes[0])
    t0 = time.perf_counter()
    sequential = evaluate(one, recipes, p)
    t1 = time.perf_counter()
    parallel = evaluate(three, recipes, p)
    t3 = time.perf_counter()
    assert sequential.scores == parallel.scores and len(parallel.scores) == 6
    speedup = (t1 - t0) / (t3 - t1)
    with capsys.disabled():
        print(f"\nHTTP workers: 6 evaluations ({DELAY} s GPU stand-in each): 1 worker {t1 - t0:.2f} s, "
              f"3 workers {t3 - t1:.2f} s, speedup {speedup:.2f}x")
    assert speedup >= 1.6, "3 workers must evaluate candidates concurrently (ideal: 3x)"


def test_worker_killed_mid_search_pauses_and_resumes_without_losing_work(workers):
    recipes = [recipe(v) for v in np.linspace(0.05, 0.95, 8)]
    p = payload(batch_size=1, extra={"test_delay": 0.2})
    reference = evaluate([HTTPGenerator(workers[0].settings(), "a.safetensors", "b.safetensors")], recipes, p).scores
    victim = workers[1]
    gens = [HTTPGenerator(w.settings(), "a.safetensors", "b.safetensors") for w in (workers[0], victim)]
    killed = threading.Event()

    def kill_after_three(done: int) -> None:
        if done >= 3 and not killed.is_set():
            killed.set()
            victim.kill()

    first = evaluate(gens, recipes, p, after_each=kill_after_three)
    assert first.paused_by is not None and victim.url in str(first.paused_by)
    assert first.pending and set(first.scores) | set(first.pending) == set(range(8))
    assert not set(first.scores) & set(first.pending)
    victim.start().wait_ready()
    second = evaluate(gens, recipes, p, only=first.pending)
    assert second.paused_by is None and not second.pending
    assert {**first.scores, **second.scores} == reference


def test_worker_settings_parse():
    s = WorkerSettings.parse("http://u:p%40ss@gpu-box:7861/")
    assert (s.url, s.auth) == ("http://gpu-box:7861", ("u", "p@ss"))
    assert WorkerSettings.parse("127.0.0.1:7860").url == "http://127.0.0.1:7860"
    assert WorkerSettings.parse("https://host").auth is None
    with pytest.raises(MBWError, match="no host"):
        WorkerSettings.parse("http://")


def response(status: int, body: bytes = b'{"detail": "x"}') -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = body
    return r


@pytest.mark.parametrize(
    "status, path, message",
    [
        (404, "/sdapi/v1/txt2img", "start that WebUI with --api"),
        (404, "/auto-mbw/v1/apply", "install auto-MBW in that WebUI"),
        (401, "/auto-mbw/v1/apply", "--api-auth"),
        (400, "/auto-mbw/v1/apply", "refused the request \\(HTTP 400\\): x"),
    ],
)
def test_http_errors_say_what_to_do(status, path, message):
    gen = HTTPGenerator("http://127.0.0.1:9", "a", "b")
    with pytest.raises(MBWError, match=message):
        gen._raise_for_status(response(status), path)


def test_undecodable_images_fail_the_evaluation():
    from lib_mbw.generators.http import _decode_image

    with pytest.raises(EvaluationFailed, match="could not be decoded"):
        _decode_image("bm90IGFuIGltYWdl", "http://w", payload())


def test_factory_takes_command_line_options():
    from lib_mbw.generators.http import create

    gen = create(model_a="a", model_b="b", url="gpu:7861", auth="u:p:q", timeout="30", retries="5", backoff="0.5")
    w = gen.worker
    assert (w.url, w.auth, w.timeout, w.retries, w.backoff) == ("http://gpu:7861", ("u", "p:q"), 30.0, 5, 0.5)
    with pytest.raises(MBWError, match="retries must be a number"):
        create(model_a="a", model_b="b", url="gpu", retries="many")
