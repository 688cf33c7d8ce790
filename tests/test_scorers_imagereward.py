"""ImageReward scorer on the package's real model class with random weights (tiny config; no download)."""

from __future__ import annotations

import copy
import math
import os
import tempfile

import pytest
import torch

from lib_mbw.errors import EvaluationFailed, ScorerError
from lib_mbw.scorers import ImageRewardScorer, ImageRewardSettings, make_scorer
from lib_mbw.scorers.imagereward import sigmoid
from tests.scorer_fixtures import batch, downloads, offline_files, tiny_reward  # noqa: F401 - fixtures


def one_by_one(model, images) -> list[float]:
    """The package's own per-image path, the seed's way of scoring."""
    with torch.inference_mode():
        return [model.score(item.prompt, item.image) for item in images]


def test_batched_scores_match_the_package_one_by_one(tiny_reward) -> None:
    images = batch(5)
    scorer = ImageRewardScorer(ImageRewardSettings(device="cpu", batch_size=3), model=tiny_reward)
    batched = scorer.score(images)
    assert batched == pytest.approx(one_by_one(tiny_reward, images), abs=1e-5)
    assert len(set(round(s, 6) for s in batched)) == len(images), "random weights still tell images apart"
    assert scorer.dtype == torch.float32 and scorer.device.type == "cpu"


def test_prompts_matter_and_order_is_kept(tiny_reward) -> None:
    images = batch(4)
    scorer = ImageRewardScorer(model=tiny_reward)
    forward = scorer.score(images)
    assert scorer.score(images[::-1]) == pytest.approx(forward[::-1], abs=1e-5)
    relabelled = [copy.copy(item) for item in images]
    for item in relabelled:
        item.prompt = "a red house"
    assert scorer.score(relabelled) != pytest.approx(forward, abs=1e-4)


def test_scores_are_deterministic_and_sigmoid_maps_the_raw_reward(tiny_reward) -> None:
    images = batch(4)
    raw = ImageRewardScorer(model=tiny_reward).score(images)
    assert ImageRewardScorer(model=tiny_reward).score(images) == raw
    mapped = ImageRewardScorer(ImageRewardSettings(mapping="sigmoid"), model=tiny_reward).score(images)
    assert mapped == pytest.approx([1 / (1 + math.exp(-r)) for r in raw])
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0


def test_dtype_override_and_cuda_defaults(tiny_reward, monkeypatch) -> None:
    images = batch(4)
    reference = ImageRewardScorer(model=tiny_reward).score(images)
    model = copy.deepcopy(tiny_reward)
    scorer = ImageRewardScorer(ImageRewardSettings(dtype="bfloat16"), model=model)
    low_precision = scorer.score(images)
    assert next(model.blip.parameters()).dtype == torch.bfloat16 and next(model.mlp.parameters()).dtype == torch.float32
    assert low_precision == pytest.approx(reference, abs=0.1)
    with pytest.raises(ScorerError, match="not known"):
        ImageRewardScorer(ImageRewardSettings(dtype="int8"), model=model)
    with pytest.raises(ScorerError, match="CUDA is not available"):
        ImageRewardScorer(ImageRewardSettings(device="cuda"), model=model)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu = ImageRewardScorer(model=model)
    assert (on_gpu.device.type, on_gpu.dtype, on_gpu.batch_size) == ("cuda", torch.float16, 32)


def test_production_loader_downloads_by_name_into_the_cache_folder(downloads, tiny_reward, tmp_path) -> None:
    cache = tmp_path / "models" / "ImageReward"
    scorer = make_scorer("imagereward", download_root=str(cache), device="cpu")
    images = batch(3)
    scores = scorer.score(images)
    assert ("hf", "THUDM/ImageReward", "ImageReward.pt", str(cache)) in downloads.calls
    assert ("hf", "THUDM/ImageReward", "med_config.json", str(cache)) in downloads.calls
    assert (cache / "ImageReward.pt").is_file()
    assert scores == pytest.approx(ImageRewardScorer(model=tiny_reward).score(images), abs=1e-5)


