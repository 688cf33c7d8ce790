"""The fake WebUI's checkpoint templates live in one temp folder per process, removed when the process exits;
workers it starts use its folder, so a worker killed mid-test leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fake_webui.harness import TEMPLATE_ENV

FAKE = Path(__file__).resolve().parent / "fake_webui"

SCRIPT = f"""
import sys
sys.path[:0] = [{str(FAKE)!r}, {str(FAKE.parents[1])!r}]
from pathlib import Path
from harness import fake_checkpoint, template_folder
import tempfile
out = Path(tempfile.mkdtemp())
for seed in (1, 2, 3):
    fake_checkpoint(out / f"m{{seed}}.safetensors", seed)
print(template_folder())
print(sorted(p.name for p in template_folder().iterdir()))
"""


def test_checkpoint_templates_share_one_folder_that_is_gone_after_exit(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    folder_line, names_line = done.stdout.strip().splitlines()[-2:]
    assert names_line == "['seed1.safetensors', 'seed2.safetensors', 'seed3.safetensors']"
    assert not Path(folder_line).exists(), f"{folder_line} was left behind"


KILLED_WORKER = f"""
import os, sys
sys.path[:0] = [{str(FAKE)!r}, {str(FAKE.parents[1])!r}]
from pathlib import Path
from harness import fake_checkpoint
fake_checkpoint(Path(sys.argv[1]) / "m.safetensors", 4)
os._exit(0)  # no clean-up runs, as for a worker killed with SIGKILL
"""


def test_a_worker_that_dies_without_clean_up_leaves_no_template_folder(tmp_path: Path) -> None:
    shared, own_tmp = tmp_path / "templates", tmp_path / "tmp"
    shared.mkdir()
    own_tmp.mkdir()
    env = {**os.environ, TEMPLATE_ENV: str(shared), "TMPDIR": str(own_tmp)}
    done = subprocess.run([sys.executable, "-c", KILLED_WORKER, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "m.safetensors").stat().st_size > 0
    assert [p.name for p in shared.iterdir()] == ["seed4.safetensors"], "the worker writes into the folder it was handed"
    assert list(own_tmp.iterdir()) == [], "the worker made a template folder of its own, which nobody removes"
