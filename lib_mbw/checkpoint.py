"""Reading checkpoint files lazily: keys, shapes, dtypes, metadata, architecture, tensors.

``open_checkpoint`` is the one place auto-MBW opens a model file. ``.safetensors``
files are read lazily: the header once, then one tensor at a time with a
positioned read (``os.pread``) into a fresh tensor. No memory map is used, so
reading a whole file tensor by tensor does not leave the file's pages in the
process's resident set (mapped file pages count in RSS; the page cache does
not), which is what keeps the offline merge within one model's size of RAM.
Pickle checkpoints (``.ckpt``, ``.pt``, ``.bin``, ``.pth``) can run code when
loaded, so they are refused unless ``allow_pickle=True``, and even then are
loaded with ``torch.load(weights_only=True)`` and a warning.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from .blocks import ModelArch, detect_architecture, group_keys
from .errors import ModelFormatError, PickleRefusedError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

#: safetensors dtype names -> torch dtypes.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}

#: torch dtypes -> safetensors dtype names.
TORCH_TO_SAFETENSORS: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}


class Checkpoint:
    """An opened checkpoint: header facts up front, tensors on demand.

    Use as a context manager or call ``close()``; tensors returned by ``get``
    are independent copies on the CPU (or on ``device``).
    """

    def __init__(
        self,
        path: Path,
        shapes: dict[str, tuple[int, ...]],
        dtypes: dict[str, torch.dtype],
        metadata: dict[str, str],
        handle: Any = None,
        state_dict: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.path = path
        self.shapes = shapes
        self.dtypes = dtypes
        self.metadata = metadata
        self._handle = handle
        self._state_dict = state_dict
        self._arch: ModelArch | None = None
        self._groups: dict[str, list[str]] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def keys(self) -> list[str]:
        return list(self.shapes)

    @property
    def arch(self) -> ModelArch:
        """The detected architecture; ModelFormatError names this file if it is unsupported."""
        if self._arch is None:
            self._arch = detect_architecture(self.shapes, source=str(self.path))
        return self._arch

    @property
    def groups(self) -> dict[str, list[str]]:
        """Keys by merge group (blocks, BASE, VAE, OTHER) in canonical order."""
        if self._groups is None:
            self._groups = group_keys(self.shapes, self.arch)
        return self._groups

    def unet_keys(self) -> list[str]:
        """Every UNet key, in the file's order."""
        prefix = self.arch.unet_prefix
        return [k for k in self.shapes if k.startswith(prefix)]

    def get(
        self,
        key: str,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        buffer: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One tensor, optionally converted; ModelFormatError names the file if the data is unreadable.

        ``buffer`` (a flat uint8 CPU tensor of at least the tensor's size in
        bytes) makes a ``.safetensors`` read land in it instead of in fresh
        memory; the result is then a view of ``buffer``. Streaming code reuses
        one buffer per source so that no memory is allocated per tensor.
        """
        try:
            if self._handle is not None:
                tensor = self._handle.get_tensor(key, buffer)
            elif self._state_dict is not None:
                tensor = self._state_dict[key]
            else:
                raise ModelFormatError(f"{self.path}: checkpoint is closed")
        except KeyError:
            raise ModelFormatError(f"{self.path}: has no tensor {key!r}") from None
        except ModelFormatError:
            raise
        except Exception as exc:  # safetensors raises its own error type for corrupt data
            raise ModelFormatError(f"{self.path}: cannot read tensor {key!r} ({exc}); the file may be corrupt") from None
        if dtype is not None and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        if torch.device(device).type != "cpu":
            tensor = tensor.to(device)
        return tensor

    def iter_tensors(self, keys: list[str] | None = None, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for key in keys if keys is not None else self.keys:
            yield key, self.get(key, dtype)

    def nbytes(self, keys: list[str] | None = None) -> int:
        """Bytes the given tensors (default: all) occupy at their stored dtype."""
        total = 0
        for key in keys if keys is not None else self.keys:
            n = self.dtypes[key].itemsize
            for d in self.shapes[key]:
                n *= d
            total += n
        return total

    def close(self) -> None:
        if self._handle is not None and hasattr(self._handle, "close"):
            self._handle.close()
        self._handle = None
        self._state_dict = None

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_safetensors_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The tensor entries and ``__metadata__`` of a safetensors file, validated against its size."""
    header, metadata, _ = _read_header(path)
    return header, metadata


def _read_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Tensor entries, ``__metadata__`` and the offset where tensor data starts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ModelFormatError(f"{path}: file is too short to be a safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(size - 8, 100 * 1024 * 1024):
            raise ModelFormatError(f"{path}: not a safetensors file, or its header is corrupt")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelFormatError(f"{path}: safetensors header is not valid JSON; the file is corrupt") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: safetensors header is not a JSON object; the file is corrupt")
    metadata = header.pop("__metadata__", None) or {}
    for key, entry in header.items():
        _check_entry(path, key, entry)
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + header_len + end > size:
        raise ModelFormatError(
            f"{path}: file is truncated ({size} bytes, header promises {8 + header_len + end}); download or copy it again"
        )
    return header, metadata, 8 + header_len


def _check_entry(path: Path, key: str, entry: Any) -> None:
    """A header entry has a known dtype, a shape and offsets that hold exactly that many bytes."""
    if not isinstance(entry, dict):
        raise ModelFormatError(f"{path}: header entry of tensor {key!r} is malformed; the file is corrupt")
    if entry.get("dtype") not in SAFETENSORS_DTYPES:
        raise ModelFormatError(f"{path}: tensor {key!r} has unsupported dtype {entry.get('dtype')!r}")
    try:
        shape = [int(d) for d in entry["shape"]]
        start, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ModelFormatError(f"{path}: header entry of tensor {key!r} is malformed; the file is corrupt") from None
    count = 1
    for d in shape:
        count *= d
    nbytes = count * SAFETENSORS_DTYPES[entry["dtype"]].itemsize
    if min(shape, default=0) < 0 or not 0 <= start <= end or end - start != nbytes:
        raise ModelFormatError(f"{path}: header entry of tensor {key!r} does not match its data size; the file is corrupt")


class _SafetensorsFile:
    """Positioned reads of single tensors from a safetensors file (thread-safe, no mmap).

    Uses ``os.preadv`` where the OS has it (Linux, macOS, BSD) and a locked
    seek + read elsewhere (Windows).
    """

    def __init__(self, path: Path, header: Mapping[str, Mapping[str, Any]], data_start: int) -> None:
        self.path = path
        self._entries = header
        self._data_start = data_start
        self._fd: int | None = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._lock = threading.Lock()

    def _read_at(self, view: memoryview, offset: int) -> int:
        assert self._fd is not None
        if hasattr(os, "preadv"):
            return os.preadv(self._fd, [view], offset)
        with self._lock:
            os.lseek(self._fd, offset, os.SEEK_SET)
            with io.FileIO(self._fd, "rb", closefd=False) as f:
                return f.readinto(view) or 0

    def get_tensor(self, key: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        if self._fd is None:
            raise ModelFormatError(f"{self.path}: checkpoint is closed")
        entry = self._entries[key]
        start, end = entry["data_offsets"]
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        if buffer is not None and buffer.dtype == torch.uint8 and buffer.numel() >= end - start:
            raw = buffer[: end - start]
        else:
            raw = torch.empty(end - start, dtype=torch.uint8)
        if end > start:
            view = memoryview(raw.numpy())
            offset, done = self._data_start + start, 0
            while done < len(view):
                n = self._read_at(view[done:], offset + done)
                if n <= 0:
                    raise ModelFormatError(f"{self.path}: file ended inside tensor {key!r}; it is truncated")
                done += n
        return raw.view(dtype).reshape(tuple(entry["shape"]))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def _open_safetensors(path: Path) -> Checkpoint:
    header, metadata, data_start = _read_header(path)
    shapes = {key: tuple(int(d) for d in entry["shape"]) for key, entry in header.items()}
    dtypes = {key: SAFETENSORS_DTYPES[entry["dtype"]] for key, entry in header.items()}
    try:
        handle = _SafetensorsFile(path, header, data_start)
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot open ({exc.strerror})") from None
    return Checkpoint(path, shapes, dtypes, dict(metadata), handle=handle)


def _open_pickle(path: Path) -> Checkpoint:
    log.warning("loading pickle checkpoint %s: pickle files can run code; prefer .safetensors", path)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFormatError(f"{path}: cannot load pickle checkpoint ({exc})") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: pickle checkpoint holds no state dict")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    dtypes = {k: v.dtype for k, v in tensors.items()}
    return Checkpoint(path, shapes, dtypes, {}, state_dict=tensors)


def open_checkpoint(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Checkpoint:
    """Open a checkpoint for lazy reading, with errors that name the file and what to do."""
    path = Path(path)
    if not path.exists():
        raise ModelFormatError(f"{path}: file not found")
    if path.is_dir():
        raise ModelFormatError(f"{path}: is a folder; give a .safetensors checkpoint file")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleRefusedError(
                f"{path}: pickle checkpoints can run arbitrary code when loaded; convert it to .safetensors, "
                "or pass --allow-pickle if you trust its source"
            )
        return _open_pickle(path)
    return _open_safetensors(path)


def state_dict_checkpoint(state_dict: Mapping[str, torch.Tensor], name: str = "<memory>", metadata: Mapping[str, str] | None = None) -> Checkpoint:
    """A Checkpoint view of tensors already in memory (for hosts that hold a loaded model)."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    dtypes = {k: v.dtype for k, v in state_dict.items()}
    return Checkpoint(Path(name), shapes, dtypes, dict(metadata or {}), state_dict=dict(state_dict))
