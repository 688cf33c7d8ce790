"""Benchmark: runtime merge of full-size SD1.5 / SDXL UNets vs copy bandwidth and the seed's per-key fp32 path.

Random fp16 UNets with the real layouts (``keyspec.unet_layout``) are built in
memory: the live model (which is model A, as in the WebUI) and a lazily
generated model B. Measured on one device per run (``--device cpu|cuda``):

* copy bandwidth: ``dst.copy_(src)`` on one buffer of the UNet's size,
  bytes read + written / second (a reference line);
* full apply (all 27 blocks change) and one-block apply (M00) of
  ``RuntimeMerger``, per placement mode, in bytes read + written / second.
  ``ratio`` is the apply's bandwidth over the copy bandwidth. In ``device``
  mode the copy is measured in alternation with the applies, as
  ``live.copy_(A)`` through the same block buffers, and the ratio is the
  median of the per-round ratios: a busy machine slows both alike. The other
  modes are compared with the reference copy;
* the seed-style baseline: per key, A and B ``.float()`` on the CPU,
  ``(1 - w) * a + w * b``, copied into the live parameter.

The last line is ``runtime_merge bandwidth_ratio=<x> speedup_vs_seed=<y>`` for
the SD1.5 full apply in ``device`` mode.

    python tests/bench/runtime_merge.py                  # CPU, SD1.5 and (if RAM allows) SDXL
    python tests/bench/runtime_merge.py --only sd15
    python tests/bench/runtime_merge.py --device cuda --modes device,stream,cpu
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lib_mbw import keyspec  # noqa: E402
from lib_mbw.blocks import block_of_unet_key  # noqa: E402
from lib_mbw.checkpoint import Checkpoint  # noqa: E402
from lib_mbw.recipe import Recipe  # noqa: E402
from lib_mbw.runtime import RuntimeMerger  # noqa: E402
from lib_mbw.synthetic import module_from_tensors  # noqa: E402

MODELS = {"sd15": ("SD1.5", keyspec.SD1_UNET, "sd1"), "sdxl": ("SDXL", keyspec.SDXL_UNET, "sdxl")}
DTYPE = torch.float16
GB = 1e9


class RandomPool:
    """Random fp16 values; each tensor is a key-dependent slice of one pool (fast, deterministic, A != B)."""

    def __init__(self, seed: int, size: int = 2**25) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.values = (torch.randn(size, generator=generator) * 0.02).to(DTYPE)

    def tensor(self, key: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        numel = 1
        for d in shape:
            numel *= d
        start = int.from_bytes(hashlib.sha256(f"{self.seed}:{key}".encode()).digest()[:4], "little")
        start %= self.values.numel() - numel
        return self.values[start : start + numel].reshape(shape).to(device, copy=True)


class LazyState(Mapping[str, torch.Tensor]):
    """A state dict whose tensors are made on access, so model B never exists twice in memory."""

    def __init__(self, layout: Mapping[str, tuple[int, ...]], pool: RandomPool) -> None:
        self.layout, self.pool = layout, pool

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.pool.tensor(key, self.layout[key], torch.device("cpu"))

    def __iter__(self) -> Iterator[str]:
        return iter(self.layout)

    def __len__(self) -> int:
        return len(self.layout)


def lazy_checkpoint(layout: Mapping[str, tuple[int, ...]], seed: int) -> Checkpoint:
    full = {keyspec.UNET_PREFIX + k: s for k, s in layout.items()}
    return Checkpoint(
        Path(f"<random model seed {seed}>"),
        dict(full),
        {k: DTYPE for k in full},
        {},
        state_dict=LazyState(full, RandomPool(seed)),
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Wall seconds of ``fn`` per call, after one warm-up call."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def copy_bandwidth(numel: int, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median seconds and bytes/s (read + written) of ``dst.copy_(src)`` on ``numel`` fp16 values."""
    src = torch.empty(numel, dtype=DTYPE, device=device).fill_(0.5)
    dst = torch.empty_like(src).fill_(0.25)
    seconds = statistics.median(timed(lambda: dst.copy_(src), device, repeats))
    nbytes = 2 * numel * src.element_size()
    del src, dst
    return seconds, nbytes / seconds


