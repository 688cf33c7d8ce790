"""Offline N-model block mix: the math, the metadata, verify, the CLI, and N = 2 equal to the two-model merge."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lib_mbw.blocks import present_blocks
from lib_mbw.checkpoint import open_checkpoint
from lib_mbw.cli import main
from lib_mbw.errors import ArchitectureMismatchError, RecipeError, VerifyError
from lib_mbw.keyspec import tiny_config
from lib_mbw.merge import merge_to_file, verify_file
from lib_mbw.merge.hashes import model_hashes
from lib_mbw.merge.multi import mix_to_file
from lib_mbw.recipe_n import RecipeN, to_chain_text
from lib_mbw.synthetic import write_checkpoint

GRID = [i / 20 for i in range(21)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    out = {}
    for arch, n in (("sd1", 5), ("sdxl", 3)):
        cfg = tiny_config(arch)
        out[arch] = [write_checkpoint(root / f"{arch}-{i}.safetensors", cfg, seed=10 + i) for i in range(n)]
    return out


def grid_recipe(seed: int, n: int, family: str = "sd1") -> RecipeN:
    rng = random.Random(seed)
    chain = {b: tuple(rng.choice(GRID) for _ in range(n - 1)) for b in present_blocks(family)}
    chain["IN00"] = (0.0,) * (n - 2) + (1.0,)  # IN00 is the last model, whole
    chain["OUT"] = (0.0,) * (n - 1)  # OUT is model 1, whole
    return RecipeN.from_chain([f"m{i}" for i in range(n)], chain)


def tensors(path):
    with open_checkpoint(path) as ckpt:
        return {k: ckpt.get(k) for k in ckpt.keys}, ckpt.groups, ckpt.metadata


@pytest.mark.parametrize("n", [3, 5])
def test_mix_is_the_weighted_sum_of_the_shares(n, models, tmp_path) -> None:
    paths = models["sd1"][:n]
    recipe = grid_recipe(n, n)
    report = mix_to_file(paths, recipe, tmp_path / "mix.safetensors", dtype="fp32")
    out, groups, _ = tensors(report.output)
    sources = [tensors(p)[0] for p in paths]
    for block in present_blocks("sd1"):
        shares = recipe.shares[block]
        for key in groups[block]:
            want = sum(s * src[key].double() for s, src in zip(shares, sources))
            assert torch.allclose(out[key].double(), want, atol=1e-6, rtol=1e-5), key
    for key in groups["IN00"]:
        assert torch.equal(out[key], sources[-1][key])  # a whole model is a bit-exact copy
    for key in groups["OUT"] + groups["BASE"] + groups["VAE"]:
        assert torch.equal(out[key], sources[0][key])  # text encoder and VAE from model 1


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_two_model_mix_equals_the_two_model_merge_bit_for_bit(dtype, models, tmp_path) -> None:
    a, b = models["sd1"][:2]
    recipe = grid_recipe(7, 2)
    mixed = mix_to_file([a, b], recipe, tmp_path / "mix.safetensors", dtype=dtype)
    merged = merge_to_file(a, b, recipe.to_two_model(), tmp_path / "merge.safetensors", dtype=dtype)
    x, y = tensors(mixed.output)[0], tensors(merged.output)[0]
    assert x.keys() == y.keys()
    assert all(torch.equal(x[k].view(torch.uint8), y[k].view(torch.uint8)) for k in x)


def test_metadata_lists_every_source_and_verify_recomputes_the_file(models, tmp_path) -> None:
    paths = models["sd1"][:4]
    recipe = grid_recipe(3, 4)
    report = mix_to_file(paths, recipe, tmp_path / "mix4.safetensors")
    meta = report.metadata
    hashes = [model_hashes(p).sha256 for p in paths]
    listed = json.loads(meta["sd_merge_models"])
    assert list(listed) == hashes and [v["name"] for v in listed.values()] == [p.name for p in paths]
    webui = json.loads(meta["sd_merge_recipe"])
    assert [webui["primary_model_hash"], webui["secondary_model_hash"], webui["tertiary_model_hash"]] == hashes[:3]
    assert webui["interp_method"] == "Block mix (4 models)"
    ours = json.loads(meta["auto_mbw_recipe"])
    assert ours["method"] == "block_mix" and list(ours["sources"]) == ["m1", "m2", "m3", "m4"]
    assert RecipeN.from_dict(ours["recipe"]) == recipe.with_models([p.name for p in paths])
    check = verify_file(report.output)
    assert check.identical and check.tensors == report.tensors


def test_verify_finds_a_changed_tensor_and_a_changed_source(models, tmp_path) -> None:
    from safetensors.torch import save_file

    paths = models["sd1"][:3]
    report = mix_to_file(paths, grid_recipe(4, 3), tmp_path / "mix.safetensors", dtype="fp32")
    data, groups, meta = tensors(report.output)
    key = groups["M00"][0]
    data[key] = data[key] + 1e-3
    tampered = tmp_path / "tampered.safetensors"
    save_file(data, str(tampered), metadata=dict(meta))
    check = verify_file(tampered)
    assert not check.identical and check.groups["M00"].differing == 1
    with pytest.raises(VerifyError, match="differs from the"):
        verify_file(report.output, sources={"m2": paths[0]})


def test_sdxl_mix_and_a_mismatched_model_is_refused(models, tmp_path) -> None:
    recipe = grid_recipe(5, 3, "sdxl")
    report = mix_to_file(models["sdxl"], recipe, tmp_path / "xl.safetensors")
    assert "SDXL" in report.arch and verify_file(report.output).identical
    with pytest.raises(ArchitectureMismatchError):
        mix_to_file([models["sdxl"][0], models["sd1"][0], models["sdxl"][1]], recipe, tmp_path / "bad.safetensors")


def test_bad_mix_inputs(models, tmp_path) -> None:
    paths = models["sd1"][:3]
    with pytest.raises(RecipeError, match="recipe for 3 models, got 2"):
        mix_to_file(paths[:2], grid_recipe(1, 3), tmp_path / "x.safetensors")
    with pytest.raises(RecipeError, match="more than once"):
        mix_to_file([paths[0], paths[1], paths[0]], grid_recipe(1, 3), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_merge_of_three_models_with_json_and_chain_lines_then_verify(models, tmp_path, capsys) -> None:
    paths = [str(p) for p in models["sd1"][:3]]
    recipe = grid_recipe(9, 3)
    json_path = tmp_path / "abc.recipe.json"
    json_path.write_text(recipe.to_json())
    out = tmp_path / "abc.safetensors"
    assert main(["merge", *paths, "-o", str(out), "--recipe", str(json_path), "--quiet", "--no-hash-cache"]) == 0
    assert main(["verify", str(out), "--quiet"]) == 0
    assert "offset counter: 0/" in capsys.readouterr().out
    text, problems = to_chain_text(recipe)
    assert not problems
    chain_path = tmp_path / "abc.txt"
    chain_path.write_text(text)
    out2 = tmp_path / "abc2.safetensors"
    assert main(["merge", *paths, "-o", str(out2), "--recipe", str(chain_path), "--quiet", "--no-hash-cache"]) == 0
    a, b = tensors(out)[0], tensors(out2)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the recipe stored in a mixed file can be reused
    out3 = tmp_path / "abc3.safetensors"
    assert main(["merge", *paths, "-o", str(out3), "--recipe", str(out), "--quiet", "--no-hash-cache"]) == 0
    assert main(["merge", *paths[:2], "-o", str(tmp_path / "y.safetensors"), "--recipe", str(json_path), "--quiet"]) == 2
    assert "recipe for 3 models, but 2 models were given" in capsys.readouterr().err


def test_cli_two_model_merge_is_unchanged(models, tmp_path) -> None:
    a, b = (str(p) for p in models["sd1"][:2])
    out = tmp_path / "ab.safetensors"
    assert main(["merge", a, b, "-o", str(out), "--alpha", "0.3", "--quiet", "--no-hash-cache"]) == 0
    assert json.loads(tensors(out)[2]["auto_mbw_recipe"])["method"] == "weighted_sum"


def test_cli_two_models_with_an_n_model_recipe_file_mix_them(models, tmp_path) -> None:
    a, b = (str(p) for p in models["sd1"][:2])
    recipe = grid_recipe(11, 2)
    path = tmp_path / "ab.recipe.json"
    path.write_text(recipe.to_json())
    out = tmp_path / "ab.safetensors"
    assert main(["merge", a, b, "-o", str(out), "--recipe", str(path), "--quiet", "--no-hash-cache"]) == 0
    record = json.loads(tensors(out)[2]["auto_mbw_recipe"])
    assert record["method"] == "block_mix" and RecipeN.from_dict(record["recipe"]).shares == recipe.shares
