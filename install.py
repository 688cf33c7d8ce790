"""auto-MBW's install hook, run by the WebUI's launcher before the WebUI starts.

The launcher (A1111 / Forge ``launch_utils.run_extension_installer``) runs
this file in a subprocess with the WebUI's venv python, cwd = the WebUI root,
after "Install from URL" and at every start (unless ``--skip-install``).

Rules:

* Install only what is missing, with the launcher's own helpers
  (``launch.is_installed``, ``launch.run_pip``).
* Never replace a version the WebUI pins: every pip call gets a constraints
  file pinning the installed versions of the WebUI's own requirements
  (``requirements_versions.txt``) and of the big shared packages (torch,
  gradio, transformers, diffusers, numpy, pydantic, fastapi, ...).
* Every other package gets the version auto-MBW is tested with
  (``requirements.txt``, ``constraints.txt`` beside this file) in the same
  constraints file, so no dependency floats to a release that does not work
  with the WebUI's pins (e.g. pyarrow >= 20 needs numpy 2). Where a tested
  pin cannot work beside a version the WebUI pins, ``HOST_COMPAT`` names the
  version used instead (measured in the real WebUIs, see docs/webui.md).
  On Python 3.10 a few pins that need 3.11 fall back to a compatible range.
* ``image-reward`` pins old versions of transformers/diffusers/timm; it is
  installed with ``--no-deps``, followed by only the packages it needs to be
  imported that the venv lacks.
* Every start imports what auto-MBW needs in a fresh interpreter and says
  clearly when that fails, with the error; the check is skipped only when
  every installed distribution has the version the last passed check saw
  (``.import-check.json``).
* Print what was done, pip's whole reason when something failed, and what
  to run by hand; never stop the WebUI from starting.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

EXTENSION_DIR = Path(__file__).resolve().parent
TAG = "[auto-MBW]"

#: Packages a WebUI build decides on; their installed versions are never changed.
SHARED_PACKAGES: tuple[str, ...] = (
    "torch", "torchvision", "torchaudio", "xformers", "numpy", "gradio", "gradio_client", "transformers",
    "diffusers", "accelerate", "huggingface_hub", "tokenizers", "safetensors", "pydantic", "fastapi",
    "starlette", "httpx", "pillow", "protobuf", "open_clip_torch", "timm", "setuptools",
)


@dataclass(frozen=True)
class Requirement:
    """One package auto-MBW needs: distribution name, its import name, and whether to skip its dependencies."""

    name: str
    module: str
    no_deps: bool = False
    needed_by: str = "auto-MBW"


#: In install order. image-reward's import needs come after it, each checked on its own.
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("safetensors", "safetensors"),
    Requirement("requests", "requests"),
    Requirement("matplotlib", "matplotlib", needed_by="plots"),
    Requirement("dynamicprompts", "dynamicprompts", needed_by="payload wildcards"),
    Requirement("gradient-free-optimizers", "gradient_free_optimizers", needed_by="optimizers"),
    Requirement("hyperactive", "hyperactive", needed_by="optimizers"),
    Requirement("optuna", "optuna", needed_by="optimizers"),
    Requirement("cmaes", "cmaes", needed_by="optuna's CMA-ES optimizer"),
    Requirement("image-reward", "ImageReward", no_deps=True, needed_by="the ImageReward scorer"),
    Requirement("clip-anytorch", "clip", needed_by="image-reward"),
    Requirement("ftfy", "ftfy", needed_by="image-reward"),
    Requirement("timm", "timm", needed_by="image-reward"),
    Requirement("fairscale", "fairscale", needed_by="image-reward"),
    Requirement("accelerate", "accelerate", needed_by="image-reward"),
    Requirement("datasets", "datasets", needed_by="image-reward"),
    Requirement("diffusers", "diffusers", needed_by="image-reward"),
)

#: Pins that need Python >= 3.11, and the range used on older Pythons.
PY310_SPECS: dict[str, str] = {"matplotlib": "matplotlib>=3.8,<3.11"}


@dataclass(frozen=True)
class HostCompat:
    """When the WebUI has ``host_package`` older than ``below``, use ``pins`` instead of our tested ones.

    A value of None drops our pin (pip chooses within the other constraints).
    """

    host_package: str
    below: str
    pins: tuple[tuple[str, str | None], ...]
    why: str


#: Tested pins that cannot work beside what a WebUI pins, and what works there (checked in the real WebUIs).
HOST_COMPAT: tuple[HostCompat, ...] = (
    HostCompat(
        "transformers", "4.41",
        (("diffusers", "diffusers==0.29.2"),),
        "diffusers >= 0.30 imports SiglipImageProcessor, which transformers < 4.41 (AUTOMATIC1111: 4.30.2) lacks",
    ),
    HostCompat(
        "tqdm", "4.66.3",
        (("datasets", "datasets==2.19.2"), ("fsspec", None)),
        "datasets >= 2.20 needs tqdm >= 4.66.3 (Forge pins 4.66.1); datasets 2.19 needs fsspec <= 2024.3.1",
    ),
)

_REQ_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(==|>=|<=|~=|<|>)\s*([^\s;#]+)")
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503 name normalisation (``Image_Reward`` == ``image-reward``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(*files: Path) -> dict[str, str]:
    """``name -> requirement spec`` from requirements files; earlier files win."""
    pins: dict[str, str] = {}
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            match = _REQ_LINE.match(line)
            if match:
                pins.setdefault(normalize(match.group(1)), f"{match.group(1)}{match.group(2)}{match.group(3)}")
    return pins


def version_key(version: str) -> tuple[int, ...]:
    """Numeric release parts of a version (``4.66.1`` -> (4, 66, 1)); enough to compare the releases in HOST_COMPAT."""
    parts = []
    for part in re.split(r"[.+-]", version):
        match = re.match(r"\d+", part)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def host_adjusted_pins(pins: dict[str, str], version_of: Callable[[str], str | None]) -> tuple[dict[str, str], list[str]]:
    """Our pins with ``HOST_COMPAT`` applied for the WebUI's installed versions; also the reasons that applied."""
    adjusted = dict(pins)
    reasons = []
    for rule in HOST_COMPAT:
        installed = version_of(rule.host_package)
        if installed is None or version_key(installed) >= version_key(rule.below):
            continue
        reasons.append(f"{rule.host_package} {installed}: {rule.why}")
        for name, spec in rule.pins:
            if spec is None:
                adjusted.pop(normalize(name), None)
            else:
                adjusted[normalize(name)] = spec
    return adjusted, reasons


