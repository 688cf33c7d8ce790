"""Tiny offline demo models: deterministic files, a real tokenizer, and images that give a search a signal."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lib_mbw.blocks import BLOCKS, ModelArch, group_keys
from lib_mbw.checkpoint import open_checkpoint
from lib_mbw.demo_models import DemoShape, demo_state_dicts, ensure_demo_models
from lib_mbw.errors import OutputExistsError
from lib_mbw.generators.diffusers import DiffusersGenerator, DiffusersOptions
from lib_mbw.generators.diffusers_files import config_folder, write_clip_tokenizer
from lib_mbw.payloads import Payload
from lib_mbw.recipe import Recipe
from tests.runtime_double import merger_factory

pytestmark = pytest.mark.usefixtures("single_cpu_thread")

PROMPTS = (
    "a photo of an astronaut riding a horse on mars",
    "masterpiece, best quality, 1girl, (blue eyes:1.2), <lora:style:0.8>",
    "Café crème brûlée,   don't STOP!! 12345 üñíçødé 日本語",
)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def distance(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def test_files_are_deterministic_and_in_webui_layout(demo_models, tmp_path) -> None:
    again = ensure_demo_models(tmp_path / "again", seed=0)
    assert sha256(again.model_a) == sha256(demo_models.model_a)
    assert sha256(again.model_b) == sha256(demo_models.model_b)
    other = demo_state_dicts(seed=1)[0]
    with safe_open(str(demo_models.model_a), "pt") as f:
        key = "model.diffusion_model.input_blocks.4.1.proj_in.weight"
        assert not torch.equal(f.get_tensor(key), other[key]), "another seed gives other weights"
    with open_checkpoint(demo_models.model_a) as ckpt:
        assert ckpt.arch == ModelArch("sd1", "base", "model.diffusion_model.")
        assert json.loads(ckpt.metadata["auto_mbw_demo"]) == {"model": "A", "seed": 0, "version": 1}


def test_a_and_b_differ_in_every_block_and_share_text_encoder_and_vae(demo_models) -> None:
    with open_checkpoint(demo_models.model_a) as a, open_checkpoint(demo_models.model_b) as b:
        groups = group_keys(a.shapes, a.arch)
        for block in BLOCKS:
            assert any(not torch.equal(a.get(k), b.get(k)) for k in groups[block]), block
        for key in groups["BASE"] + groups["VAE"]:
            assert torch.equal(a.get(key), b.get(key)), key


def test_folder_is_reused_rebuilt_for_new_settings_and_never_takes_foreign_folders(tmp_path) -> None:
    folder = tmp_path / "demo"
    first = ensure_demo_models(folder, seed=3)
    stamp = json.loads((folder / "demo.json").read_text())
    assert stamp["seed"] == 3 and stamp["format"] == "auto-mbw-demo"
    mtime, digest = first.model_a.stat().st_mtime_ns, sha256(first.model_a)
    assert ensure_demo_models(folder, seed=3) == first and first.model_a.stat().st_mtime_ns == mtime
    rebuilt = ensure_demo_models(folder, seed=3, shape=DemoShape(noise_gain=64.0))
    assert sha256(rebuilt.model_a) != digest
    assert json.loads((folder / "demo.json").read_text())["shape"]["noise_gain"] == 64.0
    assert [p.name for p in tmp_path.iterdir()] == ["demo"], "no temporary folders are left behind"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not an auto-MBW demo folder"):
        ensure_demo_models(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_tokenizer_files_tokenize_like_clip(demo_models, tmp_path) -> None:
    from clip.simple_tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    reference = SimpleTokenizer()
    tokenizer = CLIPTokenizer.from_pretrained(str(demo_models.config_dir / "tokenizer"))
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        assert ids[0] == 49406 and ids[-1] == 49407
        assert ids[1:-1] == reference.encode(prompt), prompt
    sd2 = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp_path / "tok2", pad_token="!")))
    assert sd2.pad_token_id == 0 and sd2("a cat").input_ids == tokenizer("a cat").input_ids


def test_real_architecture_config_folders_are_complete(tmp_path) -> None:
    for family, tokenizers in (("sd1", ["tokenizer"]), ("sd2", ["tokenizer"]), ("sdxl", ["tokenizer", "tokenizer_2"])):
        folder = config_folder(family, root=tmp_path)
        assert config_folder(family, root=tmp_path) == folder, "built once, then reused"
        for name in tokenizers:
            assert (folder / name / "vocab.json").is_file() and (folder / name / "merges.txt").is_file()
        for part in ("unet", "vae", "text_encoder"):
            assert (folder / part / "config.json").is_file()


@pytest.fixture(scope="module")
def generator(demo_models):
    with DiffusersGenerator(
        demo_models.model_a, demo_models.model_b,
        options=DiffusersOptions(config_dir=demo_models.config_dir), merger_factory=merger_factory(),
    ) as gen:
        yield gen


def render(generator, weight: float | Recipe, prompt: str = PROMPTS[0], seed: int = 1, steps: int = 4):
    generator.apply(weight if isinstance(weight, Recipe) else Recipe.uniform(weight))
    return generator.generate(Payload("demo", prompt, steps=steps, width=64, height=64, sampler="Euler", seed=seed))[0].image


def test_images_depend_on_model_and_prompt_and_are_colourful(generator) -> None:
    a, b = render(generator, 0.0), render(generator, 1.0)
    assert distance(a, b) > 25, "A and B are visibly different"
    assert distance(a, render(generator, 0.0, prompt=PROMPTS[1])) > 8, "the prompt changes the image"
    assert pixels(a).std() > 30 and pixels(a).reshape(-1, 3).std(axis=0).min() > 20, "colour patterns, not a flat image"
    generator.restore()


def test_images_change_smoothly_with_the_merge_weight(generator) -> None:
    weights = np.linspace(0.0, 1.0, 6)
    images = [render(generator, float(w)) for w in weights]
    generator.restore()
    from_a = [distance(images[0], image) for image in images]
    assert all(later > earlier for earlier, later in zip(from_a, from_a[1:])), f"moving away from A: {from_a}"
    steps = [distance(x, y) for x, y in zip(images, images[1:])]
    assert max(steps) < 0.5 * from_a[-1], f"no jumps: {steps} vs A-B {from_a[-1]}"


def test_every_block_but_the_time_embedding_changes_the_image(generator) -> None:
    base = render(generator, 0.0, steps=2)
    only = {block: Recipe({**{b: 0.0 for b in BLOCKS}, block: 1.0}) for block in BLOCKS}
    effects = {block: distance(base, render(generator, recipe, steps=2)) for block, recipe in only.items()}
    generator.restore()
    assert all(effect > 1.5 for block, effect in effects.items() if block != "TIME_EMBED"), effects
