"""Helpers and fixtures for the scorer tests: distinct images, payloads, and offline package models."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lib_mbw.generators.base import GeneratedImage
from lib_mbw.payloads import Payload


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A distinct, non-black RGB image: a smooth colour gradient plus noise, different per seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = rng.uniform(0.2, 0.9, size=3)
    slope = rng.uniform(-0.5, 0.5, size=(2, 3))
    pixels = base + x[..., None] * slope[0] + y[..., None] * slope[1] + rng.normal(0, 0.05, (height, width, 3))
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), "RGB")


def generated(payload: Payload, images: list[Image.Image], prompt: str | None = None) -> list[GeneratedImage]:
    """``GeneratedImage`` records for one payload's batch."""
    return [
        GeneratedImage(image=image, payload=payload, prompt=prompt or payload.prompt, negative_prompt="", seed=index,
                       index=index)
        for index, image in enumerate(images)
    ]


def batch(count: int = 6, size: int = 64) -> list[GeneratedImage]:
    """Images of two payloads with different prompts, distinct pixels."""
    cat = Payload(name="cat", prompt="a photo of a cat", width=size, height=size, batch_size=count // 2)
    city = Payload(name="city", prompt="a city street at night, detailed", width=size, height=size,
                   batch_size=count - count // 2)
    first = generated(cat, [picture(i, (size, size)) for i in range(count // 2)])
    second = generated(city, [picture(100 + i, (size, size)) for i in range(count - count // 2)])
    return [item for pair in zip(first, second) for item in pair] + first[len(second):] + second[len(first):]


class FixedScorer:
    """A scorer returning given values (per image position), counting calls."""

    def __init__(self, name: str, values: list[float], higher_is_better: bool = True,
                 typical_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        self.name, self.values, self.higher_is_better = name, values, higher_is_better
        if typical_range is not None:
            self.typical_range = typical_range
        self.calls = self.unloads = 0

    def score(self, images):
        self.calls += 1
        return self.values[: len(images)]

    def unload(self) -> None:
        self.unloads += 1


class FakeDownloads:
    """Stand-ins for the package's downloaders that serve offline files and record what was asked."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.calls: list[tuple[str, ...]] = []

    def hf_hub_download(self, repo_id: str, filename: str, local_dir: str) -> str:
        self.calls.append(("hf", repo_id, filename, local_dir))
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        return shutil.copy(self.files[filename], Path(local_dir) / filename)

    def url_download(self, url: str, root: str) -> str:
        self.calls.append(("url", url, root))
        name = url.rsplit("/", 1)[-1]
        return str(self.files.get(name, self.files.get("*", Path(root) / name)))

    def clip_download(self, url: str, root: str) -> str:
        self.calls.append(("clip", url, root))
        return str(self.files["ViT-L-14.pt"])


@pytest.fixture(scope="session")
def offline_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files the package downloads, made from random tiny models: ImageReward, med_config, CLIP, BLIP, aesthetic."""
    import torch

    from lib_mbw.scorers import offline

    folder = tmp_path_factory.mktemp("offline-models")
    files = offline.save_imagereward_files(folder, "tiny", seed=0)
    torch.save(offline.tiny_clip_state_dict(seed=1), folder / "ViT-L-14.pt")
    torch.save(offline.aesthetic_head_state_dict(seed=2), folder / "aesthetic.pth")
    torch.save(offline.blip_state_dict(folder / "blip", seed=3), folder / "model_large.pth")
    files.update({
        "ViT-L-14.pt": folder / "ViT-L-14.pt",
        "sac%2Blogos%2Bava1-l14-linearMSE.pth": folder / "aesthetic.pth",
        "model_large.pth": folder / "model_large.pth",
    })
    return files


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch, offline_files: dict[str, Path]) -> Any:
    """Route every download of the image-reward and clip packages to the offline files; yields the recorder."""
    import clip.clip
    import ImageReward.utils as reward_utils

    from lib_mbw.scorers import offline

    fake = FakeDownloads(offline_files)
    monkeypatch.setattr(reward_utils, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr(reward_utils, "_download", fake.url_download)
    monkeypatch.setattr(clip.clip, "_download", fake.clip_download)
    with offline.offline_blip(offline_files["vocab.txt"], "tiny"):
        yield fake


@pytest.fixture(scope="session")
def tiny_reward(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny random-weight ``ImageReward.ImageReward`` (the package's class), CPU float32."""
    from lib_mbw.scorers.offline import build_imagereward

    return build_imagereward(tmp_path_factory.mktemp("tiny-reward"), "tiny", seed=0)
