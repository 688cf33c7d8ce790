"""Start a real WebUI on CPU with auto-MBW installed, wait until it serves, capture its log, stop it.

``WebUIServer(spec, workdir, base_venv)``:

* ``prepare()`` copies the tree from ../shared/webui (read-only there) to ``workdir/webui``, adds the helper
  repositories its launcher checks (``repositories/<name>`` at the commits the launcher asks for), copies the
  extension (this repository's tracked and unignored files) to ``extensions/auto-MBW``, writes the test
  checkpoints (``models.MODEL_WRITERS``) and seeds ``config.json``;
* ``start()`` runs the host's own ``launch.py`` with the overlay venv's python and ``REQS_FILE`` pointing at
  the relaxed requirements, so ``prepare_environment()`` passes without pip and runs every extension's
  ``install.py`` as it does for users; output goes to ``workdir/webui.log``;
* ``wait_ready()`` polls the API until the WebUI answers (or the process dies: the log tail is in the error);
* ``stop()`` sends SIGINT to the process group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

import requests

from .hosts import REPO_ROOT, HostSpec, repositories_sources
from .models import MODEL_WRITERS, ModelSet
from .venvs import RELAXED, overlay_venv

EXTENSION_NAME = "auto-MBW"

#: The payload every real-host search renders: one 64x64 image, 2 steps, fixed seed (a fraction of a second on CPU).
TINY_PAYLOAD: dict[str, Any] = {
    "prompt": "a red fox in the snow, detailed", "negative_prompt": "", "steps": 2, "cfg_scale": 5.0,
    "sampler_name": "Euler", "width": 64, "height": 64, "seed": 1234, "batch_size": 1,
}


class HostStartError(RuntimeError):
    """The WebUI could not be prepared or did not come up; the message says why (and ends with the log tail)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def copy_tree(source: Path, target: Path) -> None:
    """Copy without the source's permissions (shared/ is read-only; the WebUI writes into its tree)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-r", "--no-preserve=mode,ownership", str(source), str(target)], check=True)


def extension_files(repo: Path = REPO_ROOT) -> list[str]:
    """This repository's tracked and unignored files that exist (what a user's ``git clone`` would hold, plus new files)."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode()
    return sorted({name for name in out.split("\0") if name and (repo / name).is_file() and not (repo / name).is_symlink()})


def copy_extension(target: Path, repo: Path = REPO_ROOT) -> None:
    for name in extension_files(repo):
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / name, dest)


def mark_commit(folder: Path, commit: str) -> None:
    """Give a helper repository copied without ``.git`` the commit the launcher checks (``git rev-parse HEAD``).

    The launcher's ``git_clone`` fetches from GitHub when HEAD differs; a detached HEAD naming the commit is
    all it reads (the files are that commit's).
    """
    if (folder / ".git").exists():
        return
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    (folder / ".git" / "HEAD").write_text(commit + "\n", encoding="utf-8")


def find_repository(spec: HostSpec, name: str) -> Path | None:
    for folder in repositories_sources(spec):
        if (folder / name).is_dir():
            return folder / name
    return None


