"""The package's layering, read from the source: every ``import`` of every module (also those inside
functions and under ``TYPE_CHECKING``), parsed with :mod:`ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import memostudy

ROOT = Path(memostudy.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The memostudy modules ``name`` imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t == "memostudy" or t.startswith("memostudy.")}
    return {t for t in found if t in modules and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_graph_is_read():
    graph = _graph()
    assert "memostudy.detect.matching" in graph["memostudy.detect.assessment"]
    assert "memostudy.detect.assessment" in graph["memostudy.report.audit"]


def test_detect_never_imports_ldm_or_study():
    bad = sorted(f"{m} -> {t}" for m, targets in _graph().items() if m.startswith("memostudy.detect")
                 for t in targets if t.startswith(("memostudy.ldm", "memostudy.study")))
    assert not bad, "the detection layer must work for any model's volumes: " + ", ".join(bad)


def test_no_import_cycle_between_modules():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
