"""The package type-checks: ``mypy --strict`` finds nothing, the extension's stub matches the
extension (``mypy.stubtest``), and a user's misspelt or mistyped option is caught by the checker."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytest.importorskip("mypy", reason="mypy is in the test extra")


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


def test_mypy_strict_on_the_package() -> None:
    result = mypy("mypy", "--strict", "--no-incremental", "python/pbfast")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stub_matches_the_extension() -> None:
    result = mypy("mypy.stubtest", "pbfast._core")
    assert result.returncode == 0, result.stdout + result.stderr


def test_options_are_checked(tmp_path: pathlib.Path) -> None:
    user = tmp_path / "user.py"
    user.write_text(
        "import pbfast\n"
        "async def main() -> None:\n"
        "    await pbfast.serve(pbfast.Root(), 'tcp:0', max_refs=10, idle_timeout=None)\n"
        "    await pbfast.serve(pbfast.Root(), 'tcp:0', max_refs='ten')\n"
        "    pbfast.Tub(acceptGifts=False, negotiationTimeout=30.0)\n"
        "    await pbfast.connect('tcp:host=x:port=1', max_depht=3)\n"
    )
    result = mypy("mypy", "--strict", "--no-incremental", str(user))
    out = result.stdout
    assert 'Argument "max_refs" to "serve" has incompatible type "str"' in out, out
    assert 'Unexpected keyword argument "max_depht"' in out, out
    assert "user.py:3:" not in out and "user.py:5:" not in out, out


def test_the_public_api_is_fully_typed() -> None:
    """Every name `import pbfast` exports, and every type they mention, has a declared type (what
    pyright's ``--verifytypes`` checks for a library: users' checkers then infer nothing)."""
    result = subprocess.run(
        [sys.executable, "-m", "basedpyright", "--verifytypes", "pbfast", "--ignoreexternal"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert "Type completeness score: 100%" in result.stdout, result.stdout + result.stderr
