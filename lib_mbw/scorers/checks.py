"""Checks every scorer runs: images that cannot be scored and scores that are not numbers.

A generated image is rejected before any model work when its size differs
from what its payload asked for, or when it is all black (the WebUI's NSFW
filter and NaN-producing VAEs both return black images). Scores are rejected
when they are NaN or infinite. Each rejection raises ``EvaluationFailed``
naming the scorer, the payload and the image, so the search loop records a
failed evaluation instead of feeding the optimizer a meaningless number.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from PIL import Image

from ..errors import EvaluationFailed
from ..generators.base import GeneratedImage
from ..payloads import Payload

#: An image whose brightest pixel (any channel, 0-255) is at or below this is "all black".
BLACK_MAX_VALUE = 4


def image_label(item: GeneratedImage) -> str:
    """How messages name one image: its payload and index within the payload's batch."""
    return f"payload '{item.payload.name}' image {item.index}"


def expected_size(payload: Payload) -> tuple[int, int]:
    """(width, height) the WebUI returns for ``payload``, including its hires-fix upscale.

    Follows AUTOMATIC1111's ``StableDiffusionProcessingTxt2Img``: with ``enable_hr``
    the output is ``hr_resize_x``/``hr_resize_y`` when given (one of them 0 keeps the
    aspect ratio), else the base size times ``hr_scale`` (default 2).
    """
    extra = payload.extra
    if not extra.get("enable_hr"):
        return payload.width, payload.height
    resize_x = int(extra.get("hr_resize_x") or 0)
    resize_y = int(extra.get("hr_resize_y") or 0)
    if resize_x == 0 and resize_y == 0:
        scale = float(extra.get("hr_scale") or 2.0)
        return int(payload.width * scale), int(payload.height * scale)
    if resize_y == 0:
        return resize_x, resize_x * payload.height // payload.width
    if resize_x == 0:
        return resize_y * payload.width // payload.height, resize_y
    return resize_x, resize_y


def is_all_black(image: Image.Image, max_value: int = BLACK_MAX_VALUE) -> bool:
    """True when no pixel of any channel is brighter than ``max_value`` (alpha ignored)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return all(high <= max_value for _, high in rgb.getextrema())


def check_images(scorer: str, images: Sequence[GeneratedImage]) -> None:
    """Raise ``EvaluationFailed`` for the first image of the wrong size or all black."""
    for item in images:
        want = expected_size(item.payload)
        if item.image.size != want:
            got = f"{item.image.size[0]}x{item.image.size[1]}"
            raise EvaluationFailed(
                f"{scorer}: {image_label(item)} is {got}, but the payload asks for {want[0]}x{want[1]}; "
                "check the generator's size/hires settings"
            )
        if is_all_black(item.image):
            raise EvaluationFailed(
                f"{scorer}: {image_label(item)} is all black (NSFW filter or NaN in the VAE); "
                "disable the NSFW filter or use --no-half-vae, then retry"
            )


def check_scores(scorer: str, images: Sequence[GeneratedImage], scores: Iterable[float]) -> list[float]:
    """The scores as floats; ``EvaluationFailed`` on a count mismatch or a NaN/inf score."""
    values = [float(s) for s in scores]
    if len(values) != len(images):
        raise EvaluationFailed(f"{scorer}: returned {len(values)} scores for {len(images)} images")
    for item, value in zip(images, values):
        if not math.isfinite(value):
            raise EvaluationFailed(f"{scorer}: score of {image_label(item)} is {value}, not a number")
    return values


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA out-of-memory errors and failed CPU allocations."""
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a requirement
        pass
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
