"""The runtime merger the WebUI tests use: ``lib_mbw.runtime.RuntimeMerger`` once it exists, else a small double.

The double keeps the contract the WebUI adapter relies on: it holds references
to the live Parameters it was built on (as the real merger keeps views), so
weights replaced behind its back are NOT updated until ``resync()``; it
refuses A == B; ``apply`` gives ``lerp(A, B, w)`` per block; ``restore``
gives A back exactly; ``generating()`` is the lock generation holds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lib_mbw.blocks import block_of_unet_key
from lib_mbw.checkpoint import open_checkpoint
from lib_mbw.errors import MBWError
from lib_mbw.recipe import Recipe


@dataclass
class ApplyStats:
    seconds: float
    blocks: int


class DoubleRuntimeMerger:
    def __init__(self, live: torch.nn.Module, model_a, model_b, *, mode: str = "auto", key_map=None) -> None:
        if model_a is not None:
            raise NotImplementedError("the double only supports model_a=None (live weights are A)")
        self.live = live
        self.mode = mode
        self.lock = threading.RLock()
        self.resyncs = 0
        self._bind()
        self.a = {n: p.detach().clone() for n, p in self.params.items()}
        with open_checkpoint(Path(model_b)) as ckpt:
            prefix = ckpt.arch.unet_prefix
            self.b = {k[len(prefix):]: ckpt.get(k, dtype=self.a[k[len(prefix):]].dtype) for k in ckpt.unet_keys()}
        if set(self.a) != set(self.b):
            raise MBWError("model B's UNet keys differ from the live model's")
        if all(torch.equal(self.a[k], self.b[k]) for k in self.a):
            raise MBWError("models A and B are identical")
        self.current: Recipe | None = None
        self.closed = False

    def _bind(self) -> None:
        self.params = dict(self.live.named_parameters())

    def resync(self, reload: bool | None = None) -> None:
        """Rebind to the module's current Parameters; ``reload=True``: their values become A (the original)."""
        with self.lock:
            self._bind()
            self.resyncs += 1
            if reload:
                self.a = {n: p.detach().clone() for n, p in self.params.items()}
                self.current = None

    def apply(self, recipe: Recipe) -> ApplyStats:
        start = time.perf_counter()
        with self.lock, torch.no_grad():
            for name, param in self.params.items():
                w = recipe.weight(block_of_unet_key(name))
                param.data.copy_(torch.lerp(self.a[name], self.b[name], w))
            self.current = recipe
        return ApplyStats(time.perf_counter() - start, len(recipe.weights))

    def restore(self) -> None:
        with self.lock, torch.no_grad():
            for name, param in self.params.items():
                param.data.copy_(self.a[name])
            self.current = None

    def generating(self):
        return self.lock

    def close(self) -> None:
        if not self.closed:
            self.restore()
            self.closed = True


def merger_factory():
    """The real RuntimeMerger when lib_mbw.runtime provides it, else the double."""
    try:
        from lib_mbw.runtime import RuntimeMerger
    except ImportError:
        return DoubleRuntimeMerger
    return RuntimeMerger
