"""Cache keys of the optimizer benchmarks (tests/bench/code_keys.py): a cached run is redone exactly when its code changed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "bench"
ROOT = BENCH.parents[1]
sys.path.insert(0, str(BENCH))

import optimizer_mix as mix  # noqa: E402
import optimizer_real as real  # noqa: E402
from code_keys import code_hash  # noqa: E402

MODULE = '''"""A module."""
LIMIT: int = 3
SCALE = 2


def used(x):
    """Doubles."""
    return x * SCALE  # a comment


def unused():
    return 0
'''


def test_a_key_ignores_docstrings_comments_and_definitions_it_does_not_name(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(MODULE)
    names = ("used", "SCALE", "LIMIT")
    whole, named = code_hash(path), code_hash(path, names)
    path.write_text(MODULE.replace('"""Doubles."""', '"""Twice x."""').replace("# a comment", "# another").replace("return 0", "return 1"))
    assert code_hash(path, names) == named, "docstrings, comments and unnamed definitions must not re-key a run"
    assert code_hash(path) != whole, "the whole file's key sees every definition"
    path.write_text(MODULE.replace("x * SCALE", "x * SCALE + 1"))
    assert code_hash(path, names) != named
    path.write_text(MODULE.replace("LIMIT: int = 3", "LIMIT: int = 4"))
    assert code_hash(path, names) != named, "an annotated assignment counts when it is named"


@pytest.fixture
def bench_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the files the real and mix keys read, with both modules pointed at it."""
    files = [*real.DEPENDS_ON, *mix.SCORING_FILES, mix.MIX_GENERATOR[0], *mix.SEARCH_FILES]
    files += ["tests/bench/optimizer_real.py", "tests/bench/optimizer_mix.py"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    for module in (real, mix):
        monkeypatch.setattr(module, "HERE", tmp_path / "tests" / "bench")
        monkeypatch.setattr(module, "ROOT", tmp_path)
    return tmp_path


def _keys() -> dict[str, str]:
    return {"real": real.code_hash(), "scoring": mix.scoring_hash(), **{label: mix.run_key(label) for label in mix.RUNNERS}}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer holds {old!r}: update the test"
    path.write_text(text.replace(old, new, 1))


def test_a_strategy_change_redoes_only_the_default_strategys_mix_runs(bench_tree: Path) -> None:
    before = _keys()
    _edit(bench_tree / "lib_mbw/search/strategies/surrogate_cma.py", "oversample: int = 4", "oversample: int = 5")
    after = _keys()
    assert after["default"] != before["default"]
    assert {k: after[k] for k in ("real", "scoring", "cma", "random")} == {k: before[k] for k in ("real", "scoring", "cma", "random")}


def test_the_report_code_of_the_real_family_does_not_re_key_its_runs(bench_tree: Path) -> None:
    before = _keys()
    _edit(bench_tree / "tests/bench/optimizer_real.py", "def _locked_update(", "def _locked_update_renamed(")
    assert _keys() == before, "a helper no score depends on re-keyed the real family"
    _edit(bench_tree / "tests/bench/optimizer_real.py", "RANDOM_SAMPLES = 24", "RANDOM_SAMPLES = 25")
    after = _keys()
    assert all(after[k] != before[k] for k in after), "a change to what every score depends on must re-key every run"
