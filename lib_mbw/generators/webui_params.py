"""The WebUI's txt2img parameters for a payload, and what comes back: shared by the in-process and HTTP generators.

Both WebUI backends speak the same vocabulary: the fields of
``StableDiffusionProcessingTxt2Img`` (and of ``/sdapi/v1/txt2img``, which the
WebUI generates from that class). This module maps a ``Payload`` to those
fields once, picks the payload's images out of a result (a WebUI result may
start with a grid and end with extra images), and polls a progress source
while a payload renders. It never imports the WebUI.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Mapping, Sequence

from PIL import Image

from ..payloads import Payload
from .base import GeneratedImage, ProgressCallback

#: Payload fields that are ours, not the WebUI's: never sent as txt2img parameters.
PAYLOAD_ONLY_FIELDS: frozenset[str] = frozenset(
    {"name", "weight", "expansion", "variants", "variant", "reference", "references", "tally_weight"}
)

#: WebUI option that holds clip skip (set per request through ``override_settings``).
CLIP_SKIP_OPTION = "CLIP_stop_at_last_layers"


def txt2img_params(payload: Payload) -> dict[str, Any]:
    """The txt2img parameters of ``payload``: one render of ``batch_size`` images with fixed seeds.

    Unknown payload fields (``extra``) pass through, so users can set any
    txt2img field the WebUI has (``enable_hr``, ``styles``, ...); our own
    fields never override the core ones except ``override_settings``, which is
    merged with the clip-skip override.
    """
    extra = {k: v for k, v in payload.extra.items() if k not in PAYLOAD_ONLY_FIELDS}
    overrides = dict(extra.pop("override_settings", None) or {})
    overrides.setdefault(CLIP_SKIP_OPTION, payload.clip_skip)
    params: dict[str, Any] = dict(extra)
    params.update(
        prompt=payload.prompt,
        negative_prompt=payload.negative_prompt,
        steps=payload.steps,
        cfg_scale=payload.cfg_scale,
        sampler_name=payload.sampler,
        scheduler=payload.scheduler,
        width=payload.width,
        height=payload.height,
        seed=payload.seed,
        batch_size=payload.batch_size,
        n_iter=1,
        override_settings=overrides,
        override_settings_restore_afterwards=True,
    )
    return params


def accepted_params(params: Mapping[str, Any], accepted: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """``params`` split into those a constructor accepts and the names it does not know."""
    names = set(accepted)
    kept = {k: v for k, v in params.items() if k in names}
    dropped = sorted(k for k in params if k not in names)
    return kept, dropped


def payload_images(
    payload: Payload,
    images: Sequence[Image.Image],
    info: Mapping[str, Any],
    *,
    backend: str,
    source: str,
) -> list[GeneratedImage]:
    """The payload's ``batch_size`` images out of a WebUI result, with their prompts, seeds and infotexts.

    ``info`` is ``Processed.js()`` as a dict (or the same fields read from a
    ``Processed``): ``index_of_first_image`` skips a returned grid, and images
    after the batch (extra images such as control maps) are ignored.
    ``source`` names where they came from for error messages.
    """
    first = int(info.get("index_of_first_image") or 0)
    batch = images[first : first + payload.batch_size]
    if len(batch) != payload.batch_size:
        from ..errors import EvaluationFailed

        raise EvaluationFailed(
            f"{source}: payload {payload.name!r} asked for {payload.batch_size} image(s) but the WebUI returned "
            f"{len(images) - first}; an extension or script may have changed the batch"
        )
    prompts = list(info.get("all_prompts") or [payload.prompt])
    negatives = list(info.get("all_negative_prompts") or [payload.negative_prompt])
    seeds = list(info.get("all_seeds") or [payload.seed + i for i in range(payload.batch_size)])
    infotexts = list(info.get("infotexts") or [])
    result = []
    for i, image in enumerate(batch):
        params: dict[str, Any] = {
            "backend": backend,
            "source": source,
            "steps": info.get("steps", payload.steps),
            "cfg_scale": info.get("cfg_scale", payload.cfg_scale),
            "sampler": info.get("sampler_name", payload.sampler),
            "width": image.width,
            "height": image.height,
        }
        if i + first < len(infotexts):  # infotexts are aligned with images, grid included
            params["infotext"] = infotexts[i + first]
        result.append(
            GeneratedImage(
                image=image,
                payload=payload,
                prompt=_pick(prompts, i, payload.prompt),
                negative_prompt=_pick(negatives, i, payload.negative_prompt),
                seed=int(_pick(seeds, i, payload.seed + i)),
                index=i,
                params=params,
            )
        )
    return result


def _pick(values: Sequence[Any], index: int, default: Any) -> Any:
    return values[index] if index < len(values) else default


class ProgressPoller:
    """Calls ``callback(done, total)`` every ``interval`` seconds from ``read()`` while a payload renders.

    ``read`` returns ``(done, total)`` or None when nothing is known yet. Use as
    a context manager around the blocking render; a final report of
    ``(total, total)`` is sent on a normal exit so listeners see completion
    (``total`` is the last one read, else the ``total`` given).
    """

    def __init__(
        self,
        read: Callable[[], tuple[int, int] | None],
        callback: ProgressCallback | None,
        interval: float = 0.25,
        total: int | None = None,
    ) -> None:
        self._read = read
        self._total = total
        self._callback = callback
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[int, int] | None = None

    def _report(self) -> None:
        try:
            value = self._read()
        except Exception:  # a progress source that fails must never break generation
            return
        if value is not None and value != self._last and self._callback is not None:
            self._last = value
            self._callback(*value)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._report()

    def __enter__(self) -> "ProgressPoller":
        if self._callback is not None:
            self._thread = threading.Thread(target=self._run, name="auto-mbw-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is None and self._callback is not None:
            # A render faster than one poll interval still reports its completion.
            total = self._last[1] if self._last is not None else self._total
            if total is not None and self._last != (total, total):
                self._callback(total, total)
