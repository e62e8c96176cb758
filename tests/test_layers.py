"""The package's architecture: each layer imports only from the layers below it.

Imports are read from the source with ``ast`` (every ``import`` and ``from ... import``, at any
depth, so an import inside a function counts too). The layers, bottom to top, are listed in
:data:`LAYERS`; the README's "Architecture" section says the same.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "ppvae": ROOT / "ppvae",
    "ppvae.models": ROOT / "models",
    "ppvae.guides": ROOT / "guides",
}

LAYERS = [
    (
        "foundation",
        [
            "ppvae.errors",
            "ppvae.config",
            "ppvae.nets",
            "ppvae.distributed",
            "ppvae.outputs",
            "ppvae.seeding",
            "ppvae.threads",
        ],
    ),
    ("data", ["ppvae.data"]),
    ("baselines", ["ppvae.baselines"]),
    ("exercises", ["ppvae.exercises"]),
    ("pairs", ["ppvae.pairs"]),
    ("evaluation", ["ppvae.evaluation"]),
    ("infer", ["ppvae.infer"]),
    ("catalogue", ["ppvae.models", "ppvae.guides"]),
    ("experiments", ["ppvae.experiments"]),
    ("cli", ["ppvae.cli", "ppvae.__main__"]),
]
"""Bottom to top. ``ppvae/__init__.py`` (the public API) sits above them all."""

FACADE = "ppvae"


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> int | None:
    """The index in :data:`LAYERS` of the layer holding ``module`` (None for the facade)."""
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for annotations
    only, which never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(path: Path, module: str) -> set[str]:
    """The ppvae modules that ``path`` imports (``from ppvae import x`` counts as ppvae.x)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            known = modules()
            names = {f"{base}.{alias.name}" for alias in node.names}
            found |= (names & known.keys()) or {base}  # `from ppvae import data`: ppvae.data
    known = modules()
    return {name for name in found if name in known and name != module}


def upward_imports(tree: dict[str, Path]) -> list[str]:
    """``'a imports b'`` for every import from a higher layer (or of the facade)."""
    bad = []
    for module, path in sorted(tree.items()):
        own = layer(module)
        if own is None:
            continue
        for target in sorted(imports(path, module)):
            rank = layer(target)
            facade = target == FACADE and LAYERS[own][0] != "cli"  # the CLI reads __version__
            if facade or (rank is not None and rank > own):
                bad.append(f"{module} ({LAYERS[own][0]}) imports {target}")
    return bad


def cycles(tree: dict[str, Path]) -> list[list[str]]:
    """Import circles between modules (each found once, as a path that returns to its start)."""
    graph = {m: imports(p, m) for m, p in tree.items()}
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_module_is_in_a_layer():
    unplaced = [m for m in modules() if m != FACADE and layer(m) is None]
    assert unplaced == []


def test_no_layer_imports_a_higher_one():
    assert upward_imports(modules()) == []


def test_no_import_circle():
    # a package's __init__ importing its own submodules is not a circle of modules
    def is_package_reexport(cycle):
        return any(b.startswith(a + ".") for a, b in zip(cycle, cycle[1:], strict=False))

    assert [c for c in cycles(modules()) if not is_package_reexport(c)] == []


def test_no_module_imports_another_modules_private_names():
    bad = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ppvae"):
                bad += [
                    f"{module}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert bad == []


def test_an_upward_import_is_caught(tmp_path):
    """The check itself: a data module that imports fit is reported."""
    fake = tmp_path / "bad.py"
    fake.write_text("from ppvae.infer.fitting import fit\n")
    tree = {**modules(), "ppvae.data.bad": fake}
    assert upward_imports(tree) == ["ppvae.data.bad (data) imports ppvae.infer.fitting"]


@pytest.mark.parametrize("size", [350])
def test_no_module_is_longer_than_about_350_lines(size):
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > size}
    assert long == {}
