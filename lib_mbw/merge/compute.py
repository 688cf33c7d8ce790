"""Computing output tensors in reused memory, and the two-thread pipeline that streams them.

``compute_tensor`` evaluates one ``plan.TensorOp`` with the math of
``methods``: sources are read with positioned reads into reused buffers
(``Checkpoint.get(buffer=...)``), reduced-precision inputs are upcast into
reused fp32 scratch only when the method needs it, and the result lands in a
region of an output buffer. ``stream`` runs that on the calling thread and
hands full output buffers to a second thread (the writer), so reading and
computing overlap writing and memory stays a handful of the largest tensor
(about 0.2-0.3 GB for SD1.5), whatever the model size.
"""

from __future__ import annotations

import os
import queue
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..checkpoint import Checkpoint
from .methods import METHODS
from .plan import TensorOp
from .writer import TensorEntry

OUTPUT_SLOTS = 2  #: output buffers: one being filled, one being written
BATCH_BYTES = 64 * 2**20  #: output buffer size (at least the largest tensor): threads meet once per buffer
ALIGN = 64  #: tensors start at multiples of this inside an output buffer


class Workspace:
    """Reused flat byte buffers by name, grown on demand; tensors are typed views into them."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def raw(self, name: str, nbytes: int) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < nbytes:
            self._buffers.pop(name, None)
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8)
            self._buffers[name] = buf
        return buf

    def typed(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        return _typed(self.raw(name, TensorEntry(name, dtype, shape).nbytes), dtype, shape)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self._buffers.values())


def _typed(region: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The start of a flat uint8 buffer viewed as a tensor of ``dtype`` and ``shape``."""
    return region[: TensorEntry("", dtype, shape).nbytes].view(dtype).reshape(shape)


def _nbytes(ckpt: Checkpoint, key: str) -> int:
    return ckpt.nbytes([key])


def _as_fp32(t: torch.Tensor, work: Workspace, name: str) -> torch.Tensor:
    if t.dtype == torch.float32:
        return t
    return work.typed(name, torch.float32, tuple(t.shape)).copy_(t)


def compute_tensor(op: TensorOp, models: Mapping[str, Checkpoint], work: Workspace, region: torch.Tensor) -> torch.Tensor:
    """The output tensor of ``op`` (dtype ``op.dtype``), computed into ``region`` (flat uint8, large enough).

    The result is a view of ``region`` (or, for sources held in memory, the
    source's own tensor); it stays valid until ``region`` is reused.
    """
    method = METHODS.get(op.kind)
    pick = 0 if method is None else (method.shortcut(op.weight) if op.weight is not None else None)
    out = _typed(region, op.dtype, op.shape)
    if pick is not None:
        role, key = op.inputs[pick]
        source = models[role]
        if source.dtypes[key] == op.dtype:
            return source.get(key, buffer=region)
        return out.copy_(source.get(key, buffer=work.raw("in0", _nbytes(source, key))))
    assert method is not None
    if method.models == 0:
        reads = (models[role].get(key, buffer=work.raw("in0", _nbytes(models[role], key))) for role, key in op.inputs)
        merged = method.function(reads, out=work.typed("result", torch.float32, op.shape))
    else:
        inputs = [
            models[role].get(key, buffer=work.raw(f"in{i}", _nbytes(models[role], key))) for i, (role, key) in enumerate(op.inputs)
        ]
        if op.dtype in method.native_dtypes and all(t.dtype == op.dtype for t in inputs):
            return method.function(*inputs, op.weight, out=out)
        fp32 = [_as_fp32(t, work, f"fp32_{i}") for i, t in enumerate(inputs)]
        merged = method.function(*fp32, op.weight, out=work.typed("result", torch.float32, op.shape))
    return out.copy_(merged)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity set where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextmanager
def compute_threads(count: int) -> Iterator[None]:
    """Run torch's CPU ops on ``count`` threads inside the block, then restore the previous setting.

    The offline commands use one CPU fewer than they may: the merge leaves it
    to its writer thread, and on a busy machine torch's OpenMP workers, which
    spin while they wait, made small-tensor work five to six times slower when
    they had to share the last core (measured on a 2-CPU machine).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def stream(
    ops: Sequence[TensorOp],
    produce: Callable[[TensorOp, torch.Tensor], Any],
    consume: Callable[[TensorOp, Any], None],
    on_done: Callable[[int, TensorOp], None],
    work: Workspace,
) -> None:
    """Run ``produce`` on this thread and ``consume`` (in order) on a second one.

    ``produce(op, region)`` computes into ``region`` (a slice of an output
    buffer) and returns what ``consume`` needs. Results are packed into one of
    ``OUTPUT_SLOTS`` reused buffers; a full buffer goes to the consumer thread
    while this thread fills the other, so the threads meet once per buffer,
    not once per tensor. An error on either side stops both; the consumer's
    error, when there is one, is the one raised.
    """
    sizes = [-(-op.entry.nbytes // ALIGN) * ALIGN for op in ops]
    capacity = max([min(BATCH_BYTES, sum(sizes))] + sizes)
    buffers = [work.raw(f"out{i}", capacity) for i in range(OUTPUT_SLOTS)]
    free: queue.Queue[int] = queue.Queue()
    for i in range(OUTPUT_SLOTS):
        free.put(i)
    todo: queue.Queue[tuple[int, list[tuple[TensorOp, Any]]] | None] = queue.Queue()
    failure: list[BaseException] = []

    def drain() -> None:
        while (item := todo.get()) is not None:
            slot, batch = item
            for op, product in batch:
                if failure:
                    break
                try:
                    consume(op, product)
                except BaseException as exc:  # handed to the main thread below
                    failure.append(exc)
            free.put(slot)

    worker = threading.Thread(target=drain, name="auto-mbw-writer", daemon=True)
    worker.start()
    slot, offset, batch = free.get(), 0, []
    try:
        for index, (op, size) in enumerate(zip(ops, sizes)):
            if offset + size > capacity:
                todo.put((slot, batch))
                slot, offset, batch = free.get(), 0, []
            if failure:
                break
            batch.append((op, produce(op, buffers[slot][offset:])))
            offset += size
            on_done(index + 1, op)
        if batch and not failure:
            todo.put((slot, batch))
    except BaseException:
        todo.put(None)
        worker.join()
        if failure:  # the consumer's error came first and is the one to report
            raise failure[0] from None
        raise
    todo.put(None)
    worker.join()
    if failure:
        raise failure[0]
