"""The locustfile of tests/test_locust.py (run by Locust in a subprocess; never imported by
pytest, since importing Locust monkey-patches the process for gevent).

Environment: PB_HOST and TUB_HOST (the targets), PBFAST_LOOP (``use_event_loop``'s argument, if
set), PBFAST_TIMEOUT (the users' ``timeout``, default 60 s).
"""

from __future__ import annotations

import os

import pbfast.locust
from locust import User, constant, events, task
from pbfast import RemoteError
from pbfast.locust import PbUser, TubUser

if os.environ.get("PBFAST_LOOP"):
    pbfast.locust.use_event_loop(os.environ["PBFAST_LOOP"])


class Calls(User):
    abstract = True
    wait_time = constant(0)
    timeout = float(os.environ.get("PBFAST_TIMEOUT", "60"))

    def on_start(self) -> None:
        super().on_start()
        # Which loop runs the calls, as the statistics' row ("LOOP", "<module of its class>").
        loop = pbfast.locust._get_bridge().loop
        events.request.fire(
            request_type="LOOP", name=type(loop).__module__, response_time=0, response_length=0, context={}
        )
        self.failed_once = False

    @task(20)
    def echo(self) -> None:
        value = {"n": 1, "tags": ["a", b"b"], "t": (1.5, None)}
        assert self.client.callRemote("echo", value) == value

    @task(2)
    def references(self) -> None:
        client = self.client
        child = client.callRemote("child", "kid")
        assert isinstance(child, pbfast.locust.Reference), child
        assert child.callRemote("name") == "kid"
        # A Reference sent back arrives as the object itself.
        assert client.callRemote("same", child, b=child) is True
        # References inside containers come back wrapped too.
        children = client.callRemote("children", ["a", "b"])["children"]
        assert [c.callRemote("name") for c in children] == ["a", "b"]

    @task(1)
    def fail(self) -> None:
        if self.failed_once:
            try:
                self.client.callRemote("fail", "failed on purpose")
            except RemoteError:
                return
            raise AssertionError("fail() did not raise")
        # The first time, let it escape: Locust records the exception the task raised.
        self.failed_once = True
        self.client.callRemote("fail", "failed on purpose, raised")


class Pb(Calls, PbUser):
    host = os.environ.get("PB_HOST", "")


class Tub(Calls, TubUser):
    host = os.environ.get("TUB_HOST", "")
