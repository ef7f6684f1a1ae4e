"""The import graph of the ssprl_d2 package, read from the source with ``ast`` (nothing is
imported), for the layering test (tests/test_layers.py) and the code-size report:

    python tests/import_graph.py          # module sizes, upward edges, function-local imports
"""
import ast
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "ssprl_d2"

# Sub-packages of ssprl_d2 by layer: a module may import only from lower layers (and its own
# sub-package); two sub-packages of one layer never import each other.
LAYERS: Dict[str, int] = {
    "config": 0,
    "checkpoint": 1,
    "ops": 1,
    "data": 2,
    "modeling": 2,
    "solver": 2,
    "evaluation": 2,
    "engine": 3,
    "visualization": 3,
    "pipeline": 4,
}
# Imports allowed inside functions: optional or heavy dependencies, loaded only when used.
LOCAL_IMPORT_OK = ("matplotlib", "sklearn", "torch._dynamo", "fcntl", "numba")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. "ssprl_d2.data.build"
    target: str  # imported module (or module.attribute for "from m import name")
    line: int
    local: bool  # inside a function
    commented: bool  # a comment on the line or the line above


def module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join(rel)


def package_files() -> List[str]:
    out = []
    for root, _, files in os.walk(os.path.join(REPO, PACKAGE)):
        out += [os.path.join(root, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _resolve(module: str, is_package: bool, node: ast.AST) -> List[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".")
    if node.level:
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def imports_of(path: str) -> List[Import]:
    with open(path) as f:
        text = f.read()
    lines = text.splitlines()
    tree = ast.parse(text)
    module = module_name(path)
    is_package = path.endswith("__init__.py")
    out: List[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                row = child.lineno - 1
                above = lines[row - 1].strip() if row > 0 else ""
                commented = "#" in lines[row] or above.startswith("#")
                for target in _resolve(module, is_package, child):
                    out.append(Import(module, target, child.lineno, in_function, commented))
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            visit(child, inner)

    visit(tree, False)
    return out


def all_imports() -> List[Import]:
    return [imp for path in package_files() for imp in imports_of(path)]


def known_modules() -> Dict[str, str]:
    return {module_name(p): p for p in package_files()}


def project_edges(imports: List[Import]) -> List[Tuple[Import, str]]:
    """(import, target module) for every import of a module of the package itself (``from m
    import name`` counts as an import of ``m.name`` when that is a module, else of ``m``)."""
    modules = known_modules()
    seen, out = set(), []
    for imp in imports:
        if imp.target in modules and imp.target != imp.source:
            key = (imp.source, imp.target, imp.line)
            if key not in seen:
                seen.add(key)
                out.append((imp, imp.target))
    return out


def subpackage(module: str) -> Optional[str]:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else None


def layer_violation(source: str, target: str) -> Optional[str]:
    """Why ``source`` may not import ``target``, or None when the edge points down."""
    src, dst = subpackage(source), subpackage(target)
    if src is None or dst is None or src == dst:
        return None  # the package root (registration) or an import inside one sub-package
    if src not in LAYERS or dst not in LAYERS:
        return f"sub-package {src if src not in LAYERS else dst!r} has no layer in LAYERS"
    if LAYERS[dst] >= LAYERS[src]:
        return f"{src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})"
    return None


def find_cycle(edges: Dict[str, List[str]]) -> Optional[List[str]]:
    """One import cycle of the module graph ``edges``, or None."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def dfs(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def module_graph(imports: List[Import]) -> Dict[str, List[str]]:
    graph: Dict[str, List[str]] = {}
    for imp, target in project_edges(imports):
        # A package's __init__ importing its own modules is not a dependency of those modules.
        graph.setdefault(imp.source, [])
        if target not in graph[imp.source]:
            graph[imp.source].append(target)
    return graph


def subpackage_graph(imports: List[Import]) -> Dict[str, List[str]]:
    """Sub-package -> the other sub-packages it imports from."""
    graph: Dict[str, List[str]] = {}
    for imp, target in project_edges(imports):
        src, dst = subpackage(imp.source), subpackage(target)
        if src and dst and src != dst and dst not in graph.setdefault(src, []):
            graph[src].append(dst)
    return graph


def report() -> str:
    imports = all_imports()
    modules = known_modules()
    sizes = {m: sum(1 for _ in open(p)) for m, p in modules.items()}
    big = sorted((n, m) for m, n in sizes.items() if n > 350)
    edges = project_edges(imports)
    upward = sorted({(i.source, t) for i, t in edges if layer_violation(i.source, t)})
    local_at: Dict[Tuple[str, int], str] = {}
    for i in imports:
        if i.local:  # one entry per statement: its first (shortest) target
            local_at.setdefault((i.source, i.line), i.target)
    local = sorted((s, line, t) for (s, line), t in local_at.items())
    rows = [
        f"modules: {len(modules)}, lines: {sum(sizes.values())}, "
        f"largest: {max(sizes.values())}, over 350 lines: {len(big)}",
        *(f"  {n:5d} {m}" for n, m in reversed(big)),
        f"upward import edges: {len(upward)}",
        *(f"  {s} -> {t}" for s, t in upward),
        f"function-local imports: {len(local)}",
        *(f"  {s}:{line} {t}" for s, line, t in local),
        f"module import cycle: {find_cycle(module_graph(imports)) or 'none'}",
        f"sub-package import cycle: {find_cycle(subpackage_graph(imports)) or 'none'}",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        REPO = os.path.abspath(sys.argv[1])
    print(report())
