"""The image-reward package's other scores, batched: LAION aesthetic, CLIP and BLIP text-image similarity.

Each model comes from ``ImageReward.load_score(name, download_root=...)``
("Aesthetic", "CLIP", "BLIP"), which downloads its weights on first use
(CLIP ViT-L/14 from OpenAI, BLIP large from Salesforce, the LAION
"improved aesthetic predictor" head). The package scores one image per
forward pass; here the same modules run on whole batches:

* ``aesthetic``: the predictor head on normalised CLIP ViT-L/14 image
  embeddings (about 1-10; most generated images land between 4 and 7).
  Ignores the prompt.
* ``clip``: cosine similarity of CLIP's text and image embeddings.
* ``blip``: cosine similarity of BLIP's projected text and image embeddings.

Text embeddings depend only on the prompt, which stays the same for a payload
over a whole search: they are computed once per distinct prompt and kept until
``unload``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from PIL import Image

from ..errors import ScorerError
from ..generators.base import GeneratedImage
from .base import ModelScorer
from .imagereward import PROMPT_TOKENS

PACKAGE_NAMES = {"aesthetic": "Aesthetic", "clip": "CLIP", "blip": "BLIP"}


@dataclass
class PackageScoreSettings:
    """Where to run one of the package's scores, and where its weights are cached."""

    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None
    download_root: str | None = None


def load_package_score(name: str, settings: PackageScoreSettings) -> Any:
    """``ImageReward.load_score(PACKAGE_NAMES[name])`` on the CPU, downloading into ``download_root`` if needed."""
    import ImageReward as reward

    root = str(settings.download_root) if settings.download_root else None
    try:
        return reward.load_score(PACKAGE_NAMES[name], device="cpu", download_root=root)
    except OSError as error:  # network errors (requests, urllib, huggingface_hub) and file errors are OSErrors
        raise ScorerError(
            f"{name}: could not get the {PACKAGE_NAMES[name]} model files into {root or '~/.cache/ImageReward'}: "
            f"{error}; the first use downloads them, so check the connection"
        ) from error
    except pickle.UnpicklingError as error:
        raise ScorerError(
            f"{name}: torch refused to load the {PACKAGE_NAMES[name]} weights safely (weights_only): {error}; "
            f"if the file is damaged, delete it from {root or '~/.cache/ImageReward'} to download it again"
        ) from error


class _PackageScorer(ModelScorer):
    """Shared loading and placement of the package's score models."""

    def __init__(self, settings: PackageScoreSettings | None, model: Any) -> None:
        self.settings = settings or PackageScoreSettings()
        loader: Callable[[], Any] = (lambda: model) if model is not None else (
            lambda: load_package_score(self.name, self.settings)
        )
        super().__init__(loader, self.settings.device, self.settings.dtype, self.settings.batch_size)
        self._text_features: dict[str, Any] = {}

    def unload(self) -> None:
        self._text_features.clear()
        super().unload()

    def _pixels(self, model: Any, images: Sequence[Image.Image]) -> Any:
        import torch

        return torch.stack([model.preprocess(image) for image in images]).to(self.device)

    def _prompt_rows(self, images: Sequence[GeneratedImage], encode: Callable[[list[str]], Any]) -> Any:
        """Normalised text features of each image's prompt, encoding only prompts not seen before."""
        import torch

        new = [p for p in dict.fromkeys(item.prompt for item in images) if p not in self._text_features]
        if new:
            for prompt, feature in zip(new, encode(new)):
                self._text_features[prompt] = feature
        return torch.stack([self._text_features[item.prompt] for item in images])


