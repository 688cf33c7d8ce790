"""The auto-MBW Gradio UI, shared by the WebUI tab and the standalone app (the only part of lib_mbw that imports gradio).

``build_ui(host)`` returns the interface as a ``gradio.Blocks``. The modules
behind it are plain: ``form`` (form values <-> search settings), ``live`` and
``views`` (search events -> what the live view shows), ``controller`` (the
search thread and its viewers), ``runs`` (past runs), ``payload_editor``,
``outputs`` (export, merge) and ``actions``; only ``app`` and ``compat``
import gradio, and only when ``build_ui`` is called.
"""

from __future__ import annotations

from typing import Any


def build_ui(host: Any, defaults: Any = None) -> Any:
    """The auto-MBW interface for ``host`` (a ``lib_mbw.hosts.base.Host``) as a ``gradio.Blocks``.

    ``defaults`` (a ``form.FormValues``) pre-fills the search form.
    """
    from .app import build_ui as build

    return build(host, defaults)


__all__ = ["build_ui"]
