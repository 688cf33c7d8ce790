"""Host-independent steps of the real-host tests: search form values, searches through the Gradio queue,
reference images, ImageReward in the host's python. Used by ``test_a1111.py`` and ``test_forge.py``."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lib_mbw.ui.form import FORM_FIELDS, GRID_HEADERS, SECTIONS, FormValues

from .client import GradioStream
from .harness import RunningHost
from .server import TINY_PAYLOAD

HERE = Path(__file__).resolve().parent
ALL_ONES = ",".join(["1"] * 27)
#: The versions each WebUI pins that auto-MBW's install must leave alone.
HOST_PINS: dict[str, dict[str, str]] = {
    "a1111": {"numpy": "1.26.2", "transformers": "4.30.2"},
    "forge": {"numpy": "1.26.2", "transformers": "4.46.1", "tqdm": "4.66.1", "diffusers": "0.31.0"},
}
HALF = ",".join(["0.5"] * 27)


def plain(value: Any) -> Any:
    """An output's value whether it came plain or wrapped in an update."""
    if isinstance(value, dict) and ("__type__" in value or "value" in value):
        return value.get("value")
    return value


def form_values(host: RunningHost, **changes: Any) -> list[Any]:
    """The search form's raw values: models A/B, the tiny payload, a few evaluations, the given changes."""
    form = FormValues(
        model_a=host.models.model_a, model_b=host.models.model_b, payload_names=["tiny"], max_evaluations=3,
        init_random=2, patience=0, rescore_top=0, run_name="real", scorer="reference", save_images=False,
    )
    for key, value in changes.items():
        setattr(form, key, value)
    values = form.values()
    values[FORM_FIELDS.index("block_grid")] = {"headers": list(GRID_HEADERS), "data": form.block_grid}
    values[FORM_FIELDS.index("warm_start_files")] = []
    return values


def write_references(host: RunningHost, folder: Path) -> Path:
    """Model B's image of the tiny payload as the reference scorer's target (``<folder>/tiny.png``)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = txt2img_payload(host, override_settings={"sd_model_checkpoint": host.models.model_b})
    (folder / "tiny.png").write_bytes(image.png)
    return folder


def txt2img_payload(host: RunningHost, prompt: str | None = None, **extra: Any) -> Any:
    """The WebUI's own txt2img (``/sdapi/v1/txt2img``) of the tiny payload, optionally with another prompt."""
    p = TINY_PAYLOAD
    return host.client.txt2img(prompt or p["prompt"], seed=p["seed"], steps=p["steps"], size=p["width"],
                               cfg_scale=p["cfg_scale"], sampler_name=p["sampler_name"], **extra)


def reference_scorer(folder: Path) -> dict[str, Any]:
    return {"scorer": "reference", "scorer_options": json.dumps({"folder": str(folder), "metric": "ssim"})}


@dataclass
class SearchResult:
    """What the tab showed: the start answer, every status line the live view streamed, and the new run folder."""

    started: Any
    statuses: list[str]
    run_dir: Path | None

    @property
    def final_status(self) -> str:
        return self.statuses[-1] if self.statuses else ""


def start_search(host: RunningHost, **changes: Any) -> Any:
    """Press Search (the real Gradio queue); the button's outputs: one message per form section, then a summary."""
    return host.gradio("/auto_mbw_search", form_values(host, **changes), timeout=120)


def watch_statuses(outputs: list[Any]) -> list[str]:
    statuses = []
    for output in outputs:
        first = output[0] if isinstance(output, (list, tuple)) and output else output
        text = plain(first)
        if isinstance(text, str) and text:
            statuses.append(text)
    return statuses


def run_search(host: RunningHost, timeout: float = 600.0, **changes: Any) -> SearchResult:
    """Press Search and follow the live view (``auto_mbw_watch``) until the run is no longer active."""
    before = set(host.server.history_dir.iterdir())
    started = start_search(host, **changes)
    assert plain(started[len(SECTIONS)]) == "starting the search", started
    outputs = host.stream("/auto_mbw_watch", [], timeout=timeout).wait(timeout + 30)
    return SearchResult(started, watch_statuses(outputs), new_run_dir(host, before))


