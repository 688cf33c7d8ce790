"""The Host protocol: what the UI and the search need from the program they run inside.

A host lists the checkpoints a user can pick, makes the generator for a pair
(A, B) — the standalone host a diffusers pipeline, the WebUI host its loaded
model — says where payloads, histories and merged models live, and serialises
access to the GPU model (the WebUI's queue lock) for the length of a search.
Host adapters are thin: the logic stays in ``lib_mbw``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

from ..generators.base import Generator


@dataclass(frozen=True)
class HostPaths:
    """Folders a host provides. ``models`` is where merged checkpoints are saved."""

    payloads: Path
    wildcards: Path
    history: Path
    models: Path
    scorer_cache: Path | None = None
    #: Other server folders a UI client may name in scorer/generator options (the demo's reference images).
    data: tuple[Path, ...] = ()

    def client_roots(self) -> tuple[Path, ...]:
        """The folders a UI client may point a file or folder option into."""
        roots = (self.payloads, self.wildcards, self.history, self.models, *self.data)
        return roots + ((self.scorer_cache,) if self.scorer_cache is not None else ())


@runtime_checkable
class Host(Protocol):
    """What ``lib_mbw.ui`` and the search need from the program hosting them."""

    name: str  #: "standalone", "a1111" or "forge"
    paths: HostPaths

    def list_models(self) -> list[str]:
        """Titles of the checkpoints the user can pick as A or B."""
        ...

    def model_path(self, title: str) -> Path:
        """The file of a checkpoint title; MBWError naming it if unknown."""
        ...

    def make_generator(self, model_a: str, model_b: str, options: Mapping[str, Any]) -> Generator:
        """A generator whose model is A and whose ``apply`` merges towards B."""
        ...

    # Optional: ``make_mix_generator(models, options)``, a generator whose model is models[0] and whose
    # ``apply`` mixes in models[1:] (3-5 titles; ``RecipeN``s). A host without it searches two models only.

    def exclusive(self) -> AbstractContextManager[None]:
        """Hold the host's model/GPU lock for the length of a search (no-op when standalone)."""
        ...

    def model_saved(self, path: Path) -> None:
        """Called after a merged model was written, so the host can list it."""
        ...
