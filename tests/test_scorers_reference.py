"""Reference similarity: metrics, where references come from, sizes, and every failure."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lib_mbw.errors import EvaluationFailed, OutputExistsError, ScorerError
from lib_mbw.payloads import Payload
from lib_mbw.scorers import (
    CLIPScorer,
    ReferenceScorer,
    load_references,
    make_scorer,
    references_from_images,
    save_references,
)
from tests.scorer_fixtures import batch, downloads, generated, offline_files, picture  # noqa: F401 - fixtures


def degraded(image: Image.Image, amount: float) -> Image.Image:
    """``image`` blended with noise: more ``amount``, less similar."""
    noise = np.random.default_rng(7).uniform(0, 255, (image.height, image.width, 3))
    mixed = (1 - amount) * np.asarray(image, dtype=np.float64) + amount * noise
    return Image.fromarray(mixed.astype(np.uint8), "RGB")


@pytest.mark.parametrize("metric", ["ssim", "neg_mse"])
def test_identical_images_score_best_and_similarity_falls_with_damage(metric) -> None:
    target = [picture(1, (64, 64)), picture(2, (64, 64))]
    payload = Payload(name="cat", prompt="a cat", width=64, height=64, batch_size=4)
    images = generated(payload, [target[0], degraded(target[0], 0.2), degraded(target[0], 0.6), target[1]])
    references = {("cat", i): target[0] for i in range(4)}
    scores = ReferenceScorer(references, metric=metric).score(images)
    assert scores[0] == pytest.approx(1.0 if metric == "ssim" else 0.0, abs=1e-6)
    assert scores[0] > scores[1] > scores[2] and scores[3] < scores[0]
    assert ReferenceScorer(references, metric=metric).score(images[::-1]) == pytest.approx(scores[::-1], abs=1e-6)


def test_ssim_sees_structure_that_mse_misses() -> None:
    target = picture(3, (64, 64))
    blurred = target.filter(ImageFilter.GaussianBlur(2))
    shifted = Image.fromarray(np.clip(np.asarray(target, dtype=np.int16) + 12, 0, 255).astype(np.uint8))
    payload = Payload(name="p", prompt="x", width=64, height=64, batch_size=2)
    images = generated(payload, [blurred, shifted])
    references = {("p", None): target}
    ssim = ReferenceScorer(references, "ssim").score(images)
    mse = ReferenceScorer(references, "neg_mse").score(images)
    assert ssim[1] > ssim[0]  # a brightness shift keeps the structure
    assert mse[0] > mse[1]  # ... but costs more squared error than a blur here


def test_folder_layout_round_trip(tmp_path) -> None:
    images = batch(4)
    paths = save_references(tmp_path / "refs", images)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        "refs/cat/0.png", "refs/cat/1.png", "refs/city/0.png", "refs/city/1.png"]
    assert not list((tmp_path / "refs").rglob("*.tmp"))
    with pytest.raises(OutputExistsError, match="refs/cat/0.png exists"):
        save_references(tmp_path / "refs", images[:1])
    picture(9).save(tmp_path / "refs" / "city.png")  # one image for every index of "city"
    found = load_references(tmp_path / "refs")
    assert set(found) == {("cat", 0), ("cat", 1), ("city", 0), ("city", 1), ("city", None)}
    scorer = ReferenceScorer.from_folder(tmp_path / "refs", metric="neg_mse")
    assert scorer.score(images) == pytest.approx([0.0] * 4, abs=1e-9)
    other = generated(replace(images[1].payload, batch_size=3), [picture(20 + i) for i in range(3)])
    only_city = ReferenceScorer({("city", None): picture(9)}, "neg_mse")
    assert scorer.score(other)[2] == pytest.approx(only_city.score(other)[2])


def test_reference_folder_mistakes_are_explained(tmp_path) -> None:
    with pytest.raises(ScorerError, match="does not exist"):
        load_references(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScorerError, match="has no images"):
        load_references(tmp_path / "empty")
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    picture(1).save(tmp_path / "bad" / "cat" / "first.png")
    with pytest.raises(ScorerError, match="name images in a payload folder by index"):
        load_references(tmp_path / "bad")
    with pytest.raises(ScorerError, match="metric must be one of ssim, neg_mse, clip"):
        ReferenceScorer({}, metric="psnr")
    with pytest.raises(ScorerError, match="needs a CLIP model"):
        ReferenceScorer({}, metric="clip")


def test_payload_extra_reference_file_folder_and_list(tmp_path) -> None:
    picture(1).save(tmp_path / "one.png")
    (tmp_path / "per-index").mkdir()
    for index in range(2):
        picture(10 + index).save(tmp_path / "per-index" / f"{index}.jpg")
    picture(21).save(tmp_path / "a.png")
    picture(22).save(tmp_path / "b.png")
    scorer = ReferenceScorer(metric="neg_mse", root=tmp_path)
    for given, expected in (
        ("one.png", [picture(1), picture(1)]),
        (str(tmp_path / "per-index"), [Image.open(tmp_path / "per-index" / f"{i}.jpg").convert("RGB") for i in (0, 1)]),
        (["a.png", "b.png"], [picture(21), picture(22)]),
    ):
        payload = Payload(name="p", prompt="x", width=64, height=64, batch_size=2, extra={"reference": given})
        scores = scorer.score(generated(payload, expected))
        assert scores == pytest.approx([0.0, 0.0], abs=1e-9)


def test_missing_and_unreadable_references_name_the_image(tmp_path) -> None:
    images = batch(2)
    with pytest.raises(ScorerError, match="no reference image for payload 'cat' image 0; add <folder>/cat/0.png"):
        ReferenceScorer({}).score(images)
    picture(1).save(tmp_path / "a.png")
    listed = Payload(name="p", prompt="x", width=64, height=64, batch_size=2, extra={"reference": ["a.png"]})
    with pytest.raises(ScorerError, match="lists 1 references, none for image 1"):
        ReferenceScorer(root=tmp_path).score(generated(listed, [picture(1), picture(2)]))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    broken = Payload(name="p", prompt="x", width=64, height=64, extra={"reference": "broken.png"})
    with pytest.raises(ScorerError, match="broken.png cannot be read as an image"):
        ReferenceScorer(root=tmp_path).score(generated(broken, [picture(1)]))
    gone = replace(broken, extra={"reference": "gone.png"})
    with pytest.raises(ScorerError, match="gone.png does not exist"):
        ReferenceScorer(root=tmp_path).score(generated(gone, [picture(1)]))
    (tmp_path / "folder").mkdir()
    in_folder = replace(broken, extra={"reference": "folder"})
    with pytest.raises(ScorerError, match="has no 0.png for image 0"):
        ReferenceScorer(root=tmp_path).score(generated(in_folder, [picture(1)]))


def test_reference_sizes_resize_same_aspect_and_refuse_others() -> None:
    target = picture(5, (64, 64))
    payload = Payload(name="p", prompt="x", width=64, height=64)
    large = target.resize((128, 128), Image.LANCZOS)
    close = ReferenceScorer({("p", 0): large}, "ssim").score(generated(payload, [target]))
    assert close[0] > 0.9
    with pytest.raises(ScorerError, match="is 128x96 but the generated image is 64x64"):
        ReferenceScorer({("p", 0): target.resize((128, 96))}, "ssim").score(generated(payload, [target]))


def test_bad_generated_images_fail_before_comparison() -> None:
    payload = Payload(name="p", prompt="x", width=64, height=64)
    black = generated(payload, [Image.new("RGB", (64, 64))])
    with pytest.raises(EvaluationFailed, match="reference-ssim: payload 'p' image 0 is all black"):
        ReferenceScorer({("p", 0): picture(1)}).score(black)


def test_clip_embedding_similarity(downloads) -> None:
    images = batch(4)
    references = references_from_images(images)
    clip = CLIPScorer()
    scorer = make_scorer("reference", metric="clip", references=references, clip=clip)
    scores = scorer.score(images)
    assert scores == pytest.approx([1.0] * 4, abs=1e-5)
    swapped = {key: references[("city", 0)] for key in references}
    others = ReferenceScorer(swapped, "clip", clip=clip).score(images)
    assert others[1] == pytest.approx(1.0, abs=1e-5) and max(others[0], others[2], others[3]) < 1.0 - 1e-4
    scorer.unload()
    assert not clip.loaded
