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

    report = installer.main(launch, webui_root, python, check_imports=check, import_stamp=webui_root / "stamp.json")
    return report, checked


def test_nothing_is_installed_when_everything_is_there_but_imports_are_checked_at_every_start(installer, launch, webui_root, capsys):
    launch.reset(present=[r.name for r in installer.REQUIREMENTS])
    report, checked = run(installer, launch, webui_root)
    assert launch.pip_calls == [] and report.installed == []
    assert checked == [[r.module for r in installer.REQUIREMENTS]], "a later start still finds a broken import"
    assert capsys.readouterr().out == "", "silent when all is well"


def test_the_import_check_runs_again_whenever_the_environment_changed_or_the_last_check_failed(installer, launch, webui_root, capsys):
    launch.reset(present=[r.name for r in installer.REQUIREMENTS])
    stamp, env, calls = webui_root / "stamp.json", {"digest": "one"}, []

    def start(problem=None):
        def check(python_executable, modules):
            calls.append(problem)
            return problem
        return installer.main(launch, webui_root, (3, 11), check_imports=check, import_stamp=stamp, digest=lambda: env["digest"])

    start()
    assert calls == [None] and stamp.is_file()
    start()
    assert calls == [None], "same packages as the last passed check: no 5-second import"
    env["digest"] = "two"  # e.g. another extension upgraded numpy
    report = start("ImportError: pyarrow requires NumPy 2.0 or newer, found 1.26.2")
    assert report.failed and calls[-1].startswith("ImportError")
    start("ImportError: pyarrow requires NumPy 2.0 or newer, found 1.26.2")
    assert len(calls) == 3, "a failed check is never stamped: every later start says it again"
    assert capsys.readouterr().out.count("the import check failed") == 2


#: Installed versions as in AUTOMATIC1111 1.10.1's and Forge's venvs (what HOST_COMPAT is about).
A1111_VERSIONS = {"numpy": "1.26.2", "transformers": "4.30.2", "tqdm": "4.70.1", "gradio": "3.41.2", "torch": "2.14.1"}
FORGE_VERSIONS = {"numpy": "1.26.2", "transformers": "4.46.1", "tqdm": "4.66.1", "diffusers": "0.31.0", "gradio": "4.40.0"}


def run_with_versions(installer, launch, webui_root, versions):
    report = installer.main(launch, webui_root, (3, 11), check_imports=lambda python, modules: None, version_of=versions.get,
                            import_stamp=webui_root / "stamp.json")
    constraints = launch.constraints_seen[0].splitlines() if launch.constraints_seen else []
    return report, [c.split('"')[1] for c in installs(launch)], constraints


def test_constraints_hold_the_webuis_versions_and_our_tested_pins_for_everything_else(installer, launch, webui_root):
    launch.reset(present=["safetensors", "requests", "matplotlib"])
    _, specs, constraints = run_with_versions(installer, launch, webui_root, A1111_VERSIONS)
    assert "numpy==1.26.2" in constraints and not any(c.startswith("numpy==1.26.4") for c in constraints), "the WebUI's pin wins"
    pins = installer.read_pins(ROOT / "requirements.txt", ROOT / "constraints.txt")
    assert pins["pyarrow"] in constraints, "datasets cannot float to a pyarrow that needs numpy 2"
    assert pins["datasets"] in constraints and pins["fsspec"] in constraints
    assert not any(c.startswith("tqdm") for c in constraints), "a package the WebUI has but does not pin keeps its version"
    names = [installer.normalize(installer._REQ_NAME.match(c).group(1)) for c in constraints]
    assert len(names) == len(set(names)), "one line per package"


def test_a1111s_old_transformers_gets_a_diffusers_that_imports_beside_it(installer, launch, webui_root, capsys):
    launch.reset(present=["safetensors", "requests", "matplotlib"])
    _, specs, constraints = run_with_versions(installer, launch, webui_root, A1111_VERSIONS)
    assert "diffusers==0.29.2" in specs and "diffusers==0.29.2" in constraints
    assert not any(c.startswith("diffusers==0.35") for c in constraints)
    assert "SiglipImageProcessor" in capsys.readouterr().out, "the log says why another version was chosen"


def test_forges_tqdm_pin_gets_a_datasets_that_accepts_it(installer, launch, webui_root):
    (webui_root / "requirements_versions.txt").write_text("tqdm==4.66.1\ndiffusers==0.31.0\n")
    launch.reset(present=["safetensors", "requests", "matplotlib", "diffusers"])
    _, specs, constraints = run_with_versions(installer, launch, webui_root, FORGE_VERSIONS)
    assert "datasets==2.19.2" in specs and "tqdm==4.66.1" in constraints and "diffusers==0.31.0" in constraints
    assert not any(c.startswith("fsspec") for c in constraints), "datasets 2.19 needs an older fsspec than our pin"
    assert not any(s.startswith("diffusers") for s in specs), "Forge's own diffusers is kept"


def test_a_new_enough_host_keeps_our_tested_pins(installer):
    pins = installer.read_pins(ROOT / "requirements.txt", ROOT / "constraints.txt")
    adjusted, reasons = installer.host_adjusted_pins(pins, {"transformers": "4.55.4", "tqdm": "4.70.1"}.get)
    assert adjusted == pins and reasons == []


LAUNCHER_ERROR = """Couldn't install datasets==3.6.0 for auto-MBW.
Command: "/venv/bin/python" -m pip install "datasets==3.6.0" -c "/tmp/c.txt" --prefer-binary
Error code: 1
stdout: Collecting datasets==3.6.0
  Downloading datasets-3.6.0-py3-none-any.whl (491 kB)

stderr: WARNING: Location 'x' is ignored.
ERROR: Cannot install datasets==3.6.0 because these package versions have conflicting dependencies.

The conflict is caused by:
    The user requested tqdm==4.66.1
    datasets 3.6.0 depends on tqdm>=4.66.3

To fix this you could try to:
1. loosen the range of package versions you've specified
ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""


def test_pips_whole_reason_is_shown_not_just_the_first_line(installer, launch, webui_root, capsys):
    reason = installer.pip_reason(LAUNCHER_ERROR)
    assert "datasets 3.6.0 depends on tqdm>=4.66.3" in reason and "The user requested tqdm==4.66.1" in reason
    assert "WARNING" not in reason and "Downloading" not in reason and "Command:" not in reason
    stdout_explains = LAUNCHER_ERROR.replace("stdout: Collecting", "stdout: The conflict is caused by:\n    scipy 1.17.1 depends on numpy>=1.26.4\nCollecting")
    assert "scipy 1.17.1 depends on numpy>=1.26.4" in installer.pip_reason(stdout_explains), "pip explains conflicts on stdout"
    launch.reset(present=["safetensors", "requests", "matplotlib"], fail=["fairscale"])
    launch.failure_text = LAUNCHER_ERROR
    try:
        run(installer, launch, webui_root)
    finally:
        launch.failure_text = None
    out = capsys.readouterr().out
    assert "could not install fairscale" in out and "depends on tqdm>=4.66.3" in out


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
    out = capsys.readouterr().out
    assert "the import check failed" in out and "No module named 'diffusers'" in out
    assert "could not install import check" not in out


def test_check_imports_runs_a_fresh_interpreter(installer):
    assert installer.check_imports(sys.executable, ["json", "os"]) is None
    assert "No module named" in installer.check_imports(sys.executable, ["json", "surely_not_a_module_xyz"])
