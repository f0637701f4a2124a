"""Send an object by copy: the LilyPond example.

Mirrors Twisted's PB copy example (``copy_sender.py`` and ``copy_receiver.tac`` in the
"Passing Complex Types" howto). The sender passes a `pbfast.Copyable` pond as an argument of
``callRemote``; PB sends its state (by default the instance ``__dict__``), and the receiver
rebuilds it as the `pbfast.RemoteCopy` class it registered for that type with
`pbfast.setUnjellyableForClass`. Both classes share the `LilyPond` behaviour.

A copy of a class the receiver did not register is refused with `pbfast.InsecureJelly`, and
nothing is built from it. The receiver refuses while decoding the call's arguments, so the
sender's ``callRemote`` raises `pbfast.RemoteError` carrying that exception (the receiver also
logs a warning, on stderr). The connection stays usable.

Both sides run in this one process: the receiver is the server, the sender the client.

Run: python examples/copy_pond.py
"""

import pbfast


class LilyPond:
    def setStuff(self, color, numFrogs):
        self.color = color
        self.numFrogs = numFrogs

    def countFrogs(self):
        return self.numFrogs

    def getColor(self):
        return self.color


# Sender side: a pond that travels by copy.
class CopyPond(LilyPond, pbfast.Copyable):
    pass


# Receiver side: what a CopyPond becomes when it arrives.
class ReceiverPond(pbfast.RemoteCopy, LilyPond):
    pass


pbfast.setUnjellyableForClass(CopyPond, ReceiverPond)


# Copyable as well, but the receiver registers nothing for it.
class SecretPond(LilyPond, pbfast.Copyable):
    pass


class Receiver(pbfast.Root):
    def remote_takePond(self, pond):
        print(f"receiver: got pond: {pond.getColor()}, {pond.countFrogs()} frogs")
        return "safe and sound"


async def send(receiver, pond):
    print(f"sender: sending a {pond.getColor()} pond with {pond.countFrogs()} frogs")
    answer = await receiver.callRemote("takePond", pond)
    print(f"sender: pond arrived {answer}")


async def main():
    server = await pbfast.serve(Receiver(), "tcp:port=0:interface=127.0.0.1")
    async with server, pbfast.connect(f"tcp:host=127.0.0.1:port={server.port}") as receiver:
        pond = CopyPond()
        pond.setStuff("green", 7)
        await send(receiver, pond)

        secret = SecretPond()
        secret.setStuff("black", 13)
        try:
            await send(receiver, secret)
        except pbfast.RemoteError as err:
            if not err.check(pbfast.InsecureJelly):
                raise
            print(f"sender: receiver refused SecretPond: {err.remoteType.rpartition('.')[2]}")
            print(f"sender: reason: {err.remoteValue}")

        pond.setStuff("blue", 3)
        await send(receiver, pond)


if __name__ == "__main__":
    pbfast.run(main())
