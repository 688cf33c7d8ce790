"""How the live UNet's parameters are laid out in flat per-block buffers.

A ``Slot`` is one live parameter: where it sits in its module, which
checkpoint key it holds, and where its elements sit inside a flat buffer. A
``Segment`` is the run of slots of one block that share device and dtype; its
live parameters are views into one flat ``live`` buffer, and the flat ``a`` /
``b`` stores (``more``: models 3..N of a block mix; ``original``: the restore
copy when it differs from A) hold the same elements in the same physical
order, so one ``lerp`` (or one chain of them) over the flat buffers merges the
whole segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(eq=False)
class Slot:
    """One live parameter and its place in its segment's flat buffers (compared by identity)."""

    name: str  #: parameter name in the live module
    key: str  #: checkpoint UNet key, without prefix
    block: str  #: merge block of ``key``
    module_name: str
    module: nn.Module
    attr: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    numel: int
    offset: int = 0
    param: nn.Parameter | None = None  #: the Parameter object whose data we set
    ptr: int = 0  #: the data pointer we set
    version: int = 0  #: the Parameter's version counter when last checked
    #: the host made this parameter in inference mode (Forge): the merger gave it a normal Parameter
    #: and gives it an inference one again when it lets go
    inference: bool = False

    def view(self, flat: torch.Tensor) -> torch.Tensor:
        """This parameter's elements inside ``flat``, with the parameter's shape and strides."""
        return strided_view(flat, self.offset, self.shape, self.stride)

    def current(self) -> nn.Parameter | None:
        """The Parameter the module holds under this slot's name now."""
        return self.module._parameters.get(self.attr)  # noqa: SLF001 - direct lookup keeps the per-apply check cheap


@dataclass(eq=False)
class Segment:
    """The slots of one block that share device and dtype, with their flat buffers."""

    block: str
    slots: list[Slot]
    numel: int
    live: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    original: torch.Tensor | None = None
    identical: bool = field(default=False)  #: every source holds identical values here
    #: the flat stores of models 3..N of a block mix (empty for two models), laid out like ``a`` and ``b``
    more: tuple[torch.Tensor, ...] = ()

    @property
    def sources(self) -> tuple[torch.Tensor, ...]:
        """Every source store in the recipe's order: A, B, then models 3..N."""
        return (self.a, self.b, *self.more)

    @property
    def live_bytes(self) -> int:
        return self.numel * self.live.element_size()


def dense_stride(tensor: torch.Tensor) -> tuple[int, ...]:
    """``tensor``'s strides if they pack its elements densely (contiguous, channels_last, ...), else contiguous strides.

    Flat buffers keep each parameter's memory format, so a host that uses
    channels_last keeps it.
    """
    shape = tuple(tensor.shape)
    stride = tuple(tensor.stride())
    dims = sorted((s, n) for s, n in zip(stride, shape) if n != 1)
    expected = 1
    dense = True
    for s, n in dims:
        if s != expected:
            dense = False
            break
        expected *= n
    if dense:
        return stride
    return contiguous_stride(shape)


def strided_view(flat: torch.Tensor, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """Elements ``offset:offset+numel`` of ``flat`` seen with ``shape`` and dense ``stride``.

    Built from narrow + view (+ permute for non-contiguous layouts) rather than
    ``as_strided``: copies into ``as_strided`` views take a slow path.
    """
    numel = 1
    for n in shape:
        numel *= n
    chunk = flat.narrow(0, offset, numel)
    if stride == contiguous_stride(shape):
        return chunk.view(shape)
    order = sorted(range(len(shape)), key=lambda d: (-stride[d], d))  # outermost dim first in memory
    physical = chunk.view([shape[d] for d in order])
    inverse = [order.index(d) for d in range(len(shape))]
    return physical.permute(inverse)


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride = []
    step = 1
    for n in reversed(shape):
        stride.append(step)
        step *= max(n, 1)
    return tuple(reversed(stride))


def assign_offsets(slots: list[Slot]) -> int:
    """Lay ``slots`` out one after another; returns the total number of elements."""
    offset = 0
    for slot in slots:
        slot.offset = offset
        offset += slot.numel
    return offset


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bitwise_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Same dtype, shape and bits (unlike ``torch.equal``, tells -0.0 from 0.0 and compares NaNs by payload)."""
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if y.device != x.device:
        y = y.to(x.device)
    int_type = _INT_OF_SIZE.get(x.element_size())
    if int_type is None or not x.dtype.is_floating_point:
        return bool(torch.equal(x, y))
    if not (x.is_contiguous() and y.is_contiguous()):
        x, y = x.contiguous(), y.contiguous()
    return bool(torch.equal(x.view(int_type), y.view(int_type)))
