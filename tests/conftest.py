"""Shared fixtures: tiny checkpoints with real key names, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def read_key_list(name: str) -> dict[str, tuple[int, ...]]:
    """The reference key list of a real architecture (tests/data/keys/NAME.txt)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in (DATA / "keys" / f"{name}.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape = line.rsplit(" ", 1)
        shapes[key] = () if shape == "-" else tuple(int(d) for d in shape.split("x"))
    return shapes


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two different tiny fp32 checkpoints (A, B) per architecture: {'sd1': (a, b), ...}."""
    from lib_mbw.keyspec import tiny_config
    from lib_mbw.synthetic import write_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for arch in ("sd1", "sd2", "sdxl"):
        cfg = tiny_config(arch)
        out[arch] = (write_checkpoint(root / f"{arch}-a.safetensors", cfg, seed=1), write_checkpoint(root / f"{arch}-b.safetensors", cfg, seed=2))
    return out


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory):
    """The tiny offline demo models (``lib_mbw.demo_models``), built once per session."""
    import torch

    from lib_mbw.demo_models import ensure_demo_models

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see single_cpu_thread
    try:
        return ensure_demo_models(tmp_path_factory.mktemp("demo") / "demo", seed=0)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_cpu_thread():
    """Torch on one CPU thread for the module: tiny models run no faster on more, and on a busy
    2-core machine two OpenMP threads made them 10-20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: ``search`` flags that enable the test components of ``tests.loop_backend`` (a resume needs its manifest's plugins enabled).
LOOP_PLUGINS = [f"--plugin={spec}" for spec in ("tests.loop_backend:make_generator", "tests.loop_backend:make_scorer", "tests.loop_backend:make_optimizer")]


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder for CLI searches with the test components: cwd, ``tests`` importable, one payload."""
    import json

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    (tmp_path / "payloads").mkdir()
    (tmp_path / "payloads" / "p.json").write_text(json.dumps({"prompt": "a house", "seed": 1}))
    return tmp_path
