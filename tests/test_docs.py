"""The documentation site: its examples run, and it builds.

A fenced ```python block in docs/ directly after a ``<!-- run -->`` line is a whole program:
each runs in a fresh interpreter, in a scratch directory, and must exit 0 in time. Every block
that uses pbfast must be marked so, or marked ``<!-- fragment -->`` (a piece of a program shown
for its shape); the porting guides may have no fragments. Blocks of other code (Twisted's,
foolscap's) are not run.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# The guides whose every pbfast block must run.
FULLY_RUN = ("porting-twisted.md", "porting-foolscap.md")
# Each example is meant to take well under 2 s; this bounds a hung one on a slow machine.
TIMEOUT = 30.0

_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)(.*)$")
_MARK = re.compile(r"^<!--\s*(run|fragment)\s*-->$")


@dataclass
class Block:
    page: str
    line: int
    language: str
    mark: str | None
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with the mark on the line before each."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    page = path.relative_to(DOCS).as_posix()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i].strip())
        if not match:
            i += 1
            continue
        fence, language = match.group(1), match.group(2)
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = _MARK.match(previous)
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        i += 1
        code = "\n".join(body) + "\n"
        found.append(Block(page, start + 1, language, mark.group(1) if mark else None, code))
    return found


def all_blocks() -> list[Block]:
    return [block for path in sorted(DOCS.rglob("*.md")) for block in blocks(path)]


RUNNABLE = [block for block in all_blocks() if block.mark == "run"]


def test_examples_found() -> None:
    pages = {block.page for block in RUNNABLE}
    assert set(FULLY_RUN) <= pages, f"no runnable examples in {set(FULLY_RUN) - pages}"
    assert "getting-started.md" in pages


def test_every_pbfast_block_is_marked() -> None:
    unmarked = [
        block.id
        for block in all_blocks()
        if block.language == "python" and "pbfast" in block.code and block.mark is None
    ]
    assert not unmarked, f"pbfast blocks with neither <!-- run --> nor <!-- fragment -->: {unmarked}"


def test_porting_guides_have_no_fragments() -> None:
    fragments = [block.id for block in all_blocks() if block.page in FULLY_RUN and block.mark == "fragment"]
    assert not fragments, f"every pbfast block of the porting guides must run: {fragments}"


def test_marks_are_on_python_blocks() -> None:
    misplaced = [block.id for block in all_blocks() if block.mark and block.language != "python"]
    assert not misplaced


def test_every_python_block_compiles() -> None:
    """Twisted's and foolscap's blocks are not run, but they are Python."""
    for block in all_blocks():
        if block.language == "python":
            compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


# What asyncio or the interpreter print for a mistake that does not fail the program.
_BUG_SIGNS = ("was never retrieved", "was never awaited", "Exception ignored", "Task was destroyed")


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_example_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": ""}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, (
        f"{block.id} exited {result.returncode} after {elapsed:.1f} s\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )
    for sign in _BUG_SIGNS:
        assert sign not in result.stderr, f"{block.id}: {sign!r} on stderr:\n{result.stderr}"


_SITE_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_gen_files")


def _missing_site_packages() -> list[str]:
    missing = []
    for name in _SITE_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


@pytest.mark.skipif(
    bool(_missing_site_packages()),
    reason="the docs toolchain is not installed (pip install -e '.[docs]'): missing "
    + ", ".join(_missing_site_packages()),
)
def test_site_builds_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    site = tmp_path / "site"
    assert (site / "images" / "comparison.png").is_file()
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "pbfast create-tub" in cli and "--fail-if" in cli
    assert "Twisted" in (site / "porting-twisted" / "index.html").read_text(encoding="utf-8")
    # every public name has its entry in the API reference
    import pbfast

    documented = set()
    for page in (site / "api").rglob("index.html"):
        documented |= set(re.findall(r'id="pbfast\.(?:[\w.]+\.)?(\w+)"', page.read_text(encoding="utf-8")))
    missing = sorted(set(pbfast.__all__) - documented)
    assert not missing, f"public names missing from the API reference: {missing}"
    # pbfast.util's names are reached through the module: each has its entry on the module's page.
    util_page = (site / "api" / "util" / "index.html").read_text(encoding="utf-8")
    missing = sorted(name for name in pbfast.util.__all__ if f'id="pbfast.util.{name}"' not in util_page)
    assert not missing, f"pbfast.util names missing from the API reference: {missing}"
    # And pbfast.metrics' likewise.
    page = (site / "api" / "metrics" / "index.html").read_text(encoding="utf-8")
    missing = sorted(name for name in pbfast.metrics.__all__ if f'id="pbfast.metrics.{name}"' not in page)
    assert not missing, f"pbfast.metrics names missing from the API reference: {missing}"
    # pbfast.locust is not imported here (importing Locust monkey-patches the process): its
    # __all__ is read from the source.
    locust_api = ROOT / "python" / "pbfast" / "locust.py"
    (names,) = [
        ast.literal_eval(node.value)
        for node in ast.parse(locust_api.read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__all__"]
    ]
    locust_page = (site / "api" / "locust" / "index.html").read_text(encoding="utf-8")
    missing = sorted(name for name in names if f'id="pbfast.locust.{name}"' not in locust_page)
    assert not missing, f"pbfast.locust names missing from the API reference: {missing}"
