"""Logging in over PB, as Twisted's ``pb.PBServerFactory(portal)`` and
``PBClientFactory.login`` do it, so stock Twisted clients and servers interoperate.

The exchange: the client calls ``root.login(username)`` and gets a challenge and a challenger;
it answers ``challenger.respond(MD5(MD5(password) + challenge), mind)`` and gets its avatar.
pbfast's challenges are 16 bytes from the operating system's random source, and each accepts
one response: a wrong answer cannot be retried against the same challenge. Failed logins are
throttled per source address (`Portal`'s ``throttle``; see ``_throttle.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import ipaddress
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ._throttle import LoginQueue, LoginThrottle
from .errors import RemoteError, UnauthorizedLogin
from .referenceable import Referenceable, RemoteReference

if TYPE_CHECKING:
    from ._broker import Broker
    from ._connection import Connection

__all__ = [
    "ANONYMOUS",
    "AllowAnonymousAccess",
    "Anonymous",
    "InMemoryUsernamePasswordDatabase",
    "Portal",
    "UsernamePassword",
    "respond",
]


class UsernamePassword:
    """Credentials: a username and its password (str or bytes; str is sent as UTF-8)."""

    __slots__ = ("username", "password")

    def __init__(self, username: str | bytes, password: str | bytes) -> None:
        self.username: bytes = _bytes(username)
        self.password: bytes = _bytes(password)

    def checkPassword(self, password: str | bytes) -> bool:
        """Whether `password` is this password (compared in constant time)."""
        return hmac.compare_digest(self.password, _bytes(password))

    def __repr__(self) -> str:
        return f"UsernamePassword({self.username!r}, <hidden>)"


class Anonymous:
    """Credentials for an anonymous login (``loginAnonymous``)."""

    __slots__ = ()


# The avatar id a realm sees for an anonymous login (Twisted's ``checkers.ANONYMOUS``).
ANONYMOUS = ()


class ChallengeResponse:
    """Credentials as they arrive over PB: the response to a challenge, checked against the
    password a checker holds (``checkPassword``) or its MD5 digest (``checkMD5Password``)."""

    __slots__ = ("username", "challenge", "response")

    def __init__(self, username: bytes, challenge: bytes, response: bytes) -> None:
        self.username: bytes = username
        self.challenge: bytes = challenge
        self.response: bytes = response

    def checkPassword(self, password: str | bytes) -> bool:
        return self.checkMD5Password(hashlib.md5(_bytes(password)).digest())

    def checkMD5Password(self, md5_password: bytes) -> bool:
        expected = hashlib.md5(md5_password + self.challenge).digest()
        return hmac.compare_digest(expected, self.response)


class Checker(Protocol):
    def requestAvatarId(self, credentials: Any) -> Any: ...


class AllowAnonymousAccess:
    """A checker that admits anonymous logins (as `ANONYMOUS`); a portal without one refuses
    them, as Twisted's does."""

    def requestAvatarId(self, credentials: Any) -> Any:
        """`ANONYMOUS` for anonymous credentials.

        Raises:
            UnauthorizedLogin: any other credentials.
        """
        if isinstance(credentials, Anonymous):
            return ANONYMOUS
        raise UnauthorizedLogin("only anonymous logins are accepted here")


class InMemoryUsernamePasswordDatabase:
    """A checker for username/password credentials held in memory:
    ``InMemoryUsernamePasswordDatabase(alice="secret")``."""

    def __init__(self, **users: str | bytes) -> None:
        self._users: dict[bytes, bytes] = {}
        for name, password in users.items():
            self.addUser(name, password)

    def addUser(self, username: str | bytes, password: str | bytes) -> None:
        """Add a user, or change a user's password."""
        self._users[_bytes(username)] = _bytes(password)

    def requestAvatarId(self, credentials: Any) -> str:
        """The avatar id (the username, as str) for `credentials`.

        Raises:
            UnauthorizedLogin: unknown user or wrong password.
        """
        username = getattr(credentials, "username", None)
        password = self._users.get(username) if isinstance(username, bytes) else None
        check = getattr(credentials, "checkPassword", None)
        # Check a password even for an unknown user, so both cost the same.
        ok = check(password if password is not None else b"\0" * 16) if check else False
        if password is None or not ok or not isinstance(username, bytes):
            raise UnauthorizedLogin("wrong username or password")
        return username.decode("utf-8", "replace")


