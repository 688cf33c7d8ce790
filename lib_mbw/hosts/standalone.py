"""The standalone host: checkpoints from a folder, a generator from the registry, no WebUI.

``python -m lib_mbw ui`` runs the UI on this host. Model titles are the paths
of the ``.safetensors`` files (and diffusers folders: a ``model_index.json``
and UNet weights) relative to the models folder, e.g. ``anime/A.safetensors``;
pickle checkpoints are not listed (see the security rule in DESIGN.md).
Generators are made by name through the generator registry
(``lib_mbw.generators.registry``, "diffusers" by default) or from a
``package.module:factory`` spec, exactly as the search CLI makes them; a
mix of 3-5 models (``make_mix_generator``) needs one that can mix (diffusers).
There is no shared GPU model to guard, so ``exclusive()`` is a no-op; the UI
itself runs one search at a time.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..errors import MBWError
from ..generators.base import Generator
from .base import HostPaths

#: Files listed as checkpoints.
MODEL_SUFFIXES: tuple[str, ...] = (".safetensors",)


class ModelNotFoundError(MBWError):
    """A model title names no checkpoint in the models folder."""


class StandaloneHost:
    """A ``Host`` for the standalone app: models from ``models_dir``, folders under ``root``."""

    name = "standalone"

    def __init__(
        self,
        models_dir: str | Path,
        *,
        root: str | Path = ".",
        generator: str = "diffusers",
        generator_options: Mapping[str, Any] | None = None,
        paths: HostPaths | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        root = Path(root)
        self.generator = generator
        self.generator_options = dict(generator_options or {})
        self.paths = paths or HostPaths(
            payloads=root / "payloads",
            wildcards=root / "payloads" / "wildcards",
            history=root / "csv" / "history",
            models=self.models_dir,
        )

    def list_models(self) -> list[str]:
        """``.safetensors`` files and diffusers folders under the models folder, as relative paths, sorted."""
        root = self.models_dir
        if not root.is_dir():
            return []
        titles: set[str] = set()
        for path in root.rglob("*"):
            relative = path.relative_to(root)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES:
                if not _inside_diffusers_folder(path, root):
                    titles.add(relative.as_posix())
            elif path.is_dir() and _is_diffusers_model(path):
                titles.add(relative.as_posix())
        return sorted(titles, key=str.lower)

    def model_path(self, title: str) -> Path:
        """The file (or diffusers folder) of ``title``; ModelNotFoundError if it is not in the models folder."""
        if not title:
            raise ModelNotFoundError("no model chosen; pick a checkpoint from the list")
        relative = Path(title)
        if relative.is_absolute() or ".." in relative.parts:
            raise ModelNotFoundError(f"model {title!r} is outside the models folder {self.models_dir}; give its path inside it")
        if title not in self.list_models():
            raise ModelNotFoundError(
                f"model {title!r} is not in {self.models_dir}; put a .safetensors file there or pick one from the list"
            )
        return self.models_dir / relative

    def make_generator(self, model_a: str, model_b: str, options: Mapping[str, Any]) -> Generator:
        """A generator of the host's kind for the files of ``model_a`` and ``model_b``."""
        from ..search.session import make_generators
        from ..search.settings import GeneratorSettings

        path_a, path_b = self.model_path(model_a), self.model_path(model_b)
        settings = GeneratorSettings(name=self.generator, options={**self.generator_options, **dict(options)})
        # the host's generator was chosen by whoever started the app (a plugin is theirs to enable)
        (generator,) = make_generators(settings, str(path_a), str(path_b), plugins={self.generator})
        return generator

    def make_mix_generator(self, models: Sequence[str], options: Mapping[str, Any]) -> Generator:
        """A generator of the host's kind whose model is the first of ``models`` (titles, 3-5) and whose
        ``apply`` mixes in the others (``RecipeN``s)."""
        from ..search.session import make_generators
        from ..search.settings import GeneratorSettings

        paths = [str(self.model_path(title)) for title in models]
        settings = GeneratorSettings(name=self.generator, options={**self.generator_options, **dict(options)})
        (generator,) = make_generators(settings, paths[0], paths[1], plugins={self.generator}, more_models=paths[2:])
        return generator

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Nothing to lock: the standalone app owns its models."""
        yield

    def model_saved(self, path: Path) -> None:
        """Nothing to refresh: ``list_models`` reads the folder on every call."""


def _is_diffusers_model(folder: Path) -> bool:
    """A diffusers folder with UNet weights (a config-only folder, like the demo's, is no model)."""
    return (folder / "model_index.json").is_file() and any((folder / "unet").glob("diffusion_pytorch_model*.safetensors"))


def _inside_diffusers_folder(path: Path, root: Path) -> bool:
    """True for weight files inside a diffusers folder (listed as the folder, not as files)."""
    relative = path.relative_to(root)
    return any(_is_diffusers_model(root / folder) for folder in relative.parents if folder != Path("."))


__all__ = ["MODEL_SUFFIXES", "ModelNotFoundError", "StandaloneHost"]
