"""Fixtures and helpers shared by the WebUI tests: a fresh fake WebUI per test, a host on it, expected weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib_mbw.blocks import BLOCKS, block_of_unet_key
from lib_mbw.payloads import Payload
from lib_mbw.recipe import Recipe
from tests.fake_webui.harness import FakeWebUI, ensure_on_path, unet_hash  # noqa: F401
from tests.runtime_double import merger_factory

ensure_on_path()

FLAVOURS = ("a1111", "forge")


@pytest.fixture(params=FLAVOURS)
def webui(request, tmp_path: Path):
    fake = FakeWebUI(tmp_path, flavour=request.param, loaded="a.safetensors")
    yield fake
    fake.close()


@pytest.fixture
def host(webui):
    from lib_mbw.hosts.webui import WebUIHost

    return WebUIHost(merger_factory=merger_factory())


def recipe(value: float, **blocks: float) -> Recipe:
    weights = {b: value for b in BLOCKS}
    weights.update(blocks)
    return Recipe(weights)


def payload(name: str = "p", **fields) -> Payload:
    defaults = dict(prompt="a red fox", negative_prompt="blurry", steps=4, width=16, height=16, seed=7, batch_size=2)
    defaults.update(fields)
    return Payload(name=name, **defaults)


def checkpoint_unet(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    prefix = "model.diffusion_model."
    return {k[len(prefix):]: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}


def expected_unet(a: Path, b: Path, r: Recipe) -> dict[str, torch.Tensor]:
    """What the live UNet must hold after applying ``r`` with A and B from these files."""
    ta, tb = checkpoint_unet(a), checkpoint_unet(b)
    return {k: torch.lerp(ta[k], tb[k], r.weight(block_of_unet_key(k))) for k in ta}


def live_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.named_parameters()}


def reference_image(weights: dict[str, torch.Tensor], prompt: str, seed: int, size: int, loras=()):
    """What the fake WebUI renders for these UNet weights (plus LoRA deltas)."""
    from fake_sd_model import FAKE_UNET, build_unet, lora_delta, lora_layers, render

    from lib_mbw.keyspec import unet_layout

    unet = build_unet(unet_layout(FAKE_UNET, prefix=""))
    unet.load_state_dict(weights)
    with torch.no_grad():
        for name, layer in lora_layers(unet):
            for lora_name, strength in loras:
                layer.weight.add_(lora_delta(lora_name, name, tuple(layer.weight.shape)) * strength)
    return render(unet, prompt, seed, size, size)
