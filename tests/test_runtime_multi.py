"""Runtime N-model mix: the live UNet equals the offline mix bit for bit, restores exactly, states its memory."""

from __future__ import annotations

import random

import pytest
import torch

from lib_mbw.blocks import present_blocks
from lib_mbw.checkpoint import open_checkpoint
from lib_mbw.errors import IdenticalModelsError, RecipeError
from lib_mbw.keyspec import tiny_config
from lib_mbw.merge.multi import mix_to_file
from lib_mbw.recipe_n import RecipeN
from lib_mbw.runtime.multi import MultiMerger, memory_cost_n
from lib_mbw.synthetic import write_checkpoint

from .runtime_support import one_torch_thread  # noqa: F401  (autouse fixture)
from .runtime_support import live_unet, params, tensor_hashes, unet_tensors

GRID = [i / 20 for i in range(21)]
PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("rtmix")
    out = {}
    for arch, dtype in (("sd1", torch.float32), ("sdxl", torch.float32), ("sd1-fp16", torch.float16)):
        cfg = tiny_config(arch.split("-")[0])
        out[arch] = [write_checkpoint(root / f"{arch}-{i}.safetensors", cfg, seed=20 + i, dtype=dtype) for i in range(4)]
    return out


def grid_recipe(rng: random.Random, n: int, family: str = "sd1") -> RecipeN:
    chain = {b: tuple(rng.choice(GRID) for _ in range(n - 1)) for b in present_blocks(family)}
    return RecipeN.from_chain([f"m{i}" for i in range(n)], chain)


def offline_unet(paths, recipe, tmp_path, dtype="fp32"):
    out = mix_to_file(paths, recipe, tmp_path / f"offline-{random.random()}.safetensors", dtype=dtype).output
    with open_checkpoint(out) as ckpt:
        return {k[len(PREFIX) :]: ckpt.get(k) for k in ckpt.unet_keys()}


def assert_bit_equal(got, want) -> None:
    wrong = [k for k in want if not torch.equal(got[k].view(torch.uint8), want[k].contiguous().view(torch.uint8))]
    assert not wrong, f"{len(wrong)} tensors differ, e.g. {wrong[:3]}"


@pytest.mark.parametrize("arch, n, chunk", [("sd1", 3, 1 << 22), ("sd1", 4, 1000), ("sdxl", 3, 4096)])
def test_apply_equals_the_offline_mix_bit_for_bit_and_restore_is_exact(arch, n, chunk, sources, tmp_path) -> None:
    paths = sources[arch][:n]
    first = unet_tensors(paths[0])
    live = live_unet(first)
    before = tensor_hashes(live)
    rng = random.Random(f"{arch}{n}")
    with MultiMerger(live, paths, chunk_elements=chunk) as merger:
        assert merger.arch.family == arch and merger.mode == "device"
        for _ in range(2):
            recipe = grid_recipe(rng, n, arch)
            stats = merger.apply(recipe)
            assert set(stats.blocks) == set(present_blocks(arch))
            assert_bit_equal(params(live), offline_unet(paths, recipe, tmp_path))
        changed = dict(recipe.chain)
        changed["M00"] = (0.5,) * (n - 1)
        again = RecipeN.from_chain(recipe.models, changed)
        assert merger.apply(again).blocks == ("M00",)  # only the changed block is written
        merger.restore()
        assert tensor_hashes(live) == before
        merger.apply(recipe)
    assert tensor_hashes(live) == before  # close() restores
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in live.parameters())


def test_live_weights_as_model_one_and_a_live_model_that_differs(sources, tmp_path) -> None:
    paths = sources["sd1"][:3]
    recipe = grid_recipe(random.Random(2), 3)
    want = offline_unet(paths, recipe, tmp_path)
    live = live_unet(unet_tensors(paths[0]))
    with MultiMerger(live, [None, *paths[1:]]) as merger:
        merger.apply(recipe)
        assert_bit_equal(params(live), want)
    other = live_unet(unet_tensors(sources["sd1"][3]))  # the loaded model is none of the sources
    before = tensor_hashes(other)
    with MultiMerger(other, paths) as merger:
        assert merger.memory.cpu_bytes > 3 * merger.unet_bytes  # the restore copy
        merger.apply(recipe)
        assert_bit_equal(params(other), want)
    assert tensor_hashes(other) == before


