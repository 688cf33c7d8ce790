"""Merge math (methods) and WebUI hashes: definitions checked against independent computations."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
import torch

from lib_mbw.merge.hashes import HashingSink, legacy_hash, model_hashes, sha256_file
from lib_mbw.merge.methods import METHODS, add_difference, mean, method_by_cli_name, weighted_sum


def _pair(dtype: torch.dtype = torch.float32, n: int = 10_001, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g).to(dtype), (3 * torch.randn(n, generator=g)).to(dtype)


def test_weighted_sum_is_lerp_in_fp32_with_exact_shortcuts() -> None:
    a, b = _pair()
    assert weighted_sum(a, b, 0.0) is a and weighted_sum(a, b, 1.0) is b
    a16, b16 = _pair(torch.float16)
    assert weighted_sum(a16, b16, 0) is a16 and weighted_sum(a16, b16, 1) is b16
    for w in (0.25, 0.5, 0.7, 0.123):
        got = weighted_sum(a, b, w)
        assert torch.equal(got, torch.lerp(a, b, w))
        assert torch.allclose(got, (1 - w) * a + w * b, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_reduced_precision_lerp_equals_fp32_math_rounded_once(dtype: torch.dtype) -> None:
    # The engine (and the runtime merger) lerp fp16/bf16 tensors directly; torch computes
    # those in fp32 inside. This pins that equivalence on the installed torch.
    a, b = _pair(dtype, n=65_537)
    for w in (0.3, 0.5, 0.7, 0.999, 1e-3):
        out = torch.empty_like(a)
        fused = weighted_sum(a, b, w, out=out)
        assert fused is out
        assert torch.equal(fused, torch.lerp(a.float(), b.float(), w).to(dtype))
        assert torch.equal(weighted_sum(a, b, w), torch.lerp(a.float(), b.float(), w))


def test_add_difference_matches_webui_formula() -> None:
    a, b = _pair(seed=1)
    c, _ = _pair(seed=2)
    assert add_difference(a, b, c, 0.0) is a
    for w in (0.5, 1.0):
        assert torch.equal(add_difference(a, b, c, w), a + w * (b - c))
    a16, b16 = a.half(), b.half()
    c16 = c.half()
    out = torch.empty_like(a16)
    got = add_difference(a16, b16, c16, 0.5, out=out)
    assert got is out and torch.equal(got, (a16.float() + 0.5 * (b16.float() - c16.float())).half())


def test_mean_equals_astolfomix_running_weights_and_ignores_order() -> None:
    tensors = [_pair(seed=s)[0] for s in range(5)]
    plain = mean(tensors)
    running = tensors[0].double()
    for x, t in enumerate(tensors[1:], start=2):  # merge the x-th model at weight 1/x
        running = torch.lerp(running, t.double(), 1.0 / x)
    assert torch.allclose(plain.double(), running, atol=1e-6)
    assert torch.allclose(mean(list(reversed(tensors))), plain, atol=1e-6)
    lazy = mean(t.half() for t in tensors)  # a generator: one tensor at a time
    assert lazy.dtype == torch.float32 and torch.allclose(lazy, plain, atol=1e-2)
    with pytest.raises(ValueError):
        mean([])


def test_registry_names() -> None:
    assert method_by_cli_name("weighted-sum") is METHODS["weighted_sum"]
    assert method_by_cli_name("add_difference").webui_name == "Add difference"
    assert METHODS["weighted_sum"].shortcut(1.0) == 1 and METHODS["add_difference"].shortcut(0.5) is None
    with pytest.raises(KeyError):
        method_by_cli_name("slerp")


def _bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("size", [100, 0x100000 + 5000, 0x100000 + 0x10000 + 123_457])
def test_hashes_match_the_webui_definitions(tmp_path, size: int) -> None:
    data = _bytes(size)
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    expected_sha = hashlib.sha256(data).hexdigest()
    # the WebUI's legacy hash: sha256 of 64 KiB at offset 1 MiB (empty past the end), first 8 hex
    expected_legacy = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    assert sha256_file(path) == expected_sha
    assert legacy_hash(path) == expected_legacy
    hashes = model_hashes(path)
    assert hashes.short == expected_sha[:10] and hashes.to_dict()["legacy"] == expected_legacy
    # the writer's streaming hash gives the same for any chunking
    sink = HashingSink()
    position, step = 0, 1
    while position < size:
        sink.update(data[position : position + step])
        position += step
        step = step * 3 + 1
    assert sink.result() == hashes and sink.size == size


def test_known_vector() -> None:
    # sha256 of the empty string: what the WebUI shows as legacy hash for files under 1 MiB
    assert hashlib.sha256(b"").hexdigest()[:8] == "e3b0c442"
    sink = HashingSink()
    sink.update(b"abc")
    assert sink.result().sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sink.result().legacy == "e3b0c442"


def test_hash_cache_remembers_unchanged_files_only(tmp_path, monkeypatch) -> None:
    import lib_mbw.merge.hashes as hashes_module
    from lib_mbw.merge.hashes import HashCache, default_hash_cache

    model = tmp_path / "m.safetensors"
    model.write_bytes(_bytes(2_000_000, seed=1))
    cache = HashCache(tmp_path / "cache" / "hashes.json")
    calls = {"n": 0}
    real = hashes_module.sha256_file

    def counting(path):
        calls["n"] += 1
        return real(path)

    monkeypatch.setattr(hashes_module, "sha256_file", counting)
    first = model_hashes(model, cache)
    assert model_hashes(model, cache) == first and calls["n"] == 1  # second time from the cache
    assert HashCache(cache.path).get(model) == first  # persisted
    model.write_bytes(_bytes(2_000_000, seed=2))
    os.utime(model, ns=(1, 1))  # a changed file is hashed again, whatever its mtime
    changed = model_hashes(model, cache)
    assert changed != first and calls["n"] == 2 and changed == model_hashes(model)
    cache.path.write_text("not json")
    assert cache.get(model) is None  # a damaged cache is ignored
    monkeypatch.setenv("AUTO_MBW_HASH_CACHE", "off")
    assert default_hash_cache() is None
    monkeypatch.setenv("AUTO_MBW_HASH_CACHE", str(tmp_path / "c.json"))
    assert default_hash_cache().path == tmp_path / "c.json"
    monkeypatch.delenv("AUTO_MBW_HASH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_hash_cache().path == tmp_path / "xdg" / "auto-mbw" / "hashes.json"
