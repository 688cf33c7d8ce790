"""The Generator protocol: set merge weights on a model, then render payloads.

A generator owns one model that can be merged in place (a local pipeline
driven through ``runtime.RuntimeMerger``, the WebUI's loaded model, or a
remote WebUI worker). The search loop calls ``apply(recipe)`` and then
``generate(payload)`` for each payload; it never touches weights itself.
Generators return PIL images with the parameters that made them and never
write files unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from PIL import Image

from ..payloads import Payload
from ..recipe import Recipe

#: ``progress(done_steps, total_steps)`` reported while a payload renders.
ProgressCallback = Callable[[int, int], None]


@dataclass
class GeneratedImage:
    """One rendered image and what made it. ``index`` is its position within the payload's batch."""

    image: Image.Image
    payload: Payload
    prompt: str
    negative_prompt: str
    seed: int
    index: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """What the search loop needs from an image backend."""

    name: str

    def apply(self, recipe: Recipe) -> float:
        """Set the model's merge weights to ``recipe``; returns the seconds it took."""
        ...

    def generate(self, payload: Payload, progress: ProgressCallback | None = None) -> list[GeneratedImage]:
        """Render one payload (``batch_size`` images, fixed seeds) with the current weights."""
        ...

    def restore(self) -> None:
        """Put the model's original weights back (bit-exact)."""
        ...

    def close(self) -> None:
        """Release the model and memory; ``restore`` first if needed."""
        ...


#: The optional method a generator (or a host) offers to check a payload's sampler before a search starts:
#: ``check_sampler(sampler, scheduler, source)`` raises PayloadError naming the field and the accepted names.
SAMPLER_CHECK = "check_sampler"


def check_sampler(backend: Any, sampler: str, scheduler: str, source: str) -> bool:
    """Let ``backend`` (a generator or host) refuse an unknown sampler/scheduler; False if it cannot check names.

    A backend without ``check_sampler`` (plugins, remote workers whose list
    is only known once connected) is trusted: its failures show up as failed
    evaluations, as before.
    """
    check = getattr(backend, SAMPLER_CHECK, None)
    if not callable(check):
        return False
    check(sampler, scheduler, source)
    return True
