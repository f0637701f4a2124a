"""What two pbfast peers add to the stock protocols (docs/extensions.md), on every wire and
transport of `wires.VARIANTS`. With stock peers (tests/interop/) nothing of it shows."""

from __future__ import annotations

from typing import Any

import pbfast
import pytest
from pbfast._connection import EXTENSIONS
from pbfast._tub_broker import EXTENSIONS as TUB_EXTENSIONS
from wires import VARIANTS, connector


@pytest.fixture(params=VARIANTS)
def wire(request: pytest.FixtureRequest) -> Any:
    with connector(request.param) as connect:
        yield connect


class Root(pbfast.Referenceable):
    def remote_ping(self) -> str:
        return "pong"


def test_pbfast_peers_recognise_each_other(run, wire) -> None:
    async def main() -> None:
        async with wire(Root()) as w:
            assert await w.root.callRemote("ping") == "pong"
            both = EXTENSIONS if w.wire == "pb" else TUB_EXTENSIONS
            for side in (w.client, w.server):
                assert side.peer_is_pbfast is True
                assert side.peer_extensions == both

    run(main())
