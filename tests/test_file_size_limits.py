"""Oversized or endless files from a stranger are refused by name before they fill the memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from lib_mbw import fileio
from lib_mbw.errors import MBWError
from lib_mbw.payloads import load_payload
from lib_mbw.recipe import read_recipe
from lib_mbw.recipe_n import read_recipe_n
from lib_mbw.search.history import RunHistory, read_history_rows, read_manifest, read_seed_csv
from lib_mbw.search.settings import read_settings_file


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    """Caps of a few KiB, so that the tests write small files (the readers look the caps up when called)."""
    monkeypatch.setattr(fileio, "MAX_SMALL_TEXT", 4096)
    monkeypatch.setattr(fileio, "MAX_HISTORY_TEXT", 8192)
    return 4096


def _big(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{" + " " * size + "}", encoding="utf-8")
    return path


READERS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "recipe": ("big.recipe.json", lambda p: read_recipe(str(p))),
    "N-model recipe": ("big.mix.json", lambda p: read_recipe_n(str(p))),
    "settings": ("settings.json", read_settings_file),
    "payload": ("payload.json", load_payload),
    "manifest": ("run/manifest.json", lambda p: read_manifest(p.parent)),
}


@pytest.mark.parametrize("kind", sorted(READERS))
def test_an_oversized_file_is_refused_naming_it(kind: str, tmp_path: Path, small_cap: int) -> None:
    name, read = READERS[kind]
    path = _big(tmp_path / name, 2 * small_cap)
    with pytest.raises(MBWError) as info:
        read(path)
    assert str(path) in str(info.value) and "more than" in str(info.value)


def test_an_oversized_history_is_refused_without_being_cut(tmp_path: Path, small_cap: int) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    history = folder / "history.csv"
    content = "x" * (3 * small_cap) + "\n"
    history.write_text(content, encoding="utf-8")
    for read in (read_history_rows, RunHistory.open):
        with pytest.raises(MBWError, match="more than"):
            read(folder)
    assert history.read_text(encoding="utf-8") == content, "a refused history is left as it was"
    seed_csv = tmp_path / "seed.csv"
    seed_csv.write_text(content, encoding="utf-8")
    with pytest.raises(MBWError, match="more than"):
        read_seed_csv(seed_csv)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_an_endless_file_behind_a_link_is_refused(tmp_path: Path, small_cap: int) -> None:
    link = tmp_path / "settings.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(MBWError, match="more than"):
        read_settings_file(link)


def test_files_up_to_the_cap_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text('{"name": "ok"}', encoding="utf-8")
    assert read_settings_file(path) == {"name": "ok"}
    assert fileio.read_text_capped(path, len(path.read_bytes())) == '{"name": "ok"}'
    with pytest.raises(fileio.FileTooLargeError):
        fileio.read_text_capped(path, len(path.read_bytes()) - 1)
