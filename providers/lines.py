"""Splitting a byte stream into lines without ever holding an unbounded line in memory.

Used for a subprocess's stdout (JSON lines) and for server-sent events over HTTP. A line
longer than the limit is not kept: its bytes are counted and dropped as they arrive, and
it comes out as one :class:`Oversized` marker in its place.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from anyio import EndOfStream
from anyio.abc import ByteReceiveStream


class Oversized(NamedTuple):
    """A line that was longer than the limit and was dropped."""

    size: int
    """Its length in bytes (without the newline)."""


Line = bytes | Oversized


class LineSplitter:
    """Sans-IO: feed bytes, get complete lines (without the ``\\n``).

    At most ``limit`` bytes of an unfinished line are buffered.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the line limit must be at least 1 byte")
        self.limit = limit
        self._buffer = bytearray()
        # Bytes dropped so far of the current line once it went over the limit; 0 when the
        # current line is still being kept.
        self._dropped = 0

    def feed(self, data: bytes) -> list[Line]:
        """The lines that ``data`` completes, in order."""
        lines: list[Line] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            lines.append(self._finish(data[start:end]))
            start = end + 1
        self._keep(data[start:])
        return lines

    def close(self) -> list[Line]:
        """The last line if the stream ended without a newline (a partial last line)."""
        if self._dropped:
            last: list[Line] = [Oversized(self._dropped)]
        elif self._buffer:
            last = [bytes(self._buffer)]
        else:
            last = []
        self._buffer.clear()
        self._dropped = 0
        return last

    def _finish(self, tail: bytes) -> Line:
        if self._dropped:
            line: Line = Oversized(self._dropped + len(tail))
            self._dropped = 0
        elif len(self._buffer) + len(tail) > self.limit:
            line = Oversized(len(self._buffer) + len(tail))
            self._buffer.clear()
        elif self._buffer:
            self._buffer += tail
            line = bytes(self._buffer)
            self._buffer.clear()
        else:
            line = tail
        return line

    def _keep(self, rest: bytes) -> None:
        if self._dropped:
            self._dropped += len(rest)
        elif len(self._buffer) + len(rest) > self.limit:
            self._dropped = len(self._buffer) + len(rest)
            self._buffer.clear()
        else:
            self._buffer += rest


class LineReader:
    """Reads bounded lines from a byte stream. :meth:`receive` raises ``EndOfStream``.

    Cancelling :meth:`receive` loses nothing: bytes already read stay buffered here.
    """

    def __init__(self, stream: ByteReceiveStream, limit: int) -> None:
        self._stream = stream
        self._splitter = LineSplitter(limit)
        self._ready: deque[Line] = deque()
        self._ended = False

    async def receive(self) -> Line:
        """The next line, or the partial last one; ``EndOfStream`` after that."""
        while not self._ready:
            if self._ended:
                raise EndOfStream
            try:
                data = await self._stream.receive()
            except EndOfStream:
                self._ended = True
                self._ready.extend(self._splitter.close())
            else:
                self._ready.extend(self._splitter.feed(data))
        return self._ready.popleft()
