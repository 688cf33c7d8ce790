"""Memory a runtime merge needs, whether it fits, and giving it back afterwards.

A search holds models A and B (``placement.memory_cost``) plus, briefly,
one block's new live buffer while the merger takes over the live UNet. This
module states that figure before anything is allocated, refuses a search
that would not fit in the memory available now (RAM for stores kept on the
CPU, free device memory for stores on the accelerator), and returns freed
memory to the operating system when the merger closes: glibc keeps freed
heap pages of large temporary allocations, so without ``malloc_trim`` a
long-running WebUI grows by about a model's size per search.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch

from ..errors import RuntimeMergeError
from .placement import MemoryCost, free_device_bytes, memory_cost

log = logging.getLogger(__name__)

#: RAM left free for generation (activations, VAE decode, the WebUI itself) when a search starts.
DEFAULT_RAM_HEADROOM_BYTES = 1 * 2**30

GIB = 2**30


class InsufficientMemoryError(RuntimeMergeError):
    """A runtime merge would need more RAM or device memory than is available now."""


@dataclass(frozen=True)
class MemoryPlan:
    """What a runtime merge will hold beyond the live model, and what is available for it."""

    cost: MemoryCost
    transient_bytes: int  #: one block's new live buffer while taking the model over
    device: torch.device
    available_ram: int | None
    free_device: int | None

    @property
    def ram_bytes(self) -> int:
        transient = self.transient_bytes if self.device.type == "cpu" else 0
        return self.cost.cpu_bytes + transient

    @property
    def device_bytes(self) -> int:
        transient = self.transient_bytes if self.device.type != "cpu" else 0
        return self.cost.device_bytes + transient

    def describe(self) -> str:
        """One line for the log and the UI: what the search takes and what is available."""
        parts = [f"{self.ram_bytes / GIB:.2f} GiB of RAM"]
        if self.device.type != "cpu":
            parts.append(f"{self.device_bytes / GIB:.2f} GiB on {self.device}")
        text = f"this search holds {' and '.join(parts)} beyond the loaded model (placement {self.cost.mode})"
        free = []
        if self.available_ram is not None:
            free.append(f"{self.available_ram / GIB:.2f} GiB RAM")
        if self.free_device is not None:
            free.append(f"{self.free_device / GIB:.2f} GiB on {self.device}")
        return text + (f"; available now: {', '.join(free)}" if free else "")


def available_ram_bytes() -> int | None:
    """RAM the system can give without swapping (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def process_rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), in bytes."""
    path = f"/proc/{pid or os.getpid()}/status"
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def check_fits(
    plan: MemoryPlan,
    *,
    ram_headroom: int = DEFAULT_RAM_HEADROOM_BYTES,
) -> None:
    """Refuse (InsufficientMemoryError) a plan whose RAM part does not fit in the RAM available now.

    Device memory is checked by the placement choice (``placement.choose_mode``);
    here only when a placement was forced and still does not fit.
    """
    if plan.available_ram is not None and plan.ram_bytes > plan.available_ram - ram_headroom:
        raise InsufficientMemoryError(
            f"not enough memory for this search: {plan.describe()}, and {ram_headroom / GIB:.1f} GiB must stay free "
            "for generation. Close other programs or WebUI tabs, unload other models, or use smaller (fp16) models"
        )
    if plan.free_device is not None and plan.device_bytes > plan.free_device:
        raise InsufficientMemoryError(
            f"not enough device memory for this search: {plan.describe()}. "
            "Set Settings > auto-MBW > memory mode to 'auto' or 'cpu' (A and B stay in RAM)"
        )


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on other C libraries."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory() -> None:
    """Give freed memory back: collect garbage, empty PyTorch's CUDA cache, ``malloc_trim`` the C heap."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def plan_for(
    mode: str, device: torch.device, store_bytes: int, largest_block_bytes: int, transient_bytes: int | None = None
) -> MemoryPlan:
    """The memory plan of placement ``mode`` for stores of ``store_bytes`` (one of A/B) on a model on ``device``.

    ``transient_bytes``: what applying needs besides the stores (default: one block's new live buffer).
    """
    on_accelerator = device.type != "cpu"
    cost = memory_cost(mode, store_bytes, largest_block_bytes, on_accelerator=on_accelerator)
    free_device = free_device_bytes(device) if device.type == "cuda" else None
    transient = largest_block_bytes if transient_bytes is None else transient_bytes
    return MemoryPlan(cost, transient, device, available_ram_bytes(), free_device)