class Portal:
    """A realm and the checkers that admit users to it; serve it with
    ``pbfast.serve(portal, endpoint)``.

    The realm's ``requestAvatar(avatarId, mind)`` returns the avatar (a `pbfast.Avatar` or
    other `Referenceable`), or ``(avatar, logout)``, or Twisted's ``(interface, avatar,
    logout)``, or a coroutine of any of these. ``logout()`` runs once the client lets go of
    the avatar or disconnects.

    Failed logins are throttled per source address: after a few failures (5) every further
    attempt from that address, right or wrong, waits its turn before it is checked, so that
    its attempts are checked at no more than 5 a second however many connections they come
    over. A right password still logs in (nothing is locked out), connections take turns
    (one waiting on a new connection is checked after at most one attempt from each of the
    others), and an address that stops failing is soon back to no wait. Waiting delays nothing
    else. When an address is first throttled a warning is logged on the ``pbfast`` logger.

    Args:
        realm: gives the avatar for an avatar id and a mind (``requestAvatar``).
        checkers: turn credentials into an avatar id (``requestAvatarId``), tried in turn.
        throttle: throttle failed logins per source address (the default); False to check
            every attempt at once.
    """

    def __init__(self, realm: Any, checkers: Iterable[Checker] = (), throttle: bool = True) -> None:
        self.realm = realm
        self.checkers: list[Checker] = list(checkers)
        self._throttle = LoginThrottle() if throttle else None

    def registerChecker(self, checker: Checker) -> None:
        """Add a checker, tried after the others."""
        self.checkers.append(checker)

    async def login(self, credentials: Any, mind: Any) -> tuple[Any, Any]:
        """``(avatar, logout)`` for `credentials`.

        Raises:
            UnauthorizedLogin: no checker admits the credentials.
        """
        avatar_id: Any = None
        failure: UnauthorizedLogin | None = None
        for checker in self.checkers:
            try:
                avatar_id = await _maybe_await(checker.requestAvatarId(credentials))
                break
            except UnauthorizedLogin as e:
                failure = e
        else:
            raise failure or UnauthorizedLogin("no checker accepts these credentials")
        result = await _maybe_await(self.realm.requestAvatar(avatar_id, mind))
        if isinstance(result, tuple):
            if len(result) == 3:  # Twisted's (interface, avatar, logout)
                result = result[1:]
            avatar, logout = result
        else:
            avatar, logout = result, None
        if not isinstance(avatar, Referenceable):
            raise TypeError(f"the realm's avatar must be a pbfast.Referenceable, not {type(avatar).__name__}")
        return avatar, logout


class PortalRoot(Referenceable):
    """The root a portal's connection serves: ``login`` and ``loginAnonymous``."""

    def __init__(self, portal: Portal, broker: Broker) -> None:
        self.portal = portal
        self.broker = broker
        self._queue = LoginQueue()  # this connection's attempts waiting for the throttle
        if portal._throttle is not None:
            broker.notifyOnDisconnect(self._queue.close)

    def remote_login(self, username: bytes | str) -> tuple[bytes, Challenger]:
        challenge = os.urandom(16)
        return challenge, Challenger(self, _bytes(username), challenge)

    async def remote_loginAnonymous(self, mind: Any) -> Any:
        return await self._admit(Anonymous(), mind)

    async def _admit(self, credentials: Any, mind: Any) -> Any:
        """The avatar for `credentials`, checked in the turn the portal's throttle gives.

        Raises:
            UnauthorizedLogin: the credentials were refused, or too many attempts are waiting.
        """
        portal, throttle = self.portal, self.portal._throttle
        if throttle is None:
            avatar, logout = await portal.login(credentials, mind)
        else:
            address = _source_address(self.broker)
            avatar, logout = await throttle.attempt(
                address, self._queue, lambda: portal.login(credentials, mind)
            )
        if logout is not None:
            self.broker.call_when_released(avatar, logout)
        return avatar


class Challenger(Referenceable):
    """Checks the one response to its challenge."""

    def __init__(self, root: PortalRoot, username: bytes, challenge: bytes) -> None:
        self._root = root
        self._username = username
        self._challenge: bytes | None = challenge

    async def remote_respond(self, response: bytes, mind: Any) -> Any:
        challenge, self._challenge = self._challenge, None
        if challenge is None:
            raise UnauthorizedLogin("this challenge has been answered already")
        if not isinstance(response, bytes):
            raise UnauthorizedLogin("the response must be a byte string")
        return await self._root._admit(ChallengeResponse(self._username, challenge, response), mind)


def respond(challenge: bytes, password: str | bytes) -> bytes:
    """The response to a challenge: ``MD5(MD5(password) + challenge)``."""
    return hashlib.md5(hashlib.md5(_bytes(password)).digest() + challenge).digest()


async def login_over(root: RemoteReference, credentials: Any, mind: Any) -> RemoteReference:
    """Log in through the root of a connection to a portal; the avatar's reference.

    Raises:
        UnauthorizedLogin: the server refused the credentials.
    """
    try:
        if credentials is None or isinstance(credentials, Anonymous):
            anonymous: RemoteReference = await root.callRemote("loginAnonymous", mind)
            return anonymous
        if not isinstance(credentials, UsernamePassword):
            raise TypeError(
                f"PB logs in with UsernamePassword or Anonymous, not {type(credentials).__name__}"
            )
        challenge, challenger = await root.callRemote("login", credentials.username)
        avatar: RemoteReference = await challenger.callRemote(
            "respond", respond(challenge, credentials.password), mind
        )
        return avatar
    except RemoteError as e:
        # Twisted refuses with UnauthorizedLogin, or UnhandledCredentials: both LoginFailed.
        if e.check(UnauthorizedLogin, "twisted.cred.error.LoginFailed"):
            raise UnauthorizedLogin(str(e.remoteValue) or e.remoteType) from e
        raise


def _source_address(broker: Connection) -> str:
    """The address logins over `broker`'s connection are throttled by: the peer's IP address
    (an IPv4-mapped IPv6 address as IPv4), else the peer name its transport gives, else one
    key shared by every such connection."""
    transport = getattr(broker, "transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and peer:  # (host, port), or (host, port, flowinfo, scope_id)
        host = str(peer[0])
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return host
        mapped = getattr(ip, "ipv4_mapped", None)
        return str(mapped or ip)
    if peer:
        return peer if isinstance(peer, str) else repr(peer)
    return "local"


def _bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"expected str or bytes, not {type(value).__name__}")


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
