"""Paging between pbfast peers (`pbfast.util`): values past Twisted's 640 KiB string limit sent as
pages, on both wires; the pager waiting for a slow reader; and how paging ends when something
goes wrong. Paging with stock Twisted is in tests/interop/test_twisted_pb.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pbfast
import pytest
from connections import eventually, pbfast_records
from pbfast.util import CallbackPageCollector, Pager, StringPager, getAllPages
from wires import connector

SIZE = (1 << 20) + 3  # past banana's 640 KiB limit on one string


def payload(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


class ItemPager(Pager):
    """Pages the items of a list, each produced by a coroutine."""

    def __init__(self, collector: pbfast.RemoteReference, items: list[Any]) -> None:
        self.items = list(items)
        super().__init__(collector)

    async def nextPage(self) -> Any:
        await asyncio.sleep(0)
        item = self.items.pop(0)
        if not self.items:
            self.stopPaging()
        return item


class GatedPager(Pager):
    """Sends a page each time its gate opens; raises when told to."""

    def __init__(self, collector: pbfast.RemoteReference) -> None:
        self.gate = asyncio.Event()
        self.sent = 0
        self.fail = False
        super().__init__(collector)

    async def nextPage(self) -> bytes:
        await self.gate.wait()
        self.gate.clear()
        if self.fail:
            raise ValueError("no more pages")
        self.sent += 1
        return b"page"


class Library(pbfast.Root):
    def __init__(self) -> None:
        self.ended: list[Any] = []
        self.pager: Any = None

    def remote_fetch(self, collector: pbfast.RemoteReference, size: int, chunk: int = 8192) -> None:
        StringPager(collector, payload(size), chunk, self.ended.append, ("fetch", size))

    def remote_text(self, collector: pbfast.RemoteReference, text: str, chunk: int) -> None:
        StringPager(collector, text, chunk, callback=lambda **kw: self.ended.append(kw), text=True)

    def remote_items(self, collector: pbfast.RemoteReference, items: list[Any]) -> None:
        ItemPager(collector, items)

    async def remote_fetch_and_wait(self, collector: pbfast.RemoteReference, size: int) -> str:
        await StringPager(collector, payload(size)).wait()
        return "all sent"

    def remote_fail_after_paging(self, collector: pbfast.RemoteReference) -> None:
        StringPager(collector, b"never mind")
        raise pbfast.Error("refused")

    def remote_keep(self, collector: pbfast.RemoteReference, size: int, chunk: int) -> None:
        self.pager = StringPager(collector, payload(size), chunk)

    def remote_gated(self, collector: pbfast.RemoteReference) -> None:
        self.pager = GatedPager(collector)

    def remote_unfinished(self, collector: pbfast.RemoteReference) -> None:
        self.pager = Pager(collector)  # nextPage not overridden


@pytest.mark.parametrize("variant", ["pb-memory", "pb-tcp", "tub-tls"])
def test_pages_between_pbfast_peers(run, variant: str) -> None:
    async def main() -> None:
        library = Library()
        with connector(variant) as connect:
            async with connect(library) as w:
                pages = await getAllPages(w.root, "fetch", SIZE)
                assert len(pages) == -(-SIZE // 8192)
                assert {len(page) for page in pages} == {8192, SIZE % 8192}
                assert b"".join(pages) == payload(SIZE)
                # The callback ran once endedPaging had gone out, with its arguments.
                assert library.ended == [("fetch", SIZE)]

                text = "pag\u00e9s " * 5000
                pages = await getAllPages(w.root, "text", text, 1000)
                assert len(pages) == len(text) // 1000 and "".join(pages) == text
                assert library.ended[1:] == [{"text": True}]

                assert await getAllPages(w.root, "fetch", 0) == [b""]
                items: list[Any] = [1, "two", [3.0, None], {"four": b"4"}]
                assert await getAllPages(w.root, "items", items) == items

                # A remote method may wait for its pages to go out before answering.
                pages = await getAllPages(w.root, "fetch_and_wait", 100_000)
                assert b"".join(pages) == payload(100_000)

                # A method that fails: its error, whatever pages it sent.
                with pytest.raises(pbfast.RemoteError) as info:
                    await getAllPages(w.root, "fail_after_paging")
                assert info.value.check(pbfast.Error)

                # The server's pagers let go of our collectors once done.
                await eventually(lambda: w.client_stats()["objects"] == 0)
                await eventually(lambda: w.proxies() == 0 and w.objects() == 0)

    run(main())


def test_pager_waits_for_a_slow_reader(run) -> None:
    """While the client reads nothing, the server's pager stops sending: it holds the value and
    the connection's buffers, not the value again in pages; once the client reads, all comes."""
    size, chunk = 32 << 20, 64 << 10

    async def main() -> None:
        library = Library()
        with connector("pb-tcp") as connect:
            async with connect(library) as w:
                w.client.transport.pause_reading()
                fetching = asyncio.ensure_future(getAllPages(w.root, "keep", size, chunk))
                await eventually(lambda: library.pager is not None and library.pager.pointer > 0)
                pager = library.pager
                # Wait until the pager stops: the kernel's socket buffers (a few MiB) are full.
                progress = -1
                while pager.pointer != progress:
                    progress = pager.pointer
                    await asyncio.sleep(0.1)
                assert pager.pointer <= size // 2, f"{pager.pointer} of {size} bytes sent"
                buffered = w.server.transport.get_write_buffer_size() + w.server._session.size
                assert buffered <= 4 * chunk, f"{buffered} bytes buffered on the sending side"
                assert not fetching.done()
                w.client.transport.resume_reading()
                pages = await asyncio.wait_for(fetching, 20)
                assert len(pages) == size // chunk
                assert b"".join(pages) == payload(size)
                await pager.wait()

    run(main())


