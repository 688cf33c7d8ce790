"""scripts/auto_mbw.py inside the fake WebUI: callbacks, settings, tab, API routes with auth, Reload UI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.runtime_double import merger_factory
from tests.webui_support import recipe, unet_hash, webui  # noqa: F401

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "auto_mbw.py"


def load_script():
    """Import the script the way the WebUI does (a fresh module object per load)."""
    spec = importlib.util.spec_from_file_location("auto_mbw_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.host._merger_factory = merger_factory()
    return module


def registered(category: str) -> list:
    from modules import script_callbacks

    return [c for c in script_callbacks.callback_map[f"callbacks_{category}"] if c.script == str(SCRIPT)]


def test_script_registers_every_hook_once(webui):
    script = load_script()
    for category in ("ui_settings", "ui_tabs", "app_started", "model_loaded", "script_unloaded"):
        assert len(registered(category)) == 1, category
    assert script.host.name == webui.flavour


def test_settings_appear_in_their_section_with_defaults(webui):
    from modules import script_callbacks, shared

    from lib_mbw.hosts.webui import SETTINGS, SETTINGS_SECTION

    script = load_script()
    script_callbacks.ui_settings_callback()
    assert not script_callbacks.errors
    for spec in SETTINGS:
        info = shared.opts.data_labels[spec.key]
        assert info.section == SETTINGS_SECTION and getattr(shared.opts, spec.key) == spec.default
    assert shared.opts.data_labels["auto_mbw_memory_mode"].component_args == {"choices": ["auto", "device", "stream", "cpu"]}
    assert script.host.settings().memory_mode == "auto"


def test_tab_is_registered(webui):
    from modules import script_callbacks

    load_script()
    tabs = script_callbacks.ui_tabs_callback()
    assert not script_callbacks.errors
    assert [(title, elem_id) for _, title, elem_id in tabs] == [("auto-MBW", "auto_mbw")]


def start_app(api_auth: str | None = None, api: bool = True) -> TestClient:
    from modules import script_callbacks, shared

    shared.cmd_opts.api_auth = api_auth
    shared.cmd_opts.api = api
    app = FastAPI()
    script_callbacks.app_started_callback(None, app)
    assert not script_callbacks.errors
    return TestClient(app)


def test_routes_follow_the_webuis_api_auth(webui):
    load_script()
    client = start_app("alice:s3cret,bob:hunter2")
    refused = client.get("/auto-mbw/v1/status")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Basic"
    assert client.get("/auto-mbw/v1/status", auth=("alice", "wrong")).status_code == 401
    answer = client.get("/auto-mbw/v1/status", auth=("bob", "hunter2"))
    assert answer.status_code == 200 and answer.json()["host"] == webui.flavour


def test_routes_without_api_auth_are_open(webui):
    load_script()
    assert start_app(None).get("/auto-mbw/v1/status").status_code == 200


def test_reload_ui_restores_weights_and_registers_again(webui):
    from modules import script_callbacks, shared

    shared.cmd_opts.api = True
    script = load_script()
    app = FastAPI()
    script_callbacks.app_started_callback(None, app)
    before = unet_hash(webui.unet())
    client = TestClient(app)
    assert client.post("/auto-mbw/v1/apply", json={"model_a": "a.safetensors", "model_b": "b.safetensors", "recipe": recipe(0.7).to_dict()}).status_code == 200
    assert unet_hash(webui.unet()) != before
    # what webui.py does on Reload UI: unloaded callbacks, clear, import scripts again, app_started on the app
    script_callbacks.script_unloaded_callback()
    assert unet_hash(webui.unet()) == before
    script_callbacks.clear_callbacks()
    again = load_script()
    assert again.host is not script.host
    script_callbacks.app_started_callback(None, app)
    paths = [r.path for r in app.routes if r.path.startswith("/auto-mbw")]
    assert sorted(paths) == sorted(set(paths)), "routes are replaced, not duplicated"
    assert client.get("/auto-mbw/v1/status").json()["session"] is None


def test_model_loaded_callback_reaches_the_host(webui):
    from modules import script_callbacks

    script = load_script()
    webui.sd_model()
    session = script.host.session("a.safetensors", "b.safetensors", "auto")
    session.apply(recipe(0.5))
    script_callbacks.model_loaded_callback(webui.sd_model())
    assert session.describe()["merged"] is False
