"""The package layout shows the architecture: one-way imports, no cycles, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What each part of bridges/ may import (besides itself, sessions/ and third parties).
ALLOWED = {
    "errors": set(),
    "audio": {"errors"},
    "model": {"audio", "errors"},
    "persist": set(),
    "call": {"audio", "errors", "model", "persist"},
    "telephony": {"audio", "call", "errors"},
    "guard": set(),
    "server": {"call", "guard", "persist", "telephony"},
    "hosting": {"call", "server"},
    "sim": {"audio", "call", "model"},
}
TOP_LEVEL = {"sessions": set(), "tasks": {"sessions"}, "workers": {"sessions", "tasks"}}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def part(module: str) -> str:
    return module.split(".")[1]


def test_the_parts_of_bridges_import_one_way() -> None:
    wrong = []
    for path in (ROOT / "bridges").rglob("*.py"):
        relative = path.relative_to(ROOT / "bridges")
        if relative.name == "__init__.py" and len(relative.parts) == 1:
            continue
        mine = relative.parts[0].removesuffix(".py")
        for module in imports(path):
            foreign = module.startswith("bridges.") and part(module) != mine
            if foreign and part(module) not in ALLOWED[mine]:
                wrong.append(f"{relative} imports {module}")
            if module.split(".")[0] in ("tasks", "celeryconfig") and mine != "persist":
                wrong.append(f"{relative} reaches tasks/ outside persist/: {module}")
    assert wrong == []


def test_the_core_imports_neither_celery_nor_websockets_nor_the_bridges() -> None:
    for top, allowed in TOP_LEVEL.items():
        for path in (ROOT / top).rglob("*.py"):
            for module in imports(path):
                first = module.split(".")[0]
                assert first not in {"bridges", "cli"}, f"{path} imports {module}"
                if first in TOP_LEVEL and first != top:
                    assert first in allowed, f"{path} imports {module}"
                if top == "sessions":
                    assert first not in {"celery", "kombu", "websockets"}, f"{path}: {module}"


def test_no_module_imports_itself_back() -> None:
    graph: dict[str, set[str]] = {}
    for path in ROOT.glob("*/**/*.py"):
        if path.parts[len(ROOT.parts)] in {".venv", "tests", "bench"}:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = imports(path)
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        for dep in graph.get(node, ()):
            if dep in stack:
                cycles.append(stack[stack.index(dep) :])
            elif dep in graph and len(stack) < 15:
                visit(dep, [*stack, dep])

    for name in graph:
        visit(name, [name])
    assert cycles == []


def test_modules_stay_small() -> None:
    sizes = {p: len(p.read_text().splitlines()) for d in ("sessions", "bridges", "tasks",
             "workers", "cli") for p in (ROOT / d).rglob("*.py")}  # fmt: skip
    assert [f"{p.relative_to(ROOT)}: {n}" for p, n in sizes.items() if n > 450] == []
