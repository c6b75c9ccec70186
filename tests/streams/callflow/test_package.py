"""The call-flow package keeps its modules in one order, each importing only those above it, and exposes only
public names (streams/callflow/__init__.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import streams.callflow

PACKAGE = Path(streams.callflow.__file__).parent
ORDER = ("work", "state", "protocol", "audits", "replies", "review_queue", "tasks", "booking", "registration", "turn",
         "events", "results")
"""The order the package docstring states: a module may import only the modules before it."""


def _package_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    prefix = "streams.callflow."
    return {node.module.removeprefix(prefix) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix)}


def test_every_module_of_the_package_is_in_the_stated_order() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(ORDER)


def test_each_module_imports_only_modules_above_it() -> None:
    upward = {module: sorted(imported - set(ORDER[:index]))
              for index, module in enumerate(ORDER) if (imported := _package_imports(module)) - set(ORDER[:index])}
    assert upward == {}, "an import against the order would make the package's modules depend on each other in a cycle"


def test_the_package_exposes_public_names_only_and_each_resolves() -> None:
    exposed = streams.callflow.__all__
    assert len(exposed) == len(set(exposed))
    assert not [name for name in exposed if name.startswith("_")]
    assert all(hasattr(streams.callflow, name) for name in exposed)
    imported = {alias.asname or alias.name
                for node in ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8")).body
                if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert imported == set(exposed), "every name the package imports is part of its surface, and only those"
