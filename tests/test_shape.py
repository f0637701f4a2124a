"""The layering the code keeps, checked from its source: no import cycles in the package, an object
model that knows no wire, a command line that uses only the public API, and a Rust core that
knows nothing of the Python binding."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "pbfast"
RUST = ROOT / "rust"

# The object model: what users subclass and catch. It must not name a broker, a Tub or a wire.
OBJECT_MODEL = ("referenceable", "copyable", "cacheable", "errors", "util")
WIRES = ("_broker", "_tub_broker", "tub", "pb", "endpoints", "_core")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_at_import_time(path: pathlib.Path, *, everywhere: bool = False) -> set[tuple[str, str | None]]:
    """(module, name) for each relative import run when `path` is imported: not those under
    ``if TYPE_CHECKING`` or inside functions, unless `everywhere`. `name` is the imported name
    for ``from . import x`` (which may be a module), else None."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[tuple[str, str | None]] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if not everywhere and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if not everywhere and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                if node.module:
                    found.add((".".join([*base, node.module]), None))
                else:
                    found.update((".".join(base), alias.name) for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    visit(inner)

    visit(ast.parse(path.read_text()).body)
    return found


def dependency_graph(*, everywhere: bool = False) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    # The extension module (its stub stands for it) imports nothing of the package.
    extensions = {module_name(p.with_suffix(".py")) for p in PACKAGE.rglob("*.pyi")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for module, imported in imports_at_import_time(path, everywhere=everywhere):
            submodule = f"{module}.{imported}" if imported else None
            deps.add(submodule if submodule in modules or submodule in extensions else module)
        graph[name] = {d for d in deps if (d in modules or d in extensions) and d != name}
    graph.update({name: set() for name in extensions if name not in modules})
    return graph


def test_no_import_cycles() -> None:
    """None at all: not at import time, and not through imports for type checking or inside
    functions either (a cycle there is a layering mistake all the same)."""
    graph = dependency_graph(everywhere=True)
    state: dict[str, int] = {}
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert cycles == []


def test_the_object_model_knows_no_wire() -> None:
    for name in OBJECT_MODEL:
        path = PACKAGE / f"{name}.py"
        found = imports_at_import_time(path, everywhere=True)
        imported = {module for module, _ in found}
        imported |= {f"pbfast.{n}" for module, n in found if module == "pbfast" and n}
        wires = {f"pbfast.{w}" for w in (*WIRES, "_connection")}
        assert not imported & wires, (name, imported & wires)
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not {n for n in names if "Broker" in n or "Tub" in n or n == "_core"}, name


def test_the_command_line_uses_only_the_public_api() -> None:
    for path in (PACKAGE / "_cli").glob("*.py"):
        for module, name in imports_at_import_time(path):
            if module.startswith("pbfast._cli"):
                continue
            parts = module.split(".")[1:]
            assert not any(p.startswith("_") for p in parts), (path.name, module)
            assert not (name or "").startswith("_") or name == "__version__", (path.name, module, name)


def test_the_rust_core_does_not_depend_on_the_binding() -> None:
    for path in RUST.rglob("*.rs"):
        relative = path.relative_to(RUST).as_posix()
        if relative.startswith("py/") or relative == "lib.rs":
            continue
        source = path.read_text()
        assert "pyo3" not in source and "crate::py" not in source, relative
