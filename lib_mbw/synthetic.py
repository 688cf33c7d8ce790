"""Random checkpoints with the real layouts, for tests, the demo and benchmarks.

Tensors are drawn deterministically from (seed, key), so a checkpoint does not
depend on the order in which its keys are generated, and two seeds give two
different "fine-tunes" of the same architecture. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from .keyspec import CheckpointConfig, Layout, checkpoint_layout


def _key_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def random_tensor(key: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A deterministic tensor for ``key``: norm weights near 1, other weights small, ids as integers."""
    if key.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    if shape == (1000,) and "." not in key:
        return torch.linspace(0.00085, 0.012, 1000, dtype=torch.float32).to(dtype)
    generator = torch.Generator().manual_seed(_key_seed(seed, key))
    values = torch.randn(shape, generator=generator, dtype=torch.float32)
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    scale = 1.0 / max(fan_in, 1) ** 0.5 if len(shape) > 1 else 0.02
    if len(shape) == 1 and (".norm" in key or "layer_norm" in key or ".ln_" in key or key.endswith(("norm.weight",))):
        if key.endswith(".weight"):
            values = 1.0 + 0.05 * values
            return values.to(dtype)
    return (values * scale).to(dtype)


def random_state_dict(layout: Layout, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A state dict with every key of ``layout`` filled by ``random_tensor``."""
    return {key: random_tensor(key, shape, seed, dtype) for key, shape in layout.items()}


def write_checkpoint(
    path: str | Path,
    config: CheckpointConfig | Layout,
    seed: int,
    dtype: torch.dtype = torch.float32,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a random ``.safetensors`` checkpoint of ``config`` (or of a raw layout) to ``path``."""
    layout = checkpoint_layout(config) if isinstance(config, CheckpointConfig) else config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(random_state_dict(layout, seed, dtype), str(path), metadata=dict(metadata or {}))
    return path


def module_from_tensors(tensors: Mapping[str, torch.Tensor], requires_grad: bool = False) -> nn.Module:
    """A plain ``nn.Module`` tree whose parameter names are the keys of ``tensors``.

    ``{"input_blocks.0.0.weight": t}`` gives ``module.input_blocks[0][0].weight``,
    like ldm's UNet (A1111's ``diffusion_model``) names it. Parameters share
    storage with the given tensors. Used as a stand-in live UNet by tests,
    benchmarks and the demo.
    """
    root = nn.Module()
    for key, tensor in tensors.items():
        *path, attr = key.split(".")
        module = root
        for part in path:
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        module.register_parameter(attr, nn.Parameter(tensor, requires_grad=requires_grad))
    return root
