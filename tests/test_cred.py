"""Logging in over PB: `pbfast.Portal` served with `pbfast.serve`, `pbfast.login`, Twisted's
challenge/response, anonymous logins, realms, logouts and minds.

`pbfast.login` takes an endpoint, so most tests run over TCP and a unix socket (the ``listen``
fixture, on conftest's ``socket_kind``); the tests that drive the exchange by hand also run over
the in-memory pair (``root_of``, on conftest's ``transport``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pbfast
import pbfast.cred
import pytest
from connections import Connect, _endpoints, eventually, pbfast_records, settle

# --------------------------------------------------------------------------------------------
# Transports
# --------------------------------------------------------------------------------------------


@pytest.fixture
def listen(socket_kind: tuple[str, str]) -> Any:
    """``async with listen(root, **options) as (server, endpoint)``: a server, and the
    endpoint string a client connects to."""
    listen_on, connect_to = _endpoints(*socket_kind)

    @contextlib.asynccontextmanager
    async def serving(root: Any, **options: Any) -> AsyncIterator[tuple[pbfast.Server, str]]:
        server = await pbfast.serve(root, listen_on, **options)
        try:
            yield server, connect_to(server)
        finally:
            server.close()
            await asyncio.wait_for(server.wait_closed(), 5)

    return serving


@pytest.fixture
def root_of(transport: Connect) -> Any:
    """``async with root_of(portal) as root``: a plain connection's root reference to a portal."""

    @contextlib.asynccontextmanager
    async def connection(root: Any) -> AsyncIterator[pbfast.RemoteReference]:
        async with transport(root) as conn:
            yield conn.root

    return connection


# --------------------------------------------------------------------------------------------
# A realm
# --------------------------------------------------------------------------------------------


class CrBoard(pbfast.Viewable):
    def view_who(self, perspective: Any) -> Any:
        return perspective.avatar_id

    def view_add(self, perspective: Any, a: int, b: int) -> int:
        return a + b


class CrPlayer(pbfast.Avatar):
    def __init__(self, avatar_id: Any, mind: Any, realm: CrRealm) -> None:
        self.avatar_id = avatar_id
        self.mind = mind
        self.realm = realm

    def perspective_whoami(self) -> Any:
        return self.avatar_id

    def perspective_echo(self, x: Any) -> Any:
        return x

    def perspective_board(self) -> CrBoard:
        return self.realm.board

    async def perspective_tell_mind(self, x: Any) -> Any:
        return await self.mind.callRemote("notify", x)


class CrRealm:
    """Hands out a new CrPlayer per login, in the result form given by `form`."""

    FORMS = ("avatar", "pair", "triple", "async avatar", "async pair", "async triple")

    def __init__(self, form: str = "pair") -> None:
        self.form = form
        self.board = CrBoard()
        self.requests: list[tuple[Any, Any]] = []
        self.avatars: list[CrPlayer] = []
        self.logouts: list[Any] = []

    def requestAvatar(self, avatar_id: Any, mind: Any) -> Any:
        self.requests.append((avatar_id, mind))
        avatar = CrPlayer(avatar_id, mind, self)
        self.avatars.append(avatar)

        def logout() -> None:
            self.logouts.append(avatar_id)

        kind = self.form.removeprefix("async ")
        if kind == "avatar":
            result: Any = avatar
        elif kind == "pair":
            result = (avatar, logout)
        else:
            result = ("IPerspective", avatar, logout)
        if self.form.startswith("async"):

            async def later() -> Any:
                await asyncio.sleep(0)
                return result

            return later()
        return result


class CrMind(pbfast.Referenceable):
    """The client-side object the server's avatar calls back."""

    def __init__(self) -> None:
        self.heard: list[Any] = []

    def remote_notify(self, x: Any) -> str:
        self.heard.append(x)
        return f"heard {x!r}"


def cr_portal(realm: Any = None) -> tuple[pbfast.Portal, Any]:
    realm = CrRealm() if realm is None else realm
    checker = pbfast.InMemoryUsernamePasswordDatabase(alice="secret", bob=b"hunter2")
    return pbfast.Portal(realm, [checker]), realm


# --------------------------------------------------------------------------------------------
# Logging in
# --------------------------------------------------------------------------------------------


