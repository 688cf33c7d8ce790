"""Very small checkpoints with real key names for the merge tests (a few hundred KB each).

Same structure as ``keyspec.tiny_config`` (every block, every key name) with
8 channels instead of 32, so the many merge tests stay fast.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file

from lib_mbw.blocks import detect_architecture, group_of_key
from lib_mbw.keyspec import CheckpointConfig, VAEConfig, checkpoint_layout, tiny_config
from lib_mbw.synthetic import write_checkpoint


def micro_config(arch: str, *, in_channels: int = 4) -> CheckpointConfig:
    tiny = tiny_config(arch, in_channels=in_channels)
    unet = replace(tiny.unet, model_channels=8, context_dim=8, adm_in_channels=16 if tiny.unet.adm_in_channels else None)
    texts = tuple((p, replace(t, width=8, layers=1, vocab=64, projection_dim=8 if t.projection_dim else None)) for p, t in tiny.text_encoders)
    return CheckpointConfig(f"micro-{arch}", unet, VAEConfig(ch=8, ch_mult=(1, 1, 2, 2), num_res_blocks=1), texts, tiny.extra_keys)


def write_micro(path: Path, arch: str = "sd1", seed: int = 1, dtype: torch.dtype = torch.float32, **kwargs) -> Path:
    return write_checkpoint(path, micro_config(arch, **{k: v for k, v in kwargs.items() if k == "in_channels"}), seed, dtype,
                            metadata=kwargs.get("metadata"))


def load(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def groups(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """key -> merge group of a loaded state dict."""
    arch = detect_architecture({k: tuple(v.shape) for k, v in state.items()})
    return {k: group_of_key(k, arch) for k in state}


def layout(arch: str = "sd1") -> dict[str, tuple[int, ...]]:
    return checkpoint_layout(micro_config(arch))


def rewrite(path: Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    save_file(dict(state), str(path), metadata=dict(metadata) if metadata else None)