def test_default_cache_folder_is_the_packages(downloads, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    make_scorer("imagereward").score(batch(2))
    assert ("hf", "THUDM/ImageReward", "ImageReward.pt", os.path.expanduser("~/.cache/ImageReward")) in downloads.calls


def test_unknown_model_name_is_a_scorer_error(downloads) -> None:
    with pytest.raises(ScorerError, match="unknown setting.*model_nmae.*valid: .*download_root"):
        make_scorer("imagereward", model_nmae="x")
    scorer = make_scorer("imagereward", model="ImageReward-v9")
    with pytest.raises(ScorerError, match="'ImageReward-v9' is neither a known name"):
        scorer.score(batch(2))


def test_unload_drops_the_model_and_reloads_on_next_score(downloads, tmp_path) -> None:
    scorer = make_scorer("imagereward", download_root=str(tmp_path))
    images = batch(2)
    first = scorer.score(images)
    assert scorer.loaded
    scorer.unload()
    assert not scorer.loaded
    assert scorer.score(images) == pytest.approx(first, abs=1e-6)
    assert [c[2] for c in downloads.calls].count("ImageReward.pt") == 2


def test_out_of_memory_halves_the_batch_then_fails_naming_the_image(tiny_reward, monkeypatch) -> None:
    images = batch(4)
    scorer = ImageRewardScorer(ImageRewardSettings(batch_size=4), model=tiny_reward)
    expected = scorer.score(images)
    real = ImageRewardScorer.raw_rewards
    sizes = []

    def limited(self, model, chunk):
        sizes.append(len(chunk))
        if len(chunk) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, model, chunk)

    monkeypatch.setattr(ImageRewardScorer, "raw_rewards", limited)
    assert scorer.score(images) == pytest.approx(expected, abs=1e-5)
    assert sizes == [4, 2] + [1] * 4  # 4 and 2 fail; then one image at a time
    assert scorer.batch_size == 1

    def always(self, model, chunk):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(ImageRewardScorer, "raw_rewards", always)
    with pytest.raises(EvaluationFailed, match="out of memory scoring payload 'cat' image 0"):
        scorer.score(images)


def test_other_errors_are_not_mistaken_for_out_of_memory(tiny_reward, monkeypatch) -> None:
    def broken(self, model, chunk):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(ImageRewardScorer, "raw_rewards", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        ImageRewardScorer(model=tiny_reward).score(batch(2))


def test_nan_scores_are_failures_not_numbers(tiny_reward, monkeypatch) -> None:
    def half_nan(self, model, chunk):
        return [0.5] + [float("nan")] * (len(chunk) - 1)

    monkeypatch.setattr(ImageRewardScorer, "raw_rewards", half_nan)
    with pytest.raises(EvaluationFailed, match="score of payload 'city' image 0 is nan"):
        ImageRewardScorer(model=tiny_reward).score(batch(4))


@pytest.mark.skipif(os.environ.get("MBW_FULL_MODEL_TESTS") != "1", reason="full-size model: set MBW_FULL_MODEL_TESTS=1")
def test_full_size_model_batches_like_the_package() -> None:
    from lib_mbw.scorers.offline import build_imagereward

    with tempfile.TemporaryDirectory() as folder:
        model = build_imagereward(folder, "full", seed=0)
        assert sum(p.numel() for p in model.parameters()) > 440_000_000
        images = batch(3, size=128)
        batched = ImageRewardScorer(ImageRewardSettings(batch_size=3), model=model).score(images)
        assert batched == pytest.approx(one_by_one(model, images), abs=1e-4)


def test_download_failures_say_what_to_do(downloads, monkeypatch, tmp_path) -> None:
    import ImageReward.utils as reward_utils
    import requests

    def offline(**_kwargs):
        raise requests.ConnectionError("Max retries exceeded with url: /THUDM/ImageReward")

    monkeypatch.setattr(reward_utils, "hf_hub_download", offline)
    with pytest.raises(ScorerError, match=r"could not get the model files into .*cache.*check the connection"):
        make_scorer("imagereward", download_root=str(tmp_path / "cache")).score(batch(2))