def new_run_dir(host: RunningHost, before: set[Path], wait: float = 10.0) -> Path | None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        new = [p for p in host.server.history_dir.iterdir() if p not in before and p.is_dir()]
        if new:
            return max(new, key=lambda p: p.stat().st_mtime)
        time.sleep(0.2)
    return None


@contextlib.contextmanager
def long_search(host: RunningHost, references: Path, payload: str = "slow") -> Iterator[GradioStream]:
    """A search of many evaluations, pressed through the tab, with the live view followed; it is rendering on entry.

    On exit the search is ended whatever the test did (the route's Stop), so the next test finds the WebUI idle.
    """
    (host.server.payload_dir / f"{payload}.json").write_text(json.dumps({**TINY_PAYLOAD, "steps": 30}), encoding="utf-8")
    started = start_search(host, payload_names=[payload], max_evaluations=200, init_random=200, **reference_scorer(references))
    assert plain(started[len(SECTIONS)]) == "starting the search", started
    stream = host.stream("/auto_mbw_watch", [], timeout=600)
    try:
        wait_until_rendering(host)
        yield stream
    finally:
        if host.client.mbw_status()["searching"]:
            host.client.mbw_stop()
        host.client.wait_search_end(300)
        stream.close()


def wait_until_rendering(host: RunningHost, timeout: float = 120.0) -> None:
    """Until the WebUI reports a job with sampling progress (a candidate is being rendered)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = host.client.progress().get("state", {})
        if state.get("job_count", 0) and state.get("sampling_steps", 0):
            return
        time.sleep(0.05)
    raise TimeoutError("no rendering seen")


def imagereward_in_host(host: RunningHost, timeout: float = 600.0) -> dict[str, Any]:
    """Run ``imagereward_in_host.py`` with the WebUI's python and the installed extension on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(host.server.environment(), PYTHONPATH=str(host.server.extension_dir))
    result = subprocess.run([str(host.python), str(HERE / "imagereward_in_host.py")], capture_output=True, text=True,
                            env=env, cwd=host.server.extension_dir, timeout=timeout)
    assert result.returncode == 0, f"ImageReward failed in {host.spec.name}'s venv:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def history_rows(run_dir: Path) -> list[dict[str, str]]:
    """The run's ``history.csv`` rows (one per evaluation, then the ``selected`` row)."""
    with (run_dir / "history.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_users_model_is_a(host: RunningHost, image_a: bytes) -> None:
    """The checkpoint setting and the loaded model are A, and the WebUI's own txt2img renders A's image."""
    stem = Path(host.models.model_a).stem
    assert host.client.options()["sd_model_checkpoint"].startswith(stem), "the checkpoint setting changed"
    assert (host.client.mbw_status()["loaded_checkpoint"] or "").startswith(stem), "another model is loaded"
    assert txt2img_payload(host).pixels() == image_a, "model A's image changed"


def write_payload(host: RunningHost, name: str, **changes: Any) -> None:
    """A payload file ``name.json``: the tiny payload with ``changes``."""
    (host.server.payload_dir / f"{name}.json").write_text(json.dumps({**TINY_PAYLOAD, **changes}), encoding="utf-8")


def mix_search(host: RunningHost, references: Path) -> SearchResult:
    """A 3-model mix searched from the tab (model C from the checkpoint list): 2 evaluations per chain step.

    The run finishes with 4 scored evaluations whose history has a column per block and chain step.
    """
    assert host.models.model_c, "this host's test models have no model C"
    result = run_search(host, model_c=host.models.model_c, max_evaluations=2, **reference_scorer(references))
    assert "**Finished**" in result.final_status, result.statuses
    assert result.run_dir is not None
    rows = history_rows(result.run_dir)
    assert "IN00@m3" in rows[0] and "IN00" not in rows[0], list(rows[0])
    assert [r["status"] for r in rows if r["status"] != "selected"] == ["ok"] * 4, [r["reason"] for r in rows]
    manifest = json.loads((result.run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert Path(manifest["models"]["c"]["path"]).name == host.models.model_c and manifest.get("runtime_memory")
    return result
