"""The bounded line splitter: same lines however the bytes arrive, never a long line kept."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.lines import Line, LineReader, LineSplitter, Oversized


def expected(data: bytes, limit: int) -> list[Line]:
    """The lines of ``data`` the slow, obvious way."""
    parts = data.split(b"\n")
    last = parts.pop()
    if last:
        parts.append(last)
    return [part if len(part) <= limit else Oversized(len(part)) for part in parts]


def split(chunks: list[bytes], limit: int) -> tuple[list[Line], int]:
    splitter = LineSplitter(limit)
    lines: list[Line] = []
    most = 0
    for chunk in chunks:
        lines.extend(splitter.feed(chunk))
        most = max(most, len(splitter._buffer))
    lines.extend(splitter.close())
    return lines, most


@given(
    data=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"xyz" * 5, b"\n\n"]), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
    limit=st.integers(min_value=1, max_value=20),
)
def test_lines_do_not_depend_on_how_the_bytes_arrive(
    data: list[bytes], cuts: list[int], limit: int
) -> None:
    blob = b"".join(data)
    points = sorted({min(cut, len(blob)) for cut in cuts})
    chunks = [blob[a:b] for a, b in zip([0, *points], [*points, len(blob)], strict=True)]

    lines, most = split(chunks, limit)

    assert lines == expected(blob, limit)
    assert most <= limit


def test_partial_last_line_is_returned_at_close() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert splitter.feed(b":2}") == []
    assert splitter.close() == [b'{"b":2}']
    assert splitter.close() == []


def test_a_line_exactly_at_the_limit_is_kept() -> None:
    splitter = LineSplitter(4)
    assert splitter.feed(b"abcd\nabcde\nab") == [b"abcd", Oversized(5)]
    assert splitter.close() == [b"ab"]


def test_an_oversized_line_is_counted_not_kept() -> None:
    splitter = LineSplitter(1024)
    out: list[Line] = []
    for _ in range(100):
        out += splitter.feed(b"x" * 65536)
        assert len(splitter._buffer) == 0
    out += splitter.feed(b"tail\nnext\n")
    assert out == [Oversized(100 * 65536 + 4), b"next"]


def test_an_oversized_partial_last_line() -> None:
    splitter = LineSplitter(3)
    assert splitter.feed(b"ok\nlonger") == [b"ok"]
    assert splitter.close() == [Oversized(6)]


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LineSplitter(0)


async def test_reader_over_a_real_stream() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](10)
    reader = LineReader(_ByteStream(receive), 8)
    async with send:
        for chunk in (b"one\ntw", b"o\n", b"x" * 20, b"\nlast"):
            await send.send(chunk)
    assert [await reader.receive() for _ in range(4)] == [b"one", b"two", Oversized(20), b"last"]
    with pytest.raises(anyio.EndOfStream):
        await reader.receive()
    with pytest.raises(anyio.EndOfStream):
        await reader.receive()


class _ByteStream(anyio.abc.ByteReceiveStream):
    def __init__(self, receive: anyio.abc.ObjectReceiveStream[bytes]) -> None:
        self._receive = receive

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._receive.aclose()
