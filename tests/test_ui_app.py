"""The standalone app served on 127.0.0.1 and driven over HTTP (gradio_client), under gradio 3.41 and 4.40.

Each case runs ``tests/ui_driver.py`` in a subprocess: with this interpreter
(the main venv: gradio 3.41.2, the WebUI's version) and with
``.venv-gradio4/bin/python`` (gradio 4.40.0 on pydantic 2, Forge's version;
made by ``tools/setup.sh --test``). The gradio-4 case is skipped when that
venv is missing, unless ``AUTO_MBW_REQUIRE_GRADIO4`` is set (CI sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
GRADIO4_PYTHON = ROOT / ".venv-gradio4" / "bin" / "python"


def run_driver(python: str) -> dict:
    result = subprocess.run([python, str(ROOT / "tests" / "ui_driver.py")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"driver failed:\n{result.stdout[-2000:]}\n{result.stderr[-6000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_app_under_gradio_3() -> None:
    summary = run_driver(sys.executable)
    assert summary["gradio"] == "3.41.2"
    assert summary["rows"] == 8 and summary["frames"] >= 2 and summary["stopped_after_rows"] < 100


def test_app_under_gradio_4() -> None:
    if not GRADIO4_PYTHON.exists():
        if os.environ.get("AUTO_MBW_REQUIRE_GRADIO4"):
            pytest.fail(f"{GRADIO4_PYTHON} is missing; run: bash tools/setup.sh --test")
        pytest.skip(f"no gradio-4 venv at {GRADIO4_PYTHON} (bash tools/setup.sh --test makes it)")
    summary = run_driver(str(GRADIO4_PYTHON))
    assert summary["gradio"] == "4.40.0"
    assert summary["rows"] == 8 and summary["frames"] >= 2 and summary["stopped_after_rows"] < 100
    in_process = subprocess.run(
        [str(GRADIO4_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "in_process or webui_like"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert in_process.returncode == 0 and "3 passed" in in_process.stdout, in_process.stdout[-4000:] + in_process.stderr[-2000:]


def test_build_ui_in_process_wires_every_form_field() -> None:
    """build_ui under this gradio: the form's inputs, the API endpoints, and a form filled from defaults."""
    from lib_mbw.hosts.base import HostPaths
    from lib_mbw.hosts.standalone import StandaloneHost
    from lib_mbw.ui import build_ui
    from lib_mbw.ui.form import FormValues

    paths = HostPaths(ROOT / "payloads", ROOT / "payloads" / "wildcards", ROOT / "csv" / "history", ROOT / "tests" / "data")
    blocks = build_ui(StandaloneHost(paths.models, paths=paths), FormValues(run_name="prefilled", levels=11, strategy="mine:make"))
    config = blocks.get_config_file()
    api_names = {d.get("api_name") for d in config["dependencies"]}
    assert {"auto_mbw_search", "auto_mbw_watch", "auto_mbw_stop", "auto_mbw_pause", "auto_mbw_resume", "auto_mbw_rate",
            "auto_mbw_export", "auto_mbw_merge", "auto_mbw_resume_run"} <= api_names
    by_id = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    assert by_id["mbw-run-name"]["props"]["value"] == "prefilled"
    assert by_id["mbw-levels"]["props"]["value"] == 11
    assert by_id["mbw-strategy"]["props"]["value"] == "mine:make"
    search = next(d for d in config["dependencies"] if d.get("api_name") == "auto_mbw_search")
    assert len(search["inputs"]) == len(FormValues().values())
    assert not any(d.get("every") for d in config["dependencies"]), "no polling timers"


def test_the_tab_renders_inside_a_webui_like_page() -> None:
    """The WebUI builds each extension's Blocks, then renders it inside its own page's tabs."""
    import gradio as gr

    from lib_mbw.hosts.base import HostPaths
    from lib_mbw.hosts.standalone import StandaloneHost
    from lib_mbw.ui import build_ui

    paths = HostPaths(ROOT / "payloads", ROOT / "payloads" / "wildcards", ROOT / "csv" / "history", ROOT / "tests" / "data")
    tab = build_ui(StandaloneHost(paths.models, paths=paths))
    with gr.Blocks(analytics_enabled=False) as page:
        with gr.Tabs():
            with gr.TabItem("txt2img"):
                gr.Textbox(label="prompt")
            with gr.TabItem("auto-MBW", id="auto_mbw"):
                tab.render()
    config = page.get_config_file()
    assert "auto_mbw_search" in {d.get("api_name") for d in config["dependencies"]}
    assert any(c.get("props", {}).get("elem_id") == "mbw-unet" for c in config["components"])


def test_stream_encoder_in_process_keeps_streamed_lists_right() -> None:
    """Gradio 4 streams frames as diffs; shrinking lists must still arrive intact (see compat.StreamEncoder)."""
    from lib_mbw.ui import compat

    frames = [[["a", "b", "c", "d"]], [["a"]], [compat.no_change()], [["x", "y"]], [["x"]], [[]], [["z", "w", "v"]]]
    encoder = compat.StreamEncoder()
    if not compat.IS_GRADIO_4:
        assert all(encoder.encode(frame) == frame for frame in frames)
        return
    from gradio.utils import diff
    from gradio_client.utils import apply_diff

    shown: Any = None
    previous: Any = None
    received: Any = None
    for number, frame in enumerate(frames):
        chunk = encoder.encode(frame)[0]
        received = chunk if number == 0 else apply_diff(received, diff(previous, chunk))  # what the browser/client rebuilds
        previous = chunk
        if isinstance(received, dict):
            shown = received.get("value", shown)  # an update: its value, or no change
        else:
            shown = received
        expected = shown if isinstance(frame[0], dict) else frame[0]
        assert shown == expected, f"frame {number}: shown {shown!r}, sent {frame[0]!r}"
    naive = [["a", "b", "c", "d"], ["a"]]
    with pytest.raises(IndexError):  # what the encoder prevents
        apply_diff(naive[0], diff(naive[0], naive[1]))
