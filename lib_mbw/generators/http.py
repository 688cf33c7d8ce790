"""Remote WebUI workers over HTTP: one ``HTTPGenerator`` per A1111/Forge instance with auto-MBW installed.

Per candidate the generator makes two calls to its worker:
``POST /auto-mbw/v1/apply`` (model titles + the full recipe, so a restarted
worker needs no other state) and the WebUI's ``POST /sdapi/v1/txt2img``
(request/response schema of ``modules/api/models.py``; the worker must run
with ``--api``). Images come back base64-encoded and are decoded here.

Failures are sorted by whose fault they are:

* the worker is down, times out, answers 5xx or "busy" (409): retried with
  exponential backoff, then ``WorkerUnavailableError``, which the search
  loop treats as "pause, resumable", not as a bad candidate;
* wrong credentials (401), missing routes (404: auto-MBW not installed, or no
  ``--api``), a refused request (400: unknown checkpoint, A == B): ``MBWError``
  with what to do;
* a response without the payload's images: ``EvaluationFailed``.

Several workers evaluate several candidates at once: the search loop gives
each generator its own thread (``requests.Session`` is per generator).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
from PIL import Image

from ..errors import EvaluationFailed, MBWError, WorkerUnavailableError
from ..payloads import Payload
from ..recipe import Recipe
from .base import GeneratedImage, ProgressCallback
from .webui_params import ProgressPoller, payload_images, txt2img_params

log = logging.getLogger(__name__)

APPLY_PATH = "/auto-mbw/v1/apply"
STATUS_PATH = "/auto-mbw/v1/status"
RESTORE_PATH = "/auto-mbw/v1/restore"
STOP_PATH = "/auto-mbw/v1/stop"
TXT2IMG_PATH = "/sdapi/v1/txt2img"
PROGRESS_PATH = "/sdapi/v1/progress"

#: Answers worth retrying: the worker is restarting, overloaded or busy with another job.
RETRY_STATUSES = frozenset({409, 429, 502, 503, 504})


@dataclass(frozen=True)
class WorkerSettings:
    """How to reach one worker. ``url`` like ``http://gpu-box:7860``; ``auth`` is its ``--api-auth`` user:password."""

    url: str
    auth: tuple[str, str] | None = None
    connect_timeout: float = 5.0
    timeout: float = 900.0  #: seconds one txt2img may take
    retries: int = 3  #: extra attempts after the first, for transient failures
    backoff: float = 1.0  #: seconds before the first retry; doubles each time
    progress_interval: float = 0.5

    @classmethod
    def parse(cls, spec: str, **overrides: Any) -> "WorkerSettings":
        """A worker from ``http://host:port`` or ``http://user:password@host:port`` (scheme optional)."""
        text = spec.strip()
        parts = urlsplit(text if "://" in text else f"http://{text}")
        if not parts.hostname:
            raise MBWError(f"worker {spec!r}: no host; give e.g. http://127.0.0.1:7860")
        auth = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return cls(url=url, auth=auth, **overrides)


