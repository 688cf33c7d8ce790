"""Model file hashes, computed exactly as the AUTOMATIC1111 WebUI computes them.

* ``sha256``: of the whole file, read in 1 MiB chunks (``modules/hashes.py``
  ``calculate_sha256``); the WebUI's "shorthash" (``[abcdef0123]`` in model
  titles and the infotext "Model hash") is its first 10 hex digits.
* legacy hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits
  (``partial_hash_from_cache`` / the old ``model_hash``). A file shorter than
  1 MiB hashes the empty string there, as the WebUI's does.

``HashingSink`` computes both for a file while it is being written front to
back, so the merge engine never reads its output again. ``HashCache`` keeps
the hashes of files already read (keyed by resolved path, size and
modification time, like the WebUI's ``cache.json``), so merging the same
multi-gigabyte models again does not hash them again; ``verify`` never uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1024 * 1024
LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000


@dataclass(frozen=True)
class ModelHashes:
    """The three hashes the WebUI shows for a checkpoint."""

    sha256: str
    legacy: str

    @property
    def short(self) -> str:
        """The WebUI's shorthash: the first 10 hex digits of the sha256."""
        return self.sha256[:10]

    def to_dict(self) -> dict[str, str]:
        return {"sha256": self.sha256, "short": self.short, "legacy": self.legacy}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of the whole file in hex (1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def legacy_hash(path: str | os.PathLike[str]) -> str:
    """The WebUI's old 8-hex model hash: sha256 of 64 KiB at offset 1 MiB."""
    with open(path, "rb") as f:
        f.seek(LEGACY_OFFSET)
        return hashlib.sha256(f.read(LEGACY_LENGTH)).hexdigest()[:8]


def model_hashes(path: str | os.PathLike[str], cache: "HashCache | None" = None) -> ModelHashes:
    """sha256 and legacy hash of a model file (from ``cache`` when it knows this version of the file)."""
    if cache is not None:
        known = cache.get(path)
        if known is not None:
            return known
    hashes = ModelHashes(sha256=sha256_file(path), legacy=legacy_hash(path))
    if cache is not None:
        cache.put(path, hashes)
    return hashes


CACHE_ENV = "AUTO_MBW_HASH_CACHE"


class HashCache:
    """A JSON file of model hashes keyed by resolved path, valid while size and mtime are unchanged.

    Writes replace the file atomically; concurrent writers may drop each
    other's newest entries, which only costs a re-hash.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(file: str | os.PathLike[str]) -> tuple[str, int, int]:
        stat = os.stat(file)
        return str(Path(file).resolve()), stat.st_size, stat.st_mtime_ns

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, file: str | os.PathLike[str]) -> ModelHashes | None:
        try:
            key, size, mtime = self._stamp(file)
        except OSError:
            return None
        entry = self._load().get(key)
        if not isinstance(entry, dict) or entry.get("size") != size or entry.get("mtime_ns") != mtime:
            return None
        try:
            return ModelHashes(sha256=str(entry["sha256"]), legacy=str(entry["legacy"]))
        except KeyError:
            return None

    def put(self, file: str | os.PathLike[str], hashes: ModelHashes) -> None:
        """Remember ``hashes`` for this version of ``file``; a cache that cannot be written is skipped."""
        try:
            key, size, mtime = self._stamp(file)
            with self._lock:
                data = self._load()
                data[key] = {"size": size, "mtime_ns": mtime, "sha256": hashes.sha256, "legacy": hashes.legacy}
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
                tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
                os.replace(tmp, self.path)
        except OSError:
            return


def default_hash_cache() -> HashCache | None:
    """The user's hash cache: ``$AUTO_MBW_HASH_CACHE`` (a file, or ``off``), else ``~/.cache/auto-mbw/hashes.json``."""
    setting = os.environ.get(CACHE_ENV)
    if setting is not None:
        return None if setting.strip().lower() in ("", "0", "off", "no", "none") else HashCache(setting)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return HashCache(os.path.join(base, "auto-mbw", "hashes.json"))


class HashingSink:
    """Feeds the bytes of a file, in order, to the sha256 and keeps the legacy-hash window."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._window = bytearray()
        self._position = 0

    def update(self, data: memoryview | bytes) -> None:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        start, end = self._position, self._position + len(view)
        lo, hi = max(start, LEGACY_OFFSET), min(end, LEGACY_OFFSET + LEGACY_LENGTH)
        if lo < hi:
            self._window += view[lo - start : hi - start]
        self._position = end

    @property
    def size(self) -> int:
        return self._position

    def result(self) -> ModelHashes:
        return ModelHashes(sha256=self._sha.hexdigest(), legacy=hashlib.sha256(bytes(self._window)).hexdigest()[:8])


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when two paths name the same existing file (same device and inode)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()
