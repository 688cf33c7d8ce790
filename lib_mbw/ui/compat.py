"""Every difference between gradio 3.41 (AUTOMATIC1111 1.10) and gradio 4.x (Forge) that the UI meets, in one place.

The rest of ``lib_mbw.ui`` builds components and events only through these
helpers and never checks gradio's version itself:

* optional single-value dropdowns (``optional_dropdown``: 3.41 cannot clear one);
* component constructors whose keyword arguments differ (``Gallery``/``Image``
  are uploads by default in 4.x and cache files as WebP; ``Image(source=)``
  became ``sources=``; ``File(type="file")`` became ``"filepath"``;
  ``Dataframe(max_rows=)`` is gone in 4.x);
* "leave this component unchanged" and "change these properties"
  (``gr.update`` works in both; ``Component.update`` is 3.x only);
* event options: ``_js`` vs ``js``, ``concurrency_limit`` (4.x only);
* the queue: ``concurrency_count`` (3.x, one pool for all events) vs
  ``default_concurrency_limit`` (4.x, per event);
* launch arguments and uploaded-file values (a temp-file object with
  ``.name`` in 3.x, a path string in 4.x);
* streamed frames: 4.x sends diffs whose list edits are wrong for shrinking
  lists (``StreamEncoder`` makes every change a replacement);
* files a file component may serve (4.x: only allowed folders, ``served_file``);
* what ``/file=`` serves (``launch(private=...)``): gradio 3.41 serves every
  file under the working folder, 4.x only its own temp/cache folders and
  allowed paths. The app serves only what the UI shows (copies gradio makes
  in its temp folder): the working folder gradio 3 trusts is replaced by an
  empty one, and the host's folders (models, history, payloads) are blocked
  in both versions.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr

GRADIO_VERSION: str = gr.__version__
GRADIO_MAJOR: int = int(GRADIO_VERSION.split(".")[0])
IS_GRADIO_4: bool = GRADIO_MAJOR >= 4

#: Events that may run at the same time (live viewers, control buttons, form actions).
DEFAULT_CONCURRENCY = 16


def no_change() -> Any:
    """A value that leaves an output component as it is."""
    return gr.update()


def update(**properties: Any) -> Any:
    """Change properties (``value``, ``visible``, ``choices``, ``label``, ...) of an output component."""
    return gr.update(**properties)


def gallery(label: str, *, columns: int = 4, height: int | str | None = None, elem_id: str | None = None, **kwargs: Any) -> Any:
    """A read-only image gallery; values are lists of (PIL image, caption)."""
    options: dict[str, Any] = dict(label=label, columns=columns, height=height, object_fit="contain", elem_id=elem_id, **kwargs)
    if IS_GRADIO_4:
        options.update(interactive=False, format="png")
    return gr.Gallery(**options)


def output_image(label: str, *, elem_id: str | None = None, height: int | None = None, **kwargs: Any) -> Any:
    """A read-only image (PIL values), e.g. a plot."""
    options: dict[str, Any] = dict(label=label, type="pil", interactive=False, elem_id=elem_id, height=height, **kwargs)
    if IS_GRADIO_4:
        options["format"] = "png"
    return gr.Image(**options)


def upload_files(label: str, *, file_types: Sequence[str] | None = None, multiple: bool = True, **kwargs: Any) -> Any:
    """A file upload whose value ``uploaded_paths`` turns into paths."""
    return gr.File(
        label=label,
        file_count="multiple" if multiple else "single",
        file_types=list(file_types) if file_types else None,
        type="filepath" if IS_GRADIO_4 else "file",
        **kwargs,
    )


def download_file(label: str, **kwargs: Any) -> Any:
    """A file output the user can download (value: a path)."""
    return gr.File(label=label, interactive=False, **kwargs)


def served_file(path: str | Path) -> str:
    """A path the file component may serve: gradio 4 serves only the working folder, the temp folder and allowed paths,
    so elsewhere (a history folder on another disk) the file is copied to a temp folder first."""
    source = Path(path)
    if not IS_GRADIO_4:
        return str(source)
    resolved = source.resolve()
    for root in (Path.cwd().resolve(), Path(tempfile.gettempdir()).resolve()):
        if root == resolved or root in resolved.parents:
            return str(source)
    copy = Path(tempfile.mkdtemp(prefix="auto-mbw-")) / source.name
    shutil.copyfile(source, copy)
    return str(copy)


def uploaded_paths(value: Any) -> list[str]:
    """Paths of uploaded files in either version's value format."""
    from .form import file_paths

    return file_paths(value)


def dataframe(*, headers: Sequence[str], datatype: Sequence[str] | str = "str", interactive: bool = False,
              fixed_rows: int | None = None, label: str | None = None, elem_id: str | None = None, height: int | None = None,
              wrap: bool = True, value: Any = None) -> Any:
    """A table of plain rows (``type="array"``); ``fixed_rows`` locks the row count (the 27-block grid)."""
    options: dict[str, Any] = dict(
        headers=list(headers),
        datatype=list(datatype) if not isinstance(datatype, str) else datatype,
        type="array",
        interactive=interactive,
        label=label,
        elem_id=elem_id,
        wrap=wrap,
        col_count=(len(headers), "fixed"),
        row_count=(fixed_rows, "fixed") if fixed_rows else (1, "dynamic"),
    )
    if value is not None:
        options["value"] = value
    if IS_GRADIO_4:
        if height is not None:
            options["height"] = height
    else:
        options["max_rows"] = None
        if height is not None:
            options["height"] = height
    return gr.Dataframe(**options)


