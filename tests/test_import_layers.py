"""The package's layers, read from its imports (module level and inside functions alike):

    base (atomic, folders) -> models -> export -> runtime -> apps -> cli

A module may import only from its own layer or a lower one; the runtime (the device library) takes
only the artifact format from `export` (`export.manifest`, `export.format`); and no import cycle
exists between modules. A new import that breaks this fails here, naming the file and line.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import latent_replay

PACKAGE = Path(latent_replay.__file__).parent
LAYERS = ["base", "models", "export", "runtime", "apps", "cli"]
RUNTIME_MAY_USE_FROM_EXPORT = {"latent_replay.export.manifest", "latent_replay.export.format"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("atomic", "folders"):
        return "base"
    return parts[1]


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> List[Tuple[str, int]]:
    """(imported latent_replay module, line) for every import in the file, resolved to modules."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "latent_replay"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "latent_replay":
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                out.append((sub if _is_module(sub) else target, node.lineno))
    return out


def graph() -> Dict[str, List[Tuple[str, int]]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_layer_imports_a_higher_one():
    bad = []
    for module, targets in graph().items():
        mine = LAYERS.index(layer(module))
        for target, line in targets:
            if LAYERS.index(layer(target)) > mine:
                bad.append(f"{module}:{line} imports {target} ({layer(module)} -> {layer(target)})")
            elif layer(module) == "runtime" and layer(target) == "export" and target not in RUNTIME_MAY_USE_FROM_EXPORT:
                bad.append(f"{module}:{line} imports {target} (the runtime takes only the artifact format from export)")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Tarjan's strongly connected components over module -> imported module (a package's
    __init__ counts as a module)."""
    edges = {m: sorted({t for t, _ in ts if t != m}) for m, ts in graph().items()}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, []):
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_scan_sees_the_layers():
    """Guards the scanner: known imports are found and classified."""
    g = graph()
    assert ("latent_replay.export.manifest", ) in {(t,) for t, _ in g["latent_replay.runtime.engine.base"]}
    assert layer("latent_replay.apps.run.command") == "apps" and layer("latent_replay.atomic") == "base"
    assert any(t.startswith("latent_replay.apps") for t, _ in g["latent_replay.cli"])
