"""Measure a process's memory across runtime-merge "searches" on a mid-size synthetic SD1 UNet.

Run as a script in a fresh process (``python tests/runtime_memory_probe.py
OUT_DIR [SEARCHES]``), so the figures are not mixed with other tests' heap;
it prints one JSON object: RSS before, after each search, and the peaks of
the whole search and of ``close()`` alone (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``). ``AUTO_MBW_PROBE_ROOT`` picks the checkout whose
``lib_mbw`` is measured (default: this one).
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(os.environ.get("AUTO_MBW_PROBE_ROOT") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lib_mbw.blocks import present_blocks  # noqa: E402
from lib_mbw.keyspec import SD1_UNET, unet_layout  # noqa: E402
from lib_mbw.recipe import Recipe  # noqa: E402
from lib_mbw.runtime import RuntimeMerger  # noqa: E402
from lib_mbw.synthetic import module_from_tensors, random_state_dict, write_checkpoint  # noqa: E402

#: 37.5 M parameters: 150 MB in fp32, small blocks that the C heap (not mmap) serves, as in a real UNet's small tensors.
CHANNELS = 64


def status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def main(out_dir: Path, searches: int) -> dict[str, object]:
    torch.set_num_threads(1)
    layout = unet_layout(replace(SD1_UNET, model_channels=CHANNELS))
    path_b = write_checkpoint(out_dir / "b.safetensors", layout, seed=2, dtype=torch.float16)
    prefix = "model.diffusion_model."
    # fp32 live weights holding fp16 values, as a CPU WebUI runs an fp16 checkpoint
    live = module_from_tensors({k[len(prefix) :]: v.half().float() for k, v in random_state_dict(layout, seed=1).items()})
    unet_bytes = sum(p.numel() * p.element_size() for p in live.parameters())
    rng = random.Random(0)
    blocks = present_blocks("sd1")
    rss_before = status("VmRSS")
    result: dict[str, object] = {"unet_bytes": unet_bytes, "rss_before": rss_before, "after": [], "search_peak": [], "close_peak": []}
    for _ in range(searches):
        reset_peak()
        merger = RuntimeMerger(live, None, path_b)
        result.setdefault("stated_ram", getattr(getattr(merger, "plan", None), "ram_bytes", None))
        for _ in range(5):
            merger.apply(Recipe({blk: rng.randrange(21) / 20 for blk in blocks}))
        at_close = status("VmRSS")
        search_peak = status("VmHWM")
        reset_peak()
        merger.close()
        del merger
        result["close_peak"].append(status("VmHWM") - at_close)  # type: ignore[union-attr]
        result["search_peak"].append(max(search_peak, status("VmHWM")))  # type: ignore[union-attr]
        result["after"].append(status("VmRSS"))  # type: ignore[union-attr]
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3)))
