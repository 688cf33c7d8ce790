"""verify (the offset counter) and inspect (sizes, hashes, per-block distances, plots)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lib_mbw.blocks import BLOCKS
from lib_mbw.errors import OutputExistsError, VerifyError
from lib_mbw.merge import merge_to_file, model_hashes, uniform_to_file
from lib_mbw.merge.inspect import inspect_models, plot
from lib_mbw.merge.verify import verify_file
from tests.merge_models import groups, load, rewrite, write_micro


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verify")
    a = write_micro(root / "src" / "a.safetensors", "sd1", 1, torch.float16)
    b = write_micro(root / "src" / "b.safetensors", "sd1", 2, torch.float16)
    c = write_micro(root / "src" / "c.safetensors", "sd1", 3, torch.float16)
    out = root / "ab.safetensors"
    merge_to_file(a, b, 0.35, out, base_from="merge", vae_from=c)
    mean = root / "mean.safetensors"
    uniform_to_file([a, b, c], mean)
    return {"a": a, "b": b, "c": c, "out": out, "mean": mean, "root": root}


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_verify_an_exact_merge(merged) -> None:
    for name in ("out", "mean"):
        report = verify_file(merged[name])
        assert report.identical and report.differing == 0
        assert report.tensors == len(load(merged[name]))
        assert "offset counter: 0/" in report.table()


def test_verify_counts_changed_tensors_per_block(merged, tmp_path) -> None:
    state = load(merged["out"])
    key = "model.diffusion_model.input_blocks.4.1.proj_in.weight"
    state[key] = state[key].clone()
    state[key][0, 0] += 0.25
    vae_key = next(k for k, g in groups(state).items() if g == "VAE" and state[k].numel() > 1)
    state[vae_key] = state[vae_key] * 2
    tampered = tmp_path / "tampered.safetensors"
    rewrite(tampered, state, _metadata(merged["out"]))
    report = verify_file(tampered)
    assert not report.identical and report.differing == 2
    assert report.groups["IN04"].differing == 1 and report.groups["IN04"].max_abs_diff == pytest.approx(0.25, abs=1e-3)
    assert report.groups["VAE"].differing == 1 and sum(g.differing for g in report.groups.values()) == 2


def test_verify_errors_name_the_problem(merged, tmp_path) -> None:
    plain = merged["a"]
    with pytest.raises(VerifyError, match="has no auto-MBW merge record"):
        verify_file(plain)
    moved = tmp_path / "moved"
    moved.mkdir()
    copy = tmp_path / "ab.safetensors"
    shutil.copy(merged["out"], copy)
    backup = tmp_path / "b-backup.safetensors"
    shutil.move(merged["b"], backup)
    try:
        with pytest.raises(VerifyError, match=r"source b \(.*b.safetensors\) is missing; pass --source b=PATH"):
            verify_file(copy)
        shutil.copy(backup, moved / "b.safetensors")
        assert verify_file(copy, search_dirs=[moved]).identical
        assert verify_file(copy, sources={"b": backup}).identical
        changed = moved / "b.safetensors"
        state = load(changed)
        state["alphas_cumprod"] = state["alphas_cumprod"] + 1
        rewrite(changed, state)
        with pytest.raises(VerifyError, match=r"b.safetensors: sha256 \w+ differs from the \w+ recorded"):
            verify_file(copy, search_dirs=[moved])
        with pytest.raises(VerifyError, match="has no source role"):
            verify_file(copy, sources={"z": backup})
    finally:
        shutil.move(backup, merged["b"])


def test_inspect_reports_sizes_hashes_and_distances(merged) -> None:
    report = inspect_models([merged["a"], merged["b"], merged["out"]])
    info = report.models[0]
    a, b = load(merged["a"]), load(merged["b"])
    assert info.arch == "SD1.x" and info.dtypes == {"fp16": len(a) - 1, "int64": 1}
    assert info.total_params == sum(t.numel() for t in a.values())
    assert info.hashes == model_hashes(merged["a"]) and info.merge is None
    assert report.models[2].merge.startswith("auto-MBW weighted_sum (fp16) of a=a.safetensors, b=b.safetensors")
    pair = report.pairs[0]
    assert (pair.i, pair.j) == (0, 1) and len(report.pairs) == 3
    keys = [k for k, g in groups(a).items() if g == "IN04"]
    xa = torch.cat([a[k].float().reshape(-1) for k in keys]).double()
    xb = torch.cat([b[k].float().reshape(-1) for k in keys]).double()
    assert pair.l2["IN04"] == pytest.approx(float((xa - xb).norm()), rel=1e-4)
    assert pair.cosine["IN04"] == pytest.approx(float(xa @ xb / (xa.norm() * xb.norm())), rel=1e-4)
    assert list(pair.l2)[: len(BLOCKS)] == list(BLOCKS)
    unet = math.sqrt(sum(pair.l2[blk] ** 2 for blk in BLOCKS))
    assert pair.unet_l2 == pytest.approx(unet, rel=1e-9)
    # the merge at 0.35 lies between: 35 % of the way from A to B
    out_pair = next(p for p in report.pairs if (p.i, p.j) == (0, 2))
    assert out_pair.l2["IN04"] == pytest.approx(0.35 * pair.l2["IN04"], rel=1e-2)
    assert "[1] vs [2]: UNet L2 distance" in report.text()


def test_inspect_plots_and_mixed_architectures(merged, tmp_path) -> None:
    two = inspect_models([merged["a"], merged["b"]], with_hashes=False)
    bars = plot(two, tmp_path / "ab.png")
    assert bars.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OutputExistsError):
        plot(two, bars)
    xl = write_micro(tmp_path / "xl.safetensors", "sdxl", 1)
    three = inspect_models([merged["a"], merged["b"], merged["c"], xl], with_hashes=False)
    assert len(three.pairs) == 3 and any("not compared: SD1.x vs SDXL" in n for n in three.notes)
    matrix = plot(three, tmp_path / "matrix.png")
    assert matrix.stat().st_size > 1000
