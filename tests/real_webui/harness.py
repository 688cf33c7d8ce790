"""``RunningHost``: a started real WebUI with its client, checkpoints and python, for the host test modules.

``running_host(name)`` is the generator behind the module-scoped ``a1111`` / ``forge``
fixtures (``conftest.py``): it builds or reuses the host's venv, prepares a fresh copy of the tree, starts
the WebUI, yields a ``RunningHost`` and always stops it, printing where the log is. When the host cannot be
built or started the tests are skipped, or fail when ``AUTO_MBW_REQUIRE_REAL_WEBUI=1`` (CI).
Hosts run one at a time: each fixture lives for one test module.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest

from .client import GradioStream, WebUIClient, gradio_call
from .hosts import HOSTS, HostSpec, require_real_webui
from .models import ModelSet
from .server import HostStartError, WebUIServer
from .venvs import VenvBuildError, base_venv

#: Seconds a host may take from launch to answering its API (first start includes install.py's installs).
START_TIMEOUT_S = 900.0


@dataclass
class RunningHost:
    """A started WebUI: ``client`` for REST, ``gradio``/``stream`` for its queue, ``models`` A and B."""

    spec: HostSpec
    server: WebUIServer
    client: WebUIClient
    models: ModelSet
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        """The WebUI's python (overlay venv: the host's packages plus what install.py added)."""
        assert self.server.python is not None
        return self.server.python

    @property
    def root(self) -> Path:
        return self.server.root

    def gradio(self, api_name: str, args: list[Any], timeout: float = 300.0) -> Any:
        return gradio_call(self.python, self.server.url, api_name, args, timeout)

    def stream(self, api_name: str, args: list[Any] | None = None, timeout: float = 600.0) -> GradioStream:
        return GradioStream(self.python, self.server.url, api_name, args, timeout)

    def restart(self) -> float:
        seconds = self.server.restart(START_TIMEOUT_S)
        self.timings.setdefault("restarts", []).append(round(seconds, 1))
        return seconds


def unavailable(message: str) -> None:
    """Skip, or fail under AUTO_MBW_REQUIRE_REAL_WEBUI=1."""
    if require_real_webui():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def work_folder(name: str) -> Path:
    """A folder of our own (pytest's basetemp is shared with other sessions, which prune it while we run)."""
    return Path(tempfile.mkdtemp(prefix=f"auto-mbw-real-{name}-"))


def clean_work_folder(workdir: Path) -> None:
    """Remove the copied tree, models and overlay venv; keep the WebUI's log for a look after the tests."""
    for child in workdir.iterdir():
        if child.name != "webui.log":
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def running_host(name: str, settings: Mapping[str, Any] | None = None) -> Iterator[RunningHost]:
    spec = HOSTS[name]
    workdir = work_folder(name)
    timings: dict[str, Any] = {}
    try:
        start = time.monotonic()
        venv, info = base_venv(spec)
        timings["venv_s"] = round(time.monotonic() - start, 1)
        timings["venv_cached"] = info["cached"]
        server = WebUIServer(spec, workdir, venv, settings)
        start = time.monotonic()
        models = server.prepare()
        assert models is not None
        timings["prepare_s"] = round(time.monotonic() - start, 1)
    except (VenvBuildError, HostStartError, OSError) as error:
        clean_work_folder(workdir)
        unavailable(f"{name}: cannot prepare the real WebUI: {error}")
        return
    try:
        server.start()
        timings["start_s"] = round(server.wait_ready(START_TIMEOUT_S), 1)
    except HostStartError as error:
        server.stop()
        clean_work_folder(workdir)
        unavailable(f"{name}: the real WebUI did not start: {error}")
        return
    host = RunningHost(spec, server, WebUIClient(server.url), models, timings)
    try:
        yield host
    finally:
        server.stop()
        clean_work_folder(workdir)
        print(f"\n[real-webui] {name}: {timings}; log: {server.log_path}", file=sys.stderr)