def apply_times(merger: RuntimeMerger, recipes: list[Recipe], repeats: int) -> tuple[float, int]:
    """Median seconds of ``merger.apply`` cycling through ``recipes`` (each call changes what it should)."""
    merger.apply(recipes[-1])
    times, nbytes = [], 0
    for i in range(repeats):
        stats = merger.apply(recipes[i % len(recipes)])
        times.append(stats.seconds)
        nbytes = stats.bytes
    return statistics.median(times), nbytes


def plain_copy_seconds(merger: RuntimeMerger, device: torch.device) -> float:
    """Seconds of ``live.copy_(A)`` over every block buffer: a plain model-sized copy, no merger code."""
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        for seg in merger._segments:  # noqa: SLF001 - benchmark-only peek at the buffers
            seg.live.copy_(seg.a)
    synchronize(device)
    return time.perf_counter() - start


def interleaved(merger: RuntimeMerger, device: torch.device, recipes: list[Recipe], repeats: int) -> tuple[float, int, float]:
    """Full applies alternating with plain copies through the same buffers.

    Returns the median apply seconds, its bytes, and the median over rounds
    of (apply bytes/s) / (copy bytes/s). Measured side by side, a busy
    machine slows both alike. Every apply changes every block.
    """
    merger.apply(recipes[-1])
    times, ratios, nbytes = [], [], 0
    for i in range(repeats):
        copy_s = plain_copy_seconds(merger, device)
        stats = merger.apply(recipes[i % len(recipes)])
        times.append(stats.seconds)
        nbytes = stats.bytes
        copy_bw = 2 * merger.unet_bytes / copy_s
        ratios.append(stats.bandwidth / copy_bw)
    return statistics.median(times), nbytes, statistics.median(ratios)


def seed_style_apply(merger: RuntimeMerger, live: torch.nn.Module, weights: Mapping[str, float], family: str) -> None:
    """The seed's merge: per key, A and B as fp32 on the CPU, (1 - w) * a + w * b, copied into the parameter.

    A and B are read from the merger's CPU stores (``mode="cpu"``), where the
    seed kept its state dicts; the merger itself is not used to merge.
    """
    with torch.no_grad():
        for seg in merger._segments:  # noqa: SLF001 - benchmark-only peek at the stores
            for slot in seg.slots:
                w = weights[block_of_unet_key(slot.key, family)]
                a = slot.view(seg.a).float()
                b = slot.view(seg.b).float()
                merged = (1 - w) * a + w * b
                slot.param.copy_(merged)  # type: ignore[union-attr]


def seed_baseline(merger: RuntimeMerger, live: torch.nn.Module, family: str, device: torch.device, repeats: int) -> float:
    """Median seconds of the seed-style merge, reading A and B from ``merger``'s CPU stores."""
    weights = {b: 0.3 for b in merger.blocks}
    seconds = statistics.median(timed(lambda: seed_style_apply(merger, live, weights, family), device, repeats))
    merger.resync(reload=False)  # the baseline's writes are disposable: close() restores A
    return seconds


def available_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def build_live(layout: Mapping[str, tuple[int, ...]], device: torch.device) -> torch.nn.Module:
    pool = RandomPool(1)
    return module_from_tensors({k: pool.tensor(k, s, device) for k, s in layout.items()})


