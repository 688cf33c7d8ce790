"""The fake WebUI's model: a tiny UNet with the real SD1 parameter names, and how it "renders".

Rendering is a deterministic function of the UNet's weights (a mean per
block), the prompt and the seed, so images change with every merge weight and
are identical for identical weights. The LoRA emulations reproduce the
weight-handling rules of A1111's built-in Lora extension (per-layer backups
taken once, restored when the set of networks changes) and of Forge's
LoraLoader (original Parameters kept in ``backup``, new Parameters installed).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lib_mbw.blocks import BLOCKS, block_of_unet_key
from lib_mbw.keyspec import UNetConfig, unet_layout
from lib_mbw.synthetic import write_checkpoint

FAKE_UNET = UNetConfig(model_channels=8, context_dim=16)
UNET_PREFIX = "model.diffusion_model."
LORA_RE = re.compile(r"<lora:([^:>]+):([0-9.]+)>")


def write_fake_checkpoint(path: Path, seed: int) -> Path:
    """A UNet-only SD1-layout checkpoint with tiny channels (about 2 MB)."""
    return write_checkpoint(path, unet_layout(FAKE_UNET), seed)


def build_unet(shapes: dict[str, tuple[int, ...]]) -> torch.nn.Module:
    """A module tree whose named_parameters() are exactly ``shapes``' keys (UNet keys without prefix)."""
    root = torch.nn.Module()
    for key, shape in shapes.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            child = getattr(node, part, None) if part in node._modules else None
            if child is None:
                child = torch.nn.Module()
                node.add_module(part, child)
            node = child
        node.register_parameter(leaf, torch.nn.Parameter(torch.zeros(shape), requires_grad=False))
    return root


def unet_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(UNET_PREFIX):]: v for k, v in state_dict.items() if k.startswith(UNET_PREFIX)}


def block_means(unet: torch.nn.Module) -> torch.Tensor:
    """Mean of every canonical block's parameters (27 values; the image is a function of them)."""
    sums = torch.zeros(len(BLOCKS), dtype=torch.float64)
    counts = torch.zeros(len(BLOCKS), dtype=torch.float64)
    for name, param in unet.named_parameters():
        i = BLOCKS.index(block_of_unet_key(name))
        sums[i] += param.detach().double().sum()
        counts[i] += param.numel()
    return sums / counts.clamp(min=1)


def render(unet: torch.nn.Module, prompt: str, seed: int, width: int, height: int) -> Image.Image:
    means = block_means(unet)
    digest = hashlib.sha256(prompt.encode()).digest()
    tint = torch.tensor([digest[0], digest[1], digest[2]], dtype=torch.float64) / 255.0
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.rand((height, width, 3), generator=generator, dtype=torch.float64)
    weights = torch.linspace(-1.0, 1.0, len(BLOCKS), dtype=torch.float64)
    level = torch.tanh(200.0 * (means * weights).sum())
    pixels = 0.45 + 0.25 * level + 0.15 * tint + 0.15 * noise
    return Image.fromarray((pixels.clamp(0, 1).numpy() * 255).astype(np.uint8))


def lora_delta(name: str, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(f"{name}:{key}".encode()).digest()[:4], "little")
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.01


def loras_in(prompt: str) -> tuple[tuple[str, float], ...]:
    return tuple((m.group(1), float(m.group(2))) for m in LORA_RE.finditer(prompt))


def lora_layers(unet: torch.nn.Module):
    """(name, module) of the layers a LoRA touches: those with a 2-D-or-more ``weight``."""
    for name, module in unet.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None and weight.dim() >= 2:
            yield name, module


# ----------------------------------------------------------------- A1111: extensions-builtin/Lora/networks.py


