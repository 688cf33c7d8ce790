"""Small file helpers every writer shares: atomic writes and safe file names.

An atomic write goes to a temporary file in the destination's folder, is
flushed and fsync'd, then renamed over the destination, so a reader (or a
crash) sees either the old content or the new one, never half a file. Names
derived from user input go through ``safe_name`` (no path separators, no
traversal, no control characters).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import OutputExistsError

if TYPE_CHECKING:
    from PIL import Image

_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")

#: Temp files of atomic writes are ``.<name>.mbw-<pid>.<random>.tmp`` (see ``tempfiles`` for their cleanup).
TEMP_TAG = "mbw-"
TEMP_SUFFIX = ".tmp"


def safe_name(text: str, default: str = "unnamed", max_length: int = 80) -> str:
    """``text`` reduced to a file-name-safe form: letters, digits, ``. _ -`` and spaces; no leading dots."""
    cleaned = _UNSAFE.sub("_", text.strip()).strip(" ._")
    cleaned = re.sub(r"_+", "_", cleaned)[:max_length].strip(" ._")
    return cleaned or default


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
