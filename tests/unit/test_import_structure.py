"""The layout's rules, read from the source: who may import grpc and the generated code, which way the
layers point, and no import cycles.

Every ``import`` in ``gateway/`` and ``runtimes/`` counts, the ones inside functions too (a lazy
import is still a dependency). The layers, outside in::

    edge, client, process, app, cli  ->  capture, logs, telemetry  ->  serving, rollouts  ->  routing, registry,
        state, analysis  ->  runtimes

Capture is an observer of serving's seam: it imports serving's observer types and the registry (for
feature names); nothing below it imports capture, and it imports nothing of the edge or rollouts.
The logs' access log is another such observer; only the entry points configure logging.
Telemetry (metrics, traces, the last minute per arm) is another observer: it reads serving and
routing, and sees shadows, capture and drift through protocols of its own, so it imports neither
rollouts nor capture.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from tests.support.model_repository import REPO_ROOT

PACKAGES = ("gateway", "runtimes")
GENERATED = "gateway.wire"  # the protobuf and gRPC stubs, generated from protos/


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def source_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            name = module_name(path)
            if not name.startswith(GENERATED):
                found[name] = path
    return found


def imported_names(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports, absolute, with ``from package import module`` resolved to the module."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *filter(None, [base])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


@cache
def imports() -> dict[str, set[str]]:
    """Module -> the modules it imports that exist (third-party ones by their top-level name)."""
    ours = source_modules()
    graph: dict[str, set[str]] = {}
    for name, path in ours.items():
        targets = set()
        for imported in imported_names(name, path):
            if imported.split(".")[0] in PACKAGES:
                if imported in ours or imported.startswith(GENERATED):
                    targets.add(imported)
            else:
                targets.add(imported.split(".")[0])
        graph[name] = targets
    return graph


def in_package(module: str, *packages: str) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def violations(allowed: tuple[str, ...], forbidden: tuple[str, ...], scope: tuple[str, ...] = PACKAGES) -> list[str]:
    """``module -> target`` for each module in ``scope``, outside ``allowed``, importing from ``forbidden``."""
    found: list[str] = []
    for module, targets in sorted(imports().items()):
        if not in_package(module, *scope) or in_package(module, *allowed):
            continue
        found.extend(f"{module} -> {target}" for target in sorted(targets) if in_package(target, *forbidden))
    return found


def test_the_tree_is_read() -> None:
    graph = imports()
    assert "gateway.serving.dataplane" in graph and "runtimes.worker_protocol" in graph
    assert "gateway.routing.decide" in graph["gateway.serving.dataplane"]


def test_only_the_edge_imports_grpc_on_the_server_side() -> None:
    # The client talks to a gateway over gRPC, so it is a gRPC client; it is no part of the server.
    grpc = ("grpc", "grpc_health", "grpc_reflection", "grpc_status")
    assert violations(allowed=("gateway.edge", "gateway.client"), forbidden=grpc) == []


def test_only_the_edge_and_the_client_use_the_generated_services() -> None:
    # The registry reads Triton's config.pbtxt with a message schema of its own (no service).
    assert violations(allowed=("gateway.edge", "gateway.client", "gateway.registry.triton_config"),
                      forbidden=(GENERATED,)) == []
    generated = {t for t in imports()["gateway.registry.triton_config"] if t.startswith(GENERATED)}
    assert "gateway.wire.turnout.triton.model_config_pb2" in generated
    assert not any(t.endswith("_grpc") or "inference" in t or "rollouts" in t for t in generated), generated


def test_runtimes_import_nothing_from_the_gateway() -> None:
    assert violations(allowed=(), forbidden=("gateway",), scope=("runtimes",)) == []


def test_the_client_imports_no_server_code() -> None:
    server = ("gateway.edge", "gateway.serving", "gateway.rollouts", "gateway.process", "gateway.app",
              "gateway.routing", "gateway.registry", "gateway.state", "runtimes")
    assert violations(allowed=(), forbidden=server, scope=("gateway.client",)) == []


def test_the_edge_reads_views_not_the_model_managers_internals() -> None:
    internals = ("gateway.serving.model_manager", "gateway.serving.model_version", "gateway.serving.batching")
    assert violations(allowed=(), forbidden=internals, scope=("gateway.edge",)) == []


@pytest.mark.parametrize(
    ("layer", "must_not_import"),
    [
        (("gateway.serving", "gateway.rollouts"), ("gateway.edge", "gateway.client", "gateway.app", "gateway.process")),
        (("gateway.serving",), ("gateway.rollouts",)),
        (
            ("gateway.routing", "gateway.registry", "gateway.state"),
            ("gateway.serving", "gateway.rollouts", "gateway.edge", "gateway.client", "gateway.app"),
        ),
    ],
)
def test_dependencies_point_inwards(layer: tuple[str, ...], must_not_import: tuple[str, ...]) -> None:
    assert violations(allowed=(), forbidden=must_not_import, scope=layer) == []


def test_capture_is_a_part_the_serving_path_does_not_depend_on() -> None:
    # Capture reads what serving finished (the observers' seam); serving never imports it back.
    assert violations(allowed=(), forbidden=("gateway.capture",), scope=("gateway.serving",)) == []
    outside = ("gateway.edge", "gateway.rollouts", "gateway.client", "gateway.app", "gateway.process", "grpc")
    assert violations(allowed=(), forbidden=outside, scope=("gateway.capture",)) == []
    assert "gateway.capture.drift" in imports()


def test_capture_is_a_part_that_only_the_composition_root_and_the_cli_know() -> None:
    assert "gateway.capture.observer" in imports()["gateway.app"]
    assert violations(allowed=("gateway.app", "gateway.cli", "gateway.capture"), forbidden=("gateway.capture",)) == []
    outer = ("gateway.edge", "gateway.client", "gateway.app", "gateway.process", "gateway.rollouts", "gateway.cli")
    assert violations(allowed=(), forbidden=outer, scope=("gateway.capture",)) == []


def test_logs_are_a_part_that_only_the_entry_points_know() -> None:
    # The formats and the access log (an observer on serving's seam, like capture): the composition
    # root, the command line and the supervisor configure them; nothing they serve imports them back.
    assert "gateway.logs.access" in imports()["gateway.app"]
    assert "gateway.logs.configure" in imports()["gateway.process.supervisor"]
    knowing = ("gateway.app", "gateway.cli", "gateway.process.supervisor", "gateway.logs")
    assert violations(allowed=knowing, forbidden=("gateway.logs",)) == []
    outer = ("gateway.edge", "gateway.client", "gateway.app", "gateway.process", "gateway.rollouts",
             "gateway.cli", "gateway.capture", "grpc")  # fmt: skip
    assert violations(allowed=(), forbidden=outer, scope=("gateway.logs",)) == []


def test_tracing_is_a_part_that_only_the_composition_root_knows() -> None:
    # Traces are built from what serving's seam tells observers; the gRPC status of an error is handed
    # in by the composition root, so the edge's mapping stays the only one.
    tracing = ("gateway.telemetry.tracing", "gateway.telemetry.tracing_setup")
    assert set(tracing) <= imports()["gateway.app"]
    assert violations(allowed=("gateway.app", "gateway.telemetry"), forbidden=tracing) == []
    outside = ("gateway.edge", "gateway.rollouts", "gateway.client", "gateway.app", "gateway.process",
               "gateway.capture", "grpc")  # fmt: skip
    assert violations(allowed=(), forbidden=outside, scope=tracing) == []


def test_telemetry_is_a_part_the_serving_path_does_not_depend_on() -> None:
    # Metrics read what serving finished (the observers' seam) and what the parts already count;
    # nothing they watch imports them back, and they see shadows, capture and drift through protocols.
    assert "gateway.telemetry.observer" in imports()
    watched = ("gateway.serving", "gateway.rollouts", "gateway.capture", "gateway.routing", "gateway.registry")
    assert violations(allowed=(), forbidden=("gateway.telemetry",), scope=watched) == []
    outside = ("gateway.edge", "gateway.client", "gateway.app", "gateway.cli", "gateway.rollouts", "gateway.capture",
               "gateway.wire", "grpc")
    assert violations(allowed=(), forbidden=outside, scope=("gateway.telemetry",)) == []


def test_telemetry_is_known_to_the_composition_root_and_the_supervisor_only() -> None:
    assert "gateway.telemetry.gateway_metrics" in imports()["gateway.app"]
    assert "gateway.telemetry.supervisor_metrics" in imports()["gateway.process.supervisor"]
    known = ("gateway.app", "gateway.process.supervisor", "gateway.telemetry")
    assert violations(allowed=known, forbidden=("gateway.telemetry",)) == []


def test_the_analysis_is_pure_and_imports_no_other_part() -> None:
    # The rollout's statistics: counts in, a decision out. The rollouts use case feeds it; it sees nothing.
    assert "gateway.analysis.decision" in imports()
    outside = [
        f"{module} -> {target}"
        for module, targets in sorted(imports().items())
        if in_package(module, "gateway.analysis")
        for target in sorted(targets)
        if in_package(target, "gateway", "runtimes") and not in_package(target, "gateway.analysis")
    ]
    assert outside == []
    impure = {"threading", "time", "socket", "asyncio", "sqlite3", "logging", "os", "random", "grpc"}
    for module, targets in imports().items():
        if in_package(module, "gateway.analysis"):
            assert not targets & impure, f"{module} imports {sorted(targets & impure)}"


def test_routing_is_pure() -> None:
    impure = {"threading", "time", "socket", "asyncio", "sqlite3", "logging", "os", "random"}
    for module, targets in imports().items():
        if in_package(module, "gateway.routing"):
            assert not targets & impure, f"{module} imports {sorted(targets & impure)}"


def test_there_are_no_import_cycles() -> None:
    graph = {module: {t for t in targets if t in imports()} for module, targets in imports().items()}
    cycles = [component for component in strongly_connected(graph) if len(component) > 1]
    assert cycles == [], f"import cycles: {cycles}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"], ["d"]]
