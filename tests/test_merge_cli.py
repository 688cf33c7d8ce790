"""The merge / uniform / verify / inspect commands through ``lib_mbw.cli.main``: outputs, exit codes, messages."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import pytest
import torch

import lib_mbw.merge.writer as writer_module
from lib_mbw.blocks import BLOCKS
from lib_mbw.cli import main
from lib_mbw.recipe import ORDERS, Recipe, to_positional
from tests.merge_models import groups, load, write_micro


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch) -> Path:
    """The commands cache hashes in ~/.cache by default; tests use their own file."""
    cache = tmp_path / "hash-cache.json"
    monkeypatch.setenv("AUTO_MBW_HASH_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    return {
        "a": write_micro(root / "a.safetensors", "sd1", 1, torch.float16),
        "b": write_micro(root / "b.safetensors", "sd1", 2, torch.float16),
        "c": write_micro(root / "c.safetensors", "sd1", 3, torch.float16),
        "xl": write_micro(root / "xl.safetensors", "sdxl", 1, torch.float16),
    }


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_merge_with_a_recipe_in_the_seed_order(models, tmp_path, capsys, private_hash_cache) -> None:
    rng = random.Random(3)
    recipe = Recipe({b: round(rng.random(), 3) for b in BLOCKS})
    out = tmp_path / "rt.safetensors"
    code, stdout, stderr = run(
        ["merge", models["a"], models["b"], "-o", out, "--recipe", to_positional(recipe, "rt"), "--order", "rt", "--quiet"], capsys
    )
    assert code == 0, stderr
    assert f"wrote {out}" in stdout and "sha256 " in stdout
    a, b, merged = load(models["a"]), load(models["b"]), load(out)
    for key, group in groups(a).items():
        if group in ("TIME_EMBED", "OUT", "IN00", "OUT11"):
            want = torch.lerp(a[key].float(), b[key].float(), recipe.weights[group]).half()
            assert torch.equal(merged[key], want), (key, group)
    # the merged file's own recipe merges another pair the same way
    again = tmp_path / "again.safetensors"
    code, _, stderr = run(["merge", models["a"], models["b"], "-o", again, "--recipe", out, "--quiet"], capsys)
    assert code == 0, stderr
    assert all(torch.equal(t, merged[k]) for k, t in load(again).items())
    cached = json.loads(private_hash_cache.read_text())  # both sources remembered, by resolved path
    assert {str(models["a"].resolve()), str(models["b"].resolve()), str(out.resolve())} <= set(cached)


def test_merge_alpha_base_from_merge_and_json_recipe(models, tmp_path, capsys) -> None:
    out = tmp_path / "alpha.safetensors"
    code, _, stderr = run(["merge", models["a"], models["b"], "-o", out, "--alpha", "0.5", "--base-from", "merge", "--quiet"], capsys)
    assert code == 0 and stderr == ""
    recipe_file = tmp_path / "best.recipe.json"
    recipe_file.write_text(Recipe.uniform(0.5, base=0.2).to_json())
    out2 = tmp_path / "json.safetensors"
    code, _, stderr = run(["merge", models["a"], models["b"], "-o", out2, "--recipe", recipe_file, "--quiet"], capsys)
    assert code == 0
    assert "warning: the recipe's BASE weight 0.2 is not used" in stderr


def test_add_difference_uniform_verify_and_inspect(models, tmp_path, capsys) -> None:
    out = tmp_path / "ad.safetensors"
    code, _, stderr = run(
        ["merge", models["a"], models["b"], "--method", "add-difference", "--c", models["c"], "-o", out, "--alpha", "1", "--quiet"], capsys
    )
    assert code == 0, stderr
    code, stdout, _ = run(["verify", out, "--quiet"], capsys)
    assert code == 0 and "offset counter: 0/" in stdout
    mean = tmp_path / "mean.safetensors"
    code, stdout, stderr = run(["uniform", models["a"], models["b"], models["c"], "-o", mean, "--dtype", "fp32", "--quiet"], capsys)
    assert code == 0, stderr
    assert load(mean)["model.diffusion_model.out.2.bias"].dtype == torch.float32
    code, stdout, _ = run(["verify", mean, "--quiet"], capsys)
    assert code == 0
    png = tmp_path / "d.png"
    code, stdout, stderr = run(["inspect", models["a"], models["b"], "--plot", png, "--quiet"], capsys)
    assert code == 0, stderr
    assert "[1] vs [2]: UNet L2 distance" in stdout and png.exists()
    code, _, stderr = run(["inspect", models["a"], models["b"], "--plot", png, "--quiet"], capsys)
    assert code == 2 and "already exists" in stderr


def test_verify_exit_code_1_when_tensors_differ(models, tmp_path, capsys) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = tmp_path / "m.safetensors"
    assert run(["merge", models["a"], models["b"], "-o", out, "--alpha", "0.3", "--quiet"], capsys)[0] == 0
    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
    state = load(out)
    key = "model.diffusion_model.middle_block.0.in_layers.2.weight"
    state[key] = state[key] + 1
    save_file(state, str(out), metadata=metadata)
    code, stdout, _ = run(["verify", out, "--quiet"], capsys)
    assert code == 1 and "offset counter: 1/" in stdout and "M00" in stdout


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_bad_input_gives_one_line_errors_and_exit_code_2(models, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "o.safetensors"
    cases = [
        (["merge", tmp_path / "missing.safetensors", models["b"], "-o", out, "--alpha", "0.5"], "missing.safetensors: file not found"),
        (["merge", models["a"], models["xl"], "-o", out, "--alpha", "0.5"], "architectures differ"),
        (["merge", models["a"], models["b"], "-o", out, "--recipe", "0.1,0.2,0.3"], "3 numbers is no known recipe format"),
        (["merge", models["a"], models["b"], "-o", out, "--alpha", "2"], "--alpha must be between 0 and 1"),
        (["merge", models["a"], models["b"], "-o", out, "--recipe", models["a"]], "holds no auto-MBW block recipe"),
        (["merge", models["a"], models["b"], "-o", out, "--alpha", "0.5", "--method", "add-difference"], "needs a third model C"),
        (["merge", models["a"], models["b"], "-o", models["a"], "--alpha", "0.5"], "already exists; pass --overwrite"),
        (["verify", models["a"]], "has no auto-MBW merge record"),
        (["verify", models["a"], "--source", "nonsense"], "use ROLE=PATH"),
    ]
    for args, message in cases:
        code, _, stderr = run(args, capsys)
        assert code == 2, args
        assert message in one_line_error(stderr), (args, stderr)
    ckpt = tmp_path / "a.ckpt"
    torch.save(load(models["a"]), ckpt)
    code, _, stderr = run(["merge", ckpt, models["b"], "-o", out, "--alpha", "0.5"], capsys)
    assert code == 2 and "--allow-pickle" in one_line_error(stderr)
    code, _, stderr = run(["merge", ckpt, models["b"], "-o", out, "--alpha", "0.5", "--allow-pickle", "--quiet"], capsys)
    assert code == 0 and "warning: loading pickle checkpoints" in stderr and "arbitrary code" in stderr
    calls = {"n": 0}
    real = writer_module._write_all

    def disk_full(fd, data):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(writer_module, "_write_all", disk_full)
    full = tmp_path / "full" / "x.safetensors"
    full.parent.mkdir()
    code, _, stderr = run(["merge", models["a"], models["b"], "-o", full, "--alpha", "0.5", "--quiet"], capsys)
    assert code == 2
    assert one_line_error(stderr) == (
        f"error: {full}: cannot write the output (no space left on device); nothing was written, no partial file was left"
    )
    assert list(full.parent.iterdir()) == []


@pytest.mark.parametrize("command", ["merge", "uniform", "verify", "inspect"])
def test_every_command_has_help_with_examples(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"python -m lib_mbw {command}" in text


def test_orders_listed_in_help_are_the_recipe_orders(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    text = capsys.readouterr().out
    assert all(order in text for order in ORDERS)  # the help lists every order recipe.py knows


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, lib_mbw.cli; lib_mbw.cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1], check=True)
    assert result.stdout.strip() == "False"
