"""The package layering of docs/CONTRACTS.md as an executable contract (issue 21).

Every module's imports are read with `ast` (top-level, inside functions and under TYPE_CHECKING alike)
and checked against the layers, so a new upward import fails here instead of in a review. Reading
source instead of importing keeps it fast (a few seconds) and side-effect free.

Layers, lowest first; a package may import only packages in a lower layer:

    guards < schemas < callstream < connectors | sinks < streams < review | qa | digest | golive | processes

connectors and sinks sit side by side and never import each other; the applications on top may use
each other, golive excepted (see below). processes holds the composition roots of commands whose process
assembles several applications (`callstream sinks run`, `callstream audit`): lower packages take the
applications' parts as small interfaces handed in from there (sinks.process.Additions), never by import.

sandbox (the ModMed emulator) is isolated: no production module imports it, and it imports nothing of ours
but callstream (settings, CLI flags, ports), so it stays an independent stand-in for ModMed rather than a
mirror of our own guards and schemas.

Dev tooling (devkit: the demo, benchmarks, replay scripting, scripted callers, child-process helpers, the
embedded broker) may import anything, sandbox included; no production module imports it (the CLI reaches
`callstream dev|demo|replay|bench` through its COMMANDS table, by name, never by import).

golive is the one application built on the dev tooling, by nature: `golive check` starts a sandbox from a
practice's mirror, a private broker and a worker, and plays scripted callers (devkit's cast and telephony)
through it before the practice goes live. It is never in the call path, so golive may import sandbox and
devkit, and no other package imports golive (it is a leaf, like devkit). Its production side, the phase gate
`golive promote` runs against the real tenant directory and audit store (`GOLIVE_GATE`), imports neither.

There are no exceptions: an import that breaks the contract fails the test; fix the structure, not the rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"guards"}),
    frozenset({"schemas"}),
    frozenset({"callstream"}),
    frozenset({"connectors", "sinks"}),
    frozenset({"streams"}),
    frozenset({"review", "qa", "digest", "golive", "processes"}),
)
APPLICATIONS = LAYERS[-1]
"""The only layer whose packages may import each other (each is a leaf process or tool)."""
SANDBOX = "sandbox"
SANDBOX_MAY_IMPORT = frozenset({"callstream"})
DEVKIT = "devkit"
"""Benchmarks, the demo, replay scripting, scripted callers and child-process helpers."""
GOLIVE = "golive"
"""The go-live check drives a mirrored sandbox with scripted callers: it may import sandbox and devkit."""
GOLIVE_GATE = frozenset({"golive.gate", "golive.runs", "golive.cli"})
"""The production side of golive (the phase gate, its run records, the CLI): no sandbox, no devkit."""
LAYER_OF = {package: index for index, layer in enumerate(LAYERS) for package in layer}
OUR_PACKAGES = frozenset(LAYER_OF) | {SANDBOX, DEVKIT}

MAX_MODULE_LINES = 600
OVERSIZED: dict[str, int] = {
}
"""Production modules over the limit today, with their size: they may shrink, never grow."""


@dataclass(frozen=True, slots=True)
class Import:
    importer: str
    imported: str
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> Iterator[Path]:
    for package in sorted(OUR_PACKAGES):
        yield from sorted((ROOT / package).rglob("*.py"))


def imports_of(path: Path, known_modules: frozenset[str]) -> Iterator[Import]:
    """Our modules `path` imports; ``from pkg import mod`` counts as importing ``pkg.mod`` when it is one."""
    importer = module_name(path)
    package_parts = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names = [module]
            names += [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in known_modules]
        else:
            continue
        for name in names:
            if name.split(".")[0] in OUR_PACKAGES:
                yield Import(importer, name, node.lineno)


def all_imports() -> list[Import]:
    files = list(source_files())
    known = frozenset(module_name(path) for path in files)
    return [found for path in files for found in imports_of(path, known)]


def breaks_contract(found: Import) -> str | None:
    """Why this import breaks the layering, or None."""
    source, target = found.importer.split(".")[0], found.imported.split(".")[0]
    if source == DEVKIT or source == target:
        return None
    if target == GOLIVE:
        return "imports golive (the go-live check is built on the dev tooling: nothing builds on golive)"
    if source == GOLIVE and target in (SANDBOX, DEVKIT):
        return None if found.importer not in GOLIVE_GATE else f"the phase gate may not import {target}"
    if target == DEVKIT:
        return f"imports dev-only {found.imported}"
    if source == SANDBOX:
        return None if target in SANDBOX_MAY_IMPORT else f"sandbox may import only {sorted(SANDBOX_MAY_IMPORT)}"
    if target == SANDBOX:
        return "imports the sandbox"
    if LAYER_OF[target] < LAYER_OF[source]:
        return None
    if source in APPLICATIONS and target in APPLICATIONS:
        return None
    return f"{source} (layer {LAYER_OF[source]}) imports {target} (layer {LAYER_OF[target]})"


def test_every_import_respects_the_layering() -> None:
    imports = all_imports()
    assert len(imports) > 500, "the scan found too few imports: the walker is broken"
    broken = sorted(f"{found.importer}:{found.line} -> {found.imported}: {reason}" for found in imports
                    if (reason := breaks_contract(found)) is not None)
    assert not broken, "imports that break docs/CONTRACTS.md's layering:\n" + "\n".join(broken)


def test_the_contract_catches_what_it_is_meant_to_catch() -> None:
    """The rule itself, on made-up edges: upward, sideways, into the sandbox or dev tooling."""
    def verdict(importer: str, imported: str) -> str | None:
        return breaks_contract(Import(importer, imported, 1))

    assert verdict("connectors.fhir", "sinks.webhooks") is not None
    assert verdict("sinks.siem", "connectors.fhir") is not None
    assert verdict("guards.rules", "schemas.models") is not None
    assert verdict("callstream.messaging", "streams.outputs") is not None
    assert verdict("streams.processor", "sandbox.world") is not None
    assert verdict("streams.processor", "devkit.cast") is not None
    assert verdict("sandbox.app", "guards.model") is not None
    assert verdict("streams.processor", "connectors.fhir") is None
    assert verdict("qa.app", "review.reader") is None
    assert verdict("sandbox.cli", "callstream.backends") is None
    assert verdict("devkit.demo", "sandbox.generator") is None
    assert verdict("devkit.bench_pipeline", "streams.processor") is None
    assert verdict("golive.check", "sandbox.mirror") is None
    assert verdict("golive.harness", "devkit.telephony") is None
    assert verdict("golive.gate", "sandbox.world") is not None
    assert verdict("golive.runs", "devkit.services") is not None
    assert verdict("qa.app", "golive.gate") is not None
    assert verdict("streams.cli", "golive.check") is not None
    assert verdict("golive.gate", "schemas.models") is None
    assert verdict("sinks.read_api", "review.reader") is not None
    assert verdict("sinks.process", "digest.service") is not None
    assert verdict("processes.sinks", "digest.service") is None
    assert verdict("qa.cli", "processes.sinks") is None


def production_modules() -> Iterator[Path]:
    for path in source_files():
        if path.relative_to(ROOT).parts[0] not in {SANDBOX, DEVKIT}:
            yield path


def test_no_production_module_grows_past_the_size_limit() -> None:
    sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
             for path in production_modules()}
    problems = [f"{name}: {lines} lines (limit {MAX_MODULE_LINES}; split it)"
                for name, lines in sorted(sizes.items()) if lines > MAX_MODULE_LINES and name not in OVERSIZED]
    problems += [f"{name}: grew to {sizes[name]} lines (allowed {allowed}; split it instead)"
                 for name, allowed in sorted(OVERSIZED.items()) if name in sizes and sizes[name] > allowed]
    problems += [f"{name}: now {sizes.get(name, 0)} lines, under the limit (remove it from OVERSIZED)"
                 for name in sorted(OVERSIZED) if sizes.get(name, 0) <= MAX_MODULE_LINES]
    assert not problems, "\n".join(problems)
