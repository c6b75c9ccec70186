"""The private attributes and methods of faust-streaming, aiokafka and aiohttp callstream relies on
(streams.faust_boundary.PRIVATE_DEPENDENCIES) still exist on the installed versions, and no module that
uses those libraries touches a private name the list does not pin.

An upgrade that renames one fails here, naming the override that depends on it, instead of silently
undoing what the override was for (a slow fetch wait, commits past in-flight events, a resent PUT)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import types
from pathlib import Path

import aiohttp
import faust
import pytest
from aiokafka import AIOKafkaConsumer

from streams.faust_boundary import PRIVATE_DEPENDENCIES, PrivateDependency

ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = ("faust", "aiokafka", "aiohttp", "mode")
PRODUCT_PACKAGES = ("callstream", "connectors", "digest", "golive", "guards", "qa", "review", "schemas", "sinks",
                    "streams")


def _owner(dependency: PrivateDependency) -> type:
    module, _, name = dependency.owner.partition(":")
    owner = getattr(importlib.import_module(module), name)
    assert isinstance(owner, type), f"{dependency.owner} is no class any more ({dependency.used_by} relies on it)"
    return owner


def _source(owner: type, method: str) -> str:
    member = inspect.getattr_static(owner, method)
    if isinstance(member, property):
        member = member.fget
    return inspect.getsource(member)


def _assigns(source: str, name: str) -> bool:
    return re.search(rf"self\.{re.escape(name)}\s*(:[^=\n]+)?=(?!=)", source) is not None


@pytest.mark.parametrize("dependency", PRIVATE_DEPENDENCIES, ids=lambda d: f"{d.owner.split(':')[1]}.{d.name}")
def test_every_pinned_private_name_still_exists_with_its_kind(dependency: PrivateDependency) -> None:
    owner = _owner(dependency)
    where = f"{dependency.owner}.{dependency.name} ({dependency.kind}), which {dependency.used_by} relies on,"
    if dependency.kind == "method":
        assert inspect.isfunction(inspect.getattr_static(owner, dependency.name, None)), \
            f"{where} is no longer a method on the installed version"
        used = rf"self\.{re.escape(dependency.name)}\("
    else:
        assert dependency.assigned_in is not None, f"{where}: say where the library assigns it"
        assert _assigns(_source(owner, dependency.assigned_in), dependency.name), \
            f"{where} is no longer assigned in {dependency.assigned_in} on the installed version"
        used = rf"self\.{re.escape(dependency.name)}\b"
    if dependency.read_in is not None:
        assert re.search(used, _source(owner, dependency.read_in)), \
            f"{where} is no longer used by {dependency.read_in}: the override would have no effect"


def test_every_pin_names_a_real_override() -> None:
    """``used_by`` points at code that exists, so the failure message leads somewhere."""
    for dependency in PRIVATE_DEPENDENCIES:
        path = dependency.used_by
        module_name = "streams.faust_boundary"
        if path.split(".")[0] in PRODUCT_PACKAGES:
            module_name, _, path = path.rpartition(".")
            module_name, _, owner = module_name.rpartition(".")
            path = f"{owner}.{path}"
        target: object = importlib.import_module(module_name)
        for part in path.split("."):
            target = getattr(target, part, None)
            assert target is not None, f"{dependency.used_by} (pinned on {dependency.owner}.{dependency.name})"
        assert callable(target), dependency.used_by


async def test_constructed_instances_carry_the_pinned_attributes_with_their_kinds() -> None:
    """The values the overrides replace, on real (unstarted) objects of the installed versions."""
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
    try:
        assert isinstance(consumer._fetch_max_wait_ms, int), "ShortWaitConsumerThread sets an int wait"
        assert consumer._fetcher is None, "built by start(), after ShortWaitConsumerThread set the wait"
    finally:
        await consumer.stop()
    session = aiohttp.ClientSession()
    try:
        assert session._retry_connection is True, "AiohttpTransport switches aiohttp's own resend off"
    finally:
        await session.close()
    app = faust.App("pin-probe", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False)
    store = app.Table("probe", default=None, partitions=1).data
    assert isinstance(getattr(store, "_key_partition", None), dict), "RawTableChangelog keeps the key partitions"


# ------------------------------------------------------------------ no unpinned private access


def private_names_touched(module: types.ModuleType, source: str) -> set[str]:
    """Private names of faust/aiokafka/aiohttp/mode the module touches: attributes read on objects that are not
    the module's own, names passed to getattr/setattr/hasattr, and library methods it overrides."""
    tree = ast.parse(source)
    own = _names_defined_in(tree)
    touched: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            cls = getattr(module, node.name, None)
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _is_private(item.name) \
                        and isinstance(cls, type) and _library_base_defining(cls, item.name) is not None:
                    touched.add(item.name)
            for inner in ast.walk(node):
                if isinstance(inner, ast.Attribute) and _is_private(inner.attr) and _is_self(inner.value) \
                        and inner.attr not in own and isinstance(cls, type) and _from_library(cls, inner.attr):
                    touched.add(inner.attr)
        elif isinstance(node, ast.Attribute) and _is_private(node.attr) and not _is_self(node.value) \
                and node.attr not in own:
            touched.add(node.attr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) \
                and _is_private(node.args[1].value) and node.args[1].value not in own:
            touched.add(node.args[1].value)
    return touched


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def _names_defined_in(tree: ast.Module) -> set[str]:
    """Private names the module itself defines: functions, classes, methods of its own, self.<name> it assigns."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Attribute) and _is_self(target.value):
                own.add(target.attr)
            elif isinstance(target, ast.Name):
                own.add(target.id)
    return {name for name in own if _is_private(name)}


def _library_base_defining(cls: type, name: str) -> type | None:
    for base in cls.__mro__[1:]:
        if base.__module__.split(".")[0] in LIBRARIES and name in vars(base):
            return base
    return None


def _from_library(cls: type, name: str) -> bool:
    """Whether ``self.<name>`` in ``cls`` comes from a library base (a project base's own names are not)."""
    for base in cls.__mro__[1:]:
        if base is object:
            continue
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):
            continue
        if name in vars(base) or _assigns(source, name):
            return base.__module__.split(".")[0] in LIBRARIES
    return True  # defined nowhere visible: treat as the library's, so it must be pinned


