"""ImageReward scores, batched: the image-reward package's model, run on a whole iteration at once.

Weights come from the package (``ImageReward.load``): it downloads
``ImageReward.pt`` and ``med_config.json`` into ``download_root`` (default
``~/.cache/ImageReward``; the WebUI passes its ``models/ImageReward`` folder)
on first use and reuses them after.

The package's ``score(prompt, images)`` runs one image per forward pass. Here
all images go through the same modules (its BLIP ViT, its BLIP text encoder
with cross-attention, its MLP head and reward normalisation, its
preprocessing and tokenizer) in batches: one ViT pass and one text-encoder
pass per batch. Prompts are tokenized once per distinct prompt; the text
encoder attends to each image, so it runs once per image. The package pads
every prompt to 35 tokens, so images with different prompts share a batch
exactly.

Scores: the raw reward (the package's standardised output, about N(0, 1) on
its training data) by default; ``mapping="sigmoid"`` gives the seed
auto-MBW-rt's ``1 / (1 + exp(-reward))`` in (0, 1).
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from ..errors import ScorerError
from ..generators.base import GeneratedImage
from .base import ModelScorer

DEFAULT_MODEL = "ImageReward-v1.0"
#: ImageReward's prompt length: the package tokenizes with padding and truncation to this many tokens.
PROMPT_TOKENS = 35
#: The raw reward is standardised on the package's training data; +-2 covers most images.
RAW_RANGE = (-2.0, 2.0)

Mapping = Literal["raw", "sigmoid"]


@dataclass
class ImageRewardSettings:
    """How to load and run ImageReward. ``model`` is a known name or a path to a ``.pt`` state dict."""

    model: str = DEFAULT_MODEL
    mapping: Mapping = "raw"
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None
    download_root: str | None = None
    med_config: str | None = None


def sigmoid(value: float) -> float:
    """The seed's mapping of a raw reward onto (0, 1), overflow-safe."""
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp = math.exp(value)
    return exp / (1.0 + exp)


def load_imagereward(settings: ImageRewardSettings) -> Any:
    """The package's model with downloaded (or cached) weights, on the CPU; moved to the device later."""
    import ImageReward as reward

    root = str(settings.download_root) if settings.download_root else None
    med_config = str(settings.med_config) if settings.med_config else None
    try:
        return reward.load(settings.model, device="cpu", download_root=root, med_config=med_config)
    except OSError as error:  # network errors (requests, urllib, huggingface_hub) and file errors are OSErrors
        raise ScorerError(
            f"imagereward: could not get the model files into {root or '~/.cache/ImageReward'}: {error}; "
            "the first use downloads ImageReward.pt (1.7 GB) and med_config.json from the Hugging Face hub, "
            "so check the connection, or put both files there"
        ) from error
    except pickle.UnpicklingError as error:
        raise ScorerError(
            f"imagereward: {settings.model} is not a plain weights file torch can load safely: {error}"
        ) from error
    except RuntimeError as error:
        if "not found" in str(error):
            raise ScorerError(
                f"imagereward: model {settings.model!r} is neither a known name ({DEFAULT_MODEL}) nor a file"
            ) from error
        raise


class ImageRewardScorer(ModelScorer):
    """ImageReward (THUDM) preference scores for prompt/image pairs, higher is better."""

    name = "imagereward"
    higher_is_better = True

    def __init__(self, settings: ImageRewardSettings | None = None, model: Any = None) -> None:
        self.settings = settings or ImageRewardSettings()
        if self.settings.mapping not in ("raw", "sigmoid"):
            raise ScorerError(f"imagereward: mapping must be 'raw' or 'sigmoid', not {self.settings.mapping!r}")
        loader = (lambda: model) if model is not None else (lambda: load_imagereward(self.settings))
        super().__init__(loader, self.settings.device, self.settings.dtype, self.settings.batch_size)
        low, high = RAW_RANGE
        self.typical_range = (sigmoid(low), sigmoid(high)) if self.settings.mapping == "sigmoid" else RAW_RANGE

    def _place(self, model: Any) -> Any:
        model = model.to(device=self.device, dtype=self.dtype).eval()
        model.mlp.float()  # the package feeds the head float32 features
        model.device = self.device  # the package's own score() reads it
        return model

    def raw_rewards(self, model: Any, images: Sequence[GeneratedImage]) -> list[float]:
        """The package's standardised rewards for ``images`` in one forward pass."""
        import torch

        prompts = list(dict.fromkeys(item.prompt for item in images))
        tokens = model.blip.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=PROMPT_TOKENS, return_tensors="pt"
        ).to(self.device)
        row_of = {prompt: row for row, prompt in enumerate(prompts)}
        rows = torch.tensor([row_of[item.prompt] for item in images], device=self.device)
        pixels = torch.stack([model.preprocess(item.image) for item in images]).to(self.device, self.dtype)
        image_embeds = model.blip.visual_encoder(pixels)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        text = model.blip.text_encoder(
            tokens.input_ids[rows],
            attention_mask=tokens.attention_mask[rows],
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            return_dict=True,
        )
        rewards = model.mlp(text.last_hidden_state[:, 0, :].float())
        rewards = (rewards - model.mean) / model.std
        return rewards[:, 0].tolist()

    def _forward(self, model: Any, images: Sequence[GeneratedImage]) -> list[float]:
        rewards = self.raw_rewards(model, images)
        if self.settings.mapping == "sigmoid":
            return [sigmoid(r) if math.isfinite(r) else r for r in rewards]
        return rewards
