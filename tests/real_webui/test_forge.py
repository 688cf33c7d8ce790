"""Stable Diffusion WebUI Forge (2025-06, dfdcbab6) started for real on CPU, auto-MBW installed by its launcher.

One Forge serves the whole module (see tests/real_webui; it starts after the A1111 module, never beside
it). The checkpoints are ``forge_models``: SD1.5 keys Forge recognises, a UNet 320 channels wide at every
level. Forge builds its models under ``torch.inference_mode()``, which is what broke every search and the
user's model before the runtime merger learned to replace inference Parameters. The tests run in file
order and each leaves Forge as a user would expect it (model A selected and loaded, no search running).
Images are 64x64, 2 steps, fixed seed: "identical" means equal decoded pixels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.real_webui.harness import RunningHost
from tests.real_webui.memory_check import MIB, trace_searches
from tests.real_webui.scenarios import (
    ALL_ONES,
    HALF,
    history_rows,
    long_search,
    mix_search,
    plain,
    reference_scorer,
    run_search,
    txt2img_payload,
    watch_statuses,
    write_references,
)
from tests.real_webui.server import TINY_PAYLOAD

from . import forge_models  # noqa: F401  (registers the Forge checkpoint writer)


@pytest.fixture(scope="module")
def image_a(forge: RunningHost) -> bytes:
    """Model A's pixels for the tiny payload, before auto-MBW touched anything (Forge loads A lazily here)."""
    return txt2img_payload(forge).pixels()


@pytest.fixture(scope="module")
def references(forge: RunningHost, image_a: bytes) -> Path:
    """Model B's image as the reference scorer's target (rendered with ``override_settings``)."""
    return write_references(forge, forge.server.payload_dir / "references")  # a folder the UI may name (inside the host's folders)


@pytest.fixture(scope="module")
def image_b(forge: RunningHost, references: Path) -> bytes:
    from PIL import Image

    with Image.open(references / "tiny.png") as image:
        return image.convert("RGB").tobytes()


def stem(name: str) -> str:
    return Path(name).stem


def assert_users_model_is_a(host: RunningHost, image_a: bytes) -> None:
    """The checkpoint setting and the loaded model are A, and Forge's own txt2img renders A's image."""
    a = stem(host.models.model_a)
    assert host.client.options()["sd_model_checkpoint"].startswith(a), "the checkpoint setting changed"
    assert txt2img_payload(host).pixels() == image_a, "model A's image changed (or txt2img fails)"
    assert host.client.mbw_status()["loaded_checkpoint"].startswith(a), "another model is loaded"


def write_payload(host: RunningHost, name: str, **changes: object) -> None:
    (host.server.payload_dir / f"{name}.json").write_text(json.dumps({**TINY_PAYLOAD, **changes}), encoding="utf-8")


def log_since(host: RunningHost, mark: int) -> str:
    return host.server.log_text()[mark:]


def test_the_tab_and_the_routes_load(forge: RunningHost, image_a: bytes) -> None:
    assert {"auto_mbw_search", "auto_mbw_watch", "auto_mbw_stop", "auto_mbw_merge"} <= forge.client.api_names()
    status = forge.client.mbw_status()
    assert status["host"] == "forge" and status["searching"] is False
    assert status["loaded_checkpoint"].startswith(stem(forge.models.model_a))
    assert "[auto-MBW]" in forge.server.log_text(), "install.py ran through the launcher"


def test_apply_and_restore_through_the_routes_keep_forges_model_working(forge: RunningHost, image_a: bytes, image_b: bytes) -> None:
    """Before the fix the first forward after apply raised 'Inference tensors do not track version counter.'
    and txt2img answered HTTP 500 until another checkpoint was loaded."""
    assert image_b != image_a, "the two test models must render differently"
    a, b = forge.models.model_a, forge.models.model_b
    assert forge.client.mbw_apply(a, b, ALL_ONES)["merged"] is True
    assert txt2img_payload(forge).pixels() == image_b, "all weights 1 renders model B's image"
    forge.client.mbw_apply(a, b, HALF)
    half = txt2img_payload(forge).pixels()
    assert half not in (image_a, image_b)
    forge.client.mbw_restore()
    assert txt2img_payload(forge).pixels() == image_a, "restore gives A back exactly"
    assert forge.client.mbw_stop()["stopped"] == "session"
    assert_users_model_is_a(forge, image_a)


