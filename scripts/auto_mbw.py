"""auto-MBW in AUTOMATIC1111 / Forge: the tab, the settings, the /auto-mbw/v1 routes, and lifecycle hooks.

Thin glue: everything it wires lives in ``lib_mbw`` (``hosts.webui`` for the
WebUI adapter, ``hosts.worker_api`` for the routes, ``ui`` for the tab).
The WebUI imports this file at start and again on "Reload UI", after calling
``on_script_unloaded`` (which restores any merged weights) and clearing all
callbacks; module-level registration below therefore runs once per load.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXTENSION_DIR = Path(__file__).resolve().parents[1]
if str(EXTENSION_DIR) not in sys.path:
    sys.path.insert(0, str(EXTENSION_DIR))

from modules import script_callbacks, shared  # noqa: E402

from lib_mbw.hosts import worker_api  # noqa: E402
from lib_mbw.hosts.webui import SETTINGS, SETTINGS_SECTION, WebUIHost, console_logging  # noqa: E402

TAB_TITLE = "auto-MBW"
TAB_ID = "auto_mbw"

console_logging()
host = WebUIHost()


def on_ui_settings() -> None:
    import gradio as gr

    components = {"radio": gr.Radio, "checkbox": gr.Checkbox}
    for spec in SETTINGS:
        args = {"choices": list(spec.choices)} if spec.choices else None
        info = shared.OptionInfo(spec.default, spec.label, components.get(spec.kind), args, section=SETTINGS_SECTION)
        shared.opts.add_option(spec.key, info)


def on_ui_tabs():
    from lib_mbw.ui import build_ui

    return [(build_ui(host), TAB_TITLE, TAB_ID)]


def on_app_started(demo, app) -> None:
    worker_api.mount(app, host, worker_api.parse_credentials(shared.cmd_opts.api_auth))


def on_model_loaded(sd_model) -> None:
    host.on_model_loaded(sd_model)


def on_script_unloaded() -> None:
    host.shutdown()


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
script_callbacks.on_model_loaded(on_model_loaded)
script_callbacks.on_script_unloaded(on_script_unloaded)
