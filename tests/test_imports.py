"""corsa's import graph: no module imports itself back through others, at import time or later.

Every import of a corsa module counts, the ones inside functions too: a circle hidden in a
function still ties its modules into one knot that must be read (and changed) together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import corsa

SRC = Path(corsa.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module → the corsa modules it imports (`from . import x` counts x; a package's own
    __init__ run on the way to a submodule does not)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "corsa"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
                deps |= subs
                if node.module and target.split(".")[0] == "corsa" or len(subs) < len(node.names):
                    deps.add(target)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_at_every_level():
    graph = import_graph()
    assert "corsa.lifelong" in graph["corsa.api"]            # module level, `from .lifelong import`
    assert "corsa.negatives" in graph["corsa.lifelong"]      # `from . import negatives`
    assert "corsa.generate" in graph["corsa.engine"]         # inside a function
    assert "corsa.code.arena" in graph["corsa.formats"] and "corsa.loaders" in graph["corsa.code.arena_file"]


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_of_corsa_imports_itself_back():
    assert cycles(import_graph()) == []


# files whose function-level imports wait for the data-safety work under way in them (issue 35);
# every other module imports corsa's own modules at the top
WAITING = {"adapter.py", "sandbox/__init__.py"}


def test_a_function_imports_corsa_only_to_keep_torch_out_of_the_help():
    """An import of a corsa module inside a function says why: it keeps `corsa --help` (or another
    torch-free reader) free of torch. The commands (corsa.cli) import what each needs when it runs."""
    unsaid = []
    for path in sorted(SRC.rglob("*.py")):
        where = path.relative_to(SRC).as_posix()
        if where.startswith("cli/") or where in WAITING:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                own = isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("corsa"))
                if own and "torch" not in lines[node.lineno - 1] + lines[node.lineno - 2]:
                    unsaid.append(f"{where}:{node.lineno}")
    assert unsaid == []