def test_login_gives_the_avatar(run, listen) -> None:
    async def main() -> None:
        portal, realm = cr_portal()
        async with listen(portal) as (server, endpoint):
            avatar = await pbfast.login(endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=5)
            assert isinstance(avatar, pbfast.RemoteReference)
            assert await avatar.callRemote("whoami") == "alice"
            assert await avatar.callRemote("echo", [1, b"two"]) == [1, b"two"]
            assert realm.requests == [("alice", None)]
            # Views of a Viewable the avatar returns see the avatar.
            board = await avatar.callRemote("board")
            assert await board.callRemote("who") == "alice"
            assert await board.callRemote("add", 2, 3) == 5
            assert await avatar.callRemote("board") is board
            # bytes credentials too, and another user on another connection.
            bob = await pbfast.login(endpoint, pbfast.UsernamePassword(b"bob", b"hunter2"), timeout=5)
            assert await bob.callRemote("whoami") == "bob"
            bobs_board = await bob.callRemote("board")
            assert await bobs_board.callRemote("who") == "bob"
            with pytest.raises(pbfast.RemoteError):
                await avatar.callRemote("no_such_perspective_method")
            await avatar.broker.close()
            await bob.broker.close()

    run(main())


@pytest.mark.parametrize(
    "username, password", [("alice", "wrong"), ("alice", ""), ("mallory", "secret"), ("", "")]
)
def test_refused_login(run, listen, caplog, username, password) -> None:
    async def main() -> None:
        portal, realm = cr_portal()
        async with listen(portal) as (server, endpoint):
            with pytest.raises(pbfast.UnauthorizedLogin) as info:
                await pbfast.login(endpoint, pbfast.UsernamePassword(username, password), timeout=5)
            assert "wrong username or password" in str(info.value)
            assert realm.requests == []
            # The client closed its connection.
            await eventually(lambda: not server.brokers)
            # The server still admits the right password.
            avatar = await pbfast.login(endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=5)
            assert await avatar.callRemote("whoami") == "alice"
            await avatar.broker.close()

    with caplog.at_level(logging.DEBUG, logger="pbfast"):
        run(main())
    # Refusing a login is routine: nothing at WARNING or above (in particular no ERROR).
    assert not pbfast_records(caplog, logging.WARNING)


def test_one_response_per_challenge(run, root_of) -> None:
    async def main() -> None:
        portal, realm = cr_portal()
        async with root_of(portal) as root:
            # Wrong, then right: the challenge is spent.
            challenge, challenger = await root.callRemote("login", b"alice")
            with pytest.raises(pbfast.RemoteError) as info:
                await challenger.callRemote("respond", pbfast.cred.respond(challenge, "wrong"), None)
            assert info.value.check(pbfast.UnauthorizedLogin)
            assert info.value.check("twisted.cred.error.UnauthorizedLogin")
            with pytest.raises(pbfast.RemoteError) as info:
                await challenger.callRemote("respond", pbfast.cred.respond(challenge, "secret"), None)
            assert info.value.check(pbfast.UnauthorizedLogin)
            assert realm.requests == []
            # Right, then right again: only the first is admitted.
            challenge, challenger = await root.callRemote("login", "alice")
            avatar = await challenger.callRemote("respond", pbfast.cred.respond(challenge, "secret"), None)
            assert await avatar.callRemote("whoami") == "alice"
            with pytest.raises(pbfast.RemoteError) as info:
                await challenger.callRemote("respond", pbfast.cred.respond(challenge, "secret"), None)
            assert info.value.check(pbfast.UnauthorizedLogin)
            assert len(realm.requests) == 1
            # A response that is not bytes is refused, and spends the challenge too.
            challenge, challenger = await root.callRemote("login", b"alice")
            with pytest.raises(pbfast.RemoteError) as info:
                await challenger.callRemote("respond", "not bytes", None)
            assert info.value.check(pbfast.UnauthorizedLogin)
            with pytest.raises(pbfast.RemoteError) as info:
                await challenger.callRemote("respond", pbfast.cred.respond(challenge, "secret"), None)
            assert info.value.check(pbfast.UnauthorizedLogin)
            assert len(realm.requests) == 1

    run(main())


