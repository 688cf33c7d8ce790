"""``RuntimeMerger`` with 3-5 sources: the offline mix bit for bit, and everything a host relies on.

The host features (resync after the host wrote or replaced parameters, a
reload becoming the new original, inference-mode Parameters as Forge makes
them, ``abandon``) are the two-model merger's code; these tests run them with
a block mix. Forward passes use the tiny diffusers UNet of the N-model demo.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from lib_mbw.demo_n import ensure_mix_demo_models
from lib_mbw.errors import IdenticalModelsError, RecipeError
from lib_mbw.generators.diffusers import load_single_file
from lib_mbw.recipe_n import RecipeN
from lib_mbw.runtime import RuntimeMerger

from .runtime_support import full_recipe, live_unet, params, tensor_hashes, unet_tensors
from .runtime_support import one_torch_thread  # noqa: F401  (autouse fixture)
from .test_runtime_inference import as_inference_parameters, forward, weights
from .test_runtime_multi import assert_bit_equal, grid_recipe, offline_unet, sources  # noqa: F401  (fixture)


def test_three_and_four_models_equal_the_offline_mix_and_restore_exactly(sources, tmp_path) -> None:  # noqa: F811
    for n in (3, 4):
        paths = sources["sd1"][:n]
        live = live_unet(unet_tensors(paths[0]))
        before = tensor_hashes(live)
        rng = random.Random(n)
        with RuntimeMerger(live, None, paths[1:]) as merger:
            assert merger.n_sources == n
            recipe = grid_recipe(rng, n)
            merger.apply(recipe)
            assert merger.current == recipe
            assert_bit_equal(params(live), offline_unet(paths, recipe, tmp_path))
            changed = dict(recipe.chain)
            changed["M00"] = (0.5,) * (n - 1)
            assert merger.apply(RecipeN.from_chain(recipe.models, changed)).blocks == ("M00",)
            merger.restore()
            assert tensor_hashes(live) == before
            merger.apply(recipe)
        assert tensor_hashes(live) == before  # close() restores
        assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in live.parameters())


def test_one_memory_model_for_a_mix_built_either_way(sources) -> None:  # noqa: F811
    from lib_mbw.runtime.merger import plan_for_checkpoint
    from lib_mbw.runtime.multi import MultiMerger, memory_cost_n

    paths = sources["sd1"][:3]
    live = live_unet(unet_tensors(paths[0]))
    with RuntimeMerger(live, None, paths[1:]) as three:
        stated = memory_cost_n("device", 3, three.unet_bytes, element_bytes=4, on_accelerator=False)
        assert three.plan.cost == stated
        assert plan_for_checkpoint(paths[0], 4, 3, "auto", "cpu").cost == stated  # what a host states before building
        assert 3 * three.unet_bytes <= three.memory.cpu_bytes <= stated.cpu_bytes
    with MultiMerger(live, [None, *paths[1:]]) as multi:
        assert isinstance(multi, RuntimeMerger) and multi.plan.cost == stated


def test_refusals_name_the_models(sources) -> None:  # noqa: F811
    paths = sources["sd1"][:3]
    live = live_unet(unet_tensors(paths[0]))
    with pytest.raises(IdenticalModelsError, match="model 2 and model 3 are the same model"):
        RuntimeMerger(live, None, [paths[1], paths[1]])
    with RuntimeMerger(live, None, paths[1:]) as merger:
        with pytest.raises(RecipeError, match="two-model recipe; this mix has 3 models"):
            merger.apply(full_recipe(0.5))
        with pytest.raises(RecipeError, match="recipe for 4 models; this mix has 3"):
            merger.apply(grid_recipe(random.Random(1), 4))
    with RuntimeMerger(live, None, paths[1]) as merger:
        with pytest.raises(RecipeError, match="recipe for 3 models; this mix has 2"):
            merger.apply(grid_recipe(random.Random(1), 3))


def test_host_writes_replacements_and_reloads_under_a_mix(sources, tmp_path) -> None:  # noqa: F811
    paths = sources["sd1"][:3]
    live = live_unet(unet_tensors(paths[0]))
    before = tensor_hashes(live)
    first, second = grid_recipe(random.Random(7), 3), grid_recipe(random.Random(8), 3)
    with RuntimeMerger(live, None, paths[1:]) as merger:
        merger.apply(first)
        # a LoRA merged in place through .data (no version trace): only resync() sees it
        conv = live.get_submodule("input_blocks.0.0")
        conv.weight.data.mul_(3.0)
        report = merger.resync(reload=False)
        assert report.dirty == ("IN00",)
        merger.apply(first)  # the same recipe: the dirty block is written again anyway
        assert_bit_equal(params(live), offline_unet(paths, first, tmp_path))
        # Forge-style swap: a new Parameter object with its own storage; the view of a mix block is rebuilt
        proj = live.get_submodule("middle_block.1.proj_in")
        proj.weight = nn.Parameter(proj.weight.detach().clone() + 1, requires_grad=False)
        stats = merger.apply(second)
        assert "M00" in stats.resynced
        assert_bit_equal(params(live), offline_unet(paths, second, tmp_path))
        # the host loads model 3's weights into the live model: they become the original (and model 1)
        for name, value in unet_tensors(paths[2]).items():
            live.get_parameter(name).data.copy_(value)
        assert merger.resync(reload=True).reloaded
        reloaded = tensor_hashes(live)
        merger.apply(second)
        merger.restore()
        assert tensor_hashes(live) == reloaded
    assert tensor_hashes(live) == reloaded
    assert reloaded != before


@pytest.fixture(scope="module")
def inference_mix(tmp_path_factory):
    demo = ensure_mix_demo_models(tmp_path_factory.mktemp("mixdemo") / "demo", 0, 3)
    loaded = load_single_file(demo.models[0], config_dir=demo.config_dir, device="cpu", dtype="fp32")
    as_inference_parameters(loaded.unet)
    return loaded.unet, loaded.key_map, demo.models


def test_inference_mode_unet_runs_mixed_and_after_close_with_model_one_exact(inference_mix) -> None:
    unet, key_map, models = inference_mix
    before_out = forward(unet)
    before = weights(unet)
    names = [name for name, _ in unet.named_parameters()]
    recipe = grid_recipe(random.Random(11), 3)
    with RuntimeMerger(unet, None, models[1:], key_map=key_map) as merger:
        merger.apply(recipe)
        mixed_out = forward(unet)  # an inference Parameter re-pointed at a normal tensor would raise here
        assert torch.isfinite(mixed_out).all() and not torch.equal(mixed_out, before_out)
        merger.restore()
        assert torch.equal(forward(unet), before_out)
        merger.apply(recipe)
        assert torch.equal(forward(unet), mixed_out)
    after = weights(unet)
    assert [name for name, _ in unet.named_parameters()] == names
    assert all(torch.equal(after[k].view(torch.int32), before[k].view(torch.int32)) for k in before)
    assert all(p.is_inference() for p in unet.parameters()), "close() must leave the host's inference Parameters"
    assert torch.equal(forward(unet), before_out)


def test_abandon_frees_every_source_without_writing(sources) -> None:  # noqa: F811
    paths = sources["sd1"][:3]
    live = live_unet(unet_tensors(paths[0]))
    merger = RuntimeMerger(live, None, paths[1:])
    merger.apply(grid_recipe(random.Random(3), 3))
    mixed = tensor_hashes(live)
    merger.abandon()
    assert merger.closed and merger.memory.cpu_bytes == 0
    assert tensor_hashes(live) == mixed  # nothing written to the discarded model
