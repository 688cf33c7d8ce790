"""Helpers for the runtime-merge tests: live stand-in UNets, reference merges, tensor hashes."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Mapping

import pytest
import torch
from torch import nn

from lib_mbw.blocks import BLOCKS, block_of_unet_key, present_blocks
from lib_mbw.checkpoint import open_checkpoint
from lib_mbw.recipe import Recipe
from lib_mbw.synthetic import module_from_tensors

PREFIX = "model.diffusion_model."


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP's thread handoff makes them slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unet_tensors(path: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The UNet tensors of a checkpoint file, keyed without prefix."""
    with open_checkpoint(path) as ckpt:
        return {k[len(PREFIX) :]: ckpt.get(k, dtype) for k in ckpt.unet_keys()}


def live_unet(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> nn.Module:
    """A live stand-in UNet holding copies of ``tensors`` at ``dtype``."""
    return module_from_tensors({k: v.to(dtype).clone() for k, v in tensors.items()})


def tensor_hashes(module: nn.Module) -> dict[str, str]:
    """sha256 of every parameter's bytes (plus dtype and shape), by parameter name."""
    out = {}
    for name, param in module.named_parameters():
        data = param.detach().contiguous().cpu()
        digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
        out[name] = digest.hexdigest()
    return out


def reference_merge(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], recipe: Recipe, family: str
) -> dict[str, torch.Tensor]:
    """The offline merge engine's math (``merge.methods.weighted_sum``, fp32) per tensor, w from its block."""
    from lib_mbw.merge.methods import weighted_sum

    out = {}
    for key, tensor in a.items():
        w = recipe.weights[block_of_unet_key(key, family)]
        out[key] = weighted_sum(tensor.float(), b[key].float(), w).clone()
    return out


def exact_lerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """``torch.lerp`` except that weights 0 and 1 return A and B themselves (lerp turns -0.0 into +0.0)."""
    return a.clone() if w == 0.0 else b.clone() if w == 1.0 else torch.lerp(a, b, w)


def random_recipe(rng: random.Random, family: str = "sd1", levels: int = 21) -> Recipe:
    """Grid weights like a search suggests (0, 0.05, ..., 1), including exact 0 and 1."""
    return Recipe({blk: rng.randrange(levels) / (levels - 1) for blk in present_blocks(family)})


def full_recipe(weight: float) -> Recipe:
    return Recipe.uniform(weight, BLOCKS)


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in module.named_parameters()}
