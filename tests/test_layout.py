"""README's "Layout": the service's imports run one way and form no cycle.

The HTTP face -> the rules -> the store; the event path -> the store; all of them -> the shared
modules, which import none of the three folders; the event path never imports the HTTP face.
Every `from service... import ...` and `import service...` of every module counts, also those
inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"
SHARED = ("settings", "model", "errors", "ids", "metrics", "logs", "partitions")
RULES = ("conversations", "feed", "tokens")


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (SERVICE / relative).with_suffix(".py").exists() or (SERVICE / relative / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """The service modules `path` imports (a name imported from a package counts as its module if it is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("service"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if is_module(submodule) else node.module)  # type: ignore[arg-type]
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("service"))
    return found - {"service"}


GRAPH = {module_name(path): imports_of(path) for path in SERVICE.rglob("*.py")}


def part(module: str) -> str:
    """`http`, `store` or `events` for a module of those folders; else the top-level module's own name."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def importers_breaking(rule: str, modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{rule}: {module} imports {target}" for module in modules for target in sorted(GRAPH[module])
            if part(target) in forbidden]


def test_the_graph_covers_every_folder():
    assert {part(module) for module in GRAPH} >= {"http", "store", "events", *SHARED, *RULES}


def test_the_event_path_never_imports_the_http_face():
    events = [module for module in GRAPH if part(module) == "events"]
    assert importers_breaking("events", events, ("http",)) == []


def test_the_store_imports_neither_the_http_face_nor_the_event_path_nor_the_rules():
    store = [module for module in GRAPH if part(module) == "store"]
    assert importers_breaking("store", store, ("http", "events", *RULES)) == []


def test_the_rules_do_not_import_the_http_face_or_the_event_path():
    rules = [f"service.{name}" for name in RULES]
    assert importers_breaking("rules", rules, ("http", "events")) == []


def test_the_shared_modules_import_none_of_the_three_parts_nor_the_rules():
    shared = [f"service.{name}" for name in SHARED]
    assert importers_breaking("shared", shared, ("http", "store", "events", *RULES)) == []


def test_the_service_modules_import_no_cycle():
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []
