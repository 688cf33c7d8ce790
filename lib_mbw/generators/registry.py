"""Generators by name: ``make_generator("diffusers", model_a=..., model_b=..., **options)``.

Each registered name points at a ``factory(model_a=..., model_b=..., **options)``
given as ``package.module:function`` and imported only when used, so naming a
backend never loads the libraries of the others. The in-process WebUI
generator is not here: it exists only inside the WebUI, whose host makes it.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import MBWError
from .base import Generator

GENERATORS: dict[str, str] = {
    "diffusers": "lib_mbw.generators.diffusers:create",
    "http": "lib_mbw.generators.http:create",
}


class UnknownGeneratorError(MBWError):
    """No generator is registered under the requested name."""


def generator_names() -> list[str]:
    """The registered generator names."""
    return sorted(GENERATORS)


def make_generator(name: str, **kwargs: Any) -> Generator:
    """Build the generator registered as ``name`` with ``kwargs`` (model_a, model_b and its options)."""
    spec = GENERATORS.get(name)
    if spec is None:
        hint = " (the webui generator runs inside the WebUI: use the extension's tab)" if name == "webui" else ""
        raise UnknownGeneratorError(f"unknown generator {name!r}{hint}; known: {', '.join(generator_names())}")
    module_name, _, function = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), function)
    return factory(**kwargs)
