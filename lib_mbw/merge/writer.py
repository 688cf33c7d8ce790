"""Streaming, atomic ``.safetensors`` writer.

The header (names, dtypes, shapes, offsets, ``__metadata__``) is known before
any tensor is computed, so it is written first and the tensors follow one by
one: memory holds one tensor at a time, never the whole model. The file is
written to a hidden temp file in the output's folder, hashed as it is written
(``hashes.HashingSink``), flushed and fsync'd, and renamed over the final name
only when complete. An existing output is refused unless ``overwrite``; any
error removes the temp file, so a failed write leaves nothing behind.

Layout: tensors are stored in order of decreasing item size (stable within
one size), as ``safetensors`` itself does, so every tensor starts at an offset
aligned to its item size; the header is padded with spaces to 8 bytes.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..checkpoint import TORCH_TO_SAFETENSORS
from .. import fileio
from ..fileio import fsync_dir
from ..errors import OutputExistsError, OutputWriteError
from .hashes import HashingSink, ModelHashes


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file to write."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class WrittenFile:
    """What was written: final path, size in bytes and hashes."""

    path: Path
    size: int
    hashes: ModelHashes


def storage_order(entries: Sequence[TensorEntry]) -> list[TensorEntry]:
    """Entries in the order they are stored: larger item sizes first, given order within a size."""
    return sorted(entries, key=lambda e: -e.dtype.itemsize)


def build_header(entries: Sequence[TensorEntry], metadata: Mapping[str, str]) -> bytes:
    """The length prefix and JSON header for ``entries`` stored back to back in the given order."""
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str; {key!r} -> {type(value).__name__}")
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for entry in entries:
        if entry.dtype not in TORCH_TO_SAFETENSORS:
            raise TypeError(f"tensor {entry.name!r}: dtype {entry.dtype} cannot be stored in safetensors")
        header[entry.name] = {
            "dtype": TORCH_TO_SAFETENSORS[entry.dtype],
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _write_all(fd: int, data: memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` (through ``fileio.write_all``, the one place output bytes are written)."""
    fileio.write_all(fd, data)


class SafetensorsWriter:
    """Write one ``.safetensors`` file tensor by tensor; use ``commit()`` at the end.

    As a context manager, an exception (or leaving without ``commit()``)
    aborts: the temp file is removed and the output is left as it was.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        entries: Sequence[TensorEntry],
        metadata: Mapping[str, str] | None = None,
        *,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.entries = storage_order(entries)
        self._index = 0
        self._sink = HashingSink()
        self._fd: int | None = None
        self._tmp: Path | None = None
        check_output_path(self.path, overwrite)
        header = build_header(self.entries, metadata or {})
        self.size = len(header) + sum(e.nbytes for e in self.entries)
        fileio.remove_stale_temps(self.path.parent)  # a killed merge's leftover counts against the space check
        self._open_temp()  # before the space check: a read-only folder says so, not "not enough free disk space"
        try:
            self._check_space()
        except BaseException:
            self.abort()
            raise
        self._sink.update(header)
        self.emit(memoryview(header))

    @property
    def order(self) -> list[str]:
        """Names in the order ``write`` must be called."""
        return [e.name for e in self.entries]

    def _check_space(self) -> None:
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if free < self.size:
            raise OutputWriteError(
                f"{self.path}: not enough free disk space ({_gib(free)} free, the output needs {_gib(self.size)}); "
                "free some space or write elsewhere"
            )

    def _open_temp(self) -> None:
        for _ in range(100):
            tmp = self.path.parent / f"{fileio.temp_name(self.path)}{secrets.token_hex(4)}{fileio.TEMP_SUFFIX}"
            try:
                self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputWriteError(f"{self.path}: cannot create a file in {self.path.parent} ({exc.strerror})") from None
            self._tmp = tmp
            return
        raise OutputWriteError(f"{self.path}: cannot create a temp file in {self.path.parent}")

    def stage(self, name: str, tensor: torch.Tensor) -> memoryview:
        """Check and hash the next tensor and return its bytes for ``emit`` (split for pipelining).

        ``stage`` must be called in ``order``; ``emit`` must then be called
        with the returned views in the same order, possibly on another thread.
        ``write`` does both.
        """
        if self._index >= len(self.entries):
            raise RuntimeError(f"{self.path}: all {len(self.entries)} tensors were already written")
        entry = self.entries[self._index]
        if name != entry.name or tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise RuntimeError(
                f"{self.path}: expected tensor {entry.name!r} {entry.dtype} {list(entry.shape)}, "
                f"got {name!r} {tensor.dtype} {list(tensor.shape)}"
            )
        self._index += 1
        if not entry.nbytes:
            return memoryview(b"")
        data = memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        self._sink.update(data)
        return data

    def emit(self, data: memoryview) -> None:
        """Append staged bytes to the file."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        if len(data):
            try:
                _write_all(self._fd, data)
            except OSError as exc:
                self.abort()
                raise OutputWriteError(_write_error(self.path, exc)) from None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor; it must be the next name of ``order`` with that entry's dtype and shape."""
        self.emit(self.stage(name, tensor))

    def commit(self) -> WrittenFile:
        """Flush, fsync and move the finished file into place; returns its size and hashes."""
        if self._fd is None or self._tmp is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        if self._index != len(self.entries):
            missing = len(self.entries) - self._index
            self.abort()
            raise RuntimeError(f"{self.path}: {missing} tensor(s) were not written")
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            _move_into_place(self._tmp, self.path, self.overwrite)
        except OutputExistsError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise OutputWriteError(_write_error(self.path, exc)) from None
        self._tmp = None
        fsync_dir(self.path.parent)
        return WrittenFile(self.path, self._sink.size, self._sink.result())

    def abort(self) -> None:
        """Close and delete the temp file; the output is not touched."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self._tmp is not None:
            try:
                self._tmp.unlink()
            except FileNotFoundError:
                pass
            self._tmp = None

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._tmp is not None:
            self.abort()


def check_output_path(path: Path, overwrite: bool) -> None:
    """Refuse an output that exists (unless ``overwrite``), is a folder, or whose folder is missing."""
    if path.suffix.lower() != ".safetensors":
        raise OutputWriteError(f"{path}: the output must be a .safetensors file")
    if path.is_dir():
        raise OutputWriteError(f"{path}: is a folder; give the output file name")
    if not path.parent.is_dir():
        raise OutputWriteError(f"{path}: folder {path.parent} does not exist; create it first")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass --overwrite (overwrite=True) to replace it")


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the output appeared meanwhile: never clobbers
    except FileExistsError:
        raise OutputExistsError(f"{path}: was created by someone else during the merge; nothing was overwritten") from None
    except OSError:
        if path.exists():
            raise OutputExistsError(f"{path}: was created by someone else during the merge; nothing was overwritten") from None
        os.rename(tmp, path)  # file systems without hard links
        return
    tmp.unlink()


def _write_error(path: Path, exc: OSError) -> str:
    reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return f"{path}: cannot write the output ({reason}); nothing was written, no partial file was left"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
