"""The search form: values -> SearchSettings with a message per field, the block grid, and back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_mbw.blocks import BLOCKS
from lib_mbw.errors import MBWError
from lib_mbw.hosts.base import HostPaths
from lib_mbw.ui.form import (
    FORM_FIELDS,
    FormValues,
    block_grid_from_space,
    default_block_grid,
    form_from_settings,
    parse_block_grid,
    settings_from_form,
)


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    payloads = tmp_path / "payloads"
    payloads.mkdir()
    (payloads / "house.json").write_text(json.dumps({"prompt": "a house", "seed": 3}))
    (payloads / "tree.json").write_text(json.dumps({"prompt": "a tree", "seed": 4}))
    (tmp_path / "models").mkdir()
    for name in ("A.safetensors", "B.safetensors"):
        (tmp_path / "models" / name).write_bytes(b"x")
    return HostPaths(payloads, payloads / "wildcards", tmp_path / "history", tmp_path / "models")


def resolver(paths: HostPaths):
    def model_path(title: str) -> Path:
        path = paths.models / title
        if not path.is_file():
            raise MBWError(f"model {title!r} is not in {paths.models}")
        return path

    return model_path


def build(form: FormValues, paths: HostPaths, family: str | None = "sd1"):
    return settings_from_form(form, paths, model_path=resolver(paths), generator="stripes", family=family)


def good_form(**changes) -> FormValues:
    form = FormValues(model_a="A.safetensors", model_b="B.safetensors", payload_names=["house"], strategy="random",
                      max_evaluations=40, patience=12, scorer="imagereward")
    for key, value in changes.items():
        setattr(form, key, value)
    return form


def test_valid_form_gives_settings_with_files_and_host_folders(paths: HostPaths) -> None:
    form = good_form(max_minutes=30, target_score="0.9", abandon_margin="0.5", generator_options='{"device": "cpu"}')
    result = build(form, paths)
    assert result.ok, result.errors
    s = result.settings
    assert s.models.a == str(paths.models / "A.safetensors") and s.models.family == "sd1"
    assert s.payloads.folder == str(paths.payloads) and s.payloads.names == ["house"]
    assert s.history_dir == str(paths.history)
    assert (s.stop.max_evaluations, s.stop.patience, s.stop.max_minutes, s.stop.target_score) == (40, 12, 30.0, 0.9)
    assert s.abandon.margin == 0.5 and s.abandon.after is None
    assert s.generator.name == "stripes" and s.generator.options == {"device": "cpu"}
    assert s.output.model is None and not s.output.merge


def test_zero_means_off_for_patience_and_time_budget(paths: HostPaths) -> None:
    s = build(good_form(patience=0, max_minutes=0), paths).settings
    assert s.stop.patience is None and s.stop.max_minutes is None


def test_every_bad_field_gets_its_own_message_in_its_section(paths: HostPaths) -> None:
    form = good_form(model_b="A.safetensors", max_evaluations=0, levels=1.5, strategy_options="{oops", tally_trim=0.7,
                     payload_names=["house", "ghost"], warm_start_paths="nowhere/run", initial_recipe="1,2,3")
    result = build(form, paths)
    assert not result.ok and result.settings is None
    errors = result.errors
    assert "same checkpoint" in errors["model_b"]
    assert "≥ 1" in errors["max_evaluations"]
    assert "whole number between 2 and 1001" in errors["levels"]
    assert "JSON object" in errors["strategy_options"]
    assert "0.49" in errors["tally_trim"]
    assert "ghost" in errors["payload_names"]
    assert "nowhere/run" in errors["warm_start_paths"]
    assert "initial_recipe" in errors
    sections = result.section_messages()
    assert "max evaluations" in sections["search"] and "model b" in sections["models"]
    assert "tally trim" in sections["scoring"] and sections["output"] == ""


def test_missing_model_and_unknown_model_are_reported(paths: HostPaths) -> None:
    result = build(good_form(model_a=None, model_b="C.safetensors"), paths)
    assert result.errors["model_a"] == "choose a checkpoint"
    assert "C.safetensors" in result.errors["model_b"]


def test_human_scorer_options_come_from_the_rating_fields(paths: HostPaths) -> None:
    result = build(good_form(scorer="human", human_low=0, human_high=5, human_timeout="60", human_auto_weight=0.25,
                             human_auto_scorer="imagereward"), paths)
    assert result.ok, result.errors
    assert result.settings.scorer.options == {"low": 0, "high": 5, "timeout_s": 60.0, "on_missing": "fail",
                                              "auto_weight": 0.25, "auto": "imagereward"}
    mixed_without_scorer = build(good_form(scorer="human", human_auto_weight=0.5), paths)
    assert "automatic scorer" in mixed_without_scorer.errors["human_auto_scorer"]
    upside_down = build(good_form(scorer="human", human_low=5, human_high=5), paths)
    assert "above the lowest" in upside_down.errors["human_high"]


def test_merge_output_goes_to_the_models_folder_and_never_over_a_file_silently(paths: HostPaths) -> None:
    s = build(good_form(merge_when_done=True), paths).settings
    assert s.output.model == str(paths.models) and s.output.merge
    named = build(good_form(merge_when_done=True, output_name="my merge"), paths).settings
    assert named.output.model == str(paths.models / "my merge.safetensors")
    taken = build(good_form(merge_when_done=True, output_name="A"), paths)
    assert "exists" in taken.errors["output_name"]
    assert build(good_form(merge_when_done=True, output_name="A", overwrite=True), paths).ok
    traversal = build(good_form(merge_when_done=True, output_name="../evil"), paths)
    assert "letters, digits" in traversal.errors["output_name"]


def test_block_grid_freeze_range_and_groups() -> None:
    grid = default_block_grid()
    rows = {row[0]: row for row in grid}
    rows["IN00"][3] = "0.3"
    rows["OUT11"][1], rows["OUT11"][2] = 0.2, 0.6
    rows["IN01"][4] = rows["IN02"][4] = "g"
    space, problems = parse_block_grid(grid, "sd1")
    assert problems == []
    assert space.frozen == {"IN00": 0.3}
    assert space.ranges == {"OUT11": [0.2, 0.6]}
    assert space.groups == [["IN01", "IN02"]]
    assert parse_block_grid(block_grid_from_space(space.ranges, space.frozen, space.groups), "sd1")[0] == space


def test_block_grid_problems_name_the_block() -> None:
    grid = default_block_grid()
    rows = {row[0]: row for row in grid}
    rows["IN00"][3] = "1.5"
    rows["IN03"][1], rows["IN03"][2] = 0.8, 0.2
    rows["M00"][4] = "alone"
    rows["IN10"][3] = "0.5"  # SDXL has no IN10
    rows["IN04"][3], rows["IN04"][4] = "0.5", "g2"
    _, problems = parse_block_grid(grid, "sdxl")
    text = " | ".join(problems)
    assert "IN00: freeze must be a weight between 0 and 1" in text
    assert "IN03: min and max" in text
    assert "group 'alone' has only M00" in text
    assert "IN10 does not exist on sdxl" in text
    assert "IN04: a frozen block has no range or group" in text


def test_block_grid_accepts_the_shapes_gradio_sends() -> None:
    rows = default_block_grid()
    rows[0][3] = 0.5
    assert parse_block_grid({"headers": ["block"], "data": rows})[0].frozen == {"IN00": 0.5}
    assert len(rows) == len(BLOCKS)


def test_form_round_trips_through_settings(paths: HostPaths) -> None:
    form = good_form(scorer="human", human_low=1, human_high=7, max_minutes=15, abandon_after="2", abandon_margin="0.3",
                     strategy_options='{"x": 1}', merge_when_done=True, output_name="merged")
    grid = default_block_grid()
    grid[5][3] = 0.25
    form.block_grid = grid
    settings = build(form, paths).settings
    back = form_from_settings(settings, title_of=lambda path: Path(path).name)
    again = build(back, paths).settings
    assert again.to_dict() == settings.to_dict()


def test_form_values_follow_the_field_order() -> None:
    form = good_form(run_name="x")
    assert FormValues.from_values(form.values()) == form
    assert FORM_FIELDS[0] == "model_a" and len(FORM_FIELDS) == len(set(FORM_FIELDS))
    with pytest.raises(ValueError):
        FormValues.from_values([1, 2])
