"""Streaming safetensors writer (atomic, hashed, aligned) and the positioned-read checkpoint reader."""

from __future__ import annotations

import errno
import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lib_mbw.merge.writer as writer_module
from lib_mbw.checkpoint import open_checkpoint
from lib_mbw.errors import ModelFormatError, OutputExistsError, OutputWriteError
from lib_mbw.merge.hashes import model_hashes
from lib_mbw.merge.writer import SafetensorsWriter, TensorEntry


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "half": torch.randn(3, 5, generator=g).half(),
        "float": torch.randn(7, generator=g),
        "ids": torch.arange(77, dtype=torch.int64).reshape(1, 77),
        "scalar": torch.tensor(2.5),
        "bf16": torch.randn(4, 4, generator=g).bfloat16(),
        "empty": torch.zeros(0, 3),
        "flag": torch.tensor([True, False, True]),
    }


def _write(path, tensors, metadata=None, **kwargs):
    entries = [TensorEntry(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    with SafetensorsWriter(path, entries, metadata, **kwargs) as writer:
        for name in writer.order:
            writer.write(name, tensors[name])
        return writer.commit()


def test_written_file_loads_with_safetensors_and_hashes_match(tmp_path) -> None:
    tensors = _tensors()
    out = tmp_path / "out.safetensors"
    written = _write(out, tensors, {"format": "pt", "note": '{"a": 1}'})
    loaded = load_file(str(out))
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"format": "pt", "note": '{"a": 1}'}
    assert written.size == out.stat().st_size and written.hashes == model_hashes(out)
    raw = out.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert header_len % 8 == 0 and raw[8:10] == b'{"'  # the WebUI's metadata reader requires '{"'
    header = json.loads(raw[8 : 8 + header_len])
    for key, entry in header.items():
        if key != "__metadata__":
            itemsize = tensors[key].element_size()
            assert entry["data_offsets"][0] % itemsize == 0  # every tensor aligned to its item size
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]  # no temp file left


def test_existing_output_is_refused_unless_overwrite(tmp_path) -> None:
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite"):
        _write(out, _tensors())
    assert out.read_bytes() == b"precious"
    _write(out, _tensors(), overwrite=True)
    assert torch.equal(load_file(str(out))["float"], _tensors()["float"])


def test_output_appearing_during_the_write_is_not_clobbered(tmp_path) -> None:
    out = tmp_path / "out.safetensors"
    tensors = _tensors()
    entries = [TensorEntry(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    with SafetensorsWriter(out, entries) as writer:
        for name in writer.order:
            writer.write(name, tensors[name])
        out.write_bytes(b"someone else")
        with pytest.raises(OutputExistsError):
            writer.commit()
    assert out.read_bytes() == b"someone else"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_disk_full_mid_way_leaves_nothing(tmp_path, monkeypatch) -> None:
    calls = {"n": 0}
    real_write = writer_module._write_all

    def failing_write(fd, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(writer_module, "_write_all", failing_write)
    out = tmp_path / "out.safetensors"
    with pytest.raises(OutputWriteError, match=r"out\.safetensors: cannot write the output \(no space left on device\)"):
        _write(out, _tensors())
    assert list(tmp_path.iterdir()) == []


def test_not_enough_space_is_refused_before_writing(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(writer_module.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(OutputWriteError, match="not enough free disk space"):
        _write(tmp_path / "out.safetensors", _tensors())
    assert list(tmp_path.iterdir()) == []


def test_wrong_order_dtype_or_missing_tensor_aborts(tmp_path) -> None:
    tensors = _tensors()
    entries = [TensorEntry(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    out = tmp_path / "out.safetensors"
    with pytest.raises(RuntimeError, match="expected tensor"):
        with SafetensorsWriter(out, entries) as writer:
            writer.write(writer.order[1], tensors[writer.order[1]])
    with pytest.raises(RuntimeError, match="were not written"):
        with SafetensorsWriter(out, entries) as writer:
            writer.write(writer.order[0], tensors[writer.order[0]])
            writer.commit()
    assert list(tmp_path.iterdir()) == []


def test_bad_output_names(tmp_path) -> None:
    with pytest.raises(OutputWriteError, match="must be a .safetensors"):
        _write(tmp_path / "out.ckpt", _tensors())
    with pytest.raises(OutputWriteError, match="does not exist"):
        _write(tmp_path / "missing" / "out.safetensors", _tensors())


def test_reader_uses_positioned_reads_into_caller_buffers(tmp_path) -> None:
    tensors = _tensors()
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    buffer = torch.empty(1 << 16, dtype=torch.uint8)
    with open_checkpoint(path) as ckpt:
        for key, value in tensors.items():
            got = ckpt.get(key, buffer=buffer)
            assert torch.equal(got, value) and got.dtype == value.dtype
            if value.numel():
                assert got.data_ptr() == buffer.data_ptr()  # read straight into the buffer
        fresh = ckpt.get("float")
        assert fresh.data_ptr() != buffer.data_ptr() and torch.equal(fresh, tensors["float"])
    with pytest.raises(ModelFormatError, match="closed"):
        ckpt.get("float")


def test_reader_refuses_inconsistent_headers(tmp_path) -> None:
    path = tmp_path / "bad.safetensors"

    def write_header(header: dict, data: bytes) -> None:
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + data)

    write_header({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(16))
    with pytest.raises(ModelFormatError, match="does not match its data size"):
        open_checkpoint(path)
    write_header({"x": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(ModelFormatError, match="unsupported dtype"):
        open_checkpoint(path)
    write_header({"x": {"dtype": "F32", "shape": "2"}}, bytes(8))
    with pytest.raises(ModelFormatError, match="malformed"):
        open_checkpoint(path)


def test_reader_works_without_preadv(tmp_path, monkeypatch) -> None:
    # Windows has no os.preadv: the reader falls back to a locked seek + readinto
    import os

    monkeypatch.delattr(os, "preadv", raising=False)
    tensors = _tensors()
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    with open_checkpoint(path) as ckpt:
        assert all(torch.equal(ckpt.get(k), v) for k, v in tensors.items())