def constraint_lines(host: list[str], pins: dict[str, str], version_of: Callable[[str], str | None]) -> list[str]:
    """The WebUI's ``name==installed`` lines, then our pins for the packages the WebUI does not have.

    A package the WebUI has but does not pin (e.g. scipy, fsspec) gets no pin:
    pip keeps its version unless a new package needs another (our scipy pin
    would need a newer numpy than the WebUI's).
    """
    taken = {normalize(_REQ_NAME.match(line).group(1)) for line in host}
    return host + [spec for name, spec in sorted(pins.items()) if name not in taken and version_of(name) is None]


def spec_for(requirement: Requirement, pins: dict[str, str], python: tuple[int, int]) -> str:
    """What to ask pip for: our tested pin, relaxed on old Pythons, or the bare name if we pin nothing."""
    key = normalize(requirement.name)
    if python < (3, 11) and key in PY310_SPECS:
        return PY310_SPECS[key]
    return pins.get(key, requirement.name)


def webui_constraints(webui_root: Path, version_of: Callable[[str], str | None]) -> list[str]:
    """``name==installed`` for every package the WebUI pins or shares with us that is installed."""
    names = list(SHARED_PACKAGES)
    own = webui_root / "requirements_versions.txt"
    if own.is_file():
        names += [m.group(1) for m in map(_REQ_NAME.match, own.read_text(encoding="utf-8").splitlines()) if m]
    lines: dict[str, str] = {}
    for name in names:
        version = version_of(name)
        if version:
            lines[normalize(name)] = f"{name}=={version}"
    return sorted(lines.values())


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class Report:
    installed: list[str]
    failed: list[tuple[str, str]]


def install_missing(
    launch: object,
    requirements: Iterable[Requirement],
    pins: dict[str, str],
    constraints_file: Path,
    python: tuple[int, int],
) -> Report:
    """Install every requirement that ``launch.is_installed`` does not find (by distribution or import name)."""
    report = Report([], [])
    for requirement in requirements:
        if launch.is_installed(requirement.name) or launch.is_installed(requirement.module):
            continue
        spec = spec_for(requirement, pins, python)
        flags = " --no-deps" if requirement.no_deps else ""
        command = f'install "{spec}"{flags} -c "{constraints_file}"'
        print(f"{TAG} installing {spec}{flags} (needed by {requirement.needed_by})")
        try:
            launch.run_pip(command, f"{spec} for auto-MBW")
        except RuntimeError as error:
            report.failed.append((spec, pip_reason(str(error))))
        else:
            report.installed.append(spec)
    return report


#: pip output lines that say nothing about why an install failed.
_PIP_NOISE = re.compile(
    r"^\s*(WARNING: |INFO: |Looking in |Collecting |Processing |Downloading |Using cached |Requirement already |Obtaining |"
    r"Installing build |Getting requirements |Preparing metadata |\S+ \d+(\.\d+)* ?[kKMG]?B)|━"
)


