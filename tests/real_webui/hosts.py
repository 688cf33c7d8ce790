"""What differs between the real hosts: tree folder, pins to relax, pre-installs, launch flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_WEBUI = REPO_ROOT.parent / "shared" / "webui"

#: torch first (from the local package cache); every later pip call is constrained to it.
TORCH_PINS: tuple[str, ...] = ("torch==2.14.1", "torchvision==0.29.1")

#: Environment variable: fail (not skip) when a host cannot be built or started.
REQUIRE_ENV = "AUTO_MBW_REQUIRE_REAL_WEBUI"

#: Environment variable: a folder holding the helper repositories (``repositories/<name>``) when the tree lacks them.
REPOS_ENV = "AUTO_MBW_WEBUI_REPOS"


@dataclass(frozen=True)
class HostSpec:
    """One real WebUI: where its tree is and how to install and start it headless on CPU."""

    name: str
    tree: str  #: folder name under ../shared/webui
    repositories: tuple[tuple[str, str], ...]  #: (folder under repositories/, commit the launcher checks)
    flags: tuple[str, ...]
    #: (requirements, constraints) installed before the host's own requirements, e.g. what a built-in extension
    #: would otherwise pull unpinned at start-up.
    preinstall: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()
    extra_requirements: tuple[str, ...] = ("clip-anytorch==2.6.0",)
    env: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def source(self) -> Path:
        return SHARED_WEBUI / self.tree

    def launch_flags(self, port: int) -> list[str]:
        return [*self.flags, "--port", str(port)]


A1111 = HostSpec(
    name="a1111",
    tree="a1111-1.10.1",
    repositories=(
        ("stable-diffusion-webui-assets", "6f7db241d2f8ba7457bac5ca9753331f0c266917"),
        ("stable-diffusion-stability-ai", "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf"),
        ("generative-models", "45c443b316737a4ab6e40413d7794a7f5657c19f"),
        ("k-diffusion", "ab527a9a6d347f364e3d185ba6d714e22d80cb3c"),
        ("BLIP", "48211a1594f1321b00f14c9f7a5b4813144b2fb9"),
    ),
    flags=("--skip-torch-cuda-test", "--use-cpu", "all", "--no-half", "--no-download-sd-model", "--api"),
)

FORGE = HostSpec(
    name="forge",
    tree="forge-dfdcbab6",
    repositories=(
        ("stable-diffusion-webui-assets", "6f7db241d2f8ba7457bac5ca9753331f0c266917"),
        ("huggingface_guess", "84826248b49bb7ca754c73293299c4d4e23a548d"),
        ("BLIP", "48211a1594f1321b00f14c9f7a5b4813144b2fb9"),
    ),
    flags=("--always-cpu", "--skip-torch-cuda-test", "--api"),
    preinstall=(
        (("mediapipe", "protobuf==3.20.0", "onnxruntime<1.32"), ("numpy==1.26.2", "protobuf==3.20.0")),
    ),
    extra_requirements=("clip-anytorch==2.6.0", "joblib"),
)

HOSTS: dict[str, HostSpec] = {spec.name: spec for spec in (A1111, FORGE)}


def require_real_webui() -> bool:
    """True when a host that cannot start must fail the tests (CI), not skip them."""
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0", "false", "no")


def cache_root() -> Path:
    """``$AUTO_MBW_CACHE`` or ``~/.cache/auto-mbw``: host venvs and helper repositories live here, outside the repo."""
    return Path(os.environ.get("AUTO_MBW_CACHE") or Path.home() / ".cache" / "auto-mbw")


def repositories_sources(spec: HostSpec) -> list[Path]:
    """Folders searched for ``repositories/<name>``, first match wins: the tree's own, then ``$AUTO_MBW_WEBUI_REPOS``,
    then ``<cache>/webui-repositories``."""
    folders = [spec.source / "repositories"]
    if os.environ.get(REPOS_ENV):
        folders.append(Path(os.environ[REPOS_ENV]))
    folders.append(cache_root() / "webui-repositories")
    return folders