def test_paging_ends_with_the_connection_or_an_error(run, caplog) -> None:
    async def main() -> None:
        library = Library()
        with connector("pb-memory") as connect:
            async with connect(library) as w:
                # nextPage raises: logged, and the pager's wait raises it; the receiver waits.
                fetching = asyncio.ensure_future(getAllPages(w.root, "gated"))
                await eventually(lambda: library.pager is not None)
                pager = library.pager
                pager.gate.set()
                await eventually(lambda: pager.sent == 1)
                pager.fail = True
                pager.gate.set()
                with pytest.raises(ValueError, match="no more pages"):
                    await pager.wait()
                (record,) = pbfast_records(caplog, logging.ERROR)
                assert "paging" in record.getMessage() and record.exc_info[0] is ValueError
                assert not fetching.done()

                # A Pager that does not override nextPage fails the same way.
                library.pager = None
                unfinished = asyncio.ensure_future(getAllPages(w.root, "unfinished"))
                await eventually(lambda: library.pager is not None)
                with pytest.raises(NotImplementedError, match="must override nextPage"):
                    await library.pager.wait()

                # The connection ends mid-paging: the receiver and the pager both hear it.
                library.pager = None
                third = asyncio.ensure_future(getAllPages(w.root, "gated"))
                await eventually(lambda: library.pager is not None)
                pager = library.pager
                await w.close_server()
                for receiving in (fetching, unfinished):
                    with pytest.raises(pbfast.PBConnectionLost, match="ended before its paging"):
                        await receiving
                with pytest.raises(pbfast.PBConnectionLost):  # (its answer may not have come)
                    await third
                # (Its nextPage, still waiting for the gate, was cancelled.)
                with pytest.raises(pbfast.PBConnectionLost, match="ended before paging did"):
                    await pager.wait()
                # A pager for a connection already gone is refused at once.
                with pytest.raises(pbfast.DeadReferenceError):
                    StringPager(pager.collector, b"late")
                with pytest.raises(pbfast.DeadReferenceError):
                    await getAllPages(w.root, "fetch", 1)
                # No more logged than the one failure.
                assert len(pbfast_records(caplog, logging.ERROR)) == 2

    with caplog.at_level(logging.DEBUG, logger="pbfast"):
        run(main())


def test_bad_pager_arguments(run) -> None:
    async def main() -> None:
        with connector("pb-memory") as connect:
            async with connect(Library()) as w:
                collector = w.root  # any reference will do: nothing is sent
                for chunk in (0, -1, 1.5, True):
                    with pytest.raises(ValueError, match="chunkSize must be a positive integer"):
                        StringPager(collector, b"data", chunk)  # type: ignore[arg-type]
                with pytest.raises(TypeError, match="bytes or str, not bytearray"):
                    StringPager(collector, bytearray(b"data"))  # type: ignore[arg-type]

    run(main())


def test_callback_page_collector_hands_its_pages_over() -> None:
    handed: list[list[Any]] = []
    collector = CallbackPageCollector(handed.append)
    collector.remote_gotPage(b"a")
    collector.remote_gotPage(b"b")
    collector.remote_endedPaging()
    assert handed == [[b"a", b"b"]] and collector.pages == []