class WebUIServer:
    """One real WebUI process in ``workdir``; see the module docstring."""

    def __init__(self, spec: HostSpec, workdir: Path, base_venv: Path, settings: Mapping[str, Any] | None = None) -> None:
        self.spec = spec
        self.workdir = Path(workdir)
        self.base_venv = base_venv
        self.root = self.workdir / "webui"
        self.log_path = self.workdir / "webui.log"
        self.settings = dict(settings or {})
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.python: Path | None = None
        self.models: ModelSet | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def extension_dir(self) -> Path:
        return self.root / "extensions" / EXTENSION_NAME

    @property
    def payload_dir(self) -> Path:
        """auto-MBW's payload folder (setting ``auto_mbw_payload_dir``), holding ``tiny.json``."""
        return self.workdir / "mbw" / "payloads"

    @property
    def history_dir(self) -> Path:
        """auto-MBW's run folders (setting ``auto_mbw_history_dir``)."""
        return self.workdir / "mbw" / "history"

    # -- preparing

    def prepare(self, with_models: bool = True) -> ModelSet | None:
        """Tree, helper repositories, extension, overlay venv and (``with_models``) test checkpoints and settings."""
        if not self.spec.source.is_dir():
            raise HostStartError(f"{self.spec.source} is missing (the real WebUI trees live in ../shared/webui)")
        missing = [name for name, _ in self.spec.repositories if find_repository(self.spec, name) is None]
        if missing:
            raise HostStartError(
                f"{self.spec.name}: helper repositories {', '.join(missing)} are in none of "
                f"{', '.join(map(str, repositories_sources(self.spec)))} (the launcher would clone them from GitHub)"
            )
        copy_tree(self.spec.source, self.root)
        for name, commit in self.spec.repositories:
            target = self.root / "repositories" / name
            if not target.exists():  # not already copied with the tree
                copy_tree(find_repository(self.spec, name), target)
            mark_commit(target, commit)
        copy_extension(self.extension_dir)
        self.python = overlay_venv(self.base_venv, self.workdir / "venv")
        if not with_models:
            return None
        writer = MODEL_WRITERS.get(self.spec.name)
        if writer is None:
            raise HostStartError(f"no test checkpoints for host {self.spec.name!r} (tests/real_webui/models.py)")
        self.models = writer(self.root, self.workdir)
        self.payload_dir.mkdir(parents=True)
        self.history_dir.mkdir(parents=True)
        (self.payload_dir / "tiny.json").write_text(json.dumps(TINY_PAYLOAD, indent=2), encoding="utf-8")
        config = {
            "sd_model_checkpoint": self.models.model_a,
            "live_previews_enable": False,  # the Approx NN preview model would be downloaded at the first render
            "auto_mbw_payload_dir": str(self.payload_dir),
            "auto_mbw_history_dir": str(self.history_dir),
            **self.settings,
        }
        (self.root / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        return self.models

    def environment(self) -> dict[str, str]:
        env = {
            key: value for key, value in os.environ.items()
            if not key.startswith(("PYTHON", "VIRTUAL_ENV", "HF_", "TRANSFORMERS_", "SD_WEBUI", "COMMANDLINE_ARGS", "GRADIO_"))
        }
        env.update(
            REQS_FILE=str(self.base_venv / RELAXED),
            PYTHONUNBUFFERED="1",
            GRADIO_ANALYTICS_ENABLED="False",
            DO_NOT_TRACK="1",
            PATH=f"{self.python.parent}:{env.get('PATH', '')}",
            VIRTUAL_ENV=str(self.python.parent.parent),
        )
        env.update(self.models.env if self.models else {})
        env.update(dict(self.spec.env))
        return env

    # -- running

    def start(self) -> None:
        if self.python is None:
            self.prepare()
        if self.process is not None and self.process.poll() is None:
            raise HostStartError("the WebUI is already running")
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts}: {time.strftime('%H:%M:%S')} =====\n".encode())
        log.flush()
        command = [str(self.python), "launch.py", *self.spec.launch_flags(self.port)]
        self.process = subprocess.Popen(
            command, cwd=self.root, env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Seconds until the API answered; HostStartError if the process exits or the time runs out.

        No request is sent before the WebUI prints ``Startup time:`` (after it added its API): a request that
        reaches the app earlier starts it, and the WebUI then dies adding its API middleware.
        """
        start = time.monotonic()
        marker = f"===== start {self.starts}:"
        while time.monotonic() - start < timeout:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise HostStartError(f"{self.spec.name} exited with {code} while starting; log ends:\n{self.log_tail()}")
            if "Startup time:" not in self.log_text().rpartition(marker)[2]:
                time.sleep(1.0)
                continue
            try:
                if requests.get(f"{self.url}/sdapi/v1/sd-models", timeout=5).status_code == 200:
                    return time.monotonic() - start
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise HostStartError(f"{self.spec.name} did not answer within {timeout:.0f} s; log ends:\n{self.log_tail()}")

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGINT the WebUI's process group, SIGKILL after ``grace`` seconds; the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGINT)
                process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
            except ProcessLookupError:
                pass
        try:  # children (e.g. a pip install.py started) of the group
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return process.returncode

    def restart(self, timeout: float = 600.0) -> float:
        self.stop()
        self.start()
        return self.wait_ready(timeout)

    def rss_bytes(self) -> int:
        """Resident memory of the WebUI's python process (the launcher runs the WebUI in-process)."""
        if self.process is None:
            return 0
        with open(f"/proc/{self.process.pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0