def _modules_using_the_libraries() -> list[Path]:
    pattern = re.compile(rf"^\s*(import|from) ({'|'.join(LIBRARIES)})\b", re.MULTILINE)
    return [path for package in PRODUCT_PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            if pattern.search(path.read_text())]


def test_modules_using_the_libraries_touch_no_private_name_the_boundary_does_not_pin() -> None:
    pinned = {dependency.name for dependency in PRIVATE_DEPENDENCIES}
    modules = _modules_using_the_libraries()
    assert ROOT / "streams" / "faust_boundary.py" in modules and ROOT / "connectors" / "http_transport.py" in modules
    unpinned = {}
    for path in modules:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        touched = private_names_touched(importlib.import_module(name), path.read_text())
        if touched - pinned:
            unpinned[name] = sorted(touched - pinned)
    assert not unpinned, f"private library names used but not pinned in PRIVATE_DEPENDENCIES: {unpinned}"


def test_the_scan_finds_an_unpinned_private_access() -> None:
    """A made-up override reaching into aiokafka's coordinator and faust's waiting set is reported."""
    source = '''
from faust.transport.drivers import aiokafka as faust_aiokafka

class Thread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._coordinator = None
        return consumer

    async def on_start(self):
        self._pending_rebalancing_spans.clear()
        self._mine = 1
'''
    module = types.ModuleType("made_up_override")
    exec(compile(source, "made_up_override", "exec"), module.__dict__)  # noqa: S102 - the test's own source
    sys.modules.pop("made_up_override", None)
    assert private_names_touched(module, source) == {"_create_worker_consumer", "_coordinator",
                                                     "_pending_rebalancing_spans"}
