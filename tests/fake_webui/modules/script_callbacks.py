"""Fake modules.script_callbacks: registration helpers and runners with the WebUI's signatures.

As in the WebUI, an exception in a callback is reported (here: recorded in
``errors``) and never propagates to the caller.
"""

import dataclasses
import inspect
import os
import traceback
from typing import Any

errors: list[str] = []


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Any
    name: str = "unnamed"


callback_map = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_settings=[],
    callbacks_script_unloaded=[],
    callbacks_on_reload=[],
)


def _add(category, callback, name):
    stack = [x for x in inspect.stack() if x.filename != __file__]
    filename = stack[0].filename if stack else "unknown file"
    callback_map["callbacks_" + category].append(ScriptCallback(filename, callback, name or os.path.basename(filename)))


def _run(category, *args, reverse=False):
    results = []
    entries = list(callback_map["callbacks_" + category])
    for c in reversed(entries) if reverse else entries:
        try:
            results.append(c.callback(*args))
        except Exception:
            errors.append(f"{category}: {c.script}\n{traceback.format_exc()}")
    return results


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def on_app_started(callback, *, name=None):
    _add("app_started", callback, name)


def on_model_loaded(callback, *, name=None):
    _add("model_loaded", callback, name)


def on_ui_tabs(callback, *, name=None):
    _add("ui_tabs", callback, name)


def on_ui_settings(callback, *, name=None):
    _add("ui_settings", callback, name)


def on_script_unloaded(callback, *, name=None):
    _add("script_unloaded", callback, name)


def on_before_reload(callback, *, name=None):
    _add("on_reload", callback, name)


def app_started_callback(demo, app):
    _run("app_started", demo, app)


def model_loaded_callback(sd_model):
    _run("model_loaded", sd_model)


def ui_tabs_callback():
    res = []
    for tabs in _run("ui_tabs"):
        res += tabs or []
    return res


def ui_settings_callback():
    _run("ui_settings")


def script_unloaded_callback():
    _run("script_unloaded", reverse=True)


def app_reload_callback():
    _run("on_reload")
