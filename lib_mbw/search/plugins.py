"""Plugins: generators, scorers and strategies named ``package.module:factory``, loaded only when enabled.

A plugin is code. It is loaded only when the person who starts the process
enables it: on the command line (``--plugin package.module:factory``, or by
naming it in ``--generator``/``--scorer``/``--strategy``), or in the
server's own settings (``ui --plugin``, the ``AUTO_MBW_PLUGINS`` environment
variable of a WebUI). A run folder, a manifest, a settings file, a history
or a UI client never enables one: they may name registered components, and
plugins that are already enabled.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Collection, Iterable

from ..errors import MBWError

#: Environment variable with the plugins a server (WebUI, standalone app) enables, separated by commas or spaces.
PLUGINS_ENV = "AUTO_MBW_PLUGINS"


class PluginError(MBWError):
    """A ``package.module:factory`` name that is not enabled, or cannot be loaded."""


def is_plugin(name: str) -> bool:
    """True for ``package.module:factory`` (registered names have no colon)."""
    return ":" in str(name)


def parse_plugins(specs: Iterable[str]) -> frozenset[str]:
    """The enabled plugin specs from flags or a setting (comma/space separated); PluginError for a malformed one."""
    found: set[str] = set()
    for text in specs:
        for spec in str(text).replace(",", " ").split():
            module, _, attribute = spec.partition(":")
            if not module or not attribute or not all(part.isidentifier() for part in module.split(".")) or not attribute.isidentifier():
                raise PluginError(f"plugin {spec!r}: write it as package.module:factory")
            found.add(spec)
    return frozenset(found)


def plugins_from_env() -> frozenset[str]:
    """The plugins the server's environment enables (``AUTO_MBW_PLUGINS``)."""
    return parse_plugins([os.environ.get(PLUGINS_ENV, "")])


def require_enabled(name: str, kind: str, enabled: Collection[str], where: str = "") -> None:
    """PluginError (one line) unless ``name`` is registered-style or an enabled plugin."""
    require_all_enabled([(kind, name)], enabled, where)


def require_all_enabled(named: Iterable[tuple[str, str]], enabled: Collection[str], where: str = "") -> None:
    """One PluginError line naming every (kind, name) that is a plugin not in ``enabled``."""
    missing = [(kind, name) for kind, name in named if is_plugin(name) and name not in enabled]
    if not missing:
        return
    origin = f"{where}: " if where else ""
    what = ", ".join(f"{kind} {name!r}" for kind, name in missing)
    flags = " ".join(f"--plugin {name}" for name in dict.fromkeys(name for _, name in missing))
    raise PluginError(
        f"{origin}{what} {'is a plugin' if len(missing) == 1 else 'are plugins'} (code), and plugins are never loaded "
        f"from a file or a UI client: if you trust that code, enable it when you start auto-MBW with {flags}"
    )


def load_plugin(spec: str, kind: str, enabled: Collection[str], where: str = "") -> Callable[..., Any]:
    """The callable named by the enabled plugin ``spec``."""
    require_enabled(spec, kind, enabled, where)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise PluginError(f"{kind} {spec!r}: use a registered name or package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"{kind} {spec!r}: cannot import {module_name} ({exc})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise PluginError(f"{kind} {spec!r}: {module_name} has no callable {attribute}")
    return factory
