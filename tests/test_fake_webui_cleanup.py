"""The fake WebUI's checkpoint templates live in one temp folder per process, removed when the process exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
