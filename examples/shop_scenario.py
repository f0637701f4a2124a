"""A load-test scenario for ``pbfast bench --scenario``, with the object it is run against.

A user's visit to a shop: browse a page, open a cart (a reference to a new object), add three
items to it, check out. ``pbfast bench`` runs ``visit`` as one user iteration and reports each
iteration's latency and, by method name, every call made in it (``browse``, ``cart``, ``add``,
``checkout``): calls on the cart are recorded too, as it came back from a call.

From this directory::

    pbfast serve --object shop_scenario:Shop &
    pbfast bench tcp:host=127.0.0.1:port=8787 --scenario shop_scenario:visit -c 32 -d 10s
    pbfast bench tcp:host=127.0.0.1:port=8787 --scenario shop_scenario:visit --stages 10s:200,10s:800
"""

from __future__ import annotations

import random

import pbfast

PRICES = {f"item {n}": 1 + n % 7 for n in range(100)}


class Cart(pbfast.Referenceable):
    def __init__(self) -> None:
        self.items: list[str] = []

    def remote_add(self, item: str) -> int:
        if item not in PRICES:
            raise pbfast.Error(f"no such item: {item!r}")
        self.items.append(item)
        return len(self.items)

    def remote_checkout(self) -> int:
        return sum(PRICES[item] for item in self.items)


class Shop(pbfast.Root):
    def remote_browse(self, page: int) -> list[str]:
        return [f"item {n}" for n in range(page * 10, page * 10 + 10)]

    def remote_cart(self) -> Cart:
        return Cart()


async def visit(root: pbfast.RemoteReference) -> None:
    """One user iteration: given the root reference (pbfast bench's recording stand-in for it)."""
    items = await root.callRemote("browse", random.randrange(10))
    cart = await root.callRemote("cart")
    for item in random.sample(items, 3):
        await cart.callRemote("add", item)
    await cart.callRemote("checkout")
