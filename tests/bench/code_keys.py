"""Cache keys of the optimizer benchmarks: hashes of the code a cached run depends on.

A benchmark run takes minutes to hours, so its result is cached under a hash
of exactly what it depends on: the files or the top-level definitions it
runs, and the versions of the packages it computes with. Docstrings and
comments are left out (``code_text`` hashes the syntax tree), and so is
every definition a run does not use, so that editing a report, a docstring
or an unrelated helper keeps the cache; changing anything a result depends
on gives a new key, and the run is done again.
"""

from __future__ import annotations

import ast
import hashlib
from importlib import metadata
from pathlib import Path
from typing import Iterable


def _defined_names(node: ast.stmt) -> set[str]:
    """The names a top-level statement defines (function, class, plain or annotated assignment)."""
    names = {getattr(node, "name", None)}
    names |= {getattr(target, "id", None) for target in getattr(node, "targets", [])}
    names.add(getattr(getattr(node, "target", None), "id", None))
    return {name for name in names if name}


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return tree


def code_text(path: Path, names: Iterable[str] | None = None) -> str:
    """The code of a Python file (or of its top-level definitions ``names``) as a syntax-tree dump, docstrings excluded."""
    tree = _strip_docstrings(ast.parse(Path(path).read_text()))
    if names is not None:
        wanted = set(names)
        tree = ast.Module(body=[node for node in tree.body if _defined_names(node) & wanted], type_ignores=[])  # type: ignore[attr-defined]
    return ast.dump(tree)


def code_hash(path: Path, names: Iterable[str] | None = None) -> str:
    """SHA-256 of ``code_text``."""
    return hashlib.sha256(code_text(path, names).encode()).hexdigest()


def package_versions(packages: Iterable[str]) -> str:
    """``name=version;`` for each package (empty version when it is not installed), for a key."""
    parts = []
    for package in packages:
        try:
            parts.append(f"{package}={metadata.version(package)};")
        except metadata.PackageNotFoundError:
            parts.append(f"{package}=;")
    return "".join(parts)
