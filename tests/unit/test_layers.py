"""The package layout is the layer picture of the README, and the imports keep to it.

Read from the sources (ast), not from what happens to be imported: every ``import`` counts,
at module level or inside a function (a lazy import is still a dependency), except those
under ``if TYPE_CHECKING:``, which never run. Checked:

* the sidecar (proxy/) and the capture programs (init/, and interceptor/, which is init's
  eBPF twin: the same CaptureConfig, options and validation probe) never import each other;
  what they share is detour_common, which imports none of them;
* no import cycle among the modules of the four packages;
* inside proxy/, a module imports only modules of its own layer or of a layer below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ca", "detour_common", "init", "interceptor", "proxy")

# The sidecar's layers, bottom first (README, "Architecture"): a module may import its own
# layer and the ones before it.
PROXY_LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (
            "proxy.platform",
            "proxy.outcomes",
            "proxy.stats",
            "proxy.series",
            "proxy.policy",
            "proxy.config",
            "proxy.logs",
            "proxy.access_log",
            "proxy.downstream_limits",
            "proxy.native",
        ),
    ),
    ("control plane", ("proxy.xds",)),  # config from xDS: translated into proxy.config's model
    ("transport", ("proxy.transport", "proxy.routing", "proxy.tls")),
    ("codecs", ("proxy.http", "proxy.http2", "proxy.dns", "proxy.admin")),
    ("upstream", ("proxy.upstream",)),
    ("pipeline", ("proxy.pipeline",)),
    ("filters", ("proxy.filters",)),
    (
        "sidecar",
        (
            "proxy.session",
            "proxy.inbound",
            "proxy.telemetry",
            "proxy.worker",
            "proxy.workers",
            "proxy.sidecar",
            "proxy.cli",
        ),
    ),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


MODULES = all_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST):
    """Every import statement that can run (not those under ``if TYPE_CHECKING:``)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            stack.append(child)


def imports_of(name: str) -> set[str]:
    """The project modules ``name`` imports (resolved to modules, not packages, where the
    imported name is a module)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def _package(name: str) -> str:
    return name.split(".")[0]


# Which package may import which, besides itself and detour_common.
ALLOWED = {
    "ca": set(),
    "detour_common": set(),
    "init": set(),
    "interceptor": {"init"},
    "proxy": set(),
}


def test_the_sidecar_and_the_capture_programs_never_import_each_other() -> None:
    crossings = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if _package(target) not in {_package(module), "detour_common"}
        and _package(target) not in ALLOWED[_package(module)]
    ]
    assert crossings == []


def test_the_checker_sees_cross_package_imports() -> None:
    assert "init.config" in GRAPH["interceptor.settings"]
    assert "detour_common.original_dst" in GRAPH["init.validate"]


def test_detour_common_stands_alone() -> None:
    assert {
        target
        for module, targets in GRAPH.items()
        if _package(module) == "detour_common"
        for target in targets
        if _package(target) != "detour_common"
    } == set()


def _cycle_from(start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one (depth-first)."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for target in GRAPH[node]:
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_no_import_cycles() -> None:
    cycles = {tuple(c) for name in GRAPH if (c := _cycle_from(name)) is not None}
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in sorted(cycles))


def layer_of(name: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer): the longest prefix decides
    for index, (_layer, prefixes) in enumerate(PROXY_LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                candidate = (len(prefix), index)
                best = max(best, candidate) if best else candidate
    if best is None:
        raise AssertionError(f"{name} belongs to no layer: add it to PROXY_LAYERS")
    return best[1]


PROXY_MODULES = sorted(n for n in MODULES if _package(n) == "proxy" and n != "proxy")


@pytest.mark.parametrize("name", PROXY_MODULES)
def test_a_proxy_module_imports_only_its_layer_and_those_below(name: str) -> None:
    own = layer_of(name)
    upward = [
        f"{target} ({PROXY_LAYERS[layer_of(target)][0]})"
        for target in sorted(GRAPH[name])
        if _package(target) == "proxy" and target != "proxy" and layer_of(target) > own
    ]
    assert upward == [], f"{name} ({PROXY_LAYERS[own][0]}) imports upward: {upward}"


def test_the_checker_sees_what_it_must() -> None:
    """The walker resolves the import forms the code uses (so the tests above can fail)."""
    assert "proxy.pipeline.forward" in GRAPH["proxy.session"]  # from-import of a module
    assert "proxy.http2.client" in GRAPH["proxy.upstream.connector"]  # a lazy import
    assert "proxy.http.events" in GRAPH["proxy.pipeline.exchange"]
    assert "proxy.http2.client" not in GRAPH["proxy.upstream.http2_pool"]  # TYPE_CHECKING
