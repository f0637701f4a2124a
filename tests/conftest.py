"""pytest configuration for pbfast's tests.

The shared helpers live in ``tests/helpers.py``, and the connection scaffolding of the
end-to-end PB tests in ``tests/connections.py`` (the ``transport`` and ``socket_kind`` fixtures
below are built on it). Because ``tests/`` has no ``__init__.py``, pytest's default ("prepend")
import mode puts ``tests/`` on ``sys.path`` before collecting, so test modules import them with
a plain ``from helpers import ...`` or ``from connections import ...``. Only files inside the
repository are read (the vectors under ``tests/vectors/``).
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from connections import TRANSPORTS, Connect, _make_connector
from helpers import (  # noqa: F401 (re-exported for convenience)
    assert_deep_equal,
    deep_equal,
    from_tagged,
    load_vectors,
    twisted_dumps,
    twisted_loads,
)
from hypothesis import settings

# Hypothesis: no per-example deadline (the first call of a strategy, or a slow CI machine, must
# not turn into a flaky failure). Tests choose their own max_examples.
settings.register_profile("pbfast", deadline=None)
settings.load_profile("pbfast")

LOOPS = ("asyncio", "uvloop")
T = TypeVar("T")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--loop",
        action="store",
        default="asyncio",
        choices=LOOPS,
        help="event loop implementation for async tests (default: asyncio)",
    )


@pytest.fixture(scope="session")
def loop_name(request: pytest.FixtureRequest) -> str:
    """The event loop selected with ``--loop`` ("asyncio" or "uvloop")."""
    return request.config.getoption("--loop")


@pytest.fixture(scope="session")
def twisted_vectors() -> dict:
    """tests/vectors/twisted_pb.json, parsed."""
    return load_vectors("twisted_pb.json")


@pytest.fixture(scope="session")
def foolscap_vectors() -> dict:
    """tests/vectors/foolscap_tokens.json, parsed."""
    return load_vectors("foolscap_tokens.json")


@pytest.fixture
def run(loop_name: str):
    """``run(coro)`` runs a coroutine to completion on a fresh loop of the selected kind.

    Strict teardown: anything the loop's exception handler receives (an exception in a
    callback, a task destroyed while pending, a future's unretrieved exception, ...) fails the
    test, as do tasks still running when the coroutine returns.
    """
    problems: list[dict] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        problems.append(context)

    def run_coroutine(coro: Coroutine[Any, Any, T], *, timeout: float = 30.0) -> T:
        async def main() -> T:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(handler)
            result = await asyncio.wait_for(coro, timeout)
            # Let callbacks scheduled by the test's last steps (closing transports) run.
            for _ in range(5):
                await asyncio.sleep(0)
            leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in leftover:
                task.cancel()
            assert not leftover, f"tasks still running at the end of the test: {leftover}"
            return result

        if loop_name == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        else:
            factory = asyncio.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(main())
        gc.collect()
        assert not problems, f"the event loop reported: {problems}"
        return result

    return run_coroutine


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """``async with transport(root, client_options={...}, **server_options) as conn`` gives a
    connected `connections.Conn`, over the in-memory pair, TCP on 127.0.0.1 or a unix socket."""
    kind = request.param
    tmpdir = tempfile.mkdtemp(dir="/tmp") if kind == "unix" else None
    try:
        yield _make_connector(kind, tmpdir)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture(params=("tcp", "unix"))
def socket_kind(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A real-socket transport kind and a temporary directory for unix sockets: pass both to
    `connections._endpoints`."""
    tmpdir = tempfile.mkdtemp(dir="/tmp")
    try:
        yield request.param, tmpdir
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Every test that runs an event loop carries the `event_loop` mark, so CI can rerun exactly
    # those on uvloop.
    for item in items:
        if "run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.event_loop)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    # What earlier tests left alive (the modules they imported, stock Twisted, foolscap and
    # Tahoe among them, pytest's records, caches) lives to the end of the run. Collected once
    # and frozen here, before the test's fixtures, it is out of the way of the collections the
    # tests make (`run` makes one after every event loop, `settle` several): they scan only what
    # the test itself made, instead of a heap that grows with every test the run has passed.
    gc.collect()
    gc.freeze()
    yield
