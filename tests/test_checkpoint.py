"""Opening checkpoints: lazy reads, architecture, and every kind of bad file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lib_mbw.checkpoint import open_checkpoint, state_dict_checkpoint
from lib_mbw.errors import ModelFormatError, PickleRefusedError


def test_open_reads_header_then_tensors(tiny_checkpoints) -> None:
    path, _ = tiny_checkpoints["sd1"]
    with open_checkpoint(path) as ckpt:
        assert ckpt.arch.family == "sd1"
        key = "model.diffusion_model.out.2.weight"
        assert ckpt.shapes[key] == (4, 32, 3, 3) and ckpt.dtypes[key] == torch.float32
        tensor = ckpt.get(key, dtype=torch.float16)
        assert tensor.dtype == torch.float16 and tensor.shape == (4, 32, 3, 3)
        assert len(ckpt.unet_keys()) == sum(len(ckpt.groups[b]) for b in ckpt.arch.blocks)


def test_missing_folder_and_pickle_files(tmp_path) -> None:
    with pytest.raises(ModelFormatError, match="file not found"):
        open_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFormatError, match="is a folder"):
        open_checkpoint(tmp_path)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(2)}}, ckpt)
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        open_checkpoint(ckpt)
    opened = open_checkpoint(ckpt, allow_pickle=True)
    assert opened.keys == ["model.diffusion_model.x"]


def test_truncated_and_garbage_files_are_named(tmp_path, tiny_checkpoints) -> None:
    source, _ = tiny_checkpoints["sd1"]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(source.read_bytes()[:-1000])
    with pytest.raises(ModelFormatError, match="truncated.safetensors: file is truncated"):
        open_checkpoint(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        open_checkpoint(garbage)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(ModelFormatError, match="too short"):
        open_checkpoint(tiny)


def test_non_checkpoint_safetensors_is_explained(tmp_path) -> None:
    vae = tmp_path / "vae.safetensors"
    save_file({"first_stage_model.encoder.conv_in.weight": torch.zeros(2)}, str(vae))
    with pytest.raises(ModelFormatError, match="vae.safetensors: no UNet keys"):
        open_checkpoint(vae).arch


def test_state_dict_checkpoint() -> None:
    ckpt = state_dict_checkpoint({"a": torch.ones(3)})
    assert ckpt.get("a").sum() == 3 and ckpt.nbytes() == 12
