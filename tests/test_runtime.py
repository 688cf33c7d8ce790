"""Runtime merge correctness: the live UNet equals the offline merge math, blockwise, and restores exactly.

The reference is the offline merge engine's own math (``lib_mbw.merge.methods.weighted_sum``),
so the runtime path and the file written at the end of a search agree.
"""

from __future__ import annotations

import random

import pytest
import torch

from lib_mbw.blocks import block_of_unet_key
from lib_mbw.recipe import Recipe
from lib_mbw.runtime import RuntimeMerger

from .runtime_support import one_torch_thread  # noqa: F401  (autouse fixture)
from .runtime_support import full_recipe, live_unet, params, random_recipe, reference_merge, tensor_hashes, unet_tensors


@pytest.fixture(scope="module")
def tensors(tiny_checkpoints):
    """fp32 UNet tensors of the tiny A and B per architecture."""
    return {arch: (unet_tensors(a), unet_tensors(b)) for arch, (a, b) in tiny_checkpoints.items()}


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_fp32_apply_equals_offline_lerp_bit_exactly(arch, tiny_checkpoints, tensors) -> None:
    path_a, path_b = tiny_checkpoints[arch]
    a, b = tensors[arch]
    live = live_unet(a)
    rng = random.Random(arch)
    with RuntimeMerger(live, path_a, path_b) as merger:
        assert merger.arch.family == arch and merger.mode == "device"
        for _ in range(3):
            recipe = random_recipe(rng, arch)
            merger.apply(recipe)
            want = reference_merge(a, b, recipe, arch)
            got = params(live)
            wrong = [k for k in want if not torch.equal(got[k], want[k])]
            assert not wrong, f"{len(wrong)} tensors differ, e.g. {wrong[:3]}"
            assert merger.current == recipe


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_apply_is_within_the_documented_bound(dtype, tiny_checkpoints, tensors) -> None:
    """Half-precision live weights: merged at the live dtype, within 2^-p * max(|A|, |B|) + 2^-24 of fp32 math.

    p = 10 for fp16, 7 for bf16 (one rounding of each input to the live dtype,
    one of the result). On the CPU it equals the fp32 lerp of the rounded
    inputs, rounded once.
    """
    path_a, path_b = tiny_checkpoints["sd1"]
    a, b = tensors["sd1"]
    live = live_unet(a, dtype)
    recipe = random_recipe(random.Random(5))
    p = 10 if dtype == torch.float16 else 7
    with RuntimeMerger(live, path_a, path_b) as merger:
        merger.apply(recipe)
        got = params(live)
        for key, exact in reference_merge(a, b, recipe, "sd1").items():
            assert got[key].dtype == dtype
            bound = 2.0**-p * torch.maximum(a[key].abs(), b[key].abs()) + 2.0**-24
            assert bool(((got[key].float() - exact).abs() <= bound).all()), key
            w = recipe.weights[block_of_unet_key(key, "sd1")]
            rounded = torch.lerp(a[key].to(dtype).float(), b[key].to(dtype).float(), w).to(dtype)
            assert torch.equal(got[key], rounded), key


def test_weights_zero_and_one_are_exact_copies_of_a_and_b(tiny_checkpoints, tensors) -> None:
    path_a, path_b = tiny_checkpoints["sd1"]
    a, b = tensors["sd1"]
    # a -0.0 in A: lerp(-0.0, x, 0) gives +0.0, a copy keeps the sign bit
    a = dict(a)
    a["out.2.bias"] = a["out.2.bias"].clone()
    a["out.2.bias"][0] = -0.0
    live = live_unet(a)
    want_a = tensor_hashes(live)
    with RuntimeMerger(live, a, path_b) as merger:
        merger.apply(full_recipe(1.0))
        assert tensor_hashes(live) == tensor_hashes(live_unet(b))
        merger.apply(full_recipe(0.0))
        assert tensor_hashes(live) == want_a
        assert str(live.get_parameter("out.2.bias")[0].item()) == "-0.0"


