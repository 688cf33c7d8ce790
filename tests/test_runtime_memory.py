"""Memory of a runtime merge: stated before it starts, refused when it cannot fit, given back afterwards.

The measurements run ``tests/runtime_memory_probe.py`` in a fresh process on
a 150 MB (fp32) synthetic SD1 UNet: three "searches" (attach, five applies,
close). Before these fixes the process kept about 3x the UNet's size after
two searches (glibc kept the freed heap) and ``close()`` cloned every
parameter while A and B were still held.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_mbw.runtime import RuntimeMerger
from lib_mbw.runtime import memory as runtime_memory
from lib_mbw.runtime.memory import InsufficientMemoryError

from .runtime_support import full_recipe, live_unet, one_torch_thread, tensor_hashes, unet_tensors  # noqa: F401

PROBE = Path(__file__).with_name("runtime_memory_probe.py")

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure memory")


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("probe")
    env = {**os.environ, "AUTO_MBW_PROBE_ROOT": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, str(PROBE), str(out), "3"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    result["b_file"] = (out / "b.safetensors").stat().st_size
    return result


def test_memory_returns_to_where_it_was_after_three_searches(probe) -> None:
    unet = probe["unet_bytes"]
    grown = [after - probe["rss_before"] for after in probe["after"]]
    assert max(grown) <= 0.1 * unet, f"RSS grew by {[g // 2**20 for g in grown]} MiB after each search (UNet {unet // 2**20} MiB)"


def test_close_frees_a_and_b_before_giving_parameters_their_own_storage(probe) -> None:
    unet = probe["unet_bytes"]
    assert max(probe["close_peak"]) <= 0.15 * unet, f"close() rose {[p // 2**20 for p in probe['close_peak']]} MiB above its start"


def test_stated_memory_is_what_a_search_takes(probe) -> None:
    """The figure logged before a search bounds its peak, plus B's file pages while it is read.

    fp32 live weights from fp16 files: A and B are kept in fp16 (lossless), one UNet's size for both
    (two before), plus three blocks of staging.
    """
    unet = probe["unet_bytes"]
    stated = probe["stated_ram"]
    assert unet <= stated <= 1.4 * unet
    for peak in probe["search_peak"]:
        assert peak - probe["rss_before"] <= stated + probe["b_file"] + 0.25 * unet


def test_a_search_that_does_not_fit_is_refused_before_touching_the_model(tiny_checkpoints, monkeypatch) -> None:
    path_a, path_b = tiny_checkpoints["sd1"]
    live = live_unet(unet_tensors(path_a))
    params_before = {name: p for name, p in live.named_parameters()}
    hashes = tensor_hashes(live)
    monkeypatch.setattr(runtime_memory, "available_ram_bytes", lambda: 64 * 2**10)
    with pytest.raises(InsufficientMemoryError, match=r"not enough memory for this search: this search holds \d+\.\d\d GiB of RAM"):
        RuntimeMerger(live, None, path_b)
    assert all(p is params_before[name] for name, p in live.named_parameters())
    assert tensor_hashes(live) == hashes


def test_plan_is_stated_and_kept_on_the_merger(tiny_checkpoints, caplog) -> None:
    path_a, path_b = tiny_checkpoints["sd1"]
    live = live_unet(unet_tensors(path_a))
    unet_bytes = sum(p.numel() * p.element_size() for p in live.parameters())
    with caplog.at_level("INFO", logger="lib_mbw.runtime.merger"):
        with RuntimeMerger(live, None, path_b) as merger:
            merger.apply(full_recipe(0.5))
            assert merger.plan.ram_bytes >= 2 * unet_bytes
            assert merger.memory.cpu_bytes <= merger.plan.ram_bytes
    assert any("this search holds" in r.getMessage() and "available now" in r.getMessage() for r in caplog.records)
    assert torch.equal(dict(live.named_parameters())["input_blocks.0.0.weight"], unet_tensors(path_a)["input_blocks.0.0.weight"])


def test_fp32_live_weights_from_fp16_files_are_merged_exactly_from_half_size_stores(tmp_path) -> None:
    """A CPU WebUI runs fp16 checkpoints in fp32: A and B are stored in fp16 (exact), merged in fp32."""
    import random

    from lib_mbw.keyspec import tiny_config
    from lib_mbw.synthetic import write_checkpoint

    from .runtime_support import params, random_recipe, reference_merge

    cfg = tiny_config("sd1")
    path_a = write_checkpoint(tmp_path / "a.safetensors", cfg, seed=1, dtype=torch.float16)
    path_b = write_checkpoint(tmp_path / "b.safetensors", cfg, seed=2, dtype=torch.float16)
    a, b = unet_tensors(path_a), unet_tensors(path_b)  # fp32 of the fp16 values
    live = live_unet(a)
    original = tensor_hashes(live)
    unet_bytes = sum(p.numel() * p.element_size() for p in live.parameters())
    rng = random.Random(3)
    with RuntimeMerger(live, None, path_b) as merger:
        assert merger.memory.cpu_bytes == unet_bytes, "A and B together take one fp32 UNet's size"
        for _ in range(3):
            recipe = random_recipe(rng)
            merger.apply(recipe)
            want = reference_merge(a, b, recipe, "sd1")
            got = params(live)
            assert all(got[k].dtype == torch.float32 and torch.equal(got[k], want[k]) for k in want)
        merger.restore()
        assert tensor_hashes(live) == original
    assert tensor_hashes(live) == original


def test_letting_go_of_a_replaced_model_writes_nothing_and_frees_the_stores(tiny_checkpoints) -> None:
    """``close(restore=False)`` keeps values the host loaded; ``abandon()`` leaves a discarded module untouched."""
    path_a, path_b = tiny_checkpoints["sd1"]
    a, b = unet_tensors(path_a), unet_tensors(path_b)
    live = live_unet(a)
    merger = RuntimeMerger(live, None, path_b)
    merger.apply(full_recipe(0.5))
    with torch.no_grad():  # the host loads B's weights into the same Parameters (A1111's checkpoint switch)
        for name, param in live.named_parameters():
            param.copy_(b[name])
    merger.close(restore=False)
    assert tensor_hashes(live) == tensor_hashes(live_unet(b))
    assert merger.memory.cpu_bytes == 0

    discarded = live_unet(a)
    merger = RuntimeMerger(discarded, None, path_b)
    merger.apply(full_recipe(0.5))
    merged = tensor_hashes(discarded)
    merger.abandon()
    assert tensor_hashes(discarded) == merged and merger.closed and merger.memory.cpu_bytes == 0
