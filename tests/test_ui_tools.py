"""The UI's payload manager, past runs, recipe export and merge, and the standalone host (no server)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lib_mbw.blocks import BLOCKS
from lib_mbw.errors import MBWError, OutputExistsError, PayloadError
from lib_mbw.hosts.base import HostPaths
from lib_mbw.hosts.standalone import ModelNotFoundError, StandaloneHost
from lib_mbw.recipe import Recipe, from_positional
from lib_mbw.search.history import HistoryRow, RunHistory, write_manifest
from lib_mbw.search.settings import SearchSettings
from lib_mbw.ui import payload_editor as pe
from lib_mbw.ui.outputs import ExportError, export_recipe, merge_recipe, merged_model_path
from lib_mbw.ui.runs import list_runs, load_run, run_overview

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- payload manager


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    payloads = tmp_path / "payloads"
    (payloads / "wildcards").mkdir(parents=True)
    (payloads / "wildcards" / "color.txt").write_text("red\ngreen\nblue\n")
    (payloads / "house.json").write_text(json.dumps({"prompt": "a __color__ house", "seed": 3, "sampler_name": "DPM++ 2M", "enable_hr": False}))
    (payloads / "broken.json").write_text('{"prompt": "x", "steps": 0}')
    return payloads


def test_payload_table_lists_problems_by_file_and_field(folder: Path) -> None:
    rows = {row[0]: row for row in pe.payload_table(folder)}
    assert rows["house"][1] == "a __color__ house" and rows["house"][3] == ""
    assert "broken.json" in rows["broken"][3] and "steps must be an integer" in rows["broken"][3]


def test_edit_save_keeps_extra_fields_and_refuses_to_overwrite(folder: Path) -> None:
    fields = pe.load_for_edit(folder, "house")
    assert fields.sampler == "DPM++ 2M" and json.loads(fields.extra) == {"enable_hr": False}
    fields.steps = 30.0  # number inputs give floats
    with pytest.raises(PayloadError, match="replace existing"):
        pe.save_from_fields(folder, fields, overwrite=False)
    assert "replaced" in pe.save_from_fields(folder, fields, overwrite=True)
    saved = json.loads((folder / "house.json").read_text())
    assert saved["steps"] == 30 and saved["enable_hr"] is False and saved["sampler"] == "DPM++ 2M"
    fields.name, fields.width = "wide", 500
    with pytest.raises(PayloadError, match="width must be a multiple of 8"):
        pe.save_from_fields(folder, fields, overwrite=False)
    assert not (folder / "wide.json").exists()
    fields.name = "../escape"
    with pytest.raises(PayloadError, match="not allowed"):
        pe.save_from_fields(folder, fields, overwrite=True)


def test_duplicate_delete_and_preview(folder: Path) -> None:
    assert "copied" in pe.duplicate(folder, "house", "house2")
    with pytest.raises(MBWError):
        pe.duplicate(folder, "house", "house2")
    with pytest.raises(PayloadError, match="yes, delete"):
        pe.delete(folder, "house2", confirmed=False)
    pe.delete(folder, "house2", confirmed=True)
    assert not (folder / "house2.json").exists()
    fields = pe.load_for_edit(folder, "house")
    lines = pe.preview(fields, folder, folder / "wildcards", count=4).splitlines()
    assert len(lines) == 4 and all(any(c in line for c in ("red", "green", "blue")) for line in lines)
    fields.prompt = "a __size__ house"
    with pytest.raises(PayloadError, match="size.txt"):
        pe.preview(fields, folder, folder / "wildcards")


def test_payload_weights_are_saved_into_the_files(folder: Path) -> None:
    assert pe.weight_table(folder, ["house"]) == [["house", 1.0]]
    assert pe.save_weights(folder, {"data": [["house", 2.5]]}) == "saved weights: house = 2.5"
    assert json.loads((folder / "house.json").read_text())["weight"] == 2.5
    with pytest.raises(PayloadError, match="weight must be a number"):
        pe.save_weights(folder, [["house", "lots"]])
    with pytest.raises(PayloadError, match="weight"):
        pe.save_weights(folder, [["house", -1]])


# --------------------------------------------------------------------------- past runs


def make_run(history: Path, name: str, scores: list[float], *, finished: bool) -> Path:
    folder = history / name
    folder.mkdir(parents=True)
    settings = SearchSettings(name=name)
    settings.models.a, settings.models.b = "/m/A.safetensors", "/m/B.safetensors"
    run = RunHistory.create(folder, BLOCKS, ["house"])
    for index, score in enumerate(scores):
        run.append(HistoryRow(index, "ok", "optimizer", Recipe.uniform(index / 10), score=score, payload_scores={"house": score}))
    manifest = {"format": "auto-mbw-run", "run_id": name, "created": "2024-01-01T00:00:00", "settings": settings.to_dict(), "family": "sd1",
                "models": {"a": {"name": "A.safetensors"}, "b": {"name": "B.safetensors"}}, "scorer": {"name": "x", "higher_is_better": True}}
    if finished:
        run.append(HistoryRow(len(scores), "selected", "final", Recipe.uniform(0.1), score=0.55, reason="best mean"))
        manifest["result"] = {"stop_reason": "max_evaluations", "stop_message": "reached 3 evaluations"}
        (folder / "best_images").mkdir()
        from PIL import Image

        Image.new("RGB", (8, 8)).save(folder / "best_images" / "house-0-seed3.png")
    run.close()
    write_manifest(folder, manifest)
    return folder


def test_past_runs_are_listed_newest_first_with_their_state(tmp_path: Path) -> None:
    make_run(tmp_path, "20240101-000000-old-aaaaaa", [0.1, 0.6, 0.3], finished=True)
    make_run(tmp_path, "20240102-000000-new-bbbbbb", [0.2, 0.4], finished=False)
    (tmp_path / "not-a-run").mkdir()
    runs = list_runs(tmp_path)
    assert [r.run_id for r in runs] == ["20240102-000000-new-bbbbbb", "20240101-000000-old-aaaaaa"]
    assert runs[0].state == "incomplete (resumable)" and runs[0].best_score == 0.4 and runs[0].evaluations == 2
    assert runs[1].state == "finished" and runs[1].best_score == 0.55 and runs[1].models == "A.safetensors × B.safetensors"


def test_a_past_run_in_detail(tmp_path: Path) -> None:
    folder = make_run(tmp_path, "20240101-000000-old-aaaaaa", [0.1, 0.6, 0.3], finished=True)
    details = load_run(folder)
    assert details.recipe == Recipe.uniform(0.1) and details.score == 0.55 and details.reason == "best mean"
    assert [caption for _, caption in details.best_images] == ["house-0-seed3"]
    assert "reached 3 evaluations" in run_overview(details)
    incomplete = load_run(make_run(tmp_path, "20240103-000000-x-cccccc", [0.2, 0.7, 0.1], finished=False))
    assert incomplete.recipe == Recipe.uniform(0.1) and incomplete.score == 0.7 and "best observed so far" in incomplete.reason


def test_reading_a_live_history_never_changes_it(tmp_path: Path) -> None:
    folder = make_run(tmp_path, "20240101-000000-live-dddddd", [0.1, 0.2], finished=False)
    path = folder / "history.csv"
    with open(path, "a") as handle:
        handle.write("2,2024,ok,optimizer,0.3")  # a line being written right now
    before = path.read_bytes()
    assert load_run(folder).score == 0.2
    assert path.read_bytes() == before


# --------------------------------------------------------------------------- export and merge


def test_export_writes_every_format_next_to_the_run_without_overwriting(tmp_path: Path) -> None:
    recipe = from_positional([(i % 21) / 20 for i in range(27)])
    first = export_recipe(recipe, "rt", family="sd1", folder=tmp_path / "exports", stem="run-1", score=0.5, reason="best")
    assert [p.name for p in first.files] == ["run-1.recipe.json", "run-1.recipe.txt", "run-1.rt.txt"]
    assert from_positional(first.text, "rt") == recipe
    second = export_recipe(recipe, "rt", family="sd1", folder=tmp_path / "exports", stem="run-1")
    assert [p.name for p in second.files] == ["run-1-2.recipe.json", "run-1-2.recipe.txt", "run-1-2.rt.txt"]
    lossy = export_recipe(recipe, "preset", family="sd1", folder=tmp_path, stem="p")
    assert lossy.warnings and "TIME_EMBED" in " ".join(lossy.warnings)
    with pytest.raises(ExportError, match="no recipe"):
        export_recipe(None, "json", family="sd1", folder=tmp_path)


def test_merge_names_and_refusals(tmp_path: Path) -> None:
    settings = SearchSettings()
    settings.models.a, settings.models.b = "/m/anime.safetensors", "/m/real.safetensors"
    assert merged_model_path(settings, "20240101-000000-s-abc123", tmp_path).name == "anime-x-real-abc123.safetensors"
    assert merged_model_path(settings, "r", tmp_path, "mine.safetensors").name == "mine.safetensors"
    with pytest.raises(ExportError, match="letters, digits"):
        merged_model_path(settings, "r", tmp_path, "../up")
    (tmp_path / "taken.safetensors").write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        merge_recipe(Recipe.uniform(0.5), settings, tmp_path / "taken.safetensors")
    with pytest.raises(ExportError, match="no recipe"):
        merge_recipe(None, settings, tmp_path / "new.safetensors")


# --------------------------------------------------------------------------- standalone host and CLI


def test_standalone_host_lists_safetensors_and_diffusers_folders(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "A.safetensors").write_bytes(b"x")
    (tmp_path / "sub" / "B.safetensors").write_bytes(b"x")
    (tmp_path / "old.ckpt").write_bytes(b"x")
    (tmp_path / "pipe" / "unet").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (tmp_path / "config-only" / "unet").mkdir(parents=True)  # like the demo's config folder: no weights, no model
    (tmp_path / "config-only" / "model_index.json").write_text("{}")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "C.safetensors").write_bytes(b"x")
    host = StandaloneHost(tmp_path)
    assert host.list_models() == ["A.safetensors", "pipe", "sub/B.safetensors"]
    assert host.model_path("sub/B.safetensors") == tmp_path / "sub" / "B.safetensors"
    for bad in ("old.ckpt", "../A.safetensors", "/etc/passwd", ""):
        with pytest.raises(ModelNotFoundError):
            host.model_path(bad)
    with host.exclusive():
        pass
    assert host.paths.models == tmp_path and host.name == "standalone"


def test_standalone_host_makes_generators_by_spec(tmp_path: Path) -> None:
    (tmp_path / "A.safetensors").write_bytes(b"x")
    (tmp_path / "B.safetensors").write_bytes(b"x")
    host = StandaloneHost(tmp_path, generator="tests.ui_backend:make_generator", generator_options={"delay": 0.5})
    generator = host.make_generator("A.safetensors", "B.safetensors", {"family": "sdxl"})
    assert generator.delay == 0.5 and generator.family == "sdxl"
    paths = HostPaths(tmp_path / "p", tmp_path / "w", tmp_path / "h", tmp_path)
    assert StandaloneHost(tmp_path, paths=paths).paths is paths


def test_ui_command_help_has_examples() -> None:
    result = subprocess.run([sys.executable, "-m", "lib_mbw", "ui", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "python -m lib_mbw ui --models" in result.stdout and "--generator-option" in result.stdout and "ui --demo" in result.stdout
    quiet = subprocess.run([sys.executable, "-c", "import sys, lib_mbw.cli as c; c.build_parser(); import lib_mbw.ui.form, lib_mbw.ui.controller; "
                            "print('gradio' in sys.modules)"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert quiet.stdout.strip() == "False", "the CLI and the UI's plain modules must not import gradio"


def test_merge_and_save_writes_a_checkpoint_the_host_hears_about(tmp_path: Path, tiny_checkpoints: dict[str, tuple[Path, Path]]) -> None:
    from lib_mbw.checkpoint import open_checkpoint

    a, b = tiny_checkpoints["sd1"]
    settings = SearchSettings()
    settings.models.a, settings.models.b = str(a), str(b)
    settings.output.dtype = "fp32"
    saved: list[Path] = []

    class Host:
        def model_saved(self, path: Path) -> None:
            saved.append(path)

    out = merged_model_path(settings, "20240101-000000-s-abc123", tmp_path)
    recipe = Recipe.uniform(0.25)
    assert merge_recipe(recipe, settings, out, run_id="20240101-000000-s-abc123", host=Host()) == out
    assert saved == [out]
    with open_checkpoint(out) as merged, open_checkpoint(a) as model_a, open_checkpoint(b) as model_b:
        key = next(k for k in merged.keys if k.startswith("model.diffusion_model.input_blocks.1."))
        expected = model_a.get(key) + 0.25 * (model_b.get(key) - model_a.get(key))
        assert (merged.get(key) - expected).abs().max().item() < 1e-6
        assert "20240101-000000-s-abc123" in merged.metadata.get("auto_mbw_search", "")
    with pytest.raises(OutputExistsError):
        merge_recipe(recipe, settings, out)
