"""What a UI client can reach (anyone, with ``ui --host 0.0.0.0`` or a WebUI started with ``--listen``).

A client picks components among registered names and the plugins the server's
starter enabled; names runs by id inside the history folder only; reads warm
starts and recipe files only inside the history folder, and errors never
quote a file. ``tests/ui_driver.py`` checks the same over HTTP, and what
gradio's ``/file=`` serves, under gradio 3.41 and 4.40.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_mbw.errors import MBWError
from lib_mbw.ui import actions
from lib_mbw.ui.controller import SearchController
from lib_mbw.ui.form import settings_from_form
from lib_mbw.ui.runs import run_folder
from tests.test_ui_controller import PLUGINS, form, host  # noqa: F401

SECRET = "admin:$6$s3cr3tHASH:19000:0:99999:7:::\n"


def test_a_client_cannot_choose_a_plugin_the_server_did_not_enable(host, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    controller = SearchController(host, PLUGINS)
    values = form(strategy="default", scorer="subprocess:run", scorer_options=json.dumps({"args": f"touch {marker}", "shell": True}))
    result = actions.start_from_form(host, controller, values)
    assert result.errors == {"run_name": (
        "search form: scorer 'subprocess:run' is a plugin (code), and plugins are never loaded from a file or a UI client: "
        "if you trust that code, enable it when you start auto-MBW with --plugin subprocess:run"
    )}
    assert not controller.active and not marker.exists() and not host.made
    assert not host.paths.history.exists() or not any(host.paths.history.iterdir())


def test_resume_from_the_ui_of_a_run_whose_manifest_names_a_plugin_is_refused(host, tmp_path: Path) -> None:
    controller = SearchController(host, PLUGINS)
    assert actions.start_from_form(host, controller, form(max_evaluations=2)).ok
    assert controller.wait(60)
    (run,) = [p for p in host.paths.history.iterdir() if p.is_dir()]
    marker = tmp_path / "pwned"
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["settings"]["scorer"] = {"name": "subprocess:run", "options": {"args": f"touch {marker}", "shell": True}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MBWError, match=r"manifest.json: scorer 'subprocess:run' is a plugin \(code\)"):
        controller.resume(run_folder(host.paths.history, run.name))
    assert not marker.exists()


@pytest.mark.parametrize("run_id", ["/etc", "..", "../elsewhere", "a/../../etc", "", "  "])
def test_run_ids_stay_inside_the_history_folder(tmp_path: Path, run_id: str) -> None:
    history = tmp_path / "history"
    history.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "manifest.json").write_text("{}")
    with pytest.raises(MBWError, match="pick a run from the list|no such run"):
        run_folder(history, run_id)


def test_a_link_out_of_the_history_folder_is_not_a_run(tmp_path: Path) -> None:
    history, outside = tmp_path / "history", tmp_path / "outside"
    history.mkdir()
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    (history / "sneaky").symlink_to(outside)
    (history / "real").mkdir()
    (history / "real" / "manifest.json").write_text("{}")
    with pytest.raises(MBWError, match="sneaky: no such run in"):
        run_folder(history, "sneaky")
    assert run_folder(history, "real") == (history / "real").resolve()


def test_warm_start_paths_read_only_inside_the_history_folder_and_never_quote_a_file(host, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    host.paths.history.mkdir(parents=True, exist_ok=True)
    (host.paths.history / "notes.csv").write_text(SECRET)
    values = form(warm_start_paths=f"{secret}\n../shadow\nnotes.csv", initial_recipe=str(secret))
    result = settings_from_form(values, host.paths, model_path=host.model_path, generator="g", family="sd1")
    assert not result.ok
    message = result.errors["warm_start_paths"]
    assert "s3cr3tHASH" not in message and "19000" not in message
    assert f"{secret}: the UI reads warm starts only from runs in {host.paths.history} (a run id or a file there); upload other files" in message
    assert "../shadow: the UI reads warm starts only from runs" in message
    assert "notes.csv: not a run folder, history CSV or recipe file auto-MBW can read" in message
    assert result.errors["initial_recipe"] == f"{secret}: give recipe text (27 numbers or JSON), or a recipe file in {host.paths.history}"


@pytest.mark.parametrize("field, options", [
    ("scorer_options", {"download_root": "/tmp/elsewhere"}),
    ("scorer_options", {"folder": "/etc"}),
    ("generator_options", {"config_dir": "/etc"}),
    ("generator_options", {"cache_dir": "../../outside"}),
])
def test_a_client_cannot_point_file_options_outside_the_hosts_folders(host, tmp_path: Path, field: str, options: dict) -> None:
    controller = SearchController(host, PLUGINS)
    result = actions.start_from_form(host, controller, form(**{field: json.dumps(options)}))
    (key,) = options
    assert not result.ok and result.errors[field].startswith(f"option {key!r}: the UI reaches only files in "), result.errors
    assert not controller.active and not host.made


def test_file_options_inside_the_hosts_folders_and_checkpoint_files_outside_models(host, tmp_path: Path) -> None:
    inside = host.paths.payloads / "refs"
    values = form(scorer_options=json.dumps({"folder": str(inside)}))
    assert "scorer_options" not in actions.start_from_form(host, SearchController(host, PLUGINS), values).errors
    outside = tmp_path / "x.safetensors"
    outside.write_bytes(b"0")
    result = actions.start_from_form(host, SearchController(host, PLUGINS), form(base_from=str(outside), vae_from=str(outside)))
    assert "base_from" in result.errors and "vae_from" in result.errors
