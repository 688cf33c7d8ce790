"""The runtime merger under a host that changes parameters, generates on other threads, or uses inference mode."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch
from torch import nn

from lib_mbw.blocks import block_of_unet_key
from lib_mbw.errors import IdenticalModelsError, RuntimeMergeError
from lib_mbw.runtime import RuntimeMerger

from .runtime_support import one_torch_thread  # noqa: F401  (autouse fixture)
from .runtime_support import exact_lerp, full_recipe, live_unet, params, random_recipe, reference_merge, tensor_hashes, unet_tensors


@pytest.fixture(scope="module")
def sd1(tiny_checkpoints):
    path_a, path_b = tiny_checkpoints["sd1"]
    return path_a, path_b, unet_tensors(path_a), unet_tensors(path_b)


def assert_merged(live: nn.Module, a, b, recipe, dtype=torch.float32) -> None:
    """Every live tensor equals lerp(A, B, w) computed at ``dtype`` from A and B rounded to it."""
    for key, got in params(live).items():
        w = recipe.weights[block_of_unet_key(key, "sd1")]
        want = exact_lerp(a[key].to(dtype), b[key].to(dtype), w)
        assert got.dtype == dtype and torch.equal(got, want), key


def test_parameters_replaced_by_new_objects_are_found_and_written(sd1) -> None:
    path_a, path_b, a, b = sd1
    live = live_unet(a)
    original = tensor_hashes(live)
    with RuntimeMerger(live, path_a, path_b) as merger:
        merger.apply(full_recipe(0.3))
        attn = live.get_submodule("input_blocks.1.1.transformer_blocks.0.attn1.to_q")
        attn.weight = nn.Parameter(attn.weight.detach().clone(), requires_grad=False)  # Forge LoRA style swap
        recipe = random_recipe(random.Random(8))
        stats = merger.apply(recipe)
        assert "IN01" in stats.resynced
        assert_merged(live, a, b, recipe)
        assert attn.weight.untyped_storage().data_ptr() == live.get_parameter("input_blocks.1.0.in_layers.2.weight").untyped_storage().data_ptr()
    assert tensor_hashes(live) == original


def test_moves_and_dtype_changes_rebuild_the_views(sd1) -> None:
    """``--lowvram``-style moves (new storage for every parameter) and ``.half()`` between applies."""
    path_a, path_b, a, b = sd1
    live = live_unet(a)
    with RuntimeMerger(live, path_a, path_b) as merger:
        merger.apply(full_recipe(0.3))
        live._apply(lambda t: t.clone())  # what Module.to(other_device) does to each parameter
        stats = merger.apply(full_recipe(0.6))
        assert len(stats.resynced) == 27 and merger.current == full_recipe(0.6)
        assert_merged(live, a, b, full_recipe(0.6))

        live.half()
        recipe = random_recipe(random.Random(9))
        merger.apply(recipe.replace(weights={blk: 0.05 + 0.9 * w for blk, w in recipe.weights.items()}))
        assert_merged(live, a, b, recipe.replace(weights={blk: 0.05 + 0.9 * w for blk, w in recipe.weights.items()}), torch.float16)
        merger.restore()
        assert tensor_hashes(live) == tensor_hashes(live_unet(a, torch.float16))


def test_in_place_host_edit_is_overwritten_on_the_next_apply(sd1) -> None:
    """A merged-in LoRA changes some weights in place; the next apply rewrites those blocks even if unchanged."""
    path_a, path_b, a, b = sd1
    live = live_unet(a)
    written: list[list[str]] = []
    with RuntimeMerger(live, path_a, path_b, on_write=lambda names: written.append(list(names))) as merger:
        recipe = full_recipe(0.4)
        merger.apply(recipe)
        with torch.no_grad():
            live.get_parameter("middle_block.1.proj_in.weight").add_(0.5)
        stats = merger.apply(recipe)
        assert stats.blocks == ("M00",) and stats.resynced == ("M00",) and not stats.reloaded
        assert_merged(live, a, b, recipe)
        assert set(written[-1]) == {n for n in params(live) if n.startswith("middle_block.")}


def test_host_loading_new_weights_becomes_the_new_original(sd1) -> None:
    """load_state_dict of another checkpoint (A1111's checkpoint switch): restore returns to the new weights."""
    path_a, path_b, a, b = sd1
    live = live_unet(a)
    other = {k: v * 0.5 for k, v in a.items()}
    with RuntimeMerger(live, path_a, path_b) as merger:
        merger.apply(full_recipe(0.4))
        live.load_state_dict(other)
        loaded = tensor_hashes(live)
        stats = merger.apply(full_recipe(0.7))
        assert stats.reloaded and len(stats.blocks) == 27
        assert_merged(live, a, b, full_recipe(0.7))
        merger.restore()
        assert tensor_hashes(live) == loaded


def test_live_model_as_a_follows_a_reload(sd1) -> None:
    _, path_b, a, b = sd1
    live = live_unet(a)
    new_a = {k: v + 0.25 for k, v in a.items()}
    with RuntimeMerger(live, None, path_b) as merger:
        merger.apply(full_recipe(0.5))
        live.load_state_dict(new_a, assign=True)  # new Parameter objects with new values
        recipe = random_recipe(random.Random(12))
        stats = merger.apply(recipe)
        assert stats.reloaded and len(stats.resynced) == 27
        want = reference_merge(new_a, b, recipe, "sd1")
        assert all(torch.equal(p, want[k]) for k, p in params(live).items())
        live.load_state_dict(b)  # the host loads model B: every merge is the same model now
        with pytest.raises(IdenticalModelsError, match="identical to model B"):
            merger.apply(full_recipe(0.5))


def test_resync_sees_writes_through_param_data_and_swapped_submodules(sd1) -> None:
    path_a, path_b, a, b = sd1
    live = live_unet(a)
    with RuntimeMerger(live, path_a, path_b) as merger:
        recipe = full_recipe(0.5)
        merger.apply(recipe)
        live.get_parameter("out.2.weight").data.mul_(2)  # invisible to version counters
        old = live.get_submodule("output_blocks.2.0")
        replacement = live_unet({k[len("output_blocks.2.0.") :]: v for k, v in a.items() if k.startswith("output_blocks.2.0.")})
        live.get_submodule("output_blocks.2")._modules["0"] = replacement
        report = merger.resync()
        assert report.dirty == ("OUT02", "OUT") and report.rebuilt == ("OUT02",) and not report.reloaded
        assert merger.apply(recipe).blocks == ("OUT02", "OUT")
        assert_merged(live, a, b, recipe)  # the swapped-in submodule's parameters included
        detached = {n: p.detach().clone() for n, p in old.named_parameters()}
        merger.apply(full_recipe(0.9))
        assert all(torch.equal(p, detached[n]) for n, p in old.named_parameters())  # never writes what the host let go

        live.load_state_dict({k: v.half().float() for k, v in b.items()})
        report = merger.resync(reload=True)
        assert report.reloaded and merger.current is None


def test_module_rebuilt_by_the_host_is_refused(sd1) -> None:
    path_a, path_b, a, _ = sd1
    live = live_unet(a)
    merger = RuntimeMerger(live, path_a, path_b)
    del live.get_submodule("out.2")._parameters["bias"]
    with pytest.raises(RuntimeMergeError, match="create a new one"):
        merger.resync()


def test_apply_waits_for_a_generation_on_another_thread(sd1) -> None:
    path_a, path_b, a, _ = sd1
    live = live_unet(a)
    with RuntimeMerger(live, path_a, path_b) as merger:
        started, release = threading.Event(), threading.Event()
        done_at: list[float] = []

        def generation() -> None:
            with merger.generating():
                started.set()
                release.wait(10)

        def search() -> None:
            started.wait(10)
            merger.apply(full_recipe(0.5))
            done_at.append(time.monotonic())

        gen, loop = threading.Thread(target=generation), threading.Thread(target=search)
        gen.start()
        loop.start()
        time.sleep(0.3)
        assert not done_at, "apply ran while a generation held the weights"
        released_at = time.monotonic()
        release.set()
        gen.join(10)
        loop.join(10)
        assert done_at and done_at[0] >= released_at


def test_apply_inside_generating_on_the_same_thread_is_an_error_not_a_deadlock(sd1) -> None:
    path_a, path_b, a, _ = sd1
    with RuntimeMerger(live_unet(a), path_a, path_b) as merger:
        with merger.generating():
            with pytest.raises(RuntimeMergeError, match="during one"):
                merger.apply(full_recipe(0.5))
        merger.apply(full_recipe(0.5))  # the lock was released


def test_inference_mode_hosts(sd1) -> None:
    """Built inside inference_mode, applied outside and inside, with host parameters made in inference mode."""
    path_a, path_b, a, b = sd1
    live = live_unet(a)
    with torch.inference_mode():
        merger = RuntimeMerger(live, path_a, path_b)
    merger.apply(full_recipe(0.2))
    with torch.inference_mode():
        lin = live.get_submodule("time_embed.0")
        lin.weight = nn.Parameter(lin.weight + 0, requires_grad=False)  # an inference tensor, like Forge's LoRA refresh
        merger.apply(full_recipe(0.8))
        assert_merged(live, a, b, full_recipe(0.8))
    merger.apply(full_recipe(0.1))
    assert_merged(live, a, b, full_recipe(0.1))
    merger.close()
    assert tensor_hashes(live) == tensor_hashes(live_unet(a))


def test_a1111_lora_backup_reset_through_the_write_callback(sd1) -> None:
    """The WebUI adapter resets ``network_weights_backup`` of every layer the merger wrote (A1111 LoRA rule 2)."""
    path_a, path_b, a, _ = sd1
    live = live_unet(a)
    layers = dict(live.named_modules())
    for name, module in layers.items():
        if "weight" in module._parameters:
            module.network_weights_backup = module.weight.detach().clone()

    def reset_backups(names) -> None:
        for param_name in names:
            owner = layers[param_name.rsplit(".", 1)[0]]
            owner.network_weights_backup = None

    with RuntimeMerger(live, path_a, path_b, on_write=reset_backups) as merger:
        base = full_recipe(0.0)
        merger.apply(base.replace(weights={**base.weights, "IN04": 0.5}))
        cleared = {n for n, m in layers.items() if hasattr(m, "network_weights_backup") and m.network_weights_backup is None}
        assert cleared and all(n.startswith("input_blocks.4.") for n in cleared)


def test_fp8_live_weights_are_merged_in_fp16_and_restored_exactly(sd1) -> None:
    path_a, path_b, a, b = sd1
    live = live_unet(a, torch.float8_e4m3fn)
    original = tensor_hashes(live)
    recipe = random_recipe(random.Random(21))
    with RuntimeMerger(live, path_a, path_b) as merger:
        merger.apply(recipe)
        for key, got in params(live).items():
            w = recipe.weights[block_of_unet_key(key, "sd1")]
            want = exact_lerp(a[key].half(), b[key].half(), w).to(torch.float8_e4m3fn)
            assert got.dtype == torch.float8_e4m3fn
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), key
    assert tensor_hashes(live) == original
