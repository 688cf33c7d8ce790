"""What every scorer shares: image checks, device choice, out-of-memory back-off, combinations, the registry."""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL import Image

from lib_mbw.errors import EvaluationFailed, ScorerError
from lib_mbw.payloads import Payload
from lib_mbw.scorers import CombinedScorer, HumanScorer, ReferenceScorer, Scorer, available_scorers, make_scorer
from lib_mbw.scorers.checks import check_images, check_scores, expected_size, is_all_black, is_out_of_memory
from lib_mbw.scorers.device import resolve_device, resolve_dtype, run_in_batches
from tests.scorer_fixtures import FixedScorer, batch, generated, picture


def test_wrong_size_and_black_images_are_named_failures() -> None:
    images = batch(4)
    check_images("x", images)
    wrong = replace(images[2], image=picture(1, (64, 48)))
    with pytest.raises(EvaluationFailed, match="x: payload 'cat' image 1 is 64x48, but the payload asks for 64x64"):
        check_images("x", images[:2] + [wrong])
    black = replace(images[1], image=Image.new("RGB", (64, 64), (3, 2, 0)))
    with pytest.raises(EvaluationFailed, match="payload 'city' image 0 is all black"):
        check_images("x", [images[0], black])
    assert not is_all_black(Image.new("L", (8, 8), 40)) and is_all_black(Image.new("RGBA", (8, 8), (0, 0, 0, 255)))


def test_expected_size_follows_the_webui_hires_rules() -> None:
    base = Payload(name="p", prompt="x", width=512, height=768)
    assert expected_size(base) == (512, 768)
    assert expected_size(replace(base, extra={"enable_hr": True, "hr_scale": 1.5})) == (768, 1152)
    assert expected_size(replace(base, extra={"enable_hr": True})) == (1024, 1536)
    assert expected_size(replace(base, extra={"enable_hr": True, "hr_resize_x": 1024})) == (1024, 1536)
    assert expected_size(replace(base, extra={"enable_hr": True, "hr_resize_y": 960})) == (640, 960)
    assert expected_size(replace(base, extra={"enable_hr": True, "hr_resize_x": 700, "hr_resize_y": 900})) == (700, 900)
    assert expected_size(replace(base, extra={"enable_hr": False, "hr_scale": 2})) == (512, 768)


def test_non_finite_scores_and_count_mismatches_fail() -> None:
    images = batch(2)
    assert check_scores("s", images, [1, 2.5]) == [1.0, 2.5]
    with pytest.raises(EvaluationFailed, match="payload 'city' image 0 is inf"):
        check_scores("s", images, [1.0, float("inf")])
    with pytest.raises(EvaluationFailed, match="returned 1 scores for 2 images"):
        check_scores("s", images, [1.0])


def test_device_and_dtype_resolution(monkeypatch) -> None:
    import torch

    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ScorerError, match="not a device name"):
        resolve_device("gpu please")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ScorerError, match="CUDA is not available"):
        resolve_device("cuda:1")
    assert resolve_device("auto").type == "cpu"


def test_out_of_memory_detection_and_back_off() -> None:
    import torch

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate"
                                         " memory: you tried to allocate 8 GB"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Half but found Float"))
    seen = []

    def forward(start: int, stop: int) -> list[int]:
        seen.append(stop - start)
        if stop - start > 3:
            raise RuntimeError("CUDA out of memory")
        return list(range(start, stop))

    results, size = run_in_batches("s", [f"image {i}" for i in range(10)], 8, forward)
    assert results == list(range(10)) and size == 2 and seen == [8, 4, 2, 2, 2, 2, 2]
    with pytest.raises(EvaluationFailed, match="out of memory scoring image 0 even one image at a time"):
        run_in_batches("s", ["image 0"], 1, lambda a, b: (_ for _ in ()).throw(MemoryError()))


def test_combined_maps_each_scorer_range_onto_a_common_scale() -> None:
    images = batch(2)
    reward = FixedScorer("imagereward", [-2.0, 2.0], typical_range=(-2.0, 2.0))
    rating = FixedScorer("human", [10.0, 1.0], typical_range=(1.0, 10.0))
    distance = FixedScorer("distance", [0.0, 0.5], higher_is_better=False, typical_range=(0.0, 1.0))
    combined = CombinedScorer([(reward, 3.0), (rating, 1.0), (distance, 1.0, (0.0, 0.5))])
    assert combined.name == "combined(imagereward*3+human*1+distance*1)" and combined.higher_is_better
    # image 0: reward 0.0, rating 1.0, distance 1.0 -> (0 + 1 + 1) / 5; image 1: (3 + 0 + 0) / 5
    assert combined.score(images) == pytest.approx([0.4, 0.6])
    raw = CombinedScorer([(reward, 1.0), (distance, 1.0)], normalise="none")
    assert raw.score(images) == pytest.approx([-1.0, 0.75]) and raw.typical_range == (-1.5, 1.0)
    combined.unload()
    assert (reward.unloads, rating.unloads, distance.unloads) == (1, 1, 1)


