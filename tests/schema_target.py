"""The object the schema-limit tests serve from a real ``pbfast serve --tub`` process:
``pbfast serve --tub --object schema_target:Store`` (with ``tests/`` on PYTHONPATH). Its
interface is defined here only: a client that does not import this module knows nothing of it,
so it sends its calls unchecked, and only the server holds them to it.
"""

from __future__ import annotations

from typing import Annotated

import pbfast
from pbfast.schema import MaxLength

__all__ = ["RIStore", "Store"]


class RIStore(pbfast.RemoteInterface):
    __remote_name__ = "RIStore.schema-target.pbfast.example"

    def put(self, key: Annotated[bytes, MaxLength(64)], value: Annotated[bytes, MaxLength(1024)]) -> int: ...

    def peak_memory(self) -> int: ...


class Store(pbfast.Root):
    """put (how many keys are stored) and peak_memory (the process's peak resident size, in
    bytes: ``VmHWM``)."""

    remote_interface = RIStore

    def __init__(self) -> None:
        self.stored: dict[bytes, bytes] = {}

    def remote_put(self, key: bytes, value: bytes) -> int:
        self.stored[key] = value
        return len(self.stored)

    def remote_peak_memory(self) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/self/status")