def pip_reason(error_text: str, max_lines: int = 40) -> str:
    """Why pip failed, from the launcher's RuntimeError (command, exit code, stdout, stderr): the lines that matter."""
    text = error_text.replace("\r", "")
    # the launcher's text: description, "Command: ...", "Error code: N", then "stdout: ..." and "stderr: ..."
    # (pip explains a conflict on stdout and names it on stderr)
    text = re.split(r"^Error code: .*$", text, maxsplit=1, flags=re.MULTILINE)[-1]
    text = re.sub(r"^(stdout|stderr): ", "", text, flags=re.MULTILINE)
    lines = [line.rstrip() for line in text.splitlines() if line.strip() and not _PIP_NOISE.match(line)]
    if not lines:
        return error_text.strip().splitlines()[0] if error_text.strip() else "pip failed"
    if len(lines) > max_lines:
        lines = lines[: max_lines // 2] + ["..."] + lines[-max_lines // 2 :]
    return "\n".join(lines)


#: Where the last passed import check records the environment it passed in (not tracked by git).
IMPORT_STAMP = EXTENSION_DIR / ".import-check.json"


def environment_digest() -> str:
    """A digest of every installed distribution and its version in this Python (well under a second)."""
    import hashlib

    versions = sorted({(normalize(d.metadata["Name"] or ""), d.version) for d in importlib.metadata.distributions()})
    return hashlib.sha256(repr(versions).encode()).hexdigest()


def stamped_digest(stamp: Path) -> str | None:
    try:
        return str(json.loads(stamp.read_text(encoding="utf-8"))["environment"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_stamp(stamp: Path, digest: str) -> None:
    try:
        partial = stamp.with_name(stamp.name + ".partial")
        partial.write_text(json.dumps({"environment": digest}), encoding="utf-8")
        partial.replace(stamp)
    except OSError:
        pass  # a read-only extension folder: the check then runs at every start


def check_imports(python_executable: str, modules: Iterable[str]) -> str | None:
    """Import ``modules`` in a fresh interpreter; the error text if that fails."""
    code = "; ".join(f"import {m}" for m in modules)
    result = subprocess.run([python_executable, "-c", code], capture_output=True, text=True)
    if result.returncode == 0:
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return "\n".join(lines[-12:]) if lines else f"exit code {result.returncode}"


def main(
    launch: object | None = None,
    webui_root: Path | None = None,
    python: tuple[int, int] | None = None,
    check_imports: Callable[[str, Iterable[str]], str | None] = check_imports,
    version_of: Callable[[str], str | None] = installed_version,
    import_stamp: Path = IMPORT_STAMP,
    digest: Callable[[], str] = environment_digest,
) -> Report:
    if launch is None:
        import launch  # the WebUI's launcher module (on PYTHONPATH while installers run)
    webui_root = webui_root or Path.cwd()
    python = python or sys.version_info[:2]
    pins, compat = host_adjusted_pins(read_pins(EXTENSION_DIR / "requirements.txt", EXTENSION_DIR / "constraints.txt"), version_of)
    with tempfile.TemporaryDirectory(prefix="auto-mbw-") as tmp:
        constraints_file = Path(tmp) / "webui-constraints.txt"
        lines = constraint_lines(webui_constraints(webui_root, version_of), pins, version_of)
        constraints_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        report = install_missing(launch, REQUIREMENTS, pins, constraints_file, python)
    if report.installed and compat:
        print(f"{TAG} versions chosen to fit the WebUI's pins: " + "; ".join(compat))
    if not report.failed:
        # At every start, unless the environment is exactly the one the last passed check saw: a package
        # another extension or the user changed is then found before a search needs it.
        environment = digest()
        if stamped_digest(import_stamp) != environment:
            problem = check_imports(getattr(launch, "python", sys.executable), [r.module for r in REQUIREMENTS])
            if problem:
                report.failed.append(("import check", problem))
            else:
                write_stamp(import_stamp, environment)
    for spec, reason in report.failed:
        heading = "the import check failed" if spec == "import check" else f"could not install {spec}"
        print(f"{TAG} {heading}:\n" + "\n".join(f"{TAG}   {line}" for line in reason.splitlines()))
    if report.failed:
        print(
            f"{TAG} auto-MBW may not work until this is fixed (the ImageReward scorer and optimizers need these packages).\n"
            f"{TAG} Install by hand with the WebUI's python, e.g.\n"
            f'{TAG}   "{getattr(launch, "python", sys.executable)}" -m pip install "<package>"\n'
            f"{TAG} and see docs/webui.md (Troubleshooting) in the extension's folder."
        )
    elif report.installed:
        print(f"{TAG} installed: {', '.join(report.installed)}")
    return report


if __name__ == "__main__":
    main()