def test_challenges_and_responses(run, root_of) -> None:
    async def main() -> None:
        portal, realm = cr_portal()
        async with root_of(portal) as root:
            challenges = []
            for _ in range(5):
                challenge, challenger = await root.callRemote("login", b"bob")
                assert isinstance(challenge, bytes) and len(challenge) == 16
                assert isinstance(challenger, pbfast.RemoteReference)
                challenges.append(challenge)
            assert len(set(challenges)) == 5
            # The response is Twisted's: MD5(MD5(password) + challenge).
            challenge, challenger = await root.callRemote("login", b"bob")
            expected = hashlib.md5(hashlib.md5(b"hunter2").digest() + challenge).digest()
            assert pbfast.cred.respond(challenge, "hunter2") == expected
            assert pbfast.cred.respond(challenge, b"hunter2") == expected
            avatar = await challenger.callRemote("respond", expected, None)
            assert await avatar.callRemote("whoami") == "bob"

    run(main())


def test_respond_matches_twisted() -> None:
    challenge = bytes(range(16))
    assert (
        pbfast.cred.respond(challenge, "secret")
        == hashlib.md5(hashlib.md5(b"secret").digest() + challenge).digest()
    )
    assert pbfast.cred.respond(challenge, "p\u00e4ss") == pbfast.cred.respond(challenge, "p\u00e4ss".encode())


def test_anonymous_login(run, listen) -> None:
    async def main() -> None:
        realm = CrRealm()
        checkers = [pbfast.InMemoryUsernamePasswordDatabase(alice="secret"), pbfast.AllowAnonymousAccess()]
        async with listen(pbfast.Portal(realm, checkers)) as (server, endpoint):
            first = await pbfast.login(endpoint, None, timeout=5)
            assert await first.callRemote("whoami") == ()
            second = await pbfast.login(endpoint, pbfast.Anonymous(), mind=CrMind(), timeout=5)
            assert await second.callRemote("whoami") == ()
            assert await second.callRemote("tell_mind", "anon") == "heard 'anon'"
            assert [avatar_id for avatar_id, _ in realm.requests] == [(), ()]
            assert realm.requests[0][1] is None
            assert isinstance(realm.requests[1][1], pbfast.RemoteReference)
            # Passwords still go to the password checker.
            alice = await pbfast.login(endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=5)
            assert await alice.callRemote("whoami") == "alice"
            with pytest.raises(pbfast.UnauthorizedLogin):
                await pbfast.login(endpoint, pbfast.UsernamePassword("alice", "wrong"), timeout=5)
            for avatar in (first, second, alice):
                await avatar.broker.close()
            await eventually(lambda: realm.logouts == [(), (), "alice"])

    run(main())


def test_anonymous_login_needs_allow_anonymous_access(run, listen, caplog) -> None:
    async def main() -> None:
        portal, realm = cr_portal()
        async with listen(portal) as (server, endpoint):
            for credentials in (None, pbfast.Anonymous()):
                with pytest.raises(pbfast.UnauthorizedLogin):
                    await pbfast.login(endpoint, credentials, timeout=5)
            await eventually(lambda: not server.brokers)
            assert realm.requests == []
        # A portal that admits only anonymous logins refuses passwords.
        portal = pbfast.Portal(realm, [pbfast.AllowAnonymousAccess()])
        async with listen(portal) as (server, endpoint):
            with pytest.raises(pbfast.UnauthorizedLogin):
                await pbfast.login(endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=5)
            anonymous = await pbfast.login(endpoint, None, timeout=5)
            assert await anonymous.callRemote("whoami") == ()
            await anonymous.broker.close()

    with caplog.at_level(logging.DEBUG, logger="pbfast"):
        run(main())
    assert not pbfast_records(caplog, logging.ERROR)


def test_unsupported_credentials(run, listen) -> None:
    async def main() -> None:
        portal, realm = cr_portal()
        async with listen(portal) as (server, endpoint):
            with pytest.raises(TypeError, match="UsernamePassword or Anonymous"):
                await pbfast.login(endpoint, ("alice", "secret"), timeout=5)
            await eventually(lambda: not server.brokers)
            assert realm.requests == []

    run(main())


# --------------------------------------------------------------------------------------------
# Realms, logouts and minds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", CrRealm.FORMS)
def test_realm_result_forms(run, listen, form) -> None:
    async def main() -> None:
        portal, realm = cr_portal(CrRealm(form))
        async with listen(portal) as (server, endpoint):
            avatar = await pbfast.login(endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=5)
            assert await avatar.callRemote("whoami") == "alice"
            await avatar.broker.close()
            if form.endswith("avatar"):
                await eventually(lambda: not server.brokers)
                await settle()
                assert realm.logouts == []
            else:
                await eventually(lambda: realm.logouts == ["alice"])

    run(main())