def test_changing_one_block_changes_only_its_tensors(tiny_checkpoints, tensors) -> None:
    path_a, path_b = tiny_checkpoints["sd2"]
    live = live_unet(tensors["sd2"][0])
    with RuntimeMerger(live, path_a, path_b) as merger:
        base = full_recipe(0.25)
        merger.apply(base)
        before = tensor_hashes(live)
        stats = merger.apply(base.replace(weights={**base.weights, "OUT04": 0.75}))
        after = tensor_hashes(live)
        assert stats.blocks == ("OUT04",)
        changed = {k for k in before if before[k] != after[k]}
        assert changed and all(block_of_unet_key(k, "sd2") == "OUT04" for k in changed)
        assert changed == {k for k in before if k.startswith("output_blocks.4.")}
        assert merger.apply(base.replace(weights={**base.weights, "OUT04": 0.75})).blocks == ()


def test_many_random_applies_then_restore_give_a_back_bit_exactly(tiny_checkpoints, tensors) -> None:
    path_a, path_b = tiny_checkpoints["sdxl"]
    live = live_unet(tensors["sdxl"][0], torch.float16)
    original = tensor_hashes(live)
    rng = random.Random(7)
    with RuntimeMerger(live, path_a, path_b) as merger:
        for _ in range(25):
            merger.apply(random_recipe(rng, "sdxl"))
        assert tensor_hashes(live) != original
        stats = merger.restore()
        assert tensor_hashes(live) == original
        assert merger.current is None and stats.blocks
        assert merger.restore().blocks == ()  # nothing left to write


def test_live_weights_as_a_need_no_model_a(tiny_checkpoints, tensors) -> None:
    """The WebUI case: A is the loaded model; its snapshot is A and the restore copy at once."""
    _, path_b = tiny_checkpoints["sd1"]
    a, b = tensors["sd1"]
    live = live_unet(a)
    original = tensor_hashes(live)
    recipe = random_recipe(random.Random(3))
    with RuntimeMerger(live, None, path_b) as merger:
        assert merger.memory.cpu_bytes == 2 * merger.unet_bytes  # A snapshot + B, no third copy
        merger.apply(recipe)
        want = reference_merge(a, b, recipe, "sd1")
        assert all(torch.equal(p, want[k]) for k, p in params(live).items())
    assert tensor_hashes(live) == original


def test_a_file_different_from_the_live_weights_restores_the_live_weights(tiny_checkpoints, tensors) -> None:
    """A given as a file while the live model holds other weights: restore returns to the live ones."""
    path_a, path_b = tiny_checkpoints["sd1"]
    a, b = tensors["sd1"]
    live = live_unet({k: (v + 1.0) if k.startswith("middle_block.") else v for k, v in a.items()})
    original = tensor_hashes(live)
    with RuntimeMerger(live, path_a, path_b) as merger:
        # only M00 differs from A, so only M00 needs a restore copy
        assert 0 < merger.memory.cpu_bytes - 2 * merger.unet_bytes < merger.unet_bytes // 4
        merger.apply(full_recipe(0.0))
        assert all(torch.equal(p, a[k]) for k, p in params(live).items())
        merger.restore()
        assert tensor_hashes(live) == original


