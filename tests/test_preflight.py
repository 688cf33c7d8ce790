"""Pre-flight: a search that cannot work stops before its run folder exists, with one line naming what to fix.

Each case runs ``python -m lib_mbw search`` in-process and checks the exact
message, exit code 2 and that ``csv/history`` holds no run folder (on main
these ran a search of failed rows, or died with a traceback).
"""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from safetensors.torch import save_file

from lib_mbw.cli import main

REPO = Path(__file__).resolve().parent.parent
FAKE = ["--scorer", "tests.loop_backend:make_scorer", "--strategy", "tests.loop_backend:make_optimizer"]


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoints: dict[str, tuple[Path, Path]]) -> Path:
    """A folder with models A.safetensors / B.safetensors (tiny SD1) and one payload; the CLI runs inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("AUTO_MBW_HASH_CACHE", "off")
    a, b = tiny_checkpoints["sd1"]
    shutil.copy(a, tmp_path / "A.safetensors")
    shutil.copy(b, tmp_path / "B.safetensors")
    (tmp_path / "payloads" / "wildcards").mkdir(parents=True)
    (tmp_path / "payloads" / "p.json").write_text(json.dumps({"prompt": "a house", "seed": 1}))
    return tmp_path


def search(*args: str) -> int:
    return main(["search", "-a", "A.safetensors", "-b", "B.safetensors", *FAKE, "--generator", "tests.loop_backend:make_generator", "-q", *args])


def search_diffusers(*args: str) -> int:
    """The default (diffusers) generator loads A and B from files: pre-flight reads their headers (nothing is loaded)."""
    return main(["search", "-a", "A.safetensors", "-b", "B.safetensors", *FAKE, "-q", *args])


def refused(work: Path, capsys: pytest.CaptureFixture[str], code: int, message: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == f"error: {message}\n"
    history = work / "csv" / "history"
    assert not history.exists() or not any(history.iterdir()), "no run folder may be left behind"


def test_model_b_missing(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    (work / "B.safetensors").unlink()
    assert search("--history-dir", "h2") == 2
    assert capsys.readouterr().err == "error: model B: B.safetensors: file not found; check -b/--model-b (models.b)\n"
    assert not (work / "h2").exists()
    refused(work, capsys, search_diffusers(), "model B: B.safetensors: file not found; check -b/--model-b (models.b)")


def test_model_b_truncated(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = (work / "B.safetensors").read_bytes()
    (work / "B.safetensors").write_bytes(data[: len(data) // 2])
    refused(work, capsys, search_diffusers(), f"model B: B.safetensors: file is truncated ({len(data) // 2} bytes, header promises {len(data)}); download or copy it again")


def test_model_b_not_stable_diffusion(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    save_file({"lm_head.weight": torch.zeros(4, 4)}, str(work / "B.safetensors"))
    code = search_diffusers()
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: model B: B.safetensors: ") and err.count("\n") == 1
    assert not (work / "csv" / "history").exists()


def test_model_b_of_another_architecture(work: Path, capsys: pytest.CaptureFixture[str], tiny_checkpoints: dict[str, tuple[Path, Path]]) -> None:
    shutil.copy(tiny_checkpoints["sdxl"][1], work / "B.safetensors")
    refused(work, capsys, search_diffusers(), "model A (A.safetensors) is SD1.x but model B (B.safetensors) is SDXL: architectures differ, so they cannot be merged; pick two models of one architecture")


def test_model_b_pickle_is_refused(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "B.safetensors").rename(work / "B.ckpt")
    code = main(["search", "-a", "A.safetensors", "-b", "B.ckpt", *FAKE, "-q"])
    refused(work, capsys, code, "model B: B.ckpt: pickle checkpoints can run arbitrary code when loaded; convert it to .safetensors, or pass --allow-pickle if you trust its source")


@pytest.mark.parametrize("b", ["A.safetensors", "./A.safetensors", "copy"])
def test_model_b_is_model_a(work: Path, capsys: pytest.CaptureFixture[str], b: str) -> None:
    how = {"A.safetensors": "the same path", "./A.safetensors": "the same path", "copy": "identical files (same sha256)"}[b]
    if b == "copy":
        b = "B.safetensors"
        shutil.copy(work / "A.safetensors", work / b)
    code = main(["search", "-a", "A.safetensors", "-b", b, *FAKE, "--generator", "tests.loop_backend:make_generator", "-q"])
    refused(work, capsys, code, f"model A (A.safetensors) and model B ({Path(b)}) are {how}: every merge would be the same model; pick two different models")


def test_diffusers_generator_needs_both_models(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["search", "-a", "A.safetensors", *FAKE, "-q"])
    refused(work, capsys, code, "model B is not set; give the checkpoint to merge with -b/--model-b (models.b)")


def test_broken_variant_syntax(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "payloads" / "p.json").write_text(json.dumps({"prompt": "a {fox|cat", "seed": 1}))
    refused(work, capsys, search(), "1 bad payload file(s):\n  payloads/p.json: prompt has broken variant syntax: Expected end of text at character 3 ('a {fox|cat'); close every { with } (or set \"expansion\": \"none\")")


def test_missing_wildcard_file_is_named(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "payloads" / "p.json").write_text(json.dumps({"prompt": "a __animal__", "seed": 1}))
    refused(work, capsys, search(), "cannot prepare payloads:\n  payload p: wildcard(s) __animal__ have no file in payloads/wildcards: create payloads/wildcards/animal.txt")


def test_unknown_sampler_with_the_diffusers_generator(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "payloads" / "p.json").write_text(json.dumps({"prompt": "a house", "seed": 1, "sampler": "Eulr a"}))
    code = main(["search", "-a", "A.safetensors", "-b", "B.safetensors", *FAKE, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: payloads/p.json: field 'sampler': 'Eulr a' is not available with the diffusers backend; use one of: Euler, Euler a,")
    assert not (work / "csv" / "history").exists()


def test_unknown_scheduler_with_the_diffusers_generator(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "payloads" / "p.json").write_text(json.dumps({"prompt": "a house", "seed": 1, "scheduler": "Karass"}))
    code = main(["search", "-a", "A.safetensors", "-b", "B.safetensors", *FAKE, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: payloads/p.json: field 'scheduler': schedule type 'Karass' is not available with the diffusers backend")


def test_a_generator_checks_its_own_sampler_names() -> None:
    from lib_mbw.errors import PayloadError
    from lib_mbw.generators.base import check_sampler

    class WebUILike:
        def check_sampler(self, sampler: str, scheduler: str, source: str) -> None:
            if sampler not in ("Euler a", "DPM++ 2M"):
                raise PayloadError(f"{source}: field 'sampler': {sampler!r} is not a sampler of this WebUI")

    assert check_sampler(WebUILike(), "Euler a", "Automatic", "p.json") is True
    assert check_sampler(object(), "anything", "x", "p.json") is False
    with pytest.raises(PayloadError, match="'Eulr' is not a sampler of this WebUI"):
        check_sampler(WebUILike(), "Eulr", "Automatic", "p.json")


def test_steps_have_an_upper_bound(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "payloads" / "p.json").write_text(json.dumps({"prompt": "a house", "seed": 1, "steps": 1000000000}))
    refused(work, capsys, search(), "1 bad payload file(s):\n  payloads/p.json: steps must be an integer between 1 and 500 (every image of every evaluation is rendered with this many steps; samplers converge long before 500), got 1000000000")


def test_output_file_exists(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "out.safetensors").write_bytes(b"mine")
    refused(work, capsys, search("-o", "out.safetensors"), "output out.safetensors: already exists; choose another name with -o or pass --overwrite")
    assert (work / "out.safetensors").read_bytes() == b"mine"


def test_output_folder_read_only_is_not_called_a_full_disk(work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (work / "ro").mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir", "")).name == "ro":
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    refused(work, capsys, search("-o", "ro"), "output folder ro is not writable: read-only file system; choose another folder with -o/--output or fix its permissions")


def test_output_folder_without_room_for_the_model(work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from lib_mbw.search import preflight

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    code = search("-o", "models", "--dtype", "fp32")
    err = capsys.readouterr().err
    need = int(sum(t.numel() for t in __import__("safetensors.torch").torch.load_file("A.safetensors").values()) * 4 * 1.02)
    assert code == 2 and err == (
        f"error: output folder models: not enough free disk space for the merged model (0.00 GiB free, it needs about "
        f"{need / 2**30:.2f} GiB at fp32); free some space or choose another folder with -o\n"
    )
    assert not (work / "csv" / "history").exists()


def test_a_missing_output_folder_is_created_and_the_search_runs(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert search("-o", "new/models", "--no-merge", "--max-evals", "2", "--rescore-top", "0") == 0
    assert (work / "new" / "models").is_dir() is False  # --no-merge: no merged model, so no folder for it
    assert search("-o", "new/models", "--max-evals", "2", "--rescore-top", "0") == 0
    assert (work / "new" / "models").is_dir()


def test_ui_search_runs_preflight_before_loading_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoints: dict[str, tuple[Path, Path]]) -> None:
    from lib_mbw.hosts.base import HostPaths
    from lib_mbw.hosts.standalone import StandaloneHost
    from lib_mbw.ui import actions
    from lib_mbw.ui.controller import SearchController
    from lib_mbw.ui.form import FormValues

    monkeypatch.syspath_prepend(str(REPO))
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_checkpoints["sd1"][0], models / "A.safetensors")
    shutil.copy(tiny_checkpoints["sd1"][1], models / "B.safetensors")
    payloads = tmp_path / "payloads"
    payloads.mkdir()
    (payloads / "p.json").write_text(json.dumps({"prompt": "a house", "seed": 1}))
    made: list[str] = []

    class Host(StandaloneHost):
        def make_generator(self, model_a, model_b, options):
            made.append(model_a)
            return super().make_generator(model_a, model_b, options)

    host = Host(models, generator="tests.ui_backend:make_generator", paths=HostPaths(payloads, payloads / "wildcards", tmp_path / "history", models))
    controller = SearchController(host, {"tests.loop_backend:make_optimizer", "tests.ui_backend:make_scorer"})  # enabled by the server's starter
    values = FormValues(model_a="A.safetensors", model_b="B.safetensors", strategy="tests.loop_backend:make_optimizer",
                        scorer="tests.ui_backend:make_scorer", max_evaluations=2, rescore_top=0, run_name="ui")
    (models / "B.safetensors").write_bytes((models / "B.safetensors").read_bytes()[:1000])  # B damaged after it was listed
    result = actions.start_from_form(host, controller, values)
    if result.ok:
        assert controller.wait(20)
        state = controller.snapshot()
        assert state.state == "failed"
        assert state.message == f"could not start the search: model B: {models / 'B.safetensors'}: not a safetensors file, or its header is corrupt"
    else:
        assert "not a safetensors file" in " ".join(result.errors.values())
    assert made == [], "the models must not be loaded for a search that cannot start"
    assert not (tmp_path / "history").exists() or not any((tmp_path / "history").iterdir())


def test_a_host_loads_pickle_checkpoints_itself(tmp_path: Path) -> None:
    """The WebUI loads .ckpt models with its own loader: pre-flight checks they exist, and never unpickles them."""
    from lib_mbw.search.preflight import check_models
    from lib_mbw.search.settings import settings_from_dict

    (tmp_path / "a.ckpt").write_bytes(b"not unpickled here")
    (tmp_path / "b.ckpt").write_bytes(b"another model")
    settings = settings_from_dict({"models": {"a": str(tmp_path / "a.ckpt"), "b": str(tmp_path / "b.ckpt")}, "generator": {"name": "a1111"}})
    infos = check_models(settings, host=object())
    assert infos["A"].family is None and infos["B"].size == len(b"another model")
    settings.models.b = str(tmp_path / "gone.ckpt")
    with pytest.raises(Exception, match=r"^model B: .*gone.ckpt: file not found; check -b/--model-b \(models.b\)$"):
        check_models(settings, host=object())


def test_a_plugin_generator_reads_model_files_its_own_way(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plugin generator may take any file: pre-flight only checks that it exists and is not model A."""
    (work / "B.safetensors").write_bytes(b"the plugin's own format")
    assert search("--max-evals", "2", "--rescore-top", "0") == 0
    capsys.readouterr()
    (work / "B.safetensors").unlink()
    assert search("--history-dir", "h2") == 2
    assert capsys.readouterr().err == "error: model B: B.safetensors: file not found; check -b/--model-b (models.b)\n"
    assert not (work / "h2").exists()
