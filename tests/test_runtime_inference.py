"""A live UNet built under ``torch.inference_mode()`` (as Forge builds every model) still runs after a merge.

Forge's UNet Parameters are inference tensors. Re-pointing such a
Parameter's ``.data`` at a normal tensor leaves a Parameter that raises
``Inference tensors do not track version counter.`` in every later forward
pass, so these tests run real forward passes of a (tiny) diffusers UNet, not
only compare weights.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lib_mbw.generators.diffusers import load_single_file
from lib_mbw.recipe import Recipe
from lib_mbw.runtime import RuntimeMerger

from .runtime_support import full_recipe, one_torch_thread  # noqa: F401  (autouse fixture)


def as_inference_parameters(module: nn.Module) -> None:
    """Replace every Parameter by one made inside inference mode, as Forge's loader leaves them."""
    with torch.inference_mode():
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):  # noqa: SLF001
                if param is not None:
                    sub._parameters[name] = nn.Parameter(param.detach().clone(), requires_grad=False)  # noqa: SLF001


def forward(unet: nn.Module) -> torch.Tensor:
    """One denoising step of the UNet, under inference mode as Forge samples."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.inference_mode():
        return unet(sample, torch.tensor([500]), encoder_hidden_states=context).sample.clone()


def weights(unet: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in unet.named_parameters()}


@pytest.fixture(scope="module")
def inference_unet(demo_models):
    loaded = load_single_file(demo_models.model_a, config_dir=demo_models.config_dir, device="cpu", dtype="fp32")
    unet = loaded.unet
    as_inference_parameters(unet)
    assert all(p.is_inference() for p in unet.parameters())
    return unet, loaded.key_map


def test_merged_inference_mode_unet_runs_forward_and_restores_exactly(inference_unet, demo_models) -> None:
    unet, key_map = inference_unet
    before_out = forward(unet)
    before_weights = weights(unet)
    names_before = [name for name, _ in unet.named_parameters()]
    merger = RuntimeMerger(unet, None, demo_models.model_b, key_map=key_map)
    try:
        merger.apply(full_recipe(0.5))
        merged_out = forward(unet)  # raised "Inference tensors do not track version counter." before the fix
        assert torch.isfinite(merged_out).all()
        assert not torch.equal(merged_out, before_out), "the merge did not change the UNet's output"
        merger.apply(Recipe({**full_recipe(0.5).weights, "IN04": 0.9}))
        assert not torch.equal(forward(unet), merged_out)
        merger.restore()
        assert torch.equal(forward(unet), before_out)
    finally:
        merger.close()
    after = weights(unet)
    assert [name for name, _ in unet.named_parameters()] == names_before
    assert all(torch.equal(after[k].view(torch.int32), before_weights[k].view(torch.int32)) for k in before_weights)
    assert all(p.is_inference() for p in unet.parameters()), "close() must leave the host's inference Parameters"
    assert torch.equal(forward(unet), before_out)


def test_closed_without_restore_call_still_gives_the_original_model(inference_unet, demo_models) -> None:
    """close() right after an apply (Stop mid-search) restores and leaves a model that runs."""
    unet, key_map = inference_unet
    before_out = forward(unet)
    with RuntimeMerger(unet, None, demo_models.model_b, key_map=key_map) as merger:
        merger.apply(full_recipe(1.0))
        b_out = forward(unet)
    assert not torch.equal(b_out, before_out)
    assert torch.equal(forward(unet), before_out)


def test_host_lora_style_parameter_swap_under_inference_mode_is_followed(inference_unet, demo_models) -> None:
    """Forge's LoRA loader installs new inference Parameters and later puts the merger's ones back."""
    unet, key_map = inference_unet
    before_out = forward(unet)
    with RuntimeMerger(unet, None, demo_models.model_b, key_map=key_map) as merger:
        merger.apply(full_recipe(0.3))
        merged_out = forward(unet)
        conv = unet.conv_in
        mine = conv.weight
        with torch.inference_mode():  # LoraLoader.refresh: backup, then a new merged Parameter
            conv._parameters["weight"] = nn.Parameter(mine.detach() * 1.5, requires_grad=False)  # noqa: SLF001
        assert not torch.equal(forward(unet), merged_out)
        conv._parameters["weight"] = mine  # noqa: SLF001  (refresh({}) puts the backup back)
        merger.resync(reload=False)
        assert torch.equal(forward(unet), merged_out)
        with torch.inference_mode():  # a LoRA merged again; the next apply replaces it with merge values
            conv._parameters["weight"] = nn.Parameter(mine.detach() * 2.0, requires_grad=False)  # noqa: SLF001
        merger.apply(full_recipe(0.0))
        assert torch.equal(forward(unet), before_out)
    assert torch.equal(forward(unet), before_out)
