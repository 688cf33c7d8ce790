"""Aesthetic, CLIP and BLIP scores: loaded through the package's load_score (downloads served offline), batched."""

from __future__ import annotations

import pytest
import torch

from lib_mbw.errors import ScorerError
from lib_mbw.scorers import AestheticScorer, BLIPScorer, CLIPScorer, PackageScoreSettings, make_scorer
from tests.scorer_fixtures import batch, downloads, offline_files  # noqa: F401 - fixtures

FILES = {"aesthetic": "sac%2Blogos%2Bava1-l14-linearMSE.pth", "clip": "ViT-L-14.pt", "blip": "model_large.pth"}


def package_urls() -> dict[str, str]:
    """The URLs the packages download from (their own tables)."""
    import clip.clip
    import ImageReward.utils as reward_utils

    urls = {name.lower(): url for name, url in reward_utils._SCORES.items()}
    urls["clip_model"] = clip.clip._MODELS["ViT-L/14"]
    return urls


def package_one_by_one(model, images, tmp_path) -> list[float]:
    """The package's own per-image ``score(prompt, path)``."""
    scores = []
    with torch.inference_mode():
        for number, item in enumerate(images):
            path = tmp_path / f"{number}.png"
            item.image.save(path)
            scores.append(model.score(item.prompt, str(path)))
    return scores


@pytest.mark.parametrize("name", ["aesthetic", "clip", "blip"])
def test_batched_scores_match_the_package_and_weights_come_from_the_cache_folder(name, downloads, tmp_path) -> None:
    cache = tmp_path / "cache"
    scorer = make_scorer(name, download_root=str(cache), batch_size=2)
    images = batch(4)
    scores = scorer.score(images)
    urls = package_urls()
    assert urls[name].endswith(FILES[name])
    assert ("url", urls[name], str(cache)) in downloads.calls
    if name != "blip":
        assert ("clip", urls["clip_model"], str(cache)) in downloads.calls  # CLIP ViT-L/14 from the same folder
    assert scores == pytest.approx(package_one_by_one(scorer.load(), images, tmp_path), abs=1e-5)
    assert len(set(round(s, 7) for s in scores)) == len(images)


def test_prompt_features_are_computed_once_per_prompt(downloads, monkeypatch) -> None:
    scorer = CLIPScorer()
    model = scorer.load()
    encoded = []
    real = model.clip_model.encode_text
    monkeypatch.setattr(model.clip_model, "encode_text", lambda tokens: encoded.append(len(tokens)) or real(tokens))
    images = batch(4)
    first = scorer.score(images)
    assert scorer.score(images) == pytest.approx(first)
    assert encoded == [2]  # two distinct prompts, encoded once, reused on the second call
    scorer.unload()
    assert not scorer.loaded


def test_aesthetic_ignores_the_prompt_and_clip_does_not(downloads) -> None:
    images = batch(2)
    other = [type(item)(**{**item.__dict__, "prompt": "a blue boat"}) for item in images]
    aesthetic, clip = AestheticScorer(), CLIPScorer()
    assert aesthetic.score(other) == pytest.approx(aesthetic.score(images))
    assert clip.score(other) != pytest.approx(clip.score(images), abs=1e-6)


def test_clip_precision_choices(downloads) -> None:
    images = batch(2)
    reference = CLIPScorer().score(images)
    half = CLIPScorer(PackageScoreSettings(dtype="float16"))
    assert half.score(images) == pytest.approx(reference, abs=2e-2)
    assert half.load().clip_model.visual.conv1.weight.dtype == torch.float16
    assert half.load().clip_model.ln_final.weight.dtype == torch.float32  # as the package converts on CUDA
    with pytest.raises(ScorerError, match="float32 or float16"):
        AestheticScorer(PackageScoreSettings(dtype="bfloat16"))
    blip = BLIPScorer(PackageScoreSettings(dtype="bfloat16"))
    assert blip.score(images) == pytest.approx(BLIPScorer().score(images), abs=0.05)


def test_download_failures_say_what_to_do(downloads, monkeypatch, tmp_path) -> None:
    import urllib.error

    import ImageReward.utils as reward_utils

    def offline(url, root):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(reward_utils, "_download", offline)
    with pytest.raises(ScorerError, match="aesthetic: could not get the Aesthetic model files into .*name resolution"):
        make_scorer("aesthetic", download_root=str(tmp_path)).score(batch(2))