def test_in_memory_state_dicts_with_and_without_prefix(tiny_checkpoints, tensors) -> None:
    a, b = tensors["sd1"]
    live = live_unet(a)
    prefixed_b = {"model.diffusion_model." + k: v for k, v in b.items()}
    prefixed_b["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(32)
    recipe = random_recipe(random.Random(11))
    with RuntimeMerger(live, a, prefixed_b) as merger:
        merger.apply(recipe)
        want = reference_merge(a, b, recipe, "sd1")
        assert all(torch.equal(p, want[k]) for k, p in params(live).items())


def test_diffusers_style_names_with_a_key_map(tiny_checkpoints, tensors) -> None:
    from lib_mbw.synthetic import module_from_tensors

    path_a, path_b = tiny_checkpoints["sd1"]
    a, b = tensors["sd1"]
    renamed = {f"unet_{i:04d}.w": a[k].clone() for i, k in enumerate(a)}
    key_map = {f"unet_{i:04d}.w": k for i, k in enumerate(a)}
    live = module_from_tensors(renamed)
    recipe = random_recipe(random.Random(2))
    with RuntimeMerger(live, path_a, path_b, key_map=key_map) as merger:
        stats = merger.apply(recipe)
        want = reference_merge(a, b, recipe, "sd1")
        assert all(torch.equal(p, want[key_map[n]]) for n, p in params(live).items())
        # the live weights are A, so blocks at weight 0 are already right
        assert set(stats.blocks) == {blk for blk, w in recipe.weights.items() if w != 0.0}


def test_sdxl_recipe_may_carry_the_blocks_sdxl_lacks_but_not_miss_its_own(tiny_checkpoints, tensors) -> None:
    from lib_mbw.errors import RecipeError

    path_a, path_b = tiny_checkpoints["sdxl"]
    live = live_unet(tensors["sdxl"][0])
    with RuntimeMerger(live, path_a, path_b) as merger:
        stats = merger.apply(full_recipe(0.5))  # 27 weights; IN09.. are not SDXL blocks
        assert len(stats.blocks) == 21 and "IN09" not in stats.blocks
        with pytest.raises(RecipeError, match="M00"):
            merger.apply(Recipe({"IN00": 0.5}))
        with pytest.raises(RecipeError, match="weighted sums only"):
            merger.apply(full_recipe(0.5).replace(method="add_difference"))


def test_stats_count_the_bytes_moved(tiny_checkpoints, tensors) -> None:
    path_a, path_b = tiny_checkpoints["sd1"]
    live = live_unet(tensors["sd1"][0])
    with RuntimeMerger(live, path_a, path_b) as merger:
        stats = merger.apply(full_recipe(0.5))
        assert stats.bytes == 3 * merger.unet_bytes  # read A and B, write live
        assert stats.seconds > 0 and stats.bandwidth > 0
        assert merger.apply(full_recipe(1.0)).bytes == 2 * merger.unet_bytes  # a copy of B


def test_channels_last_parameters_keep_their_memory_format(tiny_checkpoints, tensors) -> None:
    path_a, path_b = tiny_checkpoints["sd1"]
    a, b = tensors["sd1"]
    live = live_unet(a).to(memory_format=torch.channels_last)
    conv = live.get_parameter("input_blocks.1.0.in_layers.2.weight")
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    recipe = random_recipe(random.Random(4))
    with RuntimeMerger(live, path_a, path_b) as merger:
        merger.apply(recipe)
        assert conv.is_contiguous(memory_format=torch.channels_last)
        want = reference_merge(a, b, recipe, "sd1")
        assert all(torch.equal(p, want[k]) for k, p in params(live).items())
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_close_gives_parameters_their_own_storage_and_exit_restores_on_error(tiny_checkpoints, tensors) -> None:
    from lib_mbw.errors import RuntimeMergeError

    path_a, path_b = tiny_checkpoints["sd1"]
    live = live_unet(tensors["sd1"][0])
    original = tensor_hashes(live)
    identities = {n: id(p) for n, p in live.named_parameters()}
    with pytest.raises(ValueError, match="generation failed"):
        with RuntimeMerger(live, path_a, path_b) as merger:
            merger.apply(random_recipe(random.Random(1)))
            storages = {p.untyped_storage().data_ptr() for p in live.parameters()}
            assert len(storages) == 27  # one flat buffer per block
            raise ValueError("generation failed")
    assert merger.closed and tensor_hashes(live) == original
    assert {n: id(p) for n, p in live.named_parameters()} == identities
    ptrs = [p.untyped_storage().data_ptr() for p in live.parameters()]
    assert len(set(ptrs)) == len(ptrs)
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in live.parameters())
    with pytest.raises(RuntimeMergeError, match="closed"):
        merger.apply(full_recipe(0.5))