def test_logout_runs_once_on_disconnect(run, listen) -> None:
    async def main() -> None:
        portal, realm = cr_portal()
        async with listen(portal) as (server, endpoint):
            avatar = await pbfast.login(endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=5)
            board = await avatar.callRemote("board")
            assert await board.callRemote("who") == "alice"
            assert realm.logouts == []
            await avatar.broker.close()
            await eventually(lambda: realm.logouts == ["alice"])
            del avatar, board
            await settle()
            assert realm.logouts == ["alice"]

    run(main())


def test_logout_runs_once_when_the_avatar_is_dropped(run, listen) -> None:
    async def main() -> None:
        portal, realm = cr_portal()
        async with listen(portal) as (server, endpoint):
            avatar = await pbfast.login(endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=5)
            broker = avatar.broker
            assert await avatar.callRemote("whoami") == "alice"
            again = await avatar.callRemote("echo", avatar)  # a second occurrence of the reference
            assert again is avatar
            del avatar, again
            await eventually(lambda: realm.logouts == ["alice"])
            assert not broker.disconnected
            # The connection stays usable; its end does not log out again.
            assert await broker.root().callRemote("login", b"alice")
            await broker.close()
            await eventually(lambda: not server.brokers)
            await settle()
            assert realm.logouts == ["alice"]

    run(main())


def test_logouts_of_a_shared_avatar_each_run(run, root_of) -> None:
    """A realm may hand the same avatar object to several logins (one per user, say); each
    login's logout runs once, even when two of them share one connection."""

    class SharingRealm(CrRealm):
        def requestAvatar(self, avatar_id: Any, mind: Any) -> Any:
            if not self.avatars:
                self.avatars.append(CrPlayer(avatar_id, mind, self))
            n = len(self.requests)
            self.requests.append((avatar_id, mind))
            return self.avatars[0], lambda: self.logouts.append(n)

    async def main() -> None:
        portal, realm = cr_portal(SharingRealm())
        async with root_of(portal) as root:
            avatars = []
            for _ in range(2):
                challenge, challenger = await root.callRemote("login", b"alice")
                response = pbfast.cred.respond(challenge, "secret")
                avatars.append(await challenger.callRemote("respond", response, None))
            assert avatars[0] is avatars[1]
            broker = root.broker
            del avatars, challenger
            await settle()
            await broker.close()
            await settle()
            assert sorted(realm.logouts) == [0, 1]

    run(main())


def test_mind_is_called_back(run, listen) -> None:
    async def main() -> None:
        portal, realm = cr_portal()
        mind = CrMind()
        async with listen(portal) as (server, endpoint):
            avatar = await pbfast.login(
                endpoint, pbfast.UsernamePassword("alice", "secret"), mind=mind, timeout=5
            )
            ((avatar_id, remote_mind),) = realm.requests
            assert avatar_id == "alice" and isinstance(remote_mind, pbfast.RemoteReference)
            assert await avatar.callRemote("tell_mind", 42) == "heard 42"
            assert await remote_mind.callRemote("notify", "direct") == "heard 'direct'"
            assert mind.heard == [42, "direct"]
            await avatar.broker.close()
            await eventually(lambda: realm.logouts == ["alice"])
            with pytest.raises(pbfast.DeadReferenceError):
                await remote_mind.callRemote("notify", "too late")

    run(main())


def test_login_as_a_context_manager(run, listen) -> None:
    async def main() -> None:
        portal, realm = cr_portal()
        async with listen(portal) as (server, endpoint):
            async with pbfast.login(
                endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=5
            ) as avatar:
                assert await avatar.callRemote("whoami") == "alice"
                assert len(server.brokers) == 1
            assert avatar.broker.disconnected
            await eventually(lambda: not server.brokers)
            await eventually(lambda: realm.logouts == ["alice"])
            with pytest.raises(pbfast.UnauthorizedLogin):
                async with pbfast.login(endpoint, pbfast.UsernamePassword("alice", "nope"), timeout=5):
                    raise AssertionError("not reached")
            await eventually(lambda: not server.brokers)

    run(main())