def test_fp16_live_equals_the_offline_fp16_mix_of_fp16_files(sources, tmp_path) -> None:
    paths = sources["sd1-fp16"][:3]
    recipe = grid_recipe(random.Random(3), 3)
    live = live_unet(unet_tensors(paths[0], torch.float16), torch.float16)
    with MultiMerger(live, paths) as merger:
        merger.apply(recipe)
        assert_bit_equal(params(live), offline_unet(paths, recipe, tmp_path, dtype="fp16"))


def test_memory_is_stated_per_mode_and_held_as_stated(sources) -> None:
    unet = 1_720_000_000
    chunk = 2 * 4 * (1 << 22)
    assert memory_cost_n("device", 3, unet).device_bytes == 3 * unet + chunk
    stream = memory_cost_n("stream", 5, unet)
    assert stream.device_bytes == unet + chunk + 4 * 2 * (1 << 22) and stream.cpu_bytes == 4 * unet
    assert memory_cost_n("cpu", 3, unet).device_bytes == 0
    paths = sources["sd1"][:3]
    live = live_unet(unet_tensors(paths[0]))
    with MultiMerger(live, [None, *paths[1:]]) as merger:
        merger.apply(grid_recipe(random.Random(4), 3))
        held = merger.memory
        stated = memory_cost_n("device", 3, merger.unet_bytes, element_bytes=4, on_accelerator=False)
        assert held.device_bytes == 0 and merger.unet_bytes * 3 <= held.cpu_bytes <= stated.cpu_bytes


def test_memory_plan_is_stated_before_allocating_and_a_mix_that_does_not_fit_is_refused(sources, monkeypatch) -> None:
    from lib_mbw.runtime import multi
    from lib_mbw.runtime.memory import InsufficientMemoryError

    paths = sources["sd1"][:3]
    live = live_unet(unet_tensors(paths[0]))
    with MultiMerger(live, [None, *paths[1:]]) as merger:
        plan = merger.plan
        assert plan.cost == memory_cost_n("device", 3, merger.unet_bytes, element_bytes=4, on_accelerator=False)
        assert plan.ram_bytes >= merger.memory.cpu_bytes and "beyond the loaded model (placement device)" in plan.describe()
    with MultiMerger(live, paths) as merger:  # model 1 is not the live model: its restore copy is counted
        assert merger.plan.cost.cpu_bytes == plan.cost.cpu_bytes + merger.unet_bytes
    monkeypatch.setattr(multi, "available_ram_bytes", lambda: plan.ram_bytes)  # less than it needs plus the 1 GiB headroom
    before = {k: v.clone() for k, v in params(live).items()}
    with pytest.raises(InsufficientMemoryError, match="not enough memory for this search"):
        MultiMerger(live, [None, *paths[1:]])
    assert_bit_equal(params(live), before)


def test_refusals(sources) -> None:
    paths = sources["sd1"][:3]
    live = live_unet(unet_tensors(paths[0]))
    with pytest.raises(IdenticalModelsError, match="model 1 and model 3 are the same"):
        MultiMerger(live, [paths[0], paths[1], paths[0]])
    with MultiMerger(live, paths) as merger:
        with pytest.raises(RecipeError, match="recipe for 4 models; this mix has 3"):
            merger.apply(grid_recipe(random.Random(1), 4))
        with pytest.raises(RecipeError, match="N-model recipe"):
            merger.apply("0.5")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="placement modes differ only with a CUDA device")
@pytest.mark.parametrize("mode", ["device", "stream", "cpu"])
def test_cuda_placement_modes_give_the_same_weights_and_restore(mode, sources) -> None:
    paths = sources["sd1-fp16"][:4]
    live = live_unet(unet_tensors(paths[0], torch.float16), torch.float16).cuda()
    before = tensor_hashes(live)
    recipe = grid_recipe(random.Random(5), 4)
    reference = live_unet(unet_tensors(paths[0], torch.float16), torch.float16).cuda()
    with MultiMerger(reference, paths, mode="device") as merger:
        merger.apply(recipe)
        want = {k: v.detach().clone() for k, v in params(reference).items()}
    with MultiMerger(live, paths, mode=mode) as merger:
        assert merger.mode == mode
        merger.apply(recipe)
        assert_bit_equal(params(live), want)
    assert tensor_hashes(live) == before
