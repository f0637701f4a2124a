"""Choose what a copy carries: the FrogPond example.

Mirrors Twisted's PB example ``copy2_classes.py`` (with ``copy2_sender.py`` and
``copy2_receiver.py``) from the "Passing Complex Types" howto. The sender's `pbfast.Copyable`
overrides ``getStateToCopy()`` to send a different state than its ``__dict__``: the colour
and one combined count of frogs and toads instead of two separate counts. The receiver's
`pbfast.RemoteCopy` overrides ``setCopyableState(state)`` to build its attributes from that
state. The two classes need not look alike; they only have to agree on the state.

Both sides run in this one process: the receiver is the server, the sender the client.

Run: python examples/frog_pond.py
"""

import pbfast


class FrogPond:
    def __init__(self, color, numFrogs, numToads):
        self.color = color
        self.numFrogs = numFrogs
        self.numToads = numToads


# Sender side: counts frogs and toads apart, but sends only their sum.
class SenderPond(FrogPond, pbfast.Copyable):
    def getStateToCopy(self):
        return {"frogsAndToads": self.numFrogs + self.numToads, "color": self.color}


# Receiver side: built from that state.
class ReceiverPond(pbfast.RemoteCopy):
    def setCopyableState(self, state):
        self.color = state["color"]
        self.frogsAndToads = state["frogsAndToads"]

    def count(self):
        return self.frogsAndToads


pbfast.setUnjellyableForClass(SenderPond, ReceiverPond)


class Receiver(pbfast.Root):
    def remote_takePond(self, pond):
        print(f"receiver: got a {type(pond).__name__}: {vars(pond)}")
        print(f"receiver: {pond.color} pond, frogsAndToads = {pond.count()}")
        return "safe and sound"


async def main():
    server = await pbfast.serve(Receiver(), "tcp:port=0:interface=127.0.0.1")
    async with server, pbfast.connect(f"tcp:host=127.0.0.1:port={server.port}") as receiver:
        pond = SenderPond("green", numFrogs=3, numToads=4)
        print(f"sender: sending a {pond.color} pond with {pond.numFrogs} frogs and {pond.numToads} toads")
        answer = await receiver.callRemote("takePond", pond)
        print(f"sender: pond arrived {answer}")


if __name__ == "__main__":
    pbfast.run(main())
