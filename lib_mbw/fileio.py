"""Small file helpers every reader and writer shares: capped text reads, atomic writes, safe file names, leftover temp files.

Text a stranger may hand us (recipes, settings, payloads, a run folder's
files) is read through ``read_text_capped``: a file larger than any real one
of its kind (a multi-gigabyte "recipe", ``/dev/zero`` behind a link) is
refused before it fills the memory, with an error that names the file.

An atomic write goes to a temporary file in the destination's folder, is
flushed and fsync'd, then renamed over the destination, so a reader (or a
crash) sees either the old content or the new one, never half a file. Names
derived from user input go through ``safe_name`` (no path separators, no
traversal, no control characters).

Temp files are named ``.<name>.mbw-<pid>.<random>.tmp``. A writer killed
mid-write (SIGKILL, power loss) cannot remove its own; ``remove_stale_temps``
(called by the next merge or search writing into that folder) removes those
whose process is gone, or that nobody touched for ``STALE_HOURS``.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import OutputExistsError

if TYPE_CHECKING:
    from PIL import Image

_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")

#: Temp files of atomic writes are ``.<name>.mbw-<pid>.<random>.tmp`` (see ``tempfiles`` for their cleanup).
TEMP_TAG = "mbw-"
TEMP_SUFFIX = ".tmp"
_TEMP = re.compile(r"^\..+\." + TEMP_TAG + r"(\d+)\.[A-Za-z0-9_]+\.tmp$")
#: A temp file untouched this long is a leftover even if its pid now belongs to a live process (pid reuse).
STALE_HOURS = 24.0

log = logging.getLogger(__name__)


def safe_name(text: str, default: str = "unnamed", max_length: int = 80) -> str:
    """``text`` reduced to a file-name-safe form: letters, digits, ``. _ -`` and spaces; no leading dots."""
    cleaned = _UNSAFE.sub("_", text.strip()).strip(" ._")
    cleaned = re.sub(r"_+", "_", cleaned)[:max_length].strip(" ._")
    return cleaned or default


#: Largest text file of each kind read: far above any real one (a recipe is ~1 KB, a 10 000-row history ~10 MB).
MAX_SMALL_TEXT = 4 * 1024 * 1024
MAX_HISTORY_TEXT = 1024 * 1024 * 1024


class FileTooLargeError(OSError):
    """A text file is larger than any real file of its kind (an ``OSError``: readers report it like any read error)."""


def read_text_capped(path: str | os.PathLike[str], max_bytes: int | None = None) -> str:
    """The UTF-8 text of ``path``; ``FileTooLargeError`` if it holds more than ``max_bytes`` (default ``MAX_SMALL_TEXT``).

    A regular file is checked by its size before reading (and read whole: a
    history being appended meanwhile stays readable); anything else (a pipe,
    a device behind a link) is read in 1 MiB chunks, stopping past the cap.
    Memory is never taken for the cap itself, only for what the file holds.
    """
    if max_bytes is None:
        max_bytes = MAX_SMALL_TEXT
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode):
            if info.st_size > max_bytes:
                raise FileTooLargeError(_too_large(max_bytes, info.st_size))
            data = f.read()
        else:
            chunks, total = [], 0
            while total <= max_bytes:
                chunk = f.read(1024 * 1024)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            data = b"".join(chunks)
    if len(data) > max_bytes:
        raise FileTooLargeError(_too_large(max_bytes, len(data)))
    return data.decode("utf-8")


def _too_large(max_bytes: int, size: int) -> str:
    return f"the file holds {_size(size)} or more, far more than the {_size(max_bytes)} any real one of its kind holds; is it the right file?"


def _size(count: int) -> str:
    return f"{count // (1024 * 1024)} MiB" if count >= 1024 * 1024 else f"{count} bytes"


def png_bytes(image: "Image.Image") -> bytes:
    """A PIL image encoded as PNG (lossless), for ``write_atomic``; float/16-bit images become 8-bit grey."""
    import io

    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("L") if image.mode in ("F", "I", "I;16") else image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to ``fd``: the one place auto-MBW's files get their bytes (tests inject
    write errors such as a full disk here)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


def temp_name(path: Path) -> str:
    """Prefix of a temp file for ``path``: hidden, with the writer's pid, so leftovers can be traced and removed."""
    return f".{path.name}.{TEMP_TAG}{os.getpid()}."


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, overwrite: bool = True, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    With ``overwrite=False`` an existing ``path`` raises OutputExistsError and
    nothing is written. Text is written as UTF-8. ``durable=False`` skips the
    fsyncs: the file is still replaced atomically (safe against a killed
    process), but a power loss may leave the previous version; use it only
    for files that can be rebuilt (e.g. the search state, which history replays).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise OutputExistsError(f"{path}: already exists; choose another name or allow overwriting")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_name(path), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write_all(handle.fileno(), payload)
            if durable:
                os.fsync(handle.fileno())
        if not overwrite and path.exists():
            raise OutputExistsError(f"{path}: already exists; choose another name or allow overwriting")
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def _process_alive(pid: int) -> bool:
    import psutil

    return pid == os.getpid() or psutil.pid_exists(pid)


def remove_stale_temps(folder: str | os.PathLike[str], *, stale_hours: float = STALE_HOURS) -> list[tuple[Path, int]]:
    """Delete auto-MBW temp files in ``folder`` left by dead processes (or untouched for ``stale_hours``).

    Returns (path, size) of each file removed and logs one warning line per
    file; files of live writers and anything not named like our temp files
    are left alone.
    """
    removed: list[tuple[Path, int]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            stat = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        pid = int(match.group(1))
        dead = not _process_alive(pid)
        if not dead and now - stat.st_mtime < stale_hours * 3600:
            continue
        try:
            os.unlink(entry.path)
        except OSError as exc:
            log.warning("could not remove the leftover temp file %s (%s)", entry.path, exc.strerror or exc)
            continue
        why = f"its process {pid} is no longer running" if dead else f"untouched for over {stale_hours:g} hours"
        log.warning("removed the leftover temp file %s (%.1f MB): %s", entry.path, stat.st_size / 1e6, why)
        removed.append((Path(entry.path), stat.st_size))
    return removed
