"""install.py with the launcher's ``launch`` module faked: what it installs, how, and what it never touches."""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.fake_webui.harness import ensure_on_path

ROOT = Path(__file__).resolve().parents[1]
ensure_on_path()


@pytest.fixture
def installer():
    spec = importlib.util.spec_from_file_location("auto_mbw_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture
def launch():
    import launch as fake_launch

    fake_launch.reset()
    return fake_launch


@pytest.fixture
def webui_root(tmp_path):
    (tmp_path / "requirements_versions.txt").write_text("gradio==3.41.2\nnumpy==1.26.2\ntorch\nscikit-learn\n")
    return tmp_path


def installs(launch) -> list[str]:
    return [command for command, _ in launch.pip_calls]


def run(installer, launch, webui_root, python=(3, 11), checks=None):
    checked = []

    def check(python_executable, modules):
        checked.append(list(modules))
        return checks

    report = installer.main(launch, webui_root, python, check_imports=check)
    return report, checked


def test_nothing_is_installed_when_everything_is_there(installer, launch, webui_root, capsys):
    launch.reset(present=[r.name for r in installer.REQUIREMENTS])
    report, checked = run(installer, launch, webui_root)
    assert launch.pip_calls == [] and report.installed == [] and checked == []
    assert capsys.readouterr().out == ""


def test_missing_packages_get_our_tested_pins_and_the_webuis_versions_as_constraints(installer, launch, webui_root):
    launch.reset(present=["safetensors", "requests", "matplotlib", "accelerate", "timm", "clip", "ftfy"])
    report, checked = run(installer, launch, webui_root)
    commands = installs(launch)
    pins = installer.read_pins(ROOT / "requirements.txt", ROOT / "constraints.txt")
    assert [c.split('"')[1] for c in commands] == [
        pins["dynamicprompts"], pins["gradient-free-optimizers"], pins["hyperactive"], pins["optuna"], pins["cmaes"],
        pins["image-reward"], pins["fairscale"], pins["datasets"], pins["diffusers"],
    ]
    assert all(' -c "' in c for c in commands)
    no_deps = [c for c in commands if "--no-deps" in c]
    assert no_deps == [c for c in commands if "image-reward" in c], "only image-reward skips its dependency pins"
    constraints = launch.constraints_seen[0].splitlines()
    for name in ("gradio", "numpy", "torch", "transformers", "pydantic", "fastapi", "scikit-learn"):
        assert f"{name}=={version(name)}" in constraints, name
    assert report.installed and not report.failed and checked, "imports are checked after installing"


def test_a_present_import_name_counts_as_installed(installer, launch, webui_root):
    launch.reset(present=["clip"] + [r.name for r in installer.REQUIREMENTS if r.name != "clip-anytorch"])
    run(installer, launch, webui_root)
    assert launch.pip_calls == [], "openai CLIP (module 'clip') serves image-reward; clip-anytorch is not added"


def test_python_310_gets_a_compatible_range_instead_of_a_311_only_pin(installer, launch, webui_root):
    launch.reset(present=[r.name for r in installer.REQUIREMENTS if r.name != "matplotlib"])
    run(installer, launch, webui_root, python=(3, 10))
    assert installs(launch)[0].startswith('install "matplotlib>=3.8,<3.11"')
    launch.reset(present=[r.name for r in installer.REQUIREMENTS if r.name != "matplotlib"])
    run(installer, launch, webui_root, python=(3, 11))
    assert installs(launch)[0].startswith('install "matplotlib==')


def test_failures_are_reported_with_what_to_do_and_do_not_stop_the_rest(installer, launch, webui_root, capsys):
    launch.reset(present=["safetensors", "requests", "matplotlib"], fail=["fairscale"])
    report, checked = run(installer, launch, webui_root)
    assert len(report.failed) == 1 and report.failed[0][0].startswith("fairscale==")
    assert any(spec.startswith("diffusers==") for spec in report.installed), "later packages are still installed"
    assert checked == [], "no import check while something is missing"
    out = capsys.readouterr().out
    assert "could not install fairscale" in out and "-m pip install" in out and "docs/webui.md" in out


def test_a_failed_import_check_is_reported(installer, launch, webui_root, capsys):
    launch.reset(present=[r.name for r in installer.REQUIREMENTS if r.name != "cmaes"])
    report, _ = run(installer, launch, webui_root, checks="ModuleNotFoundError: No module named 'diffusers'")
    assert report.failed == [("import check", "ModuleNotFoundError: No module named 'diffusers'")]
    assert "No module named 'diffusers'" in capsys.readouterr().out


def test_check_imports_runs_a_fresh_interpreter(installer):
    assert installer.check_imports(sys.executable, ["json", "os"]) is None
    assert "No module named" in installer.check_imports(sys.executable, ["json", "surely_not_a_module_xyz"])
