"""A block mix of 3 models inside the (fake) WebUI, on the real ``RuntimeMerger``: exact, restored, resynced, searched.

Model 1 is the WebUI's loaded checkpoint; the others come from its
checkpoint list. Both flavours (A1111, Forge) run every test.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from lib_mbw.blocks import block_of_unet_key
from lib_mbw.generators.webui import CheckpointChangedError, WebUIGenerator
from lib_mbw.merge.mix import chain_mix
from lib_mbw.recipe_n import RecipeN
from tests.fake_webui.harness import FakeWebUI, unet_hash
from tests.test_webui_generator import change_checkpoint_setting
from tests.webui_support import checkpoint_unet, live_state, payload, reference_image

from lib_mbw.errors import EvaluationFailed

TITLES = ["a.safetensors", "b.safetensors", "c.safetensors"]
GRID = [i / 20 for i in range(21)]


@pytest.fixture(params=("a1111", "forge"))
def webui(request, tmp_path: Path):
    models = {"a.safetensors": 1, "b.safetensors": 2, "c.safetensors": 3, "d.safetensors": 4}
    fake = FakeWebUI(tmp_path, flavour=request.param, models=models, loaded="a.safetensors")
    yield fake
    fake.close()


@pytest.fixture
def host(webui):
    from lib_mbw.hosts.webui import WebUIHost

    return WebUIHost()  # the real runtime merger


def models_dir() -> Path:
    from modules import sd_models

    return Path(sd_models.model_path)


def mix_recipe(seed: int) -> RecipeN:
    rng = random.Random(seed)
    from lib_mbw.blocks import BLOCKS

    return RecipeN.from_chain(TITLES, {b: (rng.choice(GRID), rng.choice(GRID)) for b in BLOCKS})


def expected_mix(recipe: RecipeN) -> dict[str, torch.Tensor]:
    """The live UNet after applying ``recipe``: the chain of the three files' tensors, per key (``merge.mix``)."""
    tensors = [checkpoint_unet(models_dir() / title) for title in TITLES]
    out = {}
    for key, first in tensors[0].items():
        chain = recipe.chain_weights(block_of_unet_key(key))
        acc = torch.empty_like(first, dtype=torch.float32)
        out[key] = chain_mix([t[key] for t in tensors], chain, torch.empty_like(first), acc, torch.empty_like(acc))
    return out


def assert_live(webui, want: dict[str, torch.Tensor]) -> None:
    got = live_state(webui.unet())
    wrong = [k for k in want if not torch.equal(got[k], want[k])]
    assert not wrong, f"{len(wrong)} tensors differ, e.g. {wrong[:3]}"


def test_a_mix_on_the_loaded_model_is_exact_and_closing_gives_model_one_back(host, webui) -> None:
    from modules import sd_models

    webui.sd_model()
    before = unet_hash(webui.unet())
    loads = sd_models.load_count
    gen = host.make_mix_generator(TITLES, {})
    assert isinstance(gen, WebUIGenerator) and gen.more_models == ("c.safetensors",)
    with host.exclusive():
        first, second = mix_recipe(1), mix_recipe(2)
        gen.apply(first)
        assert sd_models.load_count == loads, "model 1 is already loaded: no reload"
        assert_live(webui, expected_mix(first))
        described = host.current_session().describe()
        assert described["more_models"] == ["c.safetensors"] and described["merged"]
        image = gen.generate(payload(batch_size=1))[0]
        assert image.image.tobytes() == reference_image(expected_mix(first), "a red fox", 7, 16).tobytes()
        gen.apply(second)
        assert_live(webui, expected_mix(second))
        gen.restore()
        assert unet_hash(webui.unet()) == before
        gen.apply(first)
    assert unet_hash(webui.unet()) == before, "the search's end (Stop, Interrupt, error) restores model 1 exactly"
    assert host.current_session() is None


def test_loras_and_a_reload_of_model_one_are_followed(host, webui) -> None:
    """A LoRA merged by a render is undone before each new mix; a reload of model 1 rebuilds the mix on it."""
    from tests.test_webui_host import _load_elsewhere

    webui.sd_model()
    before = unet_hash(webui.unet())
    gen = host.make_mix_generator(TITLES, {})
    lora = payload(prompt="a fox <lora:style:0.8>", batch_size=1)
    with host.exclusive():
        gen.apply(mix_recipe(5))
        _load_elsewhere(webui, "a.safetensors", forced=True)  # the WebUI reloads model 1 under the mix
        for seed in (3, 4, 4):
            recipe = mix_recipe(seed)
            gen.apply(recipe)
            assert_live(webui, expected_mix(recipe))
            got = gen.generate(lora)[0].image
            assert got.tobytes() == reference_image(expected_mix(recipe), "a fox ", 7, 16, loras=[("style", 0.8)]).tobytes()
    assert unet_hash(webui.unet()) == before


def test_a_checkpoint_loaded_mid_search_fails_that_evaluation_and_stops_the_next(host, webui) -> None:
    from lib_mbw.hosts.webui import checkpoint_of

    gen = host.make_mix_generator(TITLES, {})
    with host.exclusive():
        gen.apply(mix_recipe(6))
        change_checkpoint_setting(webui, "d.safetensors")
        with pytest.raises(EvaluationFailed, match=r"loaded d\.safetensors .* instead of the mix of a\.safetensors.*, b\.safetensors, c\.safetensors"):
            gen.generate(payload(batch_size=1))
        with pytest.raises(CheckpointChangedError, match="during the search, so the search stopped"):
            gen.apply(mix_recipe(7))
    assert Path(checkpoint_of(webui.sd_model()).filename).name == "d.safetensors", "the user's new choice is kept"
    want = checkpoint_unet(models_dir() / "d.safetensors")
    assert_live(webui, want)