class HTTPGenerator:
    """A remote WebUI with auto-MBW as a Generator: A and B are checkpoint titles on that worker."""

    name = "http"

    def __init__(self, worker: WorkerSettings | str, model_a: str, model_b: str, *, mode: str | None = None) -> None:
        self.worker = WorkerSettings.parse(worker) if isinstance(worker, str) else worker
        self.model_a = model_a
        self.model_b = model_b
        self.mode = mode
        self.recipe: Recipe | None = None
        self._session = requests.Session()
        if self.worker.auth is not None:
            self._session.auth = self.worker.auth
        self._lock = threading.Lock()

    # -- transport

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """One call with retries for transient failures; the decoded JSON answer."""
        url = self.worker.url + path
        delay = self.worker.backoff
        last_problem = ""
        for attempt in range(self.worker.retries + 1):
            if attempt:
                log.warning("auto-MBW: worker %s: %s; retry %d/%d in %.1f s", self.worker.url, last_problem, attempt, self.worker.retries, delay)
                time.sleep(delay)
                delay *= 2
            try:
                response = self._session.request(
                    method, url, json=body, timeout=(self.worker.connect_timeout, timeout or self.worker.timeout)
                )
            except requests.Timeout:
                last_problem = "no answer in time"
                continue
            except requests.ConnectionError:
                last_problem = "cannot connect"
                continue
            if response.status_code in RETRY_STATUSES or response.status_code >= 500:
                last_problem = f"HTTP {response.status_code} {_detail(response)}"
                continue
            self._raise_for_status(response, path)
            try:
                return response.json()
            except ValueError:
                raise MBWError(f"worker {self.worker.url}: {path} answered something that is not JSON") from None
        raise WorkerUnavailableError(
            f"worker {self.worker.url}: {last_problem} after {self.worker.retries + 1} attempts; "
            "check that the WebUI is running there (with --api), then resume the search"
        )

    def _raise_for_status(self, response: requests.Response, path: str) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = _detail(response)
        if status == 401:
            raise MBWError(f"worker {self.worker.url}: wrong or missing credentials; give the user:password of its --api-auth")
        if status == 404 and path == TXT2IMG_PATH:
            raise MBWError(f"worker {self.worker.url}: no {TXT2IMG_PATH}; start that WebUI with --api")
        if status == 404:
            raise MBWError(f"worker {self.worker.url}: no {path}; install auto-MBW in that WebUI (or update it) and restart it")
        raise MBWError(f"worker {self.worker.url}: {path} refused the request (HTTP {status}): {detail}")

    # -- Generator protocol

    def apply(self, recipe: Recipe) -> float:
        body: dict[str, Any] = {"model_a": self.model_a, "model_b": self.model_b, "recipe": recipe.to_dict()}
        if self.mode:
            body["mode"] = self.mode
        with self._lock:
            answer = self._request("POST", APPLY_PATH, body, timeout=max(self.worker.timeout, 60.0))
        self.recipe = recipe
        return float(answer.get("seconds", 0.0))

    def generate(self, payload: Payload, progress: ProgressCallback | None = None) -> list[GeneratedImage]:
        body = txt2img_params(payload)
        body.update(send_images=True, save_images=False)
        with self._lock, ProgressPoller(self._read_progress, progress, self.worker.progress_interval, total=payload.steps):
            answer = self._request("POST", TXT2IMG_PATH, body)
        encoded = answer.get("images") or []
        try:
            info = json.loads(answer.get("info") or "{}")
        except json.JSONDecodeError:
            info = {}
        images = [_decode_image(data, self.worker.url, payload) for data in encoded]
        return payload_images(payload, images, info, backend=self.name, source=self.worker.url)

    def restore(self) -> None:
        with self._lock:
            self._request("POST", RESTORE_PATH)
        self.recipe = None

    def close(self) -> None:
        """Ask the worker to restore and release its merge; a worker that is already gone is not an error."""
        try:
            with self._lock:
                self._request("POST", STOP_PATH, timeout=60.0)
        except (WorkerUnavailableError, MBWError) as error:
            log.warning("auto-MBW: could not stop worker %s: %s", self.worker.url, error)
        finally:
            self._session.close()

    # -- helpers

    def status(self) -> dict[str, Any]:
        return self._request("GET", STATUS_PATH, timeout=30.0)

    def _read_progress(self) -> tuple[int, int] | None:
        response = requests.get(
            self.worker.url + PROGRESS_PATH,
            params={"skip_current_image": "true"},
            auth=self.worker.auth,
            timeout=(self.worker.connect_timeout, 5.0),
        )
        if response.status_code != 200:
            return None
        state = response.json().get("state") or {}
        total = int(state.get("sampling_steps") or 0)
        return (min(int(state.get("sampling_step") or 0), total), total) if total else None


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:500]
    except ValueError:
        return response.text[:200]


def _decode_image(data: str, worker: str, payload: Payload) -> Image.Image:
    try:
        if "," in data[:100] and data.startswith("data:"):
            data = data.split(",", 1)[1]
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
    except (ValueError, OSError) as exc:
        raise EvaluationFailed(f"{worker}: payload {payload.name!r}: an image could not be decoded ({exc})") from None
    return image.convert("RGB") if image.mode != "RGB" else image


def create(
    model_a: str,
    model_b: str,
    *,
    url: str,
    auth: str | None = None,
    timeout: float | str | None = None,
    retries: int | str | None = None,
    backoff: float | str | None = None,
    mode: str | None = None,
) -> HTTPGenerator:
    """Factory for registries and ``--generator lib_mbw.generators.http:create --worker url=...,auth=user:pass``.

    Options may arrive as strings (command line ``K=V`` pairs).
    """
    overrides: dict[str, Any] = {}
    for key, value, kind in (("timeout", timeout, float), ("retries", retries, int), ("backoff", backoff, float)):
        if value is not None and value != "":
            try:
                overrides[key] = kind(value)
            except ValueError:
                raise MBWError(f"worker {url}: {key} must be a number, got {value!r}") from None
    settings = WorkerSettings.parse(url, **overrides)
    if auth:
        user, sep, password = str(auth).partition(":")
        if not sep:
            raise MBWError(f"worker {url}: auth must be user:password")
        settings = dataclasses.replace(settings, auth=(user, password))
    return HTTPGenerator(settings, model_a, model_b, mode=mode)
