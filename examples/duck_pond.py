"""Keep a remote copy up to date: the DuckPond cache example.

Mirrors Twisted's PB cache example (``cache_classes.py``, ``cache_sender.py`` and
``cache_receiver.py``) from the "Passing Complex Types" howto. The master keeps its ducks in a
`pbfast.Cacheable`. Sending it does not send a one-off copy: the holder gets a
`pbfast.RemoteCache` (the slave), and the master is handed an observer for it in
``getStateToCacheAndObserveFor``. Every change the master makes it passes on with
``observer.callRemote(name, ...)``, which runs the slave's ``observe_<name>`` method.

When the slave is garbage-collected, its side tells the master, which calls
``stoppedObserving`` for that observer. (It does so too if the connection is lost.)

Both sides run in this one process: the master is the server, the slave's holder the client.

Run: python examples/duck_pond.py
"""

import asyncio
import gc

import pbfast


class MasterDuckPond(pbfast.Cacheable):
    def __init__(self, ducks):
        self.observers = []
        self.ducks = ducks

    def addDuck(self, duck):
        self.ducks.append(duck)
        for observer in self.observers:
            observer.callRemote("addDuck", duck)

    def removeDuck(self, duck):
        self.ducks.remove(duck)
        for observer in self.observers:
            observer.callRemote("removeDuck", duck)

    def getStateToCacheAndObserveFor(self, perspective, observer):
        self.observers.append(observer)
        return self.ducks  # the slave's state: just the list of ducks, not the observers

    def stoppedObserving(self, perspective, observer):
        print("master: a slave stopped observing")
        self.observers.remove(observer)


class SlaveDuckPond(pbfast.RemoteCache):
    def setCopyableState(self, state):
        self.ducks = state

    def observe_addDuck(self, duck):
        self.ducks.append(duck)

    def observe_removeDuck(self, duck):
        self.ducks.remove(duck)

    def count(self):
        return len(self.ducks)


pbfast.setUnjellyableForClass(MasterDuckPond, SlaveDuckPond)


class Master(pbfast.Root):
    def __init__(self):
        self.pond = MasterDuckPond(["Donald", "Daisy"])

    def remote_getDuckPond(self):
        return self.pond

    def remote_addDuck(self, duck):
        print(f"master: adding {duck}")
        self.pond.addDuck(duck)

    def remote_removeDuck(self, duck):
        print(f"master: removing {duck}")
        self.pond.removeDuck(duck)


def show(pond):
    print(f"slave: {pond.count()} ducks: {', '.join(pond.ducks)}")


async def main():
    master = Master()
    server = await pbfast.serve(master, "tcp:port=0:interface=127.0.0.1")
    async with server, pbfast.connect(f"tcp:host=127.0.0.1:port={server.port}") as root:
        pond = await root.callRemote("getDuckPond")
        print(f"slave: got a {type(pond).__name__}")
        show(pond)
        print(f"master: observers: {len(master.pond.observers)}")

        # The master tells its observers before it replies, on the same connection, so the
        # slave is up to date by the time each call returns.
        await root.callRemote("addDuck", "Scrooge")
        show(pond)
        await root.callRemote("removeDuck", "Donald")
        show(pond)

        print("slave: dropping the pond")
        del pond
        gc.collect()
        await asyncio.sleep(0.1)  # let the slave's side tell the master
        print(f"master: observers: {len(master.pond.observers)}")


if __name__ == "__main__":
    pbfast.run(main())