def test_mix_choices_are_checked_and_the_memory_is_stated_before_the_search(host, webui) -> None:
    from lib_mbw.hosts.webui import ModelChoiceError
    from lib_mbw.runtime.multi import memory_cost_n

    with pytest.raises(ModelChoiceError, match="model A and model C are the same checkpoint"):
        host.make_mix_generator(["a.safetensors", "b.safetensors", "a.safetensors"], {})
    with pytest.raises(ModelChoiceError, match="model C: checkpoint 'nope' is not in the WebUI's list"):
        host.make_mix_generator(["a.safetensors", "b.safetensors", "nope"], {})
    webui.sd_model()
    before = unet_hash(webui.unet())
    plan = host.make_mix_generator(TITLES, {}).memory_plan()
    unet_bytes = sum(p.numel() * p.element_size() for p in webui.unet().parameters())
    assert plan.cost == memory_cost_n("device", 3, unet_bytes, element_bytes=4, on_accelerator=False)
    assert "beyond the loaded model" in plan.describe()
    assert host.current_session() is None and unet_hash(webui.unet()) == before, "stating the plan touches nothing"
    with host.exclusive():
        gen = host.make_mix_generator(TITLES, {})
        gen.apply(mix_recipe(8))
        assert host.current_session().merger.plan.cost == plan.cost, "the merger checks the numbers that were stated"


class BrightnessScorer:
    name = "brightness"
    higher_is_better = True

    def score(self, images):
        import numpy as np

        return [float(np.asarray(g.image, dtype=np.float64).mean()) for g in images]

    def unload(self) -> None:
        pass


def test_a_three_model_search_through_the_webui_host_writes_its_history(host, webui, tmp_path) -> None:
    from lib_mbw.search.history import RunHistory
    from lib_mbw.search.session import start_search
    from lib_mbw.search.settings import settings_from_dict

    webui.sd_model()
    before = unet_hash(webui.unet())
    folder = tmp_path / "payloads"
    folder.mkdir()
    (folder / "fox.json").write_text(json.dumps({"prompt": "a red fox", "steps": 4, "width": 16, "height": 16, "seed": 7,
                                                 "batch_size": 1}), encoding="utf-8")
    settings = settings_from_dict({
        "name": "webui-mix",
        "seed": 1,
        "models": {"a": str(models_dir() / "a.safetensors"), "b": str(models_dir() / "b.safetensors"),
                   "c": str(models_dir() / "c.safetensors"), "family": "sd1"},
        "payloads": {"folder": str(folder), "names": ["fox"], "wildcards": None},
        "stop": {"max_evaluations": 2, "patience": None},
        "init": {"random": 2},
        "rescore_top": 0,
        "history_dir": str(tmp_path / "history"),
        "output": {"merge": False, "save_images": False},
    }, "test settings")
    session = start_search(settings, host=host, generators=[host.make_mix_generator(TITLES, {})], scorer=BrightnessScorer())
    outcome = session.execute()
    assert not outcome.errors, outcome.errors
    assert outcome.result.evaluations == 4  # 2 per chain step
    history = RunHistory.open(session.run_dir)
    rows = [r for r in history.rows() if r.status == "ok"]
    assert history.n_models == 3 and len(rows) == 4 and all(isinstance(r.recipe, RecipeN) for r in rows)
    assert len({r.score for r in rows}) > 1, "different mixes render differently"
    manifest = json.loads((session.run_dir / "manifest.json").read_text())
    assert "beyond the loaded model" in manifest["runtime_memory"][0]
    assert unet_hash(webui.unet()) == before


def test_the_webui_tab_enables_models_c_to_e(webui) -> None:
    from modules import script_callbacks

    from lib_mbw.ui import actions
    from tests.test_webui_script import load_script

    script = load_script()
    assert actions.mix_unavailable(script.host) == ""
    (blocks, _title, _elem_id), = script_callbacks.ui_tabs_callback()
    assert not script_callbacks.errors
    by_id = {c.get("props", {}).get("elem_id"): c["props"] for c in blocks.get_config_file()["components"]}
    for letter in "cde":
        props = by_id[f"mbw-model-{letter}"]
        assert props.get("interactive") is not False and "c.safetensors" in str(props.get("choices")), letter
    assert "mbw-mix-note" not in by_id


def test_the_memory_is_stated_without_loading_a_model(host, webui) -> None:
    """The WebUI loads its model on first use: stating the plan must not be that use (it runs outside the queue)."""
    from modules import sd_models

    from lib_mbw.runtime.multi import memory_cost_n

    assert sd_models.model_data.sd_model is None
    loads = sd_models.load_count
    plan = host.make_mix_generator(TITLES, {}).memory_plan()
    assert sd_models.model_data.sd_model is None and sd_models.load_count == loads
    unet_bytes = sum(t.numel() * 4 for t in checkpoint_unet(models_dir() / "a.safetensors").values())  # the fake's dtype_unet: fp32
    assert plan.cost == memory_cost_n("device", 3, unet_bytes, element_bytes=4, on_accelerator=False)
