"""The Scorer protocol: one float per image, for a batch, or an explicit failure.

Scorers load lazily and once, score a whole iteration's images in as few
forward passes as memory allows, and raise ``errors.EvaluationFailed`` with a
reason for NaN/inf scores, all-black (NSFW-filtered) images, wrong sizes or
out-of-memory: a failure is never turned into a score.

``ModelScorer`` is the shared implementation for scorers backed by a torch
model: lazy loading, device/dtype placement, batching with out-of-memory
back-off, ``unload`` and the checks around every ``score`` call.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from ..generators.base import GeneratedImage
from ..errors import EvaluationFailed
from .checks import check_images, check_scores, image_label, is_out_of_memory


@runtime_checkable
class Scorer(Protocol):
    """What the search loop needs from a scorer."""

    name: str
    higher_is_better: bool

    def score(self, images: Sequence[GeneratedImage]) -> list[float]:
        """One score per image, in order. Raises EvaluationFailed instead of returning NaN."""
        ...

    def unload(self) -> None:
        """Give the scorer's memory back (it reloads lazily on the next ``score``)."""
        ...


class ModelScorer:
    """A scorer backed by one torch model, loaded on first use.

    Subclasses set ``name``/``typical_range`` and implement ``_place`` (move a
    freshly loaded model to ``self.device``/``self.dtype``) and ``_forward``
    (scores of a slice of images, one float each). ``loader`` returns the model
    on the CPU (or anywhere ``_place`` can move it from).
    """

    name = "model"
    higher_is_better = True
    #: Scores usually fall in this range; ``CombinedScorer`` maps it onto 0..1.
    typical_range: tuple[float, float] = (0.0, 1.0)

    def __init__(self, loader: Callable[[], Any], device: Any, dtype: Any, batch_size: int | None) -> None:
        import torch

        from .device import default_batch_size, resolve_device, resolve_dtype

        self._loader = loader
        self.device: torch.device = resolve_device(device)
        self.dtype: torch.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = default_batch_size(self.device, batch_size)
        self._model: Any = None
        self._offloaded: Any = None

    @property
    def loaded(self) -> bool:
        """Whether the model is on its device now."""
        return self._model is not None

    def load(self) -> Any:
        """The placed model; loads it (or brings it back from the CPU) on first use."""
        if self._model is None:
            model = self._offloaded if self._offloaded is not None else self._loader()
            self._offloaded = None
            self._model = self._place(model)
        return self._model

    def unload(self) -> None:
        """Free the device: a CUDA model waits on the CPU for the next ``score``; a CPU model is dropped."""
        from .device import release_memory

        model, self._model = self._model, None
        if model is not None and self.device.type == "cuda":
            self._offloaded = model.to("cpu")
        del model
        release_memory(self.device)

    def score(self, images: Sequence[GeneratedImage]) -> list[float]:
        """Scores of ``images`` in order; ``EvaluationFailed`` for bad images, bad scores or out-of-memory."""
        import torch

        from .device import release_memory, run_in_batches

        check_images(self.name, images)
        if not images:
            return []
        try:
            model = self.load()
        except Exception as error:  # noqa: BLE001 - filtered to out-of-memory right below
            if not is_out_of_memory(error):
                raise
            release_memory(self.device)
            raise EvaluationFailed(
                f"{self.name}: out of memory loading the model on {self.device} to score {image_label(images[0])} "
                "and the rest of the iteration; unload other models, or score on the CPU"
            ) from error
        with torch.inference_mode():
            scores, self.batch_size = run_in_batches(
                self.name,
                [image_label(item) for item in images],
                self.batch_size,
                lambda a, b: self._forward(model, images[a:b]),
                self.device,
            )
        return check_scores(self.name, images, scores)

    def _place(self, model: Any) -> Any:
        raise NotImplementedError

    def _forward(self, model: Any, images: Sequence[GeneratedImage]) -> list[float]:
        raise NotImplementedError