def test_a_search_finishes_writes_its_run_folder_and_leaves_the_users_model(forge: RunningHost, image_a: bytes, references: Path) -> None:
    # write_references rendered B through override_settings: Forge put the setting back but left B loaded
    mark = len(forge.server.log_text())
    result = run_search(forge, **reference_scorer(references))
    assert "**Finished**" in result.final_status, result.statuses
    assert result.run_dir is not None and (result.run_dir / "manifest.json").is_file()
    rows = history_rows(result.run_dir)
    assert [r["status"] for r in rows if r["status"] != "selected"] == ["ok", "ok", "ok"], rows
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows if r["status"] == "ok")
    assert "this search holds" in log_since(forge, mark), "the memory a search takes is stated before it starts"
    assert_users_model_is_a(forge, image_a)


def test_a_three_model_mix_search_on_inference_mode_weights_leaves_a_working_model_a(forge: RunningHost, image_a: bytes, references: Path) -> None:
    """Forge's inference-mode Parameters under a mix: every render while mixed works, and A renders as before."""
    mix_search(forge, references)
    assert_users_model_is_a(forge, image_a)


def test_an_override_settings_call_does_not_change_the_users_checkpoint(forge: RunningHost, image_a: bytes, image_b: bytes, references: Path) -> None:
    assert txt2img_payload(forge, override_settings={"sd_model_checkpoint": forge.models.model_b}).pixels() == image_b
    assert forge.client.options()["sd_model_checkpoint"].startswith(stem(forge.models.model_a))
    result = run_search(forge, max_evaluations=2, **reference_scorer(references))
    assert "**Finished**" in result.final_status, result.statuses
    assert_users_model_is_a(forge, image_a)


def test_merge_and_save_gives_a_checkpoint_forge_lists_with_its_metadata(forge: RunningHost) -> None:
    message = plain(forge.gradio("/auto_mbw_merge", ["mbw-forge-merged", False]))
    assert "mbw-forge-merged" in str(message), message
    forge.client.refresh_checkpoints()
    listed = [m for m in forge.client.sd_models() if m["model_name"] == "mbw-forge-merged"]
    assert listed, [m["model_name"] for m in forge.client.sd_models()]
    with safe_open(listed[0]["filename"], "pt") as merged:
        metadata = merged.metadata()
    assert {"sd_merge_recipe", "sd_merge_models", "auto_mbw_recipe"} <= set(metadata)
    assert json.loads(metadata["auto_mbw_recipe"])


def test_a_lora_in_the_prompt_works_on_top_of_a_merge(forge: RunningHost, image_a: bytes, references: Path) -> None:
    lora = f" <lora:{forge.models.lora}:1>"
    forge.client.mbw_apply(forge.models.model_a, forge.models.model_b, HALF)
    merged = txt2img_payload(forge).pixels()
    merged_lora = txt2img_payload(forge, prompt=TINY_PAYLOAD["prompt"] + lora).pixels()
    assert merged_lora != merged, "the LoRA changes the merge's image"
    assert txt2img_payload(forge).pixels() == merged, "without the LoRA the merge is back exactly"
    forge.client.mbw_apply(forge.models.model_a, forge.models.model_b, ALL_ONES)  # an edit while Forge holds LoRA backups
    forge.client.mbw_restore()
    assert txt2img_payload(forge).pixels() == image_a
    a_lora = txt2img_payload(forge, prompt=TINY_PAYLOAD["prompt"] + lora).pixels()
    assert a_lora not in (image_a, merged_lora), "the LoRA applies to A, not to a stale merge"
    forge.client.mbw_stop()
    write_payload(forge, "lora", prompt=TINY_PAYLOAD["prompt"] + lora)
    shutil.copyfile(references / "tiny.png", references / "lora.png")  # the reference scorer's target for this payload
    result = run_search(forge, payload_names=["lora"], max_evaluations=2, **reference_scorer(references))
    assert "**Finished**" in result.final_status, result.statuses
    rows = [r for r in history_rows(result.run_dir) if r["status"] != "selected"]
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["reason"] for r in rows]
    assert_users_model_is_a(forge, image_a)