def run_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    label, cfg, family = MODELS[name]
    layout = keyspec.unet_layout(cfg, prefix="")
    params = keyspec.param_count(layout)
    unet_bytes = params * 2
    need = 3 * unet_bytes if device.type == "cpu" else 2 * unet_bytes  # live + A + B (CPU run); A + B of mode "cpu"
    if available_ram() < need + 1.5 * GB:
        print(f"{label}: skipped, needs {need / GB:.1f} GB of free RAM, {available_ram() / GB:.1f} GB available")
        return {}
    print(f"\n{label} UNet: {len(layout)} tensors, {params / 1e6:.1f}M params, {unet_bytes / GB:.2f} GB in fp16")
    copy_s, copy_bw = copy_bandwidth(params, device, args.copy_repeats)
    print(f"  copy bandwidth   dst.copy_(src) {unet_bytes / GB:.2f} GB: {copy_s * 1e3:9.1f} ms  {copy_bw / GB:7.2f} GB/s (reference)")

    live = build_live(layout, device)
    results: dict[str, float] = {}
    full = [Recipe.uniform(0.3), Recipe.uniform(0.7)]
    one = [Recipe.uniform(0.3).replace(weights={**Recipe.uniform(0.3).weights, "M00": w}) for w in (0.6, 0.4)]
    print(f"  {'mode':<8}{'full apply':>12}{'GB/s':>9}{'ratio':>8}{'one block (M00)':>18}{'GB/s':>9}   extra memory")
    seed_s: float | None = None
    for mode in args.modes:
        with RuntimeMerger(live, None, lazy_checkpoint(layout, seed=2), mode=mode, device=device) as merger:
            if merger.mode == "device":  # A, B and the weights share the device: compare with copies through them
                full_s, full_bytes, ratio = interleaved(merger, device, full, args.repeats)
            else:
                full_s, full_bytes = apply_times(merger, full, args.repeats)
                ratio = (full_bytes / full_s) / copy_bw
            one_s, one_bytes = apply_times(merger, one, args.repeats)
            print(
                f"  {mode:<8}{full_s * 1e3:10.1f} ms{full_bytes / full_s / GB:9.2f}{ratio:8.2f}"
                f"{one_s * 1e3:16.2f} ms{one_bytes / one_s / GB:9.2f}   {merger.memory.describe()}"
            )
            results[f"{mode}_full_s"] = full_s
            results[f"{mode}_ratio"] = ratio
            if device.type == "cpu" and seed_s is None:  # A and B are in RAM already: reuse them
                seed_s = seed_baseline(merger, live, family, device, args.seed_repeats)
    if seed_s is None:
        with RuntimeMerger(live, None, lazy_checkpoint(layout, seed=2), mode="cpu", device=device) as merger:
            seed_s = seed_baseline(merger, live, family, device, args.seed_repeats)
    first = args.modes[0]
    results["seed_s"] = seed_s
    results["speedup"] = seed_s / results[f"{first}_full_s"]
    print(f"  seed-style full apply (per key fp32 on the CPU): {seed_s:.2f} s  -> runtime merge ({first}) is {results['speedup']:.0f}x faster")
    del live
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--only", choices=sorted(MODELS), help="benchmark one model only")
    parser.add_argument("--modes", default="device", help="comma-separated placement modes (device,stream,cpu)")
    parser.add_argument("--repeats", type=int, default=None, help="timed applies per case (default 7 on CPU, 50 on CUDA)")
    parser.add_argument("--seed-repeats", type=int, default=1, help="timed runs of the slow seed-style baseline")
    parser.add_argument("--copy-repeats", type=int, default=None, help="timed copies (default as --repeats)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.repeats = args.repeats or (7 if device.type == "cpu" else 50)
    args.copy_repeats = args.copy_repeats or args.repeats
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"runtime_merge benchmark: {where}, torch {torch.__version__}, fp16, median of {args.repeats} applies")
    results = {}
    for name in ([args.only] if args.only else ["sd15", "sdxl"]):
        results[name] = run_model(name, args, device)
    headline = results.get("sd15") or next((r for r in results.values() if r), {})
    if not headline:
        print("runtime_merge bandwidth_ratio=nan speedup_vs_seed=nan")
        return 1
    print(f"runtime_merge bandwidth_ratio={headline[f'{args.modes[0]}_ratio']:.2f} speedup_vs_seed={headline['speedup']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
