"""AUTOMATIC1111 1.10.1 started for real on CPU, auto-MBW installed by its launcher (see tests/real_webui).

One WebUI serves the whole module; the tests run in file order and each leaves the WebUI as a user
would expect it (model A loaded and selected, no search running). Images are 64x64, 2 steps, fixed seed:
"identical" means the decoded pixels are equal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.real_webui.harness import RunningHost
from tests.real_webui.scenarios import (
    ALL_ONES,
    HALF,
    assert_users_model_is_a,
    mix_search,
    history_rows,
    imagereward_in_host,
    plain,
    reference_scorer,
    run_search,
    long_search,
    txt2img_payload,
    watch_statuses,
    write_payload,
    write_references,
)
from tests.real_webui.scenarios import HOST_PINS
from tests.real_webui.server import TINY_PAYLOAD



@pytest.fixture(scope="module")
def image_a(a1111: RunningHost) -> bytes:
    """Model A's pixels for the tiny payload, before auto-MBW touched anything."""
    return txt2img_payload(a1111).pixels()


@pytest.fixture(scope="module")
def references(a1111: RunningHost, image_a: bytes) -> Path:
    """Model B's image as the reference scorer's target (rendered with ``override_settings``)."""
    return write_references(a1111, a1111.server.payload_dir / "references")  # a folder the UI may name (inside the host's folders)


def test_the_tab_the_routes_and_the_installed_packages_load(a1111: RunningHost) -> None:
    assert {"auto_mbw_search", "auto_mbw_watch", "auto_mbw_stop", "auto_mbw_merge"} <= a1111.client.api_names()
    status = a1111.client.mbw_status()
    assert status["host"] == "a1111" and status["searching"] is False
    assert status["loaded_checkpoint"].startswith("mbw-test-a")
    log = a1111.server.log_text()
    assert "[auto-MBW] installing image-reward" in log, "install.py ran through the launcher"
    assert "could not install" not in log and "import check failed" not in log, log[-6000:]


def test_imagereward_imports_and_scores_in_the_webuis_venv(a1111: RunningHost) -> None:
    """In the venv the launcher's run of install.py left (the WebUI's python), the default scorer works."""
    result = imagereward_in_host(a1111)
    scores, package = result["scores"], result["package_scores"]
    assert all(math.isfinite(s) for s in scores) and scores[0] != scores[1]
    assert scores == pytest.approx(package, abs=1e-4), "batched scores equal the package's own score()"
    for name, pinned in HOST_PINS["a1111"].items():
        assert result["versions"][name] == pinned, f"{name}: the WebUI's pin was changed"
    print(f"\n[real-webui] a1111 ImageReward in the WebUI's venv: {result}")


def test_a_search_finishes_writes_its_run_folder_and_leaves_the_users_model(a1111: RunningHost, image_a: bytes, references: Path) -> None:
    # write_references rendered B through override_settings: A1111 put the setting back but left B loaded
    result = run_search(a1111, **reference_scorer(references))
    assert "**Finished**" in result.final_status, result.statuses
    assert result.run_dir is not None and (result.run_dir / "manifest.json").is_file()
    rows = history_rows(result.run_dir)
    assert [r["status"] for r in rows if r["status"] != "selected"] == ["ok", "ok", "ok"], [r["reason"] for r in rows]
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows if r["status"] == "ok")
    assert_users_model_is_a(a1111, image_a)


def test_a_three_model_mix_search_finishes_and_leaves_the_users_model(a1111: RunningHost, image_a: bytes, references: Path) -> None:
    mix_search(a1111, references)
    assert_users_model_is_a(a1111, image_a)


def test_merge_and_save_gives_a_checkpoint_the_webui_lists_with_its_metadata(a1111: RunningHost) -> None:
    message = plain(a1111.gradio("/auto_mbw_merge", ["mbw-real-merged", False]))
    assert "mbw-real-merged" in str(message), message
    a1111.client.refresh_checkpoints()
    listed = [m for m in a1111.client.sd_models() if m["model_name"] == "mbw-real-merged"]
    assert listed, [m["model_name"] for m in a1111.client.sd_models()]
    with safe_open(listed[0]["filename"], "pt") as merged:
        metadata = merged.metadata()
    assert {"sd_merge_recipe", "sd_merge_models", "auto_mbw_recipe"} <= set(metadata)
    assert json.loads(metadata["auto_mbw_recipe"])


