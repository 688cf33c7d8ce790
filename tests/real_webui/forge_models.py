"""Test checkpoints Forge recognises: SD1.5 keys, 320 model channels, but every UNet level 320 wide.

Forge has no per-checkpoint yaml: ``huggingface_guess`` detects the model from its keys and shapes (SD1.5
needs ``model_channels`` 320, a 768-wide cross-attention context, conv ``proj_in``) and reads the UNet's
channel multipliers, depths and resolutions from the state dict, while the text encoder and VAE are built
from the full-size configs in the tree's ``backend/huggingface/runwayml/stable-diffusion-v1-5``. So the UNet
can be made small by giving all four levels 320 channels (``channel_mult`` (1, 1, 1, 1): 111 M parameters
instead of 860 M, 446 MB in fp32), and CLIP-L and the VAE keep their real sizes. Weights are random, shaped
as ``lib_mbw.demo_models`` shapes the demo models (A and B are fine-tunes of one base, smooth VAE decoder),
and stored in fp16 (634 MB per file). The LoRA ``models.lora`` (``models.write_kohya_lora``) is written for
these shapes into ``models/Lora``, where Forge's built-in ``sd_forge_lora`` finds it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from lib_mbw.demo_models import DemoShape, shape_unet, smooth_vae_decoder
from lib_mbw.keyspec import SD1, SD1_UNET, UNET_PREFIX, checkpoint_layout
from lib_mbw.synthetic import random_tensor

from .hosts import cache_root
from .models import MODEL_WRITERS, ModelSet, write_kohya_lora

#: Bump when the generated files change, so cached copies are rebuilt.
FORGE_MODELS_VERSION = 1

#: SD1.5 key names and CLIP/VAE sizes, a UNet with 320 channels at every level.
FORGE_TEST_CONFIG = replace(SD1, name="forge-test-sd1", unet=replace(SD1_UNET, channel_mult=(1, 1, 1, 1)))

NAMES = ("mbw-forge-a.safetensors", "mbw-forge-b.safetensors", "mbw-forge-c.safetensors")


def forge_state_dict(model_seed: int, base_seed: int = 0, shape: DemoShape | None = None) -> dict[str, torch.Tensor]:
    """One test model: the shared base, its UNet moved ``shape.finetune`` toward its own random weights; fp16."""
    shape = shape or DemoShape()
    state: dict[str, torch.Tensor] = {}
    for key, dims in checkpoint_layout(FORGE_TEST_CONFIG).items():
        tensor = random_tensor(key, dims, base_seed)
        if key.startswith(UNET_PREFIX):
            tensor = torch.lerp(tensor, random_tensor(key, dims, model_seed), shape.finetune)
        one = {key: tensor}
        smooth_vae_decoder(one)
        shape_unet(one, shape)
        tensor = one[key]
        state[key] = tensor.to(torch.float16) if tensor.dtype == torch.float32 else tensor
    return state


def cached_forge_models(seed: int = 0) -> Path:
    """The folder holding A, B and C for ``seed`` under the test cache, written on first use (about a minute each).

    A cache made before C existed keeps A and B; only C is added (written beside, then renamed into place).
    """
    folder = cache_root() / "test-models" / f"forge-v{FORGE_MODELS_VERSION}-seed{seed}"
    if all((folder / name).is_file() for name in NAMES):
        return folder
    if not all((folder / name).is_file() for name in NAMES[:2]):
        partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for offset, (name, role) in enumerate(zip(NAMES[:2], "AB"), start=1):
            _write_forge_model(partial / name, role, seed, offset)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    partial_c = folder / f".{NAMES[2]}.partial-{os.getpid()}"
    _write_forge_model(partial_c, "C", seed, 3)
    partial_c.rename(folder / NAMES[2])
    return folder


def _write_forge_model(path: Path, role: str, seed: int, offset: int) -> None:
    """Test model ``role`` (model seed ``3 * seed + offset`` over the base ``3 * seed``; C: offset 3)."""
    state = forge_state_dict(3 * seed + offset, 3 * seed)
    save_file(state, str(path), metadata={"auto_mbw_test": json.dumps({"model": role, "seed": seed})})


def write_forge_models(webui_root: Path, work: Path, seed: int = 0) -> ModelSet:
    """A and B in ``webui_root/models/Stable-diffusion``, hard-linked (or copied) from the test cache."""
    source = cached_forge_models(seed)
    folder = webui_root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        try:
            os.link(source / name, folder / name)
        except OSError:
            shutil.copyfile(source / name, folder / name)
    models = ModelSet(NAMES[0], NAMES[1], folder, {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, model_c=NAMES[2])
    shapes = {k: torch.empty(d, device="meta") for k, d in checkpoint_layout(FORGE_TEST_CONFIG).items() if k.startswith(UNET_PREFIX)}
    write_kohya_lora(webui_root / "models" / "Lora" / f"{models.lora}.safetensors", shapes)
    return models


MODEL_WRITERS.setdefault("forge", write_forge_models)
