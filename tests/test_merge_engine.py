"""merge_to_file / uniform_to_file: every tensor where the recipe says, exact shortcuts, metadata, bad input."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import pytest
import torch

import lib_mbw.merge.writer as writer_module
from lib_mbw.blocks import BASE, BLOCKS, OTHER, VAE, present_blocks
from lib_mbw.errors import ArchitectureMismatchError, ModelFormatError, OutputExistsError, OutputWriteError, PickleRefusedError, RecipeError
from lib_mbw.merge import MergeProgress, merge_to_file, model_hashes, uniform_to_file
from lib_mbw.recipe import Recipe
from tests.merge_models import groups, load, rewrite, write_micro


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("micro")
    return {
        "a": write_micro(root / "a.safetensors", "sd1", 1),
        "b": write_micro(root / "b.safetensors", "sd1", 2),
        "c": write_micro(root / "c.safetensors", "sd1", 3),
        "a16": write_micro(root / "a16.safetensors", "sd1", 1, torch.float16),
        "b16": write_micro(root / "b16.safetensors", "sd1", 2, torch.float16),
        "xl_a": write_micro(root / "xl-a.safetensors", "sdxl", 1),
        "xl_b": write_micro(root / "xl-b.safetensors", "sdxl", 2),
        "sd2_a": write_micro(root / "sd2-a.safetensors", "sd2", 1),
        "sd2_b": write_micro(root / "sd2-b.safetensors", "sd2", 2),
        "inpaint": write_micro(root / "inpaint.safetensors", "sd1", 4, in_channels=9),
    }


def random_recipe(seed: int = 0, base: float | None = None) -> Recipe:
    rng = random.Random(seed)
    return Recipe({b: round(rng.uniform(0.05, 0.95), 3) for b in BLOCKS}, base=base)


def test_each_block_gets_its_own_weight_and_the_rest_comes_from_a(models, tmp_path) -> None:
    recipe = random_recipe(1)
    out = tmp_path / "m.safetensors"
    report = merge_to_file(models["a"], models["b"], recipe, out, dtype="fp32")
    a, b, merged = load(models["a"]), load(models["b"]), load(out)
    assert set(merged) == set(a)
    for key, group in groups(a).items():
        if group in BLOCKS:
            assert torch.equal(merged[key], torch.lerp(a[key], b[key], recipe.weights[group])), key
        else:
            assert group in (BASE, VAE, OTHER) and torch.equal(merged[key], a[key]), key
    assert report.tensors == len(a) and report.merged == sum(g in BLOCKS for g in groups(a).values())
    assert report.hashes == model_hashes(out) and report.bytes_written == out.stat().st_size


def test_a_with_a_and_alpha_shortcuts_are_bit_exact(models, tmp_path) -> None:
    for source, dtype in (("a", "fp32"), ("a16", "fp16")):
        out = tmp_path / f"self-{source}.safetensors"
        merge_to_file(models[source], models[source], random_recipe(2), out, dtype=dtype)
        original = load(models[source])
        assert all(torch.equal(t, original[k]) and t.dtype == original[k].dtype for k, t in load(out).items())
    a16, b16 = load(models["a16"]), load(models["b16"])
    for alpha, expected in ((0.0, a16), (1.0, b16)):
        out = tmp_path / f"alpha{alpha}.safetensors"
        merge_to_file(models["a16"], models["b16"], alpha, out)
        merged = load(out)
        for key, group in groups(a16).items():
            if group in BLOCKS:
                assert torch.equal(merged[key], expected[key]), key


def test_fp16_merge_is_the_fp32_lerp_rounded_once(models, tmp_path) -> None:
    out = tmp_path / "h.safetensors"
    recipe = random_recipe(3)
    merge_to_file(models["a16"], models["b16"], recipe, out)  # default dtype fp16
    a, b, merged = load(models["a16"]), load(models["b16"]), load(out)
    for key, group in groups(a).items():
        if group in BLOCKS:
            assert merged[key].dtype == torch.float16
            assert torch.equal(merged[key], torch.lerp(a[key].float(), b[key].float(), recipe.weights[group]).half())
    out32 = tmp_path / "h32.safetensors"
    merge_to_file(models["a16"], models["b16"], recipe, out32, dtype=torch.float32)
    wide = load(out32)
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    assert wide[key].dtype == torch.float32 and torch.equal(wide[key].half(), merged[key])


def test_text_encoder_sources(models, tmp_path) -> None:
    a, b, c = load(models["a"]), load(models["b"]), load(models["c"])
    base_keys = [k for k, g in groups(a).items() if g == BASE]
    ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    cases = {"a": a, "b": b, models["c"]: c}
    for base_from, expected in cases.items():
        out = tmp_path / f"base-{Path(str(base_from)).stem}.safetensors"
        merge_to_file(models["a"], models["b"], 0.5, out, base_from=base_from, dtype="fp32")
        merged = load(out)
        assert all(torch.equal(merged[k], expected[k]) for k in base_keys)
    out = tmp_path / "base-merge.safetensors"
    merge_to_file(models["a"], models["b"], random_recipe(4, base=0.25), out, base_from="merge", dtype="fp32")
    merged = load(out)
    for k in base_keys:
        want = a[k] if k == ids else torch.lerp(a[k], b[k], 0.25)  # integer ids are never averaged
        assert torch.equal(merged[k], want), k
    assert merged[ids].dtype == torch.int64


def test_vae_from_a_checkpoint_or_a_vae_file(models, tmp_path) -> None:
    a, c = load(models["a"]), load(models["c"])
    vae_keys = [k for k, g in groups(a).items() if g == VAE]
    vae_file = tmp_path / "vae-ft.safetensors"
    rewrite(vae_file, {k[len("first_stage_model.") :]: c[k] for k in vae_keys})  # a standalone VAE: no prefix
    for donor in (models["c"], vae_file):
        out = tmp_path / f"vae-{donor.stem}.safetensors"
        report = merge_to_file(models["a"], models["b"], 0.3, out, vae_from=donor, dtype="fp32")
        merged = load(out)
        assert all(torch.equal(merged[k], c[k]) for k in vae_keys)
        assert json.loads(report.metadata["sd_merge_recipe"])["bake_in_vae"] == donor.name
    unrelated = tmp_path / "embedding.safetensors"
    rewrite(unrelated, {"emb_params": torch.zeros(2, 8)})
    with pytest.raises(ModelFormatError, match="embedding.safetensors: holds none of the VAE tensors"):
        merge_to_file(models["a"], models["b"], 0.3, tmp_path / "x.safetensors", vae_from=unrelated)


def test_add_difference(models, tmp_path) -> None:
    recipe = random_recipe(5).replace(method="add_difference")
    out = tmp_path / "ad.safetensors"
    merge_to_file(models["a"], models["b"], recipe, out, c=models["c"], dtype="fp32")
    a, b, c, merged = load(models["a"]), load(models["b"]), load(models["c"]), load(out)
    for key, group in groups(a).items():
        want = a[key] + recipe.weights[group] * (b[key] - c[key]) if group in BLOCKS else a[key]
        assert torch.equal(merged[key], want), key
    meta = json.loads(load_metadata(out)["sd_merge_recipe"])
    assert meta["interp_method"] == "Add difference" and meta["tertiary_model_hash"] == model_hashes(models["c"]).sha256
    with pytest.raises(RecipeError, match="needs a third model C"):
        merge_to_file(models["a"], models["b"], recipe, tmp_path / "x.safetensors")
    with pytest.raises(RecipeError, match="only used by add_difference"):
        merge_to_file(models["a"], models["b"], 0.5, tmp_path / "x.safetensors", c=models["c"])


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
def test_other_architectures(models, tmp_path, family) -> None:
    prefix = "xl_" if family == "sdxl" else "sd2_"
    recipe = random_recipe(6)
    out = tmp_path / f"{family}.safetensors"
    report = merge_to_file(models[prefix + "a"], models[prefix + "b"], recipe, out, dtype="fp32")
    a, b, merged = load(models[prefix + "a"]), load(models[prefix + "b"]), load(out)
    seen = set()
    for key, group in groups(a).items():
        if group in BLOCKS:
            seen.add(group)
            assert torch.equal(merged[key], torch.lerp(a[key], b[key], recipe.weights[group]))
    assert seen == set(present_blocks(family))
    if family == "sdxl":
        assert any("SDXL has no block(s) IN09, IN10, IN11" in w for w in report.warnings)
        sdxl_only = Recipe({blk: 0.5 for blk in present_blocks("sdxl")})  # an SDXL recipe needs only its 21 blocks
        merge_to_file(models["xl_a"], models["xl_b"], sdxl_only, tmp_path / "xl2.safetensors")


def load_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_metadata_is_the_webuis_plus_our_record_and_keeps_the_chain(models, tmp_path) -> None:
    first = tmp_path / "first.safetensors"
    merge_to_file(models["a16"], models["b16"], 0.5, first)
    meta = load_metadata(first)
    assert meta["format"] == "pt"
    recipe = json.loads(meta["sd_merge_recipe"])
    assert list(recipe) == [
        "type", "primary_model_hash", "secondary_model_hash", "tertiary_model_hash", "interp_method", "multiplier",
        "save_as_half", "custom_name", "config_source", "bake_in_vae", "discard_weights", "is_inpainting",
        "is_instruct_pix2pix",
    ]
    ha, hb = model_hashes(models["a16"]), model_hashes(models["b16"])
    assert recipe["primary_model_hash"] == ha.sha256 and recipe["secondary_model_hash"] == hb.sha256
    assert recipe["tertiary_model_hash"] is None and recipe["interp_method"] == "Weighted sum"
    assert recipe["multiplier"] == 0.5 and recipe["save_as_half"] is True and recipe["custom_name"] == "first"
    assert recipe["bake_in_vae"] == "None" and recipe["is_inpainting"] is False
    sources = json.loads(meta["sd_merge_models"])
    assert sources == {
        ha.sha256: {"name": "a16.safetensors", "legacy_hash": ha.legacy, "sd_merge_recipe": None},
        hb.sha256: {"name": "b16.safetensors", "legacy_hash": hb.legacy, "sd_merge_recipe": None},
    }
    ours = json.loads(meta["auto_mbw_recipe"])
    assert ours["dtype"] == "fp16" and ours["method"] == "weighted_sum" and ours["base_from"] == "a"
    assert ours["sources"]["a"]["sha256"] == ha.sha256 and Path(ours["sources"]["b"]["path"]) == models["b16"].resolve()
    assert Recipe.from_dict(ours["recipe"]).weights["IN05"] == 0.5
    # merging the merge again: the chain keeps the first merge's sources and recipe
    second = tmp_path / "second.safetensors"
    merge_to_file(first, models["c"], 0.25, second, extra_metadata={"author": "me", "tags": ["x"]})
    meta2 = load_metadata(second)
    chain = json.loads(meta2["sd_merge_models"])
    hf = model_hashes(first)
    assert set(chain) == {hf.sha256, model_hashes(models["c"]).sha256, ha.sha256, hb.sha256}
    assert chain[hf.sha256]["sd_merge_recipe"] == recipe
    assert meta2["author"] == "me" and json.loads(meta2["tags"]) == ["x"]
    with pytest.raises(ValueError, match="may not set 'format'"):
        merge_to_file(first, models["c"], 0.25, tmp_path / "x.safetensors", extra_metadata={"format": "ckpt"})


def test_progress_reports_hashing_then_every_tensor(models, tmp_path) -> None:
    events: list[MergeProgress] = []
    report = merge_to_file(models["a"], models["b"], 0.5, tmp_path / "p.safetensors", progress=events.append)
    phases = [e.phase for e in events]
    assert phases.index("merge") > phases.index("hash")
    merges = [e for e in events if e.phase == "merge"]
    assert [e.done for e in merges] == list(range(1, report.tensors + 1)) and merges[-1].total == report.tensors


def test_uniform_is_the_mean_and_does_not_depend_on_order(models, tmp_path) -> None:
    a, b, c = load(models["a"]), load(models["b"]), load(models["c"])
    out1, out2 = tmp_path / "u1" / "mix.safetensors", tmp_path / "u2" / "mix.safetensors"
    out1.parent.mkdir()
    out2.parent.mkdir()
    r1 = uniform_to_file([models["a"], models["b"], models["c"]], out1, dtype="fp32")
    r2 = uniform_to_file([models["c"], models["a"], models["b"]], out2, dtype="fp32")
    assert r1.hashes == r2.hashes  # bit-identical files
    merged = load(out1)
    ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    for key, group in groups(a).items():
        if group == OTHER or key == ids:
            assert key == ids or torch.equal(merged[key], a[key]) or torch.equal(merged[key], b[key]) or torch.equal(merged[key], c[key])
        else:
            want = (a[key] + b[key] + c[key]) / 3
            assert torch.allclose(merged[key], want, rtol=1e-6, atol=1e-7), key
    meta = json.loads(r1.metadata["sd_merge_recipe"])
    assert meta["interp_method"] == "Uniform (3 models)" and len(json.loads(r1.metadata["sd_merge_models"])) == 3
    donor = tmp_path / "donor.safetensors"
    r3 = uniform_to_file([models["a"], models["b"]], donor, base_from=models["c"], dtype="fp32")
    with_donor = load(donor)
    assert all(torch.equal(with_donor[k], c[k]) for k, g in groups(a).items() if g == BASE)
    assert r3.copied["base"] == sum(g == BASE for g in groups(a).values())
    with pytest.raises(RecipeError, match="more than once"):
        uniform_to_file([models["a"], models["a"]], tmp_path / "x.safetensors")
    with pytest.raises(RecipeError, match="at least 2 models"):
        uniform_to_file([models["a"]], tmp_path / "x.safetensors")


# --------------------------------------------------------------------------- bad input


def test_missing_pickle_and_corrupt_inputs(models, tmp_path) -> None:
    out = tmp_path / "o.safetensors"
    with pytest.raises(ModelFormatError, match="nope.safetensors: file not found"):
        merge_to_file(tmp_path / "nope.safetensors", models["b"], 0.5, out)
    ckpt = tmp_path / "a.ckpt"
    torch.save({"state_dict": load(models["a"])}, ckpt)
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        merge_to_file(ckpt, models["b"], 0.5, out)
    merge_to_file(ckpt, models["b"], 0.5, out, allow_pickle=True, dtype="fp32")
    reference = tmp_path / "ref.safetensors"
    merge_to_file(models["a"], models["b"], 0.5, reference, dtype="fp32")
    expected = load(reference)
    assert all(torch.equal(t, expected[k]) for k, t in load(out).items())
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(models["b"].read_bytes()[:-5000])
    with pytest.raises(ModelFormatError, match="t.safetensors: file is truncated"):
        merge_to_file(models["a"], truncated, 0.5, tmp_path / "o2.safetensors")
    assert not (tmp_path / "o2.safetensors").exists()


def test_mismatched_architectures_keys_and_shapes(models, tmp_path) -> None:
    out = tmp_path / "o.safetensors"
    with pytest.raises(ArchitectureMismatchError, match=r"SD1.x.*SDXL.*architectures differ"):
        merge_to_file(models["a"], models["xl_b"], 0.5, out)
    with pytest.raises(ArchitectureMismatchError, match="inpainting"):
        merge_to_file(models["inpaint"], models["b"], 0.5, out)
    b = load(models["b"])
    key = "model.diffusion_model.output_blocks.4.1.proj_out.weight"
    fewer = tmp_path / "fewer.safetensors"
    rewrite(fewer, {k: v for k, v in b.items() if k != key})
    with pytest.raises(ArchitectureMismatchError, match=rf"lacks 1 tensor\(s\).*{key}"):
        merge_to_file(models["a"], fewer, 0.5, out)
    more = tmp_path / "more.safetensors"
    rewrite(more, {**b, "model.diffusion_model.output_blocks.4.1.extra.weight": torch.zeros(2)})
    with pytest.raises(ArchitectureMismatchError, match=r"has 1 UNet tensor\(s\) that model A .* lacks"):
        merge_to_file(models["a"], more, 0.5, out)
    reshaped = tmp_path / "reshaped.safetensors"
    rewrite(reshaped, {**b, key: torch.zeros(b[key].shape[0], b[key].shape[1] + 1, 1, 1)})
    with pytest.raises(ArchitectureMismatchError, match="shaped differently"):
        merge_to_file(models["a"], reshaped, 0.5, out)
    assert not out.exists()


def test_recipe_errors(models, tmp_path) -> None:
    out = tmp_path / "o.safetensors"
    with pytest.raises(RecipeError, match="needs a BASE weight"):
        merge_to_file(models["a"], models["b"], random_recipe(7), out, base_from="merge")
    with pytest.raises(RecipeError, match="recipe has no weight for IN01, IN02"):
        merge_to_file(models["a"], models["b"], Recipe({"IN00": 0.5}), out)
    with pytest.raises(RecipeError, match="must be between 0 and 1"):
        merge_to_file(models["a"], models["b"], 1.5, out)
    with pytest.raises(RecipeError, match="dtype 'fp8' is not supported"):
        merge_to_file(models["a"], models["b"], 0.5, out, dtype="fp8")
    assert not out.exists()


def test_output_exists_is_an_input_or_the_disk_fills_up(models, tmp_path, monkeypatch) -> None:
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="already exists"):
        merge_to_file(models["a"], models["b"], 0.5, out)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(OutputWriteError, match="is one of the inputs"):
        merge_to_file(models["a"], models["b"], 0.5, models["a"], overwrite=True)
    calls = {"n": 0}
    real = writer_module._write_all

    def disk_full(fd, data):
        calls["n"] += 1
        if calls["n"] == 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(writer_module, "_write_all", disk_full)
    fresh = tmp_path / "fresh.safetensors"
    with pytest.raises(OutputWriteError, match="fresh.safetensors: cannot write the output \\(no space left on device\\)"):
        merge_to_file(models["a"], models["b"], 0.5, fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]  # no partial output, no temp file
