"""The embedded demo end to end, small: real search, real outputs, exact restore."""

from __future__ import annotations

import csv
import hashlib
import re

import pytest
import torch
from PIL import Image

from lib_mbw.demo import DEMO_PROMPTS, DemoSettings, hidden_recipe, random_recipes, run_demo


@pytest.fixture(scope="module")
def demo_report(demo_models, tmp_path_factory, single_cpu_thread):
    settings = DemoSettings(
        evaluations=6,
        seed=0,
        strategy="RandomSearch",
        output=tmp_path_factory.mktemp("demo-run"),
        models=demo_models.folder,
        random_samples=2,
        quiet=True,
    )
    return run_demo(settings)


def test_demo_runs_a_recorded_search(demo_report) -> None:
    rows = list(csv.DictReader((demo_report.run_dir / "history.csv").open()))
    search = [r for r in rows if r["status"] == "ok"]
    assert len(search) == demo_report.evaluations == 6
    assert {f"payload:{name}" for name, _, _ in DEMO_PROMPTS} <= set(rows[0])
    assert all(0.0 < float(r["score"]) <= 1.0 for r in search)  # SSIM against the hidden recipe's renders
    assert rows[-1]["status"] == "selected"
    assert demo_report.hidden_score == pytest.approx(1.0)  # the hidden recipe re-renders its own references
    assert demo_report.returned_score == max(float(r["score"]) for r in search)


def test_demo_writes_valid_plots_images_and_recipe(demo_report) -> None:
    for name in ("convergence_plot", "weights_plot"):
        with Image.open(demo_report.outputs[name]) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert len(list(demo_report.outputs["images"].glob("*.png"))) == len(DEMO_PROMPTS)
    assert demo_report.outputs["recipe_json"].read_text().count("IN00") == 1


def test_demo_merged_model_verifies(demo_report) -> None:
    from lib_mbw.merge.verify import verify_file

    report = verify_file(demo_report.outputs["model"])
    assert report.identical and report.tensors > 600


def test_demo_gap_is_measured_from_random_recipes(demo_report) -> None:
    assert len(demo_report.random_scores) == 2
    assert demo_report.random_mean < demo_report.hidden_score
    expected = (demo_report.returned_score - demo_report.random_mean) / (demo_report.hidden_score - demo_report.random_mean)
    assert demo_report.gap_closed == pytest.approx(expected)


def test_hidden_and_random_recipes_are_seeded() -> None:
    assert hidden_recipe(3) == hidden_recipe(3) and hidden_recipe(3) != hidden_recipe(4)
    assert random_recipes(1, 3) == random_recipes(1, 3)
    assert all(w * 20 == round(w * 20) for w in hidden_recipe(5).weights.values())  # on the 21-level grid


def test_restore_leaves_model_a_bit_exact(demo_models, single_cpu_thread) -> None:
    from lib_mbw.generators.diffusers import DiffusersGenerator, DiffusersOptions

    def unet_hashes(generator) -> dict[str, str]:
        return {
            name: hashlib.sha256(p.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
            for name, p in generator.loaded.unet.named_parameters()
        }

    generator = DiffusersGenerator(demo_models.model_a, demo_models.model_b, options=DiffusersOptions(config_dir=demo_models.config_dir))
    try:
        before = unet_hashes(generator)
        for recipe in random_recipes(7, 5):
            generator.apply(recipe)
        assert unet_hashes(generator) != before
        generator.restore()
        assert unet_hashes(generator) == before
    finally:
        generator.close()


def test_demo_command_prints_the_gap_line(demo_models, tmp_path, capsys, single_cpu_thread) -> None:
    from lib_mbw.cli import main

    code = main(["demo", "--evaluations", "3", "--strategy", "RandomSearch", "--random-samples", "1", "--no-merge",
                 "--output", str(tmp_path), "--models", str(demo_models.folder), "--quiet"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"demo gap_closed=-?\d+\.\d{3} seconds=\d+\.\d", last)