def test_combined_scores_are_not_rescaled_per_batch() -> None:
    reward = FixedScorer("r", [0.5, 0.5], typical_range=(0.0, 1.0))
    assert CombinedScorer([(reward, 1.0)]).score(batch(2)) == [0.5, 0.5]  # a uniform batch keeps its level


def test_combined_rejects_bad_components_and_skips_zero_weights() -> None:
    with pytest.raises(ScorerError, match="at least one"):
        CombinedScorer([])
    with pytest.raises(ScorerError, match="weights must be >= 0"):
        CombinedScorer([(FixedScorer("a", [1.0]), -1.0)])
    with pytest.raises(ScorerError, match="no typical_range"):
        CombinedScorer([(FixedScorer("a", [1.0], typical_range=None), 1.0)])
    with pytest.raises(ScorerError, match="low < high"):
        CombinedScorer([(FixedScorer("a", [1.0]), 1.0, (1.0, 1.0))])
    idle = FixedScorer("idle", [1.0, 1.0])
    CombinedScorer([(FixedScorer("a", [1.0, 1.0]), 1.0), (idle, 0.0)]).score(batch(2))
    assert idle.calls == 0
    failing = FixedScorer("nan", [float("nan"), 0.0])
    with pytest.raises(EvaluationFailed, match="not a number"):
        CombinedScorer([(failing, 1.0)]).score(batch(2))


def test_registry_builds_scorers_by_name_with_settings(tmp_path) -> None:
    assert set(available_scorers()) == {"imagereward", "aesthetic", "clip", "blip", "reference", "human", "combined"}
    reward = make_scorer("imagereward", device="cpu", mapping="sigmoid", batch_size=4, download_root=str(tmp_path))
    assert isinstance(reward, Scorer) and not reward.loaded  # nothing loads before the first score
    assert (reward.settings.mapping, reward.batch_size, reward.typical_range[0] > 0) == ("sigmoid", 4, True)
    with pytest.raises(ScorerError, match="unknown scorer 'imagerewrad'; choose one of imagereward"):
        make_scorer("imagerewrad")
    with pytest.raises(ScorerError, match="mapping must be 'raw' or 'sigmoid'"):
        make_scorer("ImageReward", mapping="tanh")
    reference = make_scorer("reference", metric="neg_mse", references={("cat", 0): picture(1)})
    assert isinstance(reference, ReferenceScorer) and reference.name == "reference-neg_mse"
    human = make_scorer("human", rater=lambda request: [5.0] * len(request.images), timeout_s=30)
    assert isinstance(human, HumanScorer) and human.settings.timeout_s == 30
    both = make_scorer("combined", components=[(reference, 1.0), (("human", {"rater": human.rater}), 2.0, (1, 10))])
    assert isinstance(both, CombinedScorer) and both.name == "combined(reference-neg_mse*1+human*2)"
    with pytest.raises(ScorerError, match="a component is"):
        make_scorer("combined", components=["imagereward"])


def test_model_scorers_check_images_before_loading_anything() -> None:
    from lib_mbw.scorers import ModelScorer

    def never() -> None:
        raise AssertionError("the model must not load for images that cannot be scored")

    scorer = ModelScorer(never, device="cpu", dtype=None, batch_size=None)
    payload = Payload(name="nsfw", prompt="x", width=32, height=32)
    with pytest.raises(EvaluationFailed, match="model: payload 'nsfw' image 0 is all black"):
        scorer.score(generated(payload, [Image.new("RGB", (32, 32))]))
    assert scorer.score([]) == [] and not scorer.loaded


def test_out_of_memory_while_loading_is_a_failed_evaluation() -> None:
    import torch

    from lib_mbw.scorers import ModelScorer

    def too_big() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.70 GiB")

    with pytest.raises(EvaluationFailed, match="model: out of memory loading the model on cpu to score payload 'cat'"):
        ModelScorer(too_big, device="cpu", dtype=None, batch_size=None).score(batch(2))

    def broken() -> None:
        raise FileNotFoundError("weights.pt")

    with pytest.raises(FileNotFoundError):
        ModelScorer(broken, device="cpu", dtype=None, batch_size=None).score(batch(2))