def test_an_override_settings_call_does_not_change_the_users_checkpoint(a1111: RunningHost, image_a: bytes) -> None:
    image_b = txt2img_payload(a1111, override_settings={"sd_model_checkpoint": a1111.models.model_b}).pixels()
    assert image_b != image_a
    assert a1111.client.options()["sd_model_checkpoint"].startswith("mbw-test-a")
    assert a1111.client.mbw_status()["loaded_checkpoint"].startswith("mbw-test-b"), "A1111 leaves B loaded"
    applied = a1111.client.mbw_apply(a1111.models.model_a, a1111.models.model_b, ALL_ONES)
    assert applied["merged"] is True
    assert txt2img_payload(a1111).pixels() == image_b, "all weights 1 renders model B's image"
    a1111.client.mbw_restore()
    assert txt2img_payload(a1111).pixels() == image_a, "restore gives A back exactly"
    assert a1111.client.mbw_stop()["stopped"] == "session"
    assert_users_model_is_a(a1111, image_a)


def test_the_console_shows_auto_mbws_info_messages(a1111: RunningHost) -> None:
    assert "auto-MBW: loading model A" in a1111.server.log_text(), "INFO messages reach the WebUI's console"


def test_a_lora_in_the_prompt_works_on_top_of_a_merge(a1111: RunningHost, image_a: bytes, references: Path) -> None:
    lora = f" <lora:{a1111.models.lora}:1>"
    a1111.client.mbw_apply(a1111.models.model_a, a1111.models.model_b, HALF)
    merged = txt2img_payload(a1111).pixels()
    merged_lora = txt2img_payload(a1111, prompt=TINY_PAYLOAD["prompt"] + lora).pixels()
    assert merged_lora != merged, "the LoRA changes the merge's image"
    assert txt2img_payload(a1111).pixels() == merged, "without the LoRA the merge is back exactly"
    a1111.client.mbw_restore()
    assert txt2img_payload(a1111).pixels() == image_a
    a_lora = txt2img_payload(a1111, prompt=TINY_PAYLOAD["prompt"] + lora).pixels()
    assert a_lora not in (image_a, merged_lora), "the LoRA applies to A, not to a stale merge"
    a1111.client.mbw_stop()
    write_payload(a1111, "lora", prompt=TINY_PAYLOAD["prompt"] + lora)
    (references / "lora.png").write_bytes((references / "tiny.png").read_bytes())  # the reference scorer's target
    result = run_search(a1111, payload_names=["lora"], max_evaluations=2, **reference_scorer(references))
    assert "**Finished**" in result.final_status, result.statuses
    rows = [r for r in history_rows(result.run_dir) if r["status"] != "selected"]
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["reason"] for r in rows]
    assert_users_model_is_a(a1111, image_a)


def test_the_webuis_interrupt_mid_search_shows_an_interrupted_run(a1111: RunningHost, image_a: bytes, references: Path) -> None:
    with long_search(a1111, references) as stream:
        a1111.client.interrupt()
        statuses = watch_statuses(stream.wait(300))
    final = statuses[-1]
    assert "**Stopped**" in final and "interrupted in the WebUI" in final and "Finished" not in final, statuses[-3:]
    assert_users_model_is_a(a1111, image_a)


def test_the_tabs_stop_mid_search_restores_the_model(a1111: RunningHost, image_a: bytes, references: Path) -> None:
    with long_search(a1111, references) as stream:
        a1111.gradio("/auto_mbw_stop", [])
        statuses = watch_statuses(stream.wait(300))
    assert "**Stopped**" in statuses[-1] and "the model was restored" in statuses[-1], statuses[-3:]
    assert_users_model_is_a(a1111, image_a)


def test_a_broken_scorer_fails_while_preparing_before_any_render(a1111: RunningHost, image_a: bytes) -> None:
    # HF_HUB_OFFLINE=1 and no weights in models/ImageReward: the default scorer cannot load
    result = run_search(a1111, scorer="imagereward", scorer_options="")
    assert "**Failed**" in result.final_status, result.statuses
    assert not any("**Running**" in s for s in result.statuses), "nothing was rendered"
    expected = str(a1111.root / "models" / "ImageReward")
    assert expected in result.final_status, f"the scorer uses the WebUI's models/ImageReward: {result.final_status}"
    if result.run_dir is not None and (result.run_dir / "history.csv").is_file():
        assert history_rows(result.run_dir) == []
    assert_users_model_is_a(a1111, image_a)