def dropdown(label: str, choices: Sequence[str], value: Any = None, *, custom: bool = False, multiselect: bool = False, **kwargs: Any) -> Any:
    """A dropdown; ``custom`` allows values outside ``choices`` (4.x refuses them otherwise)."""
    return gr.Dropdown(choices=list(choices), value=value, label=label, allow_custom_value=custom, multiselect=multiselect, **kwargs)


def optional_dropdown(label: str, choices: Sequence[str], value: Any = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A dropdown that may be left empty ("" first among the choices: 3.41 cannot clear a single-value dropdown,
    4.x can but then delivers None; both come back as blank). ``enabled=False`` shows it greyed out."""
    return gr.Dropdown(choices=["", *choices], value=value or "", label=label, interactive=enabled, **kwargs)


def event_options(*, js: str | None = None, queue: bool = True, concurrency_limit: int | None = None, show_progress: str | None = None) -> dict[str, Any]:
    """Keyword arguments of an event listener (``click``, ``change``, ``then``, ``load``) for this gradio."""
    options: dict[str, Any] = {"queue": queue}
    if js is not None:
        options["js" if IS_GRADIO_4 else "_js"] = js
    if show_progress is not None:
        options["show_progress"] = show_progress
    if IS_GRADIO_4 and concurrency_limit is not None:
        options["concurrency_limit"] = concurrency_limit
    return options


def listen(trigger: Callable[..., Any], fn: Callable[..., Any], inputs: Sequence[Any] | None, outputs: Sequence[Any] | None, **options: Any) -> Any:
    """``trigger(fn, inputs, outputs, **event_options(...))``: one way to wire an event in both versions."""
    api_name = options.pop("api_name", None)
    kwargs = event_options(**options)
    if api_name is not None:
        kwargs["api_name"] = api_name
    return trigger(fn, inputs=list(inputs or []), outputs=list(outputs or []), **kwargs)


def enable_queue(blocks: Any, concurrency: int = DEFAULT_CONCURRENCY) -> Any:
    """Turn on the queue (generator callbacks stream through it) with room for viewers and control buttons."""
    if IS_GRADIO_4:
        return blocks.queue(default_concurrency_limit=concurrency)
    return blocks.queue(concurrency_count=concurrency)


def _is_update(value: Any) -> bool:
    return isinstance(value, dict) and "__type__" in value


class StreamEncoder:
    """Makes every change in a streamed frame a whole replacement under gradio 4.

    Gradio 4 sends each frame of a generator callback as a diff against the
    previous frame, and its diff of a list that got shorter deletes items by
    ascending index: the Python client fails (IndexError) and the browser
    keeps stale items (a gallery going from 4 images to 2 shows 3). A value
    sent plainly right after a plain one is therefore wrapped in an update
    (and the other way round): the two differ in type, so the diff replaces
    the value instead of editing it. Gradio 3 sends whole frames; values
    pass through unchanged.
    """

    def __init__(self) -> None:
        self._last: dict[int, str] = {}

    def encode(self, values: Sequence[Any]) -> list[Any]:
        if not IS_GRADIO_4:
            return list(values)
        out = []
        for index, value in enumerate(values):
            if _is_update(value):
                self._last[index] = "update" if len(value) > 1 else "none"
                out.append(value)
            elif self._last.get(index) == "plain":
                self._last[index] = "update"
                out.append(gr.update(value=value))
            else:
                self._last[index] = "plain"
                out.append(value)
        return out


def gradio_temp_dir() -> Path:
    """Where gradio keeps the files it serves for components (uploads, outputs)."""
    import os

    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def blocked_folders(private: Sequence[str | Path]) -> list[str]:
    """The folders ``/file=`` must never serve: ``private`` and the working folder, less any holding gradio's temp folder."""
    temp = gradio_temp_dir()
    roots = [Path(p).resolve() for p in [*private, Path.cwd()]]
    return [str(root) for root in dict.fromkeys(roots) if not _inside(temp, root)]


def launch(blocks: Any, *, server_name: str, server_port: int | None, block: bool = True,
           private: Sequence[str | Path] = (), **kwargs: Any) -> Any:
    """Start the app's server; ``block=False`` returns at once (tests).

    ``/file=`` serves only gradio's own copies of what the UI shows: the
    ``private`` folders (models, run history, payloads) and the working folder
    are blocked, and gradio 3's "any file under the working folder" rule is
    pointed at an empty folder of its own.
    """
    options: dict[str, Any] = dict(server_name=server_name, server_port=server_port, prevent_thread_lock=True,
                                   show_error=True, inbrowser=False, blocked_paths=blocked_folders(private), **kwargs)
    result = blocks.launch(**options)
    app = getattr(blocks, "server_app", None)
    if not IS_GRADIO_4 and app is not None and hasattr(app, "cwd"):
        app.cwd = tempfile.mkdtemp(prefix="auto-mbw-served-")  # gradio 3.41 serves anything under app.cwd
        weakref.finalize(blocks, shutil.rmtree, app.cwd, True)
    if block:
        blocks.block_thread()
    return result


def error(message: str) -> Exception:
    """An exception that gradio shows to the user as a message (raise it from a callback)."""
    return gr.Error(message)


__all__ = [
    "DEFAULT_CONCURRENCY",
    "GRADIO_MAJOR",
    "GRADIO_VERSION",
    "IS_GRADIO_4",
    "StreamEncoder",
    "dataframe",
    "download_file",
    "dropdown",
    "enable_queue",
    "error",
    "event_options",
    "gallery",
    "launch",
    "listen",
    "no_change",
    "served_file",
    "output_image",
    "update",
    "upload_files",
    "uploaded_paths",
]
