"""The UI for a mix of 3-5 models: the form's models C-E, the UNet view of shares, the app under gradio 3.41 and 4.40.

The in-process app tests run under this interpreter (gradio 3.41) and, from
``test_app_with_five_models_under_gradio_4``, under ``.venv-gradio4``
(skipped when that venv is missing, unless ``AUTO_MBW_REQUIRE_GRADIO4`` is set).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lib_mbw.blocks import BLOCKS
from lib_mbw.errors import MBWError
from lib_mbw.hosts.base import HostPaths
from lib_mbw.recipe_n import RecipeN
from lib_mbw.ui.form import FormValues, form_from_settings, settings_from_form

ROOT = Path(__file__).resolve().parents[1]
GRADIO4_PYTHON = ROOT / ".venv-gradio4" / "bin" / "python"
NAMES = [f"{letter}.safetensors" for letter in "ABCDE"]


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    payloads = tmp_path / "payloads"
    payloads.mkdir()
    (payloads / "house.json").write_text(json.dumps({"prompt": "a house", "seed": 3}))
    (tmp_path / "models").mkdir()
    for name in NAMES:
        (tmp_path / "models" / name).write_bytes(b"x")
    return HostPaths(payloads, payloads / "wildcards", tmp_path / "history", tmp_path / "models")


def build(form: FormValues, paths: HostPaths):
    def model_path(title: str) -> Path:
        path = paths.models / title
        if not path.is_file():
            raise MBWError(f"model {title!r} is not in {paths.models}")
        return path

    return settings_from_form(form, paths, model_path=model_path, generator="diffusers", family="sd1")


def five(**changes: Any) -> FormValues:
    form = FormValues(model_a="A.safetensors", model_b="B.safetensors", model_c="C.safetensors", model_d="D.safetensors",
                      model_e="E.safetensors", payload_names=["house"], max_evaluations=40, patience=12)
    for key, value in changes.items():
        setattr(form, key, value)
    return form


def test_form_with_five_models_gives_mix_settings_and_round_trips(paths: HostPaths) -> None:
    result = build(five(), paths)
    assert result.ok, result.errors
    s = result.settings
    assert s.models.listed() == [str(paths.models / n) for n in NAMES] and s.models.count == 5
    assert s.space.ranges == {} and s.space.frozen == {} and not s.space.search_base
    back = form_from_settings(s, title_of=lambda path: Path(path).name)
    assert (back.model_c, back.model_d, back.model_e) == ("C.safetensors", "D.safetensors", "E.safetensors")
    three = build(five(model_d="", model_e=None), paths)
    assert three.ok and three.settings.models.count == 3 and three.settings.models.d is None


def test_bad_mix_inputs_are_named_per_field(paths: HostPaths) -> None:
    errors = build(five(model_c="", model_e=None), paths).errors
    assert errors == {"model_d": "choose model c first; models are mixed in the order A, B, C, D, E"}
    errors = build(five(model_e="B.safetensors"), paths).errors
    assert errors["model_e"].startswith("is the same checkpoint as model b")
    grid = [[b, 0.0, 1.0, "", ""] for b in BLOCKS]
    grid[0][3] = 0.5
    errors = build(five(block_grid=grid, search_base=True, base_from="merge"), paths).errors
    assert errors["block_grid"].startswith("ranges, frozen weights and groups are for two models; a mix of 5")
    assert "searches the UNet only" in errors["search_base"]
    assert "text encoder from model A" in errors["base_from"]


def test_unet_view_shows_each_models_share_per_block() -> None:
    from lib_mbw.ui.views import unet_html

    models = ["A", "B", "C", "D", "E"]
    best = RecipeN.from_chain(models, {b: (0.5, 0.25, 0.2, 0.0) for b in BLOCKS})
    current = RecipeN.uniform(models)
    html = unet_html(current, best, "sdxl", title="mix")
    best_bars = re.findall(r'data-role="best" data-model="(\d)" data-share="([0-9.]+)"', html)
    present = 21  # SDXL blocks
    assert len(best_bars) == present * 5 and len(re.findall(r'data-role="current" data-model', html)) == present * 5
    assert best_bars[:5] == [("1", "0.3"), ("2", "0.3"), ("3", "0.2"), ("4", "0.2"), ("5", "0")]
    assert html.count("absent") == 6 and "5: E" in html and "<b>mix</b>" in html


def test_runs_tab_exports_a_mix_recipe_as_json_and_chain_lines(tmp_path: Path) -> None:
    from lib_mbw.recipe_n import read_recipe_n
    from lib_mbw.ui.outputs import ExportError, export_recipe, recipe_as

    recipe = RecipeN.from_chain(["a.safetensors", "b.safetensors", "c.safetensors"], {b: (0.5, 0.25) for b in BLOCKS})
    text, problems = recipe_as(recipe, "text", "sd1")
    assert not problems and read_recipe_n(text) == recipe
    with pytest.raises(ExportError, match="a 3-model recipe exports as json or text"):
        recipe_as(recipe, "preset", "sd1")
    result = export_recipe(recipe, "json", family="sd1", folder=tmp_path, stem="mix")
    assert [p.name for p in result.files] == ["mix.recipe.json", "mix.recipe.txt"]
    assert read_recipe_n(str(result.files[0])) == recipe == read_recipe_n(str(result.files[1]))


class TwoModelHost:
    """A host whose runtime merge takes two models (as the WebUI host): it has no ``make_mix_generator``."""

    name = "a1111"

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.paths = inner.paths

    def __getattr__(self, name: str) -> Any:
        if name == "make_mix_generator":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_in_process_app_has_models_c_to_e_and_disables_them_where_the_host_cannot_mix(tmp_path: Path) -> None:
    from lib_mbw.hosts.standalone import StandaloneHost
    from lib_mbw.ui import actions, build_ui

    paths = HostPaths(ROOT / "payloads", ROOT / "payloads" / "wildcards", tmp_path / "history", ROOT / "tests" / "data")
    host = StandaloneHost(paths.models, paths=paths)
    defaults = FormValues(model_c="x.safetensors", model_d="y.safetensors", model_e="z.safetensors")
    config = build_ui(host, defaults).get_config_file()
    by_id = {c.get("props", {}).get("elem_id"): c["props"] for c in config["components"]}
    for letter, value in zip("cde", ("x", "y", "z")):
        props = by_id[f"mbw-model-{letter}"]
        assert props["value"] == f"{value}.safetensors" and props.get("interactive") is not False
    assert "mbw-mix-note" not in by_id
    search = next(d for d in config["dependencies"] if d.get("api_name") == "auto_mbw_search")
    assert len(search["inputs"]) == len(FormValues().values())

    two = TwoModelHost(host)
    config = build_ui(two).get_config_file()
    by_id = {c.get("props", {}).get("elem_id"): c["props"] for c in config["components"]}
    assert all(by_id[f"mbw-model-{letter}"].get("interactive") is False for letter in "cde")
    assert "not available in this host" in by_id["mbw-mix-note"]["value"]
    result = actions.start_from_form(two, None, FormValues(model_a="A", model_b="B", model_c="C"))  # type: ignore[arg-type]
    assert not result.ok and "python -m lib_mbw search A B C" in result.errors["model_c"]


def test_app_with_five_models_under_gradio_4() -> None:
    if not GRADIO4_PYTHON.exists():
        if os.environ.get("AUTO_MBW_REQUIRE_GRADIO4"):
            pytest.fail(f"{GRADIO4_PYTHON} is missing; run: bash tools/setup.sh --test")
        pytest.skip(f"no gradio-4 venv at {GRADIO4_PYTHON} (bash tools/setup.sh --test makes it)")
    run = subprocess.run(
        [str(GRADIO4_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "in_process or unet_view"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