def test_login_to_a_server_that_is_not_a_portal(run, listen) -> None:
    class Plain(pbfast.Root):
        def remote_echo(self, x: Any) -> Any:
            return x

    async def main() -> None:
        async with listen(Plain()) as (server, endpoint):
            for credentials in (pbfast.UsernamePassword("alice", "secret"), None):
                with pytest.raises(pbfast.RemoteError) as info:
                    await pbfast.login(endpoint, credentials, timeout=5)
                assert info.value.check(pbfast.NoSuchMethod)
                assert "remote_login" in str(info.value)
                await eventually(lambda: not server.brokers)
            async with pbfast.connect(endpoint, timeout=5) as root:
                assert await root.callRemote("echo", 1) == 1

    run(main())


class CrSlowRealm(CrRealm):
    """Answers only once `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def requestAvatar(self, avatar_id: Any, mind: Any) -> Any:
        await self.gate.wait()
        return super().requestAvatar(avatar_id, mind)


def test_login_timeout_covers_the_login_exchange(run, listen) -> None:
    """``login(..., timeout=t)``: a server that accepts the connection but never answers the
    login must not keep the caller waiting past `t` (TimeoutError, connection closed)."""

    async def main() -> None:
        realm = CrSlowRealm()
        portal, _ = cr_portal(realm)
        async with listen(portal) as (server, endpoint):
            attempt = asyncio.ensure_future(
                pbfast.login(endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=0.2)
            )
            try:
                done, _ = await asyncio.wait({attempt}, timeout=1.0)
                assert done, "login(timeout=0.2) was still waiting after 1 s"
                with pytest.raises(TimeoutError):
                    attempt.result()
                await eventually(lambda: not server.brokers)
            finally:
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt
                realm.gate.set()
                await settle()

    run(main())


# --------------------------------------------------------------------------------------------
# Checkers and portals
# --------------------------------------------------------------------------------------------


class CrAsyncChecker:
    """Admits users whose password is their name reversed, after a pause."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    async def requestAvatarId(self, credentials: Any) -> str:
        await asyncio.sleep(0)
        self.asked.append(credentials.username)
        expected = credentials.username[::-1]
        if not credentials.checkPassword(expected):
            raise pbfast.UnauthorizedLogin("not the reversed name")
        return "async:" + credentials.username.decode()


def test_checkers_are_tried_in_turn(run, listen) -> None:
    async def main() -> None:
        realm = CrRealm()
        async_checker = CrAsyncChecker()
        portal = pbfast.Portal(realm, [pbfast.InMemoryUsernamePasswordDatabase(alice="secret")])
        portal.registerChecker(async_checker)
        async with listen(portal) as (server, endpoint):
            alice = await pbfast.login(endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=5)
            assert await alice.callRemote("whoami") == "alice"
            assert async_checker.asked == []
            # Refused by the first checker, admitted by the second.
            carol = await pbfast.login(endpoint, pbfast.UsernamePassword("carol", "lorac"), timeout=5)
            assert await carol.callRemote("whoami") == "async:carol"
            with pytest.raises(pbfast.UnauthorizedLogin, match="reversed"):
                await pbfast.login(endpoint, pbfast.UsernamePassword("carol", "carol"), timeout=5)
            await alice.broker.close()
            await carol.broker.close()

    run(main())


def test_portal_without_checkers_refuses_passwords(run, listen) -> None:
    async def main() -> None:
        realm = CrRealm()
        async with listen(pbfast.Portal(realm)) as (server, endpoint):
            with pytest.raises(pbfast.UnauthorizedLogin):
                await pbfast.login(endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=5)
            assert realm.requests == []

    run(main())


def test_credentials_hide_the_password() -> None:
    credentials = pbfast.UsernamePassword("alice", "secret")
    assert "secret" not in repr(credentials) and "alice" in repr(credentials)
    assert credentials.checkPassword("secret") and credentials.checkPassword(b"secret")
    assert not credentials.checkPassword("Secret")
    database = pbfast.InMemoryUsernamePasswordDatabase(alice="secret")
    assert database.requestAvatarId(credentials) == "alice"
    with pytest.raises(pbfast.UnauthorizedLogin):
        database.requestAvatarId(pbfast.UsernamePassword("alice", "nope"))
    with pytest.raises(pbfast.UnauthorizedLogin):
        database.requestAvatarId(pbfast.UsernamePassword("bob", "secret"))
