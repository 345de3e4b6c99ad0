"""The code's shape: no import cycles, and every import points down the layers.

The graph is built from the source files with ``ast`` (nothing is imported), so a cycle hidden
in a function-level import is found as well as one at module level. Only imports under
``if TYPE_CHECKING:`` are left out: they never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("saes", "probes", "interp")

# Layers, lowest first: a module may import its own layer or lower ones, never a higher one.
# The longest matching prefix gives a module its layer. README "How the code is organised"
# draws the same picture.
LAYERS: list[tuple[str, ...]] = [
    ("saes.errors", "saes.dtypes", "saes.synthetic", "saes.locks", "saes.devices"),
    ("saes.kernels",),
    ("saes.architectures",),
    ("saes.metrics", "saes.formats"),
    ("saes.training", "saes.snmf"),
    ("saes.stats",),
    ("saes",),
    ("probes",),
    ("interp.errors", "interp.compat"),
    ("interp.world",),
    ("interp.model",),
    ("interp.activations",),
    ("interp.evaluation",),
    ("interp.interventions",),
    ("interp.dashboards",),
    ("interp.circuits",),
    ("interp.cli",),
    ("interp",),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports: ``from a.b import c`` is ``a.b.c`` when that is a
    module, else ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.add(sub if sub in modules else base)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def test_the_import_graph_has_no_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (break each by moving the shared piece down a layer): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_every_module_has_a_layer():
    unplaced = [m for m in source_modules() if layer_of(m) < 0]
    assert not unplaced, f"modules outside every layer of tests/test_layers.py LAYERS: {unplaced}"


def test_imports_point_down_the_layers():
    upward = [
        f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
        for src, targets in import_graph().items()
        for dst in sorted(targets)
        if layer_of(dst) > layer_of(src)
    ]
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_saes_knows_nothing_of_language_models():
    graph = import_graph()
    reach = [f"{src} -> {dst}" for src, ts in graph.items() if src.split(".")[0] == "saes"
             for dst in ts if dst.split(".")[0] != "saes"]
    assert not reach, reach


def test_no_private_names_cross_modules():
    """``from a import _helper`` across modules means the helper lives in the wrong place."""
    modules = source_modules()
    crossing = []
    for name, path in modules.items():
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                crossing += [f"{name} imports {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not crossing, crossing


# The checker itself must be able to fail: a planted cycle and a planted upward import.
def test_the_checker_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("low, high", [("saes.kernels.torch_ref", "saes.training.trainer"),
                                       ("interp.model.hooked", "interp.interventions.steering"),
                                       ("saes.formats.native", "interp.cli")])
def test_layers_order_the_packages(low, high):
    assert layer_of(low) < layer_of(high)


def test_the_public_names_live_at_the_package_tops():
    """What users import does not depend on where a module sits inside the package."""
    import interp
    import probes
    import saes

    for name in ("load", "harvest", "ActivationStore", "Steering", "TokenSource", "HookedModel", "evaluate_sae"):
        assert callable(getattr(interp, name)), name
    for name in ("train", "load", "TopKSAE", "BatchTopKSAE", "MatryoshkaSAE", "MPSAE", "ReLUSAE", "JumpReLUSAE",
                 "TrainConfig", "SNMF"):
        assert callable(getattr(saes, name)), name
    assert set(probes.__all__) <= set(dir(probes))
