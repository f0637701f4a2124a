"""pytest configuration for pbfast's tests.

The shared helpers live in ``tests/helpers.py``; because ``tests/`` has no ``__init__.py``,
pytest's default ("prepend") import mode puts ``tests/`` on ``sys.path`` before collecting, so
test modules import them with a plain ``from helpers import ...``. Only files inside the
repository are read (the vectors under ``tests/vectors/``).
"""

from __future__ import annotations

import pytest
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
