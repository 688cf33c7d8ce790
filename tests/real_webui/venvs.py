"""The host's own virtualenv, built from its ``requirements_versions.txt`` and cached outside the repository.

``base_venv(spec)`` returns ``<cache>/webui-venvs/<host>-<digest>``: torch first (from the local package
cache), then the host's requirements with the one relaxed pin (``setuptools``; see ../shared/webui/README.md)
and OpenAI's ``clip`` from ``clip-anytorch``. The digest covers the requirements and ``HARNESS_VERSION``; a
venv counts as built only when its stamp file exists (written last), so an interrupted build is redone.

The base venv holds only what the host needs. ``overlay_venv(base, folder)`` makes a fresh, cheap venv that
sees the base's packages through a ``.pth`` file: the extension's ``install.py`` installs into the overlay on
every test session, exactly as it would for a user whose WebUI lacks them, and the cached base stays clean.

Run ``python -m tests.real_webui.venvs a1111 forge`` to build them ahead of the tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from .hosts import HOSTS, TORCH_PINS, HostSpec, cache_root

#: Bump when the build steps change, so cached venvs are rebuilt.
HARNESS_VERSION = 1
STAMP = "auto-mbw-built.json"
RELAXED = "requirements-relaxed.txt"
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
#: The host pin that cannot install beside torch 2.14.1, and what it becomes.
RELAX: dict[str, str] = {"setuptools": "setuptools>=77.0.3,<81"}


class VenvBuildError(RuntimeError):
    """A host venv could not be built; the message names the step and the tail of pip's output."""


def python_for_venvs() -> str:
    return os.environ.get("AUTO_MBW_WEBUI_PYTHON") or shutil.which("python3.11") or sys.executable


def relaxed_requirements(spec: HostSpec) -> str:
    """The host's pins, CRLF and comments stripped, ``setuptools`` relaxed, ``clip-anytorch`` etc. added."""
    lines: list[str] = []
    raw = (spec.source / "requirements_versions.txt").read_text(encoding="utf-8").replace("\r", "")
    for line in raw.splitlines():
        line = line.split("#", 1)[0].strip()
        match = _PIN.match(line)
        if not match:
            continue
        lines.append(RELAX.get(match.group(1).lower(), line))
    lines += spec.extra_requirements
    return "\n".join(lines) + "\n"


def venv_digest(spec: HostSpec) -> str:
    data = json.dumps(
        {
            "harness": HARNESS_VERSION,
            "requirements": relaxed_requirements(spec),
            "torch": TORCH_PINS,
            "preinstall": spec.preinstall,
            "python": subprocess.run(
                [python_for_venvs(), "-c", "import sys; print(sys.version)"], capture_output=True, text=True
            ).stdout.strip(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _pip(python: Path, args: list[str], log: Path, step: str) -> None:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *args]
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        raise VenvBuildError(f"{step} failed (exit {result.returncode}); pip's output ends:\n{tail}\n(full log: {log})")


def _write_constraints(folder: Path, name: str, pins: tuple[str, ...]) -> Path:
    path = folder / name
    path.write_text("\n".join(pins) + "\n", encoding="utf-8")
    return path


def build_venv(spec: HostSpec, target: Path) -> dict[str, object]:
    """Build ``spec``'s venv in ``target`` (which must not exist); returns what the stamp records."""
    start = time.monotonic()
    target.mkdir(parents=True)
    log = target / "build.log"
    subprocess.run([python_for_venvs(), "-m", "venv", str(target)], check=True, capture_output=True)
    python = venv_python(target)
    torch_constraints = _write_constraints(target, "constraints-torch.txt", TORCH_PINS)
    _pip(python, list(TORCH_PINS), log, f"{spec.name}: installing {' '.join(TORCH_PINS)}")
    for requirements, pins in spec.preinstall:
        constraints = _write_constraints(target, "constraints-preinstall.txt", TORCH_PINS + pins)
        _pip(python, [*requirements, "-c", str(constraints)], log, f"{spec.name}: pre-installing {' '.join(requirements)}")
    relaxed = target / RELAXED
    relaxed.write_text(relaxed_requirements(spec), encoding="utf-8")
    _pip(python, ["-r", str(relaxed), "-c", str(torch_constraints)], log, f"{spec.name}: installing the host's requirements")
    return {"host": spec.name, "seconds": round(time.monotonic() - start, 1), "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def base_venv(spec: HostSpec, root: Path | None = None) -> tuple[Path, dict[str, object]]:
    """The cached venv of ``spec`` (built now if missing or incomplete) and its stamp (``cached``: reused)."""
    root = root or cache_root() / "webui-venvs"
    target = root / f"{spec.name}-{venv_digest(spec)}"
    stamp = target / STAMP
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test session may be building the same venv
        if stamp.is_file():
            return target, {**json.loads(stamp.read_text(encoding="utf-8")), "cached": True}
        if target.exists():
            shutil.rmtree(target)  # an interrupted build
        info = build_venv(spec, target)
        stamp.write_text(json.dumps(info), encoding="utf-8")
    return target, {**info, "cached": False}


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def overlay_venv(base: Path, target: Path) -> Path:
    """A fresh venv in ``target`` whose python also sees ``base``'s packages (after its own); returns its python."""
    subprocess.run([str(venv_python(base)), "-m", "venv", "--without-pip", str(target)], check=True, capture_output=True)
    python = venv_python(target)
    # pip itself comes from the base through the .pth file; the overlay's own site-packages comes first on sys.path.
    (_site_packages(python) / "zz_auto_mbw_host_base.pth").write_text(str(_site_packages(venv_python(base))) + "\n", encoding="utf-8")
    return python


def main(argv: list[str]) -> int:
    names = argv or list(HOSTS)
    for name in names:
        venv, info = base_venv(HOSTS[name])
        print(f"{name}: {venv} ({'cached' if info['cached'] else 'built'} in {info['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
