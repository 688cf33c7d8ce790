"""FakeWebUI: put the fake WebUI on sys.path, pick a flavour, write tiny checkpoints, reset state."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import torch

FAKE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = FAKE_ROOT.parents[1]
MODULE_PACKAGES = ("modules", "modules_forge")


def ensure_on_path() -> None:
    if str(FAKE_ROOT) not in sys.path:
        sys.path.insert(0, str(FAKE_ROOT))


_TEMPLATES: dict[int, Path] = {}
#: one folder per process for the templates, removed when the process exits (a test session leaves nothing in /tmp)
_TEMPLATE_FOLDER: list[tempfile.TemporaryDirectory[str]] = []
#: a process that starts fake WebUI workers hands them its folder here: a worker killed with SIGKILL cannot clean up
TEMPLATE_ENV = "AUTO_MBW_FAKE_WEBUI_TEMPLATES"


def template_folder() -> Path:
    """The folder of checkpoint templates: the one a parent process handed down, else this process's own."""
    inherited = os.environ.get(TEMPLATE_ENV)
    if inherited and Path(inherited).is_dir():
        return Path(inherited)
    if not _TEMPLATE_FOLDER:
        _TEMPLATE_FOLDER.append(tempfile.TemporaryDirectory(prefix="fake-webui-ckpt-"))
    return Path(_TEMPLATE_FOLDER[0].name)


def fake_checkpoint(dest: Path, seed: int) -> Path:
    """Copy of a tiny checkpoint for ``seed`` (written once into the template folder, then copied)."""
    from fake_sd_model import write_fake_checkpoint

    if seed not in _TEMPLATES:
        template = template_folder() / f"seed{seed}.safetensors"
        if not template.exists():  # processes sharing the folder may write it side by side: each writes whole, then renames
            partial = write_fake_checkpoint(template.with_name(f".seed{seed}-{os.getpid()}.safetensors"), seed)
            os.replace(partial, template)
        _TEMPLATES[seed] = template
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATES[seed], dest)
    return dest


def unet_hash(unet: torch.nn.Module) -> str:
    """sha256 over every parameter's name, dtype and bytes (bit-exact comparisons)."""
    h = hashlib.sha256()
    for name, param in sorted(unet.named_parameters()):
        h.update(name.encode())
        h.update(str(param.dtype).encode())
        h.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FakeWebUI:
    """A fresh fake WebUI: ``models`` = {"name.safetensors": seed} written under ``root/models/Stable-diffusion``."""

    def __init__(self, root: Path, flavour: str = "a1111", models: dict[str, int] | None = None, loaded: str | None = None) -> None:
        ensure_on_path()
        from modules import call_queue, paths, processing, script_callbacks, scripts, sd_models, shared

        self.root = Path(root)
        self.flavour = flavour
        paths.data_path = str(self.root)
        paths.models_path = str(self.root / "models")
        scripts.current_basedir = str(REPO_ROOT)
        shared.reset()
        script_callbacks.clear_callbacks()
        script_callbacks.errors.clear()
        processing.sampling_hooks.clear()
        processing.render_threads.clear()
        call_queue.queue_lock = type(call_queue.queue_lock)()
        sd_models.configure(flavour)
        folder = Path(sd_models.model_path)
        folder.mkdir(parents=True, exist_ok=True)
        for name, seed in (models or {"a.safetensors": 1, "b.safetensors": 2, "c.safetensors": 3}).items():
            if not (folder / name).exists():
                fake_checkpoint(folder / name, seed)
        sd_models.list_models()
        if loaded:
            shared.opts.data["sd_model_checkpoint"] = loaded
        self._main_thread: threading.Thread | None = None
        if flavour == "forge":
            self._start_forge_main_thread()

    @property
    def modules(self):
        return importlib.import_module("modules")

    def _start_forge_main_thread(self) -> None:
        from modules_forge import main_thread

        main_thread.worker_thread_ids.clear()
        self._main_thread = threading.Thread(target=main_thread.loop, name="forge-main", daemon=True)
        self._main_thread.start()

    def sd_model(self):
        from modules import shared

        return shared.sd_model

    def unet(self) -> torch.nn.Module:
        return self.sd_model().unet()

    def close(self) -> None:
        if self._main_thread is not None:
            from modules_forge import main_thread

            main_thread.stop()
            self._main_thread.join(timeout=5)
            self._main_thread = None
