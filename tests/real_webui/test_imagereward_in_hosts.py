"""ImageReward imports and scores in each real WebUI's venv after auto-MBW's ``install.py`` ran there.

No WebUI is started: ``install.py`` runs exactly as the launcher's ``run_extension_installer`` runs it (the
WebUI's python, cwd and PYTHONPATH = the WebUI's folder, so ``import launch`` is the WebUI's own launcher),
in a fresh overlay of the cached host venv, so every package auto-MBW needs is installed the way a new user
gets it. Then ``imagereward_in_host.py`` builds the package's model with random weights offline and scores.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.real_webui.harness import clean_work_folder, unavailable, work_folder
from tests.real_webui.hosts import HOSTS
from tests.real_webui.server import HostStartError, WebUIServer
from tests.real_webui.venvs import VenvBuildError, base_venv

HERE = Path(__file__).resolve().parent
#: The versions each WebUI pins that the install must leave alone.
HOST_PINS = {
    "a1111": {"numpy": "1.26.2", "transformers": "4.30.2"},
    "forge": {"numpy": "1.26.2", "transformers": "4.46.1", "tqdm": "4.66.1", "diffusers": "0.31.0"},
}


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", ["a1111", "forge"])
def test_imagereward_imports_and_scores_in_the_webuis_venv(name: str) -> None:
    workdir = work_folder(f"imagereward-{name}")
    try:
        venv, _ = base_venv(HOSTS[name])
        server = WebUIServer(HOSTS[name], workdir, venv)
        server.prepare(with_models=False)
    except (VenvBuildError, HostStartError, OSError) as error:
        unavailable(f"{name}: cannot prepare the WebUI's venv: {error}")
    try:
        env = server.environment()
        env["PYTHONPATH"] = str(server.root)  # as launch_utils.run_extension_installer sets it
        installed = run([str(server.python), str(server.extension_dir / "install.py")], server.root, env, 1500)
        output = installed.stdout + installed.stderr
        assert installed.returncode == 0, output[-4000:]
        assert "could not install" not in output and "import check failed" not in output, output[-6000:]
        assert "[auto-MBW] installing image-reward" in output
        env["PYTHONPATH"] = str(server.extension_dir)
        scored = run([str(server.python), str(HERE / "imagereward_in_host.py")], server.extension_dir, env, 600)
        assert scored.returncode == 0, f"ImageReward failed in {name}'s venv:\n{scored.stderr[-4000:]}"
        result = json.loads(scored.stdout.strip().splitlines()[-1])
        scores, package = result["scores"], result["package_scores"]
        assert all(math.isfinite(s) for s in scores) and scores[0] != scores[1]
        assert scores == pytest.approx(package, abs=1e-4), "batched scores equal the package's own score()"
        for package_name, pinned in HOST_PINS[name].items():
            assert result["versions"][package_name] == pinned, f"{package_name}: the WebUI's pin was changed"
        print(f"\n[real-webui] {name} ImageReward in the WebUI's venv: {result}")
    finally:
        clean_work_folder(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
