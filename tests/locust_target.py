"""The object tests/test_locust.py serves from real ``pbfast serve`` processes (PB and Tub):
``pbfast serve --object locust_target:Service`` (with ``tests/`` on PYTHONPATH). It is
``pbfast serve``'s own test service (echo, fail, ...) plus methods that hand out references.
"""

from __future__ import annotations

import pbfast
from pbfast._cli.service import TestService

__all__ = ["Child", "Service"]


class Child(pbfast.Referenceable):
    def __init__(self, name: str) -> None:
        self.name = name

    def remote_name(self) -> str:
        return self.name


class Service(TestService):
    """``child(name)`` gives a new `Child`; ``same(a, b)`` says whether both arguments are the
    one object (a reference sent back arrives as the object it refers to)."""

    def remote_child(self, name: str) -> Child:
        return Child(name)

    def remote_children(self, names: list[str]) -> dict[str, list[Child]]:
        return {"children": [Child(name) for name in names]}

    def remote_same(self, a: object, b: object) -> bool:
        return a is b and isinstance(a, Child)