def test_forges_interrupt_mid_search_shows_an_interrupted_run(forge: RunningHost, image_a: bytes, references: Path) -> None:
    with long_search(forge, references) as stream:
        forge.client.interrupt()
        statuses = watch_statuses(stream.wait(300))
    final = statuses[-1]
    assert "**Stopped**" in final and "interrupted in the WebUI" in final and "Finished" not in final, statuses[-3:]
    assert_users_model_is_a(forge, image_a)


def test_the_tabs_stop_mid_search_restores_the_model(forge: RunningHost, image_a: bytes, references: Path) -> None:
    with long_search(forge, references) as stream:
        forge.gradio("/auto_mbw_stop", [])
        statuses = watch_statuses(stream.wait(300))
    assert "**Stopped**" in statuses[-1] and "the model was restored" in statuses[-1], statuses[-3:]
    assert_users_model_is_a(forge, image_a)


def test_a_checkpoint_change_mid_search_never_yields_a_scored_candidate(forge: RunningHost, image_a: bytes, references: Path) -> None:
    """Forge reloads the model inside the next render: that candidate was drawn by pure model B (which the
    reference scorer rates best of all) and used to be recorded ``ok`` and become the best."""
    a, b = forge.models.model_a, forge.models.model_b
    mark = len(forge.server.log_text())
    before = set(forge.server.history_dir.iterdir())
    with long_search(forge, references) as stream:
        forge.client.set_options(sd_model_checkpoint=b)  # not queued: Forge loads B inside the next render
        statuses = watch_statuses(stream.wait(300))
    run_dir = max((p for p in forge.server.history_dir.iterdir() if p not in before), key=lambda p: p.stat().st_mtime)
    rows = [r for r in history_rows(run_dir) if r["status"] != "selected"]
    changed = [i for i, r in enumerate(rows) if f"loaded {stem(b)}" in r["reason"]]
    assert changed, rows
    assert rows[changed[0]]["status"] == "failed" and "not scored" in rows[changed[0]]["reason"]
    assert len(rows) == changed[0] + 1, "no candidate is evaluated after the change"
    assert "search stopped" in "\n".join(statuses), statuses[-3:]
    log = log_since(forge, mark)
    assert "Traceback" not in log and "could not restore" not in log, log[-4000:]
    assert forge.client.options()["sd_model_checkpoint"].startswith(stem(b)), "the user's new choice is kept"
    assert forge.client.mbw_status()["loaded_checkpoint"].startswith(stem(b))
    forge.client.set_options(sd_model_checkpoint=a)
    assert_users_model_is_a(forge, image_a)


def test_memory_after_three_searches_is_where_it_started(forge: RunningHost, image_a: bytes, references: Path) -> None:
    """Margin: a quarter of the UNet's fp32 size (446 MB) over three searches, and no growth from the second on.

    Before the fix a full-size SD1.5 search left 1.5-2 GB more resident each time (glibc kept the freed heap)."""
    unet_bytes = 111_485_124 * 4
    run_search(forge, max_evaluations=2, **reference_scorer(references))  # warm-up: scorer and payload code loaded

    def search() -> None:
        result = run_search(forge, max_evaluations=3, **reference_scorer(references))
        assert "**Finished**" in result.final_status, result.statuses

    trace = trace_searches(forge.server.process.pid, search, 3)
    print(f"\n[real-webui] forge memory: {trace.describe()}")
    assert trace.after[-1] - trace.before <= unet_bytes / 4, trace.describe()
    assert trace.after[-1] - trace.after[0] <= 64 * MIB, trace.describe()
    assert_users_model_is_a(forge, image_a)

