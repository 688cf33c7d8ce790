"""Block map and architecture detection on the real key lists and on tiny checkpoints."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from lib_mbw import blocks
from lib_mbw.blocks import BLOCKS, ModelArch, block_of_unet_key, detect_architecture, group_keys
from lib_mbw.errors import ArchitectureMismatchError, ModelFormatError, UnknownKeyError
from lib_mbw.keyspec import REAL_CONFIGS, SDXL_REFINER, checkpoint_layout, tiny_config

from .conftest import read_key_list

# Tensor counts per block of the real SD1.5 UNet (686 tensors in all), counted from sd-mecha's
# published sd1-ldm key list, independently of lib_mbw.keyspec.
SD1_TENSORS_PER_BLOCK = {
    "IN00": 2, "IN01": 36, "IN02": 36, "IN03": 2, "IN04": 38, "IN05": 36, "IN06": 2, "IN07": 38,
    "IN08": 36, "IN09": 2, "IN10": 10, "IN11": 10, "M00": 46,
    "OUT00": 12, "OUT01": 12, "OUT02": 14, "OUT03": 38, "OUT04": 38, "OUT05": 40, "OUT06": 38,
    "OUT07": 38, "OUT08": 40, "OUT09": 38, "OUT10": 38, "OUT11": 38, "TIME_EMBED": 4, "OUT": 4,
}


def test_canonical_order_has_27_named_blocks() -> None:
    assert len(BLOCKS) == 27 and len(set(BLOCKS)) == 27
    assert BLOCKS[:2] == ("IN00", "IN01") and BLOCKS[12] == "M00" and BLOCKS[-2:] == ("TIME_EMBED", "OUT")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_reference_key_list_matches_generated_layout(family: str) -> None:
    assert read_key_list(family) == checkpoint_layout(REAL_CONFIGS[family])


def test_sd1_real_keys_group_into_exact_blocks() -> None:
    shapes = read_key_list("sd1")
    arch = detect_architecture(shapes)
    assert arch == ModelArch("sd1", "base", "model.diffusion_model.")
    groups = group_keys(shapes, arch)
    assert {b: len(groups[b]) for b in BLOCKS} == SD1_TENSORS_PER_BLOCK
    assert sum(SD1_TENSORS_PER_BLOCK.values()) == 686
    assert len(groups["BASE"]) == 197 and len(groups["VAE"]) == 248 and len(groups["OTHER"]) == 12
    assert groups["TIME_EMBED"] == [f"model.diffusion_model.time_embed.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    assert groups["OUT"] == [f"model.diffusion_model.out.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]


def test_sdxl_real_keys_have_21_blocks_and_label_emb_in_time_embed() -> None:
    shapes = read_key_list("sdxl")
    arch = detect_architecture(shapes)
    assert arch.family == "sdxl" and len(arch.blocks) == 21
    assert arch.absent_blocks == ("IN09", "IN10", "IN11", "OUT09", "OUT10", "OUT11")
    groups = group_keys(shapes, arch)
    assert sum(len(groups[b]) for b in arch.blocks) == 1680
    assert all(groups[b] for b in arch.blocks), "every SDXL block holds tensors"
    assert "model.diffusion_model.label_emb.0.0.weight" in groups["TIME_EMBED"]
    assert len(groups["BASE"]) == 197 + (6 + 32 * 12)  # CLIP-L + OpenCLIP bigG tower


def test_sd2_is_told_from_sd1_by_linear_projections() -> None:
    assert detect_architecture(read_key_list("sd2")).family == "sd2"


@pytest.mark.parametrize(
    ("key", "family", "block"),
    [
        ("input_blocks.0.0.weight", "sd1", "IN00"),
        ("input_blocks.11.0.out_layers.3.bias", "sd1", "IN11"),
        ("middle_block.1.proj_in.weight", "sd1", "M00"),
        ("output_blocks.5.2.conv.weight", "sd1", "OUT05"),
        ("time_embed.0.weight", "sd1", "TIME_EMBED"),
        ("label_emb.0.2.bias", "sdxl", "TIME_EMBED"),
        ("out.2.weight", "sdxl", "OUT"),
        ("output_blocks.8.0.skip_connection.weight", "sdxl", "OUT08"),
    ],
)
def test_block_of_unet_key(key: str, family: str, block: str) -> None:
    assert block_of_unet_key(key, family) == block


def test_absent_sdxl_block_and_unknown_keys_are_errors() -> None:
    with pytest.raises(UnknownKeyError, match="IN09"):
        block_of_unet_key("input_blocks.9.0.in_layers.0.weight", "sdxl")
    shapes = dict(read_key_list("sd1"))
    shapes["model.diffusion_model.extra_adapter.weight"] = (4,)
    arch = detect_architecture(shapes)
    with pytest.raises(UnknownKeyError, match="extra_adapter"):
        group_keys(shapes, arch)


def _with(shapes: dict, **changes: tuple) -> dict:
    out = dict(shapes)
    for key, shape in changes.items():
        out[key.replace("__", ".")] = shape
    return out


def test_variants_are_detected_from_input_channels() -> None:
    shapes = read_key_list("sd1")
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert detect_architecture({**shapes, key: (320, 9, 3, 3)}).variant == "inpainting"
    assert detect_architecture({**shapes, key: (320, 8, 3, 3)}).variant == "instruct-pix2pix"
    with pytest.raises(ModelFormatError, match="5 input channels"):
        detect_architecture({**shapes, key: (320, 5, 3, 3)})


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"lora_unet_down_blocks_0.lora_up.weight": (4, 4)}, "LoRA"),
        ({"model.diffusion_model.joint_blocks.0.x.weight": (4,)}, "Stable Diffusion 3"),
        ({"double_blocks.0.img_attn.qkv.weight": (4,)}, "Flux"),
        ({"first_stage_model.encoder.conv_in.weight": (4,)}, "no UNet keys"),
        ({"down_blocks.0.resnets.0.conv1.weight": (4,)}, "diffusers-format"),
    ],
)
def test_unsupported_files_are_named(shapes: dict, message: str) -> None:
    with pytest.raises(ModelFormatError, match=message):
        detect_architecture(shapes, source="x.safetensors")


def test_sdxl_refiner_is_refused() -> None:
    with pytest.raises(ModelFormatError, match="refiner"):
        detect_architecture(checkpoint_layout(SDXL_REFINER))


def test_mismatched_pair_is_refused() -> None:
    sd1 = detect_architecture(read_key_list("sd1"))
    sdxl = detect_architecture(read_key_list("sdxl"))
    with pytest.raises(ArchitectureMismatchError, match="SD1.x.*SDXL"):
        blocks.check_same_architecture(sd1, sdxl)
    inpaint = ModelArch("sd1", "inpainting")
    with pytest.raises(ArchitectureMismatchError, match="inpainting"):
        blocks.check_same_architecture(sd1, inpaint)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_checkpoints_have_real_structure(family: str, tiny_checkpoints: dict) -> None:
    path, _ = tiny_checkpoints[family]
    with safe_open(str(path), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    arch = detect_architecture(shapes)
    assert arch.family == family
    real = {k for k in checkpoint_layout(REAL_CONFIGS[family]) if k.startswith(arch.unet_prefix)}
    tiny_unet = {k for k in shapes if k.startswith(arch.unet_prefix)}
    # Tiny models keep every block and layer type; only transformer depth is cut to 1.
    assert {block_of_unet_key(k[len(arch.unet_prefix):], family) for k in tiny_unet} == set(arch.blocks)
    assert tiny_unet <= real
    assert len(tiny_config(family).unet.channel_mult) == len(REAL_CONFIGS[family].unet.channel_mult)
