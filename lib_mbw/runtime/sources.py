"""Models A and B for the runtime merger: opening them, checking they fit the live UNet and differ.

A model is given as a path (opened with ``checkpoint.open_checkpoint``), an
open ``Checkpoint``, or an in-memory state dict (full checkpoint keys such as
``model.diffusion_model.input_blocks.0.0.weight``, or bare UNet keys such as
``input_blocks.0.0.weight``). Only UNet tensors are read: the runtime merge
never touches the text encoder (BASE) or the VAE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

import torch

from ..blocks import ModelArch, check_same_architecture, detect_architecture, unet_prefix_of
from ..checkpoint import Checkpoint, open_checkpoint, state_dict_checkpoint
from ..errors import ArchitectureMismatchError, IdenticalModelsError

#: What callers may pass as model A or B.
ModelSource = Union[str, "os.PathLike[str]", Checkpoint, Mapping[str, torch.Tensor]]

BARE_UNET_PREFIX = "model.diffusion_model."


@dataclass
class OpenedModel:
    """One of A/B, opened: its checkpoint, where its UNet keys live, and whether we must close it."""

    role: str
    checkpoint: Checkpoint
    owned: bool
    path: Path | None
    source: object

    @property
    def label(self) -> str:
        return f"{self.role} ({self.path})" if self.path is not None else self.role

    @property
    def arch(self) -> ModelArch:
        return self.checkpoint.arch

    def unet_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every UNet tensor, keyed without the UNet prefix."""
        prefix = self.arch.unet_prefix
        return {k[len(prefix) :]: s for k, s in self.checkpoint.shapes.items() if k.startswith(prefix)}

    def get(self, unet_key: str) -> torch.Tensor:
        """One UNet tensor by its key without prefix, on the CPU at its stored dtype."""
        return self.checkpoint.get(self.arch.unet_prefix + unet_key)

    def close(self) -> None:
        if self.owned:
            self.checkpoint.close()


def open_model(source: ModelSource, role: str, *, allow_pickle: bool = False) -> OpenedModel:
    """Open ``source`` as model ``role`` ("model A" / "model B"); errors name the file."""
    if isinstance(source, Checkpoint):
        return OpenedModel(role, source, owned=False, path=_real_path(source.path), source=source)
    if isinstance(source, Mapping):
        tensors = dict(source)
        if unet_prefix_of(tensors) is None and "input_blocks.0.0.weight" in tensors:
            tensors = {BARE_UNET_PREFIX + k: v for k, v in tensors.items()}
        return OpenedModel(role, state_dict_checkpoint(tensors, name=f"<{role} state dict>"), owned=True, path=None, source=source)
    if isinstance(source, (str, os.PathLike)):
        checkpoint = open_checkpoint(source, allow_pickle=allow_pickle)
        return OpenedModel(role, checkpoint, owned=True, path=_real_path(checkpoint.path), source=source)
    raise TypeError(f"{role}: expected a path, a Checkpoint or a state dict, got {type(source).__name__}")


def _real_path(path: Path) -> Path | None:
    try:
        return path.resolve(strict=True)
    except OSError:
        return None


def refuse_same_source(a: OpenedModel, b: OpenedModel) -> None:
    """Refuse A and B that are the same object or the same file, before any tensor is read."""
    same_object = a.source is b.source
    same_file = a.path is not None and b.path is not None and (a.path == b.path or _same_file(a.path, b.path))
    if same_object or same_file:
        where = f" ({a.path})" if a.path is not None else ""
        raise IdenticalModelsError(
            f"model A and model B are the same model{where}: every merge weight would give the same model "
            "and the same score; pick a different model B"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_fits_live(model: OpenedModel, live_shapes: Mapping[str, tuple[int, ...]], live_arch: ModelArch) -> None:
    """Refuse a model whose UNet keys or shapes differ from the live UNet's."""
    check_same_architecture(live_arch, model.arch, "the live model", model.label)
    shapes = model.unet_shapes()
    missing = sorted(set(live_shapes) - set(shapes))
    extra = sorted(set(shapes) - set(live_shapes))
    wrong = sorted(k for k in set(shapes) & set(live_shapes) if tuple(shapes[k]) != tuple(live_shapes[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} UNet tensor(s) of the live model are missing from it ({_few(missing)})")
    if extra:
        problems.append(f"it has {len(extra)} UNet tensor(s) the live model lacks ({_few(extra)})")
    if wrong:
        details = [f"{k} {tuple(shapes[k])} vs live {tuple(live_shapes[k])}" for k in wrong[:5]]
        problems.append(f"{len(wrong)} tensor(s) differ in shape ({'; '.join(details)})")
    if problems:
        raise ArchitectureMismatchError(
            f"{model.label} does not fit the live UNet: {'; '.join(problems)}. "
            "Use models of the same architecture as the loaded one"
        )


def live_architecture(live_shapes: Mapping[str, tuple[int, ...]]) -> ModelArch:
    """The architecture of the live UNet, from its checkpoint-named parameter shapes."""
    return detect_architecture({BARE_UNET_PREFIX + k: s for k, s in live_shapes.items()}, source="the live model")


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