def a1111_network_apply_weights(layer: torch.nn.Module, name: str, wanted: tuple[tuple[str, float], ...]) -> None:
    """Same rules as networks.network_apply_weights: backup once, restore on change, add deltas."""
    current = getattr(layer, "network_current_names", ())
    backup = getattr(layer, "network_weights_backup", None)
    if backup is None and wanted != ():
        if current != ():
            raise RuntimeError("no backup weights found and current weights are not unchanged")
        backup = layer.weight.to(torch.device("cpu"), copy=True)
        layer.network_weights_backup = backup
    bias_backup = getattr(layer, "network_bias_backup", None)
    if bias_backup is None and getattr(layer, "bias", None) is not None:
        layer.network_bias_backup = layer.bias.to(torch.device("cpu"), copy=True)
    if current != wanted:
        if backup is not None:
            layer.weight.copy_(backup)
        if getattr(layer, "network_bias_backup", None) is not None:
            layer.bias.copy_(layer.network_bias_backup)
        for lora_name, strength in wanted:
            layer.weight.add_(lora_delta(lora_name, name, tuple(layer.weight.shape)) * strength)
        layer.network_current_names = wanted


# ----------------------------------------------------------------- Forge: backend/patcher/lora.py


class FakeLoraLoader:
    """Forge's LoraLoader: ``refresh`` puts back the original Parameters, then installs new patched ones."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.backup: dict[str, torch.Tensor] = {}
        self.online_backup: list = []
        self.loaded_hash = str([])

    @torch.inference_mode()
    def refresh(self, lora_patches, offload_device=torch.device("cpu"), force_refresh=False):
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash and not force_refresh:
            return
        for key, weight in self.backup.items():
            if not isinstance(weight, torch.nn.Parameter):
                weight = torch.nn.Parameter(weight, requires_grad=False)
            _set_attr(self.model, key, weight)
        self.backup = {}
        for (_, patches) in lora_patches.items():
            for key, delta in patches.items():
                weight = _get_attr(self.model, key)
                if key not in self.backup:
                    self.backup[key] = weight.to(device=offload_device)
                _set_attr(self.model, key, torch.nn.Parameter(weight.clone() + delta, requires_grad=False))
        self.loaded_hash = hashes


def _get_attr(obj, attr):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def _set_attr(obj, attr, value):
    *path, last = attr.split(".")
    for name in path:
        obj = getattr(obj, name)
    setattr(obj, last, value)


def forge_lora_patches(unet: torch.nn.Module, wanted: tuple[tuple[str, float], ...]) -> dict:
    patches = {}
    for lora_name, strength in wanted:
        patches[(lora_name, strength, 1.0, False)] = {
            f"diffusion_model.{name}.weight": lora_delta(lora_name, name, tuple(layer.weight.shape)) * strength
            for name, layer in lora_layers(unet)
        }
    return patches


# ----------------------------------------------------------------- the model objects


class FakeSDModel(torch.nn.Module):
    """A1111's LatentDiffusion, reduced to ``model.diffusion_model`` and the attributes the WebUI sets."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = build_unet(unet_layout(FAKE_UNET, prefix=""))
        self.sd_checkpoint_info = None
        self.sd_model_hash = None
        self.sd_model_checkpoint = None
        self.is_sd1, self.is_sd2, self.is_sdxl = True, False, False
        self.lowvram = False

    def unet(self) -> torch.nn.Module:
        return self.model.diffusion_model


class ForgeObjects:
    def __init__(self, unet, clip=None, vae=None, clipvision=None):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class KModel(torch.nn.Module):
    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.lora_loader = FakeLoraLoader(self)


class UnetPatcher:
    def __init__(self, model):
        self.model = model
        self.offload_device = torch.device("cpu")
        self.lora_patches = {}


class FakeForgeModel:
    """Forge's diffusion engine object: a NEW one is built for every model load."""

    def __init__(self, checkpoint_info, state_dict):
        unet = build_unet(unet_layout(FAKE_UNET, prefix=""))
        unet.load_state_dict(unet_state_dict(state_dict))
        self.forge_objects = ForgeObjects(UnetPatcher(KModel(unet)))
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.sd_checkpoint_info = checkpoint_info
        self.filename = checkpoint_info.filename
        self.sd_model_hash = None
        self.is_sd1 = True

    def unet(self) -> torch.nn.Module:
        return self.forge_objects.unet.model.diffusion_model
