"""The diffusers backend: offline loading, the UNet key map, rendering payloads, merging through the runtime merger."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_mbw.blocks import BLOCKS
from lib_mbw.errors import GenerationInterrupted, ModelFormatError, PayloadError, PickleRefusedError
from lib_mbw.generators.base import Generator
from lib_mbw.generators.diffusers import (
    LDM_UNET_PREFIX,
    DiffusersGenerator,
    DiffusersOptions,
    GeneratorError,
    load_diffusers_folder,
    load_single_file,
    unet_key_map,
)
from lib_mbw.generators.diffusers_files import write_config_folder
from lib_mbw.generators.registry import UnknownGeneratorError, make_generator
from lib_mbw.keyspec import tiny_config
from lib_mbw.payloads import Payload
from lib_mbw.recipe import Recipe
from tests.runtime_double import merger_factory

pytestmark = pytest.mark.usefixtures("single_cpu_thread")

PROMPT = "a red cat sitting on a blue sofa"


def payload(**fields) -> Payload:
    values = dict(name="p", prompt=PROMPT, steps=3, width=64, height=64, sampler="Euler", seed=7, cfg_scale=7.0)
    values.update(fields)
    return Payload(**values)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def distance(a, b) -> float:
    """Mean absolute pixel difference (0-255)."""
    return float(np.abs(pixels(a) - pixels(b)).mean())


@pytest.fixture(scope="module")
def generator(demo_models):
    with DiffusersGenerator(
        demo_models.model_a, demo_models.model_b,
        options=DiffusersOptions(config_dir=demo_models.config_dir), merger_factory=merger_factory(),
    ) as gen:
        yield gen


@pytest.fixture(scope="module")
def tiny_loaded(tiny_checkpoints, tmp_path_factory):
    """Tiny SD2 and SDXL single files (random weights) loaded through their own config folders."""
    out = {}
    for family in ("sd2", "sdxl"):
        folder = write_config_folder(tiny_config(family), family, tmp_path_factory.mktemp(family) / "config")
        out[family] = (load_single_file(tiny_checkpoints[family][0], config_dir=folder), tiny_checkpoints[family][0])
    return out


def test_generator_satisfies_the_protocol(generator) -> None:
    assert isinstance(generator, Generator)
    assert generator.family == "sd1" and generator.name == "diffusers"


def test_loading_makes_no_network_connection(demo_models, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the diffusers backend tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    loaded = load_single_file(demo_models.model_a, config_dir=demo_models.config_dir)
    assert type(loaded.pipe).__name__ == "StableDiffusionPipeline"


# --- the key map ---


def _check_pure_rename(loaded, checkpoint: Path) -> None:
    tensors = load_file(str(checkpoint))
    params = dict(loaded.unet.named_parameters())
    assert set(loaded.key_map) == set(params)
    assert len(set(loaded.key_map.values())) == len(loaded.key_map), "one checkpoint key per parameter"
    unet_keys = {k[len(LDM_UNET_PREFIX):] for k in tensors if k.startswith(LDM_UNET_PREFIX)}
    assert set(loaded.key_map.values()) == unet_keys, "every checkpoint UNet key is used"
    for name, key in loaded.key_map.items():
        source = tensors[LDM_UNET_PREFIX + key]
        assert params[name].shape == source.shape, f"{name} <- {key} is reshaped"
        assert torch.equal(params[name].detach(), source), f"{name} does not hold {key}"


def test_sd1_key_map_is_a_pure_rename_of_every_unet_tensor(generator, demo_models) -> None:
    assert len(generator.key_map) == 686
    assert generator.key_map["conv_in.weight"] == "input_blocks.0.0.weight"
    assert generator.key_map["mid_block.attentions.0.proj_in.weight"] == "middle_block.1.proj_in.weight"
    assert generator.key_map["up_blocks.3.attentions.2.proj_out.bias"] == "output_blocks.11.1.proj_out.bias"
    _check_pure_rename(generator.loaded, demo_models.model_a)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_key_maps_are_pure_renames(tiny_loaded, family: str) -> None:
    loaded, path = tiny_loaded[family]
    assert loaded.family == family
    _check_pure_rename(loaded, path)
    if family == "sdxl":
        assert loaded.key_map["add_embedding.linear_1.weight"] == "label_emb.0.0.weight"


def test_key_map_refuses_a_checkpoint_that_does_not_fit_the_config(generator) -> None:
    keys = list(generator.key_map.values())
    with pytest.raises(ModelFormatError, match="get no checkpoint tensor"):
        unet_key_map(generator.pipe.unet.config, keys[:-4], generator.key_map)
    with pytest.raises(ModelFormatError, match="not used"):
        unet_key_map(generator.pipe.unet.config, keys + ["input_blocks.1.2.weight"], generator.key_map)


# --- rendering ---


def test_a_b_and_half_merge_give_different_deterministic_images(generator, demo_models) -> None:
    images = {}
    for weight in (0.0, 0.5, 1.0):
        generator.apply(Recipe.uniform(weight))
        first = generator.generate(payload())[0]
        again = generator.generate(payload())[0]
        assert np.array_equal(pixels(first.image), pixels(again.image)), "same seed, same image"
        images[weight] = first.image
    generator.restore()
    a, half, b = images[0.0], images[0.5], images[1.0]
    assert distance(a, b) > 20, "A and B make visibly different images"
    assert 5 < distance(a, half) < distance(a, b) and 5 < distance(half, b) < distance(a, b), "0.5 lies between A and B"
    assert np.array_equal(pixels(generator.generate(payload())[0].image), pixels(a)), "restore gives A's image back"

    with DiffusersGenerator(demo_models.model_b, options=DiffusersOptions(config_dir=demo_models.config_dir)) as only_b:
        assert distance(only_b.generate(payload())[0].image, b) < 0.5, "weight 1 everywhere renders model B"


def test_half_merge_matches_a_lerp_merged_checkpoint(generator, demo_models, tmp_path) -> None:
    a, b = load_file(str(demo_models.model_a)), load_file(str(demo_models.model_b))
    merged = {k: torch.lerp(a[k], b[k], 0.5) if k.startswith(LDM_UNET_PREFIX) else a[k] for k in a}
    path = tmp_path / "half.safetensors"
    save_file(merged, str(path))
    generator.apply(Recipe.uniform(0.5))
    through_merger = generator.generate(payload())[0].image
    generator.restore()
    with DiffusersGenerator(path, options=DiffusersOptions(config_dir=demo_models.config_dir)) as from_file:
        assert distance(from_file.generate(payload())[0].image, through_merger) < 0.5


def test_one_block_changes_the_image(generator) -> None:
    base = generator.generate(payload())[0].image
    generator.apply(Recipe({**{b: 0.0 for b in BLOCKS}, "OUT11": 1.0}))
    changed = generator.generate(payload())[0].image
    generator.restore()
    assert distance(base, changed) > 5


def test_batch_uses_seed_plus_index_and_reports_parameters(generator) -> None:
    batch = generator.generate(payload(batch_size=2, seed=40))
    assert [g.seed for g in batch] == [40, 41] and [g.index for g in batch] == [0, 1]
    single = generator.generate(payload(seed=41))[0]
    assert distance(batch[1].image, single.image) < 1.0, "image 1 of a batch is the image of seed + 1"
    assert distance(batch[0].image, batch[1].image) > 10
    params = batch[1].params
    assert params["seed"] == 41 and params["sampler"] == "Euler" and params["steps"] == 3
    assert params["backend"] == "diffusers" and params["model"] == "tiny-sd1-a.safetensors"
    assert batch[0].image.size == (64, 64) and batch[0].prompt == PROMPT


def test_prompt_sampler_and_clip_skip_change_the_image(generator) -> None:
    base = generator.generate(payload())[0].image
    assert distance(base, generator.generate(payload(prompt="a mountain lake at dawn"))[0].image) > 5
    assert distance(base, generator.generate(payload(sampler="DPM++ 2M Karras"))[0].image) > 1
    assert distance(base, generator.generate(payload(clip_skip=2))[0].image) > 1
    negative = generator.generate(payload(negative_prompt="blurry"))[0]
    assert negative.negative_prompt == "blurry" and distance(base, negative.image) > 1


def test_progress_is_reported_for_every_step(generator) -> None:
    seen: list[tuple[int, int]] = []
    generator.generate(payload(steps=4), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_interrupt_stops_after_the_current_step(generator) -> None:
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            generator.interrupt()  # as a stop button on another thread would

    with pytest.raises(GenerationInterrupted, match="interrupted"):
        generator.generate(payload(steps=6), progress=progress)
    assert seen == [1, 2], "the remaining steps are skipped"
    assert len(generator.generate(payload(steps=1))) == 1, "the next generation runs normally"


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"width": 60}, "width"), ({"height": 0}, "height"), ({"steps": 0}, "steps"), ({"clip_skip": 5}, "clip_skip"),
     ({"sampler": "DPM fast"}, "sampler")],
)
def test_bad_payload_fields_are_named(generator, fields, field: str) -> None:
    with pytest.raises(PayloadError, match=field):
        generator.generate(payload(**fields))


# --- SD2 / SDXL ---


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_tiny_models_render(tiny_loaded, tiny_checkpoints, family: str) -> None:
    loaded, path = tiny_loaded[family]
    gen = DiffusersGenerator(path, tiny_checkpoints[family][1], loaded=loaded, merger_factory=merger_factory())
    image = gen.generate(payload(steps=2))[0].image
    assert image.size == (64, 64)
    assert gen.apply(Recipe.uniform(1.0).for_family(family)) >= 0
    assert distance(image, gen.generate(payload(steps=2))[0].image) > 0
    gen.restore()


# --- files and options ---


def test_missing_corrupt_and_pickle_files_get_the_checkpoint_errors(demo_models, tmp_path) -> None:
    with pytest.raises(ModelFormatError, match="file not found"):
        load_single_file(tmp_path / "nope.safetensors", config_dir=demo_models.config_dir)
    truncated = tmp_path / "cut.safetensors"
    data = demo_models.model_a.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_single_file(truncated)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not really")
    with pytest.raises(PickleRefusedError):
        load_single_file(pickle)
    with pytest.raises(ModelFormatError, match="no model_index.json"):
        load_single_file(demo_models.model_a, config_dir=tmp_path)


def test_without_model_b_there_is_nothing_to_merge(demo_models) -> None:
    with DiffusersGenerator(demo_models.model_a, options=DiffusersOptions(config_dir=demo_models.config_dir)) as gen:
        assert len(gen.generate(payload(steps=1))) == 1
        with pytest.raises(GeneratorError, match="no model B"):
            gen.apply(Recipe.uniform(0.5))
    with pytest.raises(GeneratorError, match="closed"):
        gen.generate(payload())


def test_registry_builds_the_diffusers_generator_from_string_options(demo_models) -> None:
    gen = make_generator(
        "diffusers", model_a=str(demo_models.model_a), model_b=None,
        config_dir=str(demo_models.config_dir), device="cpu", dtype="fp32",
    )
    try:
        assert isinstance(gen, DiffusersGenerator) and gen.loaded.dtype == torch.float32
    finally:
        gen.close()
    with pytest.raises(GeneratorError, match="unknown diffusers option"):
        make_generator("diffusers", model_a=str(demo_models.model_a), colour="red")
    with pytest.raises(UnknownGeneratorError, match="inside the WebUI"):
        make_generator("webui", model_a="a", model_b="b")


def test_diffusers_folders_load_as_model_a_and_model_b(generator, demo_models, tmp_path) -> None:
    folder_a, folder_b = tmp_path / "a", tmp_path / "b"
    generator.pipe.save_pretrained(folder_a)
    with DiffusersGenerator(demo_models.model_b, options=DiffusersOptions(config_dir=demo_models.config_dir)) as gen_b:
        gen_b.pipe.save_pretrained(folder_b)
        b_image = gen_b.generate(payload())[0].image
    loaded = load_diffusers_folder(folder_a)
    assert loaded.family == "sd1" and loaded.key_map == generator.key_map
    with DiffusersGenerator(folder_a, folder_b, merger_factory=merger_factory()) as from_folders:
        a_image = generator.generate(payload())[0].image
        assert distance(from_folders.generate(payload())[0].image, a_image) < 0.5
        from_folders.apply(Recipe.uniform(1.0))
        assert distance(from_folders.generate(payload())[0].image, b_image) < 0.5


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_real_architectures_map_every_published_unet_key(family: str, tmp_path) -> None:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from lib_mbw.generators.diffusers_files import config_folder, read_json
    from tests.conftest import read_key_list

    config = read_json(config_folder(family, root=tmp_path) / "unet" / "config.json")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    keys = [k[len(LDM_UNET_PREFIX):] for k in read_key_list(family) if k.startswith(LDM_UNET_PREFIX)]
    params = dict(unet.named_parameters())
    key_map = unet_key_map(config, keys, params)
    assert len(key_map) == len(params) == len(keys) == {"sd1": 686, "sd2": 686, "sdxl": 1680}[family]
    shapes = read_key_list(family)
    for name, key in key_map.items():
        assert tuple(params[name].shape) == shapes[LDM_UNET_PREFIX + key], f"{name} <- {key}"


def test_checkpoint_that_does_not_fit_the_config_is_a_clear_error(demo_models, tmp_path) -> None:
    from lib_mbw.generators.diffusers_files import config_folder

    with pytest.raises(ModelFormatError, match="could not load it with the config"):
        load_single_file(demo_models.model_a, config_dir=config_folder("sd1", root=tmp_path))
