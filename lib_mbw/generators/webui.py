"""In-process generation inside AUTOMATIC1111 / Forge: the WebUI's own txt2img on its loaded model.

``WebUIGenerator`` implements the Generator protocol on top of a
``hosts.webui.WebUIHost``: ``apply`` merges on the live UNet through the
host's merge session (with ``more_models``, a block mix of 3-5 models whose
``apply`` takes ``RecipeN``s), ``generate`` builds a ``StableDiffusionProcessingTxt2Img``
and runs ``process_images`` — no HTTP, no ``--api``, no PNG round trip.

* Output folders: ``do_not_save_samples``/``do_not_save_grid`` unless the
  user asked to save (then the WebUI's txt2img folders and infotext, with the
  recipe added as ``auto-MBW recipe``).
* The WebUI's state: ``shared.state`` shows the payload as the current job
  (progress bar, console); Interrupt raises ``GenerationInterrupted`` (the
  search stops, the model is restored), Skip fails the evaluation.
* Locking: inside a search (``host.exclusive()``) the queue lock is already
  held, so generation calls ``process_images`` directly; outside a search
  each call takes the lock itself (``host.queue_turn``). Forge renders on its
  main thread.
* Extension scripts (``p.scripts``) are not run: images depend only on the
  payload and the weights. LoRA/embeddings in prompts work as in txt2img.
* The model is checked after every render too: when the WebUI loaded a
  checkpoint during it (the user or an API call changed the checkpoint;
  Forge and A1111 load it inside the next ``process_images``), the images
  show that model, not the merge. That evaluation fails with the reason
  (never scored, never the best), and the next call raises
  ``CheckpointChangedError``, which stops the search; the WebUI keeps the
  model it loaded.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import TYPE_CHECKING, Any

from ..errors import EvaluationFailed, GenerationInterrupted
from ..payloads import Payload
from ..recipe import Recipe, to_positional
from ..recipe_n import RecipeN, to_chain_text
from .base import GeneratedImage, ProgressCallback
from .webui_params import ProgressPoller, accepted_params, payload_images, txt2img_params

if TYPE_CHECKING:
    from ..hosts.webui import WebUIHost

log = logging.getLogger(__name__)

#: Infotext key that records the recipe on images the WebUI saves.
RECIPE_INFOTEXT_KEY = "auto-MBW recipe"


def constructor_params(cls: type) -> set[str]:
    """Keyword arguments a processing class accepts (the WebUI builds its API schema the same way)."""
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        if klass is object:
            continue
        names.update(p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "args", "kwargs"))
    return names


class CheckpointChangedError(GenerationInterrupted):
    """The WebUI loaded another model during a search: the merge is gone, so the search stops."""


class WebUIGenerator:
    """The WebUI's loaded model as a Generator: A is loaded through the WebUI, B merged in place."""

    name = "webui"

    def __init__(
        self, host: "WebUIHost", model_a: str, model_b: str, *, mode: str = "auto", save_images: bool = False,
        more_models: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.model_a = model_a
        self.model_b = model_b
        self.more_models = tuple(more_models)
        self.mode = mode
        self.save_images = save_images
        self._model_change: str | None = None  #: set when the WebUI loaded a model during a render

    def _session(self) -> Any:
        return self.host.session(self.model_a, self.model_b, self.mode, self.more_models)

    def memory_plan(self) -> Any:
        """The memory plan of this generator's block mix (``WebUIHost.mix_memory_plan``); None for two models."""
        if not self.more_models:
            return None
        return self.host.mix_memory_plan([self.model_a, self.model_b, *self.more_models], self.mode)

    def _refuse_after_model_change(self) -> None:
        if self._model_change is not None:
            raise CheckpointChangedError(
                f"{self._model_change} during the search, so the search stopped (the model the WebUI loaded is "
                "kept). Leave the checkpoint alone while a search runs; resume the run to go on (it loads model A again)"
            )

    def apply(self, recipe: Recipe | RecipeN) -> float:
        self._refuse_after_model_change()
        with self.host.queue_turn():
            return self._session().apply(recipe)

    def generate(self, payload: Payload, progress: ProgressCallback | None = None) -> list[GeneratedImage]:
        from ..hosts.webui import run_on_main_thread

        self._refuse_after_model_change()
        with self.host.queue_turn():
            session = self._session()
            with session.generating():
                processed = run_on_main_thread(self.host.name, self._render, payload, session.recipe, progress)
            change = session.model_change()
        if change is not None:
            self._model_change = change
            log.warning("auto-MBW: %s while rendering payload %s; that evaluation is not scored", change, payload.name)
            raise EvaluationFailed(
                f"{change} while payload {payload.name!r} rendered: the images show that model, not this recipe; not scored"
            )
        return self._collect(payload, processed)

    def restore(self) -> None:
        with self.host.queue_turn():
            self.host.restore_session()

    def close(self) -> None:
        self._model_change = None
        with self.host.queue_turn():
            self.host.close_session()

    # -- rendering (runs on the WebUI's generation thread)

    def _processing(self, payload: Payload, recipe: Recipe | RecipeN | None) -> Any:
        from modules import processing, shared

        params = txt2img_params(payload)
        kwargs, ignored = accepted_params(params, constructor_params(processing.StableDiffusionProcessingTxt2Img))
        if ignored:
            log.info("auto-MBW: payload %s: this WebUI has no txt2img field(s) %s; ignored", payload.name, ", ".join(ignored))
        kwargs.update(do_not_save_samples=not self.save_images, do_not_save_grid=True)
        p = processing.StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, **kwargs)
        if self.save_images:
            p.outpath_samples = shared.opts.outdir_txt2img_samples
            p.outpath_grids = shared.opts.outdir_txt2img_grids
        if recipe is not None:
            p.extra_generation_params[RECIPE_INFOTEXT_KEY] = _infotext(recipe)
        return p

    def _render(self, payload: Payload, recipe: Recipe | RecipeN | None, progress: ProgressCallback | None) -> Any:
        from modules import processing, shared

        state = shared.state
        state.job = f"auto-MBW: {payload.name}"
        state.job_no = 0
        state.job_count = 1
        state.sampling_step = 0
        state.textinfo = f"auto-MBW: rendering {payload.name}"

        def read_progress() -> tuple[int, int] | None:
            total = int(getattr(state, "sampling_steps", 0) or 0)
            return (min(int(state.sampling_step), total), total) if total else None

        p = self._processing(payload, recipe)
        with contextlib.closing(p), ProgressPoller(read_progress, progress, total=payload.steps):
            processed = processing.process_images(p)
        if state.interrupted or getattr(state, "stopping_generation", False):
            raise GenerationInterrupted("generation was interrupted in the WebUI; the search stops and the model is restored")
        if state.skipped:
            state.skipped = False
            raise EvaluationFailed(f"payload {payload.name!r}: skipped in the WebUI (the image is unfinished)")
        return processed

    def _collect(self, payload: Payload, processed: Any) -> list[GeneratedImage]:
        info = {
            "index_of_first_image": getattr(processed, "index_of_first_image", 0),
            "all_prompts": getattr(processed, "all_prompts", None),
            "all_negative_prompts": getattr(processed, "all_negative_prompts", None),
            "all_seeds": getattr(processed, "all_seeds", None),
            "infotexts": getattr(processed, "infotexts", None),
            "steps": getattr(processed, "steps", payload.steps),
            "cfg_scale": getattr(processed, "cfg_scale", payload.cfg_scale),
            "sampler_name": getattr(processed, "sampler_name", payload.sampler),
        }
        return payload_images(payload, list(processed.images), info, backend=self.name, source=f"WebUI ({self.host.name})")


def _infotext(recipe: Recipe | RecipeN) -> str:
    """The recipe as the infotext records it: 27 values, or a mix's N - 1 chain lines joined by `` | ``."""
    if isinstance(recipe, RecipeN):
        text, _ = to_chain_text(recipe)
        return " | ".join(line for line in text.splitlines() if line and not line.startswith("#"))
    return to_positional(recipe)
