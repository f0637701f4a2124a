"""Load-test a PB server, or an object in a Tub, with Locust (``pip install 'pbfast[locust]'``).

Against ``pbfast serve``'s test service (echo, sleep, payload, fail), on Twisted PB's wire:

    pbfast serve
    locust -f examples/locustfile.py EchoPb --headless -u 50 -r 50 -t 30s \\
        --host tcp:host=127.0.0.1:port=8787

In a Tub: ``pbfast serve --tub`` prints the service's FURL, which is the host:

    pbfast serve --tub tcp:port=8788:interface=127.0.0.1
    locust -f examples/locustfile.py EchoTub --headless -u 50 -r 50 -t 30s --host pb://...

Each call is a row of Locust's statistics: type PB or TUB, named after the method. Add
``--processes -1`` for one Locust worker per core, or run ``--master`` and ``--worker``s.
"""

from locust import User, constant, task
from pbfast import RemoteError
from pbfast.locust import PbUser, TubUser


class Echo(User):
    """The tasks, for either wire. Each user calls in a loop (``constant(0)``: no pause)."""

    abstract = True
    wait_time = constant(0)

    @task(20)
    def echo(self) -> None:
        assert self.client.callRemote("echo", {"n": 1, "tags": ["a", "b"]}) == {"n": 1, "tags": ["a", "b"]}

    @task(2)
    def payload(self) -> None:
        self.client.callRemote("payload", 1024)

    @task(1)
    def fail(self) -> None:
        # A remote error is a failure in Locust's statistics (with its text); it is raised
        # here too, as a task that needs the result would see it.
        try:
            self.client.callRemote("fail", "failed on purpose")
        except RemoteError:
            pass


class EchoPb(Echo, PbUser):
    """Over PB: one connection per user."""


class EchoTub(Echo, TubUser):
    """In a Tub: the users of a Locust process share one connection."""