class _ClipBased(_PackageScorer):
    """Scores built on the package's CLIP ViT-L/14 (``model.clip_model``)."""

    def __init__(self, settings: PackageScoreSettings | None, model: Any) -> None:
        super().__init__(settings, model)
        import torch

        if self.dtype not in (torch.float32, torch.float16):
            raise ScorerError(f"{self.name}: CLIP runs in float32 or float16, not {self.dtype}; set dtype accordingly")

    def _place(self, model: Any) -> Any:
        import clip
        import torch

        model = model.to(self.device).eval()
        if self.dtype == torch.float16:
            clip.model.convert_weights(model.clip_model)  # what the package does on CUDA: layer norms stay float32
        else:
            model.clip_model.float()
        model.device = self.device
        return model

    def image_features(self, model: Any, images: Sequence[Image.Image]) -> Any:
        """Normalised float32 CLIP image embeddings, one row per image."""
        import torch.nn.functional as F

        return F.normalize(model.clip_model.encode_image(self._pixels(model, images))).float()


class AestheticScorer(_ClipBased):
    """LAION aesthetic predictor (CLIP ViT-L/14 + MLP head); ignores prompts; higher is better."""

    name = "aesthetic"
    typical_range = (3.0, 8.0)

    def __init__(self, settings: PackageScoreSettings | None = None, model: Any = None) -> None:
        super().__init__(settings, model)

    def _forward(self, model: Any, images: Sequence[GeneratedImage]) -> list[float]:
        features = self.image_features(model, [item.image for item in images])
        return model.mlp(features)[:, 0].tolist()


class CLIPScorer(_ClipBased):
    """Cosine similarity of CLIP ViT-L/14 prompt and image embeddings; higher is better."""

    name = "clip"
    typical_range = (0.1, 0.4)

    def __init__(self, settings: PackageScoreSettings | None = None, model: Any = None) -> None:
        super().__init__(settings, model)

    def _forward(self, model: Any, images: Sequence[GeneratedImage]) -> list[float]:
        import clip
        import torch.nn.functional as F

        def encode(prompts: list[str]) -> Any:
            tokens = clip.tokenize(prompts, truncate=True).to(self.device)
            return F.normalize(model.clip_model.encode_text(tokens)).float()

        text = self._prompt_rows(images, encode)
        pixels = self.image_features(model, [item.image for item in images])
        return (text * pixels).sum(dim=1).tolist()

    def embed_images(self, images: Sequence[Image.Image], labels: Sequence[str] | None = None) -> Any:
        """Normalised CLIP image embeddings (float32, CPU) for image-to-image similarity, batched.

        ``labels`` name the images in an out-of-memory failure.
        """
        import torch

        from .device import run_in_batches

        model = self.load()
        labels = list(labels) if labels is not None else [f"image {i}" for i in range(len(images))]
        with torch.inference_mode():
            rows, self.batch_size = run_in_batches(
                self.name, labels, self.batch_size,
                lambda a, b: list(self.image_features(model, images[a:b]).cpu()), self.device,
            )
        return torch.stack(rows)


class BLIPScorer(_PackageScorer):
    """Cosine similarity of BLIP (large) projected prompt and image embeddings; higher is better."""

    name = "blip"
    typical_range = (0.1, 0.6)

    def __init__(self, settings: PackageScoreSettings | None = None, model: Any = None) -> None:
        super().__init__(settings, model)

    def _place(self, model: Any) -> Any:
        model = model.to(device=self.device, dtype=self.dtype).eval()
        model.device = self.device
        return model

    def _forward(self, model: Any, images: Sequence[GeneratedImage]) -> list[float]:
        import torch.nn.functional as F

        blip = model.blip

        def encode(prompts: list[str]) -> Any:
            tokens = blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=PROMPT_TOKENS,
                                    return_tensors="pt").to(self.device)
            output = blip.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask, mode="text")
            return F.normalize(blip.text_proj(output.last_hidden_state[:, 0, :])).float()

        text = self._prompt_rows(images, encode)
        embeds = blip.visual_encoder(self._pixels(model, [item.image for item in images]).to(self.dtype))
        pixels = F.normalize(blip.vision_proj(embeds[:, 0, :]), dim=-1).float()
        return (text * pixels).sum(dim=1).tolist()
