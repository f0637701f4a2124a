"""A portal for the login-throttling tests (test_throttle.py), served in-process and by
``pbfast serve --object throttle_portal:portal`` in a subprocess (with ``tests/`` on
``PYTHONPATH``): users alice ("secret") and bob ("hunter2"), whose avatars echo."""

from __future__ import annotations

import asyncio
from typing import Any

import pbfast

USERS = {"alice": "secret", "bob": "hunter2"}


class EchoAvatar(pbfast.Avatar):
    def __init__(self, avatar_id: Any) -> None:
        self.avatar_id = avatar_id

    def perspective_whoami(self) -> Any:
        return self.avatar_id

    def perspective_echo(self, x: Any) -> Any:
        return x


class EchoRealm:
    def requestAvatar(self, avatar_id: Any, mind: Any) -> Any:
        return EchoAvatar(avatar_id), lambda: None


class CountingChecker:
    """The users above; `checked` holds the loop time of every check."""

    def __init__(self) -> None:
        self._inner = pbfast.InMemoryUsernamePasswordDatabase(**USERS)
        self.checked: list[float] = []

    def requestAvatarId(self, credentials: Any) -> Any:
        self.checked.append(asyncio.get_running_loop().time())
        return self._inner.requestAvatarId(credentials)


def portal(throttle: bool = True) -> pbfast.Portal:
    """A portal to EchoRealm for the users above (its checker is a `CountingChecker`)."""
    return pbfast.Portal(EchoRealm(), [CountingChecker()], throttle=throttle)
