"""Talk to a running real WebUI: its REST API, auto-MBW's ``/auto-mbw/v1`` routes, and its Gradio queue.

``WebUIClient`` wraps ``requests`` (JSON in, JSON out, the response body in every error). ``gradio_call``
and ``GradioStream`` run ``gradio_driver.py`` with the *host's* python, so the Gradio client always matches
the host's gradio (0.5 for A1111's 3.41, 1.x for Forge's 4.40), as a browser's JavaScript would.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import requests

DRIVER = Path(__file__).resolve().parent / "gradio_driver.py"


class APIError(RuntimeError):
    """An HTTP call answered with an error status; the message holds method, path, status and body."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:2000]}")
        self.status = status
        self.body = body


class WebUIClient:
    """The WebUI's API at ``url`` (``--api``) plus auto-MBW's routes."""

    def __init__(self, url: str, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()

    def request(self, method: str, path: str, payload: Any = None, timeout: float | None = None) -> Any:
        for attempt in range(3):
            try:
                response = self.http.request(method, self.url + path, json=payload, timeout=timeout or self.timeout)
                break
            except requests.ConnectionError:
                # the server may close an idle keep-alive connection just as it is reused; GETs are safe to repeat
                if method != "GET" or attempt == 2:
                    raise
                time.sleep(0.2)
        if response.status_code >= 400:
            raise APIError(method, path, response.status_code, response.text)
        return response.json() if response.content else None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, payload: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, payload if payload is not None else {}, **kw)

    # -- WebUI API

    def options(self) -> dict[str, Any]:
        return self.get("/sdapi/v1/options")

    def set_options(self, **values: Any) -> None:
        self.post("/sdapi/v1/options", values)

    def sd_models(self) -> list[dict[str, Any]]:
        return self.get("/sdapi/v1/sd-models")

    def refresh_checkpoints(self) -> None:
        self.post("/sdapi/v1/refresh-checkpoints")

    def interrupt(self) -> None:
        self.post("/sdapi/v1/interrupt")

    def progress(self) -> dict[str, Any]:
        return self.get("/sdapi/v1/progress?skip_current_image=true")

    def txt2img(self, prompt: str = "a red fox in the snow", *, seed: int = 1234, steps: int = 2, size: int = 64, **extra: Any) -> "Txt2ImgResult":
        """A small fixed-seed txt2img through ``/sdapi/v1/txt2img``; the first image's PNG bytes and its info."""
        payload = {
            "prompt": prompt, "negative_prompt": "", "seed": seed, "steps": steps, "width": size, "height": size,
            "cfg_scale": 5.0, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1, "send_images": True,
            "save_images": False, **extra,
        }
        body = self.post("/sdapi/v1/txt2img", payload)
        info = json.loads(body["info"]) if isinstance(body.get("info"), str) else body.get("info") or {}
        return Txt2ImgResult(base64.b64decode(body["images"][0]), info)

    # -- auto-MBW routes

    def mbw_status(self) -> dict[str, Any]:
        return self.get("/auto-mbw/v1/status")

    def mbw_apply(self, model_a: str, model_b: str, recipe: Any, mode: str | None = None) -> dict[str, Any]:
        return self.post("/auto-mbw/v1/apply", {"model_a": model_a, "model_b": model_b, "recipe": recipe, "mode": mode})

    def mbw_restore(self) -> dict[str, Any]:
        return self.post("/auto-mbw/v1/restore")

    def mbw_stop(self) -> dict[str, Any]:
        return self.post("/auto-mbw/v1/stop")

    def wait_search_end(self, timeout: float = 600.0) -> dict[str, Any]:
        """Poll the status route until no search runs; the last status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.mbw_status()
            if not status["searching"]:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"the search still runs after {timeout:.0f} s: {status}")
            time.sleep(0.5)

    # -- Gradio (the page's own queue)

    def gradio_config(self) -> dict[str, Any]:
        return self.get("/config")

    def api_names(self) -> set[str]:
        return {d.get("api_name") for d in self.gradio_config().get("dependencies", []) if d.get("api_name")}


class Txt2ImgResult:
    def __init__(self, png: bytes, info: dict[str, Any]) -> None:
        self.png = png
        self.info = info

    def pixels(self) -> bytes:
        """Decoded RGB pixels (PNG metadata differs between calls; the pixels must not)."""
        from PIL import Image

        with Image.open(io.BytesIO(self.png)) as image:
            return image.convert("RGB").tobytes()


def gradio_call(python: Path, url: str, api_name: str, args: list[Any], timeout: float = 300.0) -> Any:
    """Run one Gradio endpoint to its end with the host's gradio_client; its output (raw values)."""
    result = subprocess.run(
        [str(python), str(DRIVER), url, api_name, json.dumps(args), "--timeout", str(timeout)],
        capture_output=True, text=True, timeout=timeout + 60,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    outputs = [line["output"] for line in lines if "output" in line]
    errors = [line["error"] for line in lines if line.get("error")]
    if result.returncode != 0 or errors or not outputs:
        raise APIError("GRADIO", api_name, result.returncode, "; ".join(errors) or result.stderr[-3000:])
    return outputs[-1]


class GradioStream:
    """A streaming Gradio endpoint (e.g. the live view) followed in the background; ``outputs`` grows as it yields."""

    def __init__(self, python: Path, url: str, api_name: str, args: list[Any] | None = None, timeout: float = 600.0) -> None:
        self.outputs: list[Any] = []
        self.finished = threading.Event()
        self.process = subprocess.Popen(
            [str(python), str(DRIVER), url, api_name, json.dumps(args or []), "--stream", "--timeout", str(timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                data = json.loads(line)
                if "output" in data:
                    self.outputs.append(data["output"])
        self.finished.set()

    def wait(self, timeout: float) -> list[Any]:
        if not self.finished.wait(timeout):
            raise TimeoutError(f"the stream did not end within {timeout:.0f} s ({len(self.outputs)} outputs)")
        self.process.wait(30)
        return self.outputs

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self.outputs))
