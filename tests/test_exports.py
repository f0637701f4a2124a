"""The public surface, the stub and the extension module agree."""

import ast
import pathlib
import subprocess
import sys

import pbfast
from pbfast import _core

STUB = pathlib.Path(pbfast.__file__).with_name("_core.pyi")


def stub_names() -> set[str]:
    tree = ast.parse(STUB.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_") or n == "__version__"}


def test_stub_matches_the_extension_module():
    module = {n for n in dir(_core) if not n.startswith("_") or n == "__version__"}
    assert stub_names() == module


def test_all_is_exported_and_complete():
    for name in pbfast.__all__:
        assert hasattr(pbfast, name), name
    public = {n for n in vars(pbfast) if not n.startswith("_")}
    modules = {"errors", "serialization", "banana", "referenceable", "pb", "testing"}
    modules |= {"copyable", "cacheable", "cred", "furl", "identity", "tub", "options"}
    assert public - set(pbfast.__all__) <= modules
    assert (STUB.parent / "py.typed").exists()


def test_import_pbfast_leaves_the_heavy_dependencies_for_later() -> None:
    """PB-only programs do not pay for cryptography (a Tub's identity imports it when first made
    or loaded), nor for anything of Twisted or foolscap; nor do they get Locust, which
    monkey-patches the standard library for gevent when imported (only `pbfast.locust` imports
    it)."""
    heavy = "{'cryptography', 'twisted', 'foolscap', 'locust', 'gevent', 'greenlet'}"
    code = f"import sys, pbfast; print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
