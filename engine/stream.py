"""Stream framing: SSE, NDJSON and JSON-array, parsed incrementally and written back.

Parsers take raw byte chunks as they arrive and yield complete events; nothing waits for the end
of the stream. Framing is the only thing here: what an event means is the format spec's business.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

FRAMINGS = ("sse", "ndjson", "json-array")


class SSEParser:
    """Incremental `text/event-stream` parser yielding (event name or None, data string)."""

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, str]]:
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        n = len(buf)
        while start < n:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    yield self._event, "\n".join(self._data)
                self._event = None
                self._data = []
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                self._data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode("utf-8", "replace")
            # comments (":") and other fields (id, retry) carry nothing we need
        self._buf = buf[start:]

    def close(self) -> Iterator[tuple[str | None, str]]:
        if self._buf:
            yield from self.feed(b"\n\n")
        elif self._data:
            yield self._event, "\n".join(self._data)
        self._data = []


class NDJSONParser:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, str]]:
        buf = self._buf + chunk if self._buf else chunk
        *lines, self._buf = buf.split(b"\n")
        for line in lines:
            line = line.strip()
            if line:
                yield None, line.decode("utf-8", "replace")

    def close(self) -> Iterator[tuple[str | None, str]]:
        rest, self._buf = self._buf.strip(), b""
        if rest:
            yield None, rest.decode("utf-8", "replace")


class JSONArrayParser:
    """A streamed JSON array of objects (Gemini without `alt=sse`): yields each element's text."""

    __slots__ = ("_buf", "_depth", "_esc", "_in_str", "_pos", "_start")

    def __init__(self) -> None:
        self._buf = b""
        self._depth = 0
        self._in_str = False
        self._esc = False
        self._start = -1
        self._pos = 0

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, str]]:
        self._buf += chunk
        buf = self._buf
        i = self._pos
        while i < len(buf):
            c = buf[i]
            if self._in_str:
                if self._esc:
                    self._esc = False
                elif c == 0x5C:  # backslash
                    self._esc = True
                elif c == 0x22:
                    self._in_str = False
            elif c == 0x22:
                self._in_str = True
            elif c == 0x7B:  # {
                if self._depth == 0:
                    self._start = i
                self._depth += 1
            elif c == 0x7D:  # }
                self._depth -= 1
                if self._depth == 0 and self._start >= 0:
                    yield None, buf[self._start : i + 1].decode("utf-8", "replace")
                    self._start = -1
            i += 1
        if self._depth == 0:
            self._buf, self._pos = b"", 0
        else:
            self._buf = buf[self._start :]
            self._pos = len(self._buf)
            self._start = 0

    def close(self) -> Iterator[tuple[str | None, str]]:
        return iter(())


def parser_for(framing: str) -> SSEParser | NDJSONParser | JSONArrayParser:
    if framing == "ndjson":
        return NDJSONParser()
    if framing == "json-array":
        return JSONArrayParser()
    return SSEParser()


def sse_event(data: Any, event: str | None = None) -> bytes:
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    if event:
        return b"event: " + event.encode() + b"\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"


def ndjson_line(data: Any) -> bytes:
    return orjson.dumps(data) + b"\n"


class Writer:
    """Frames wire events for the client. `event_field` names the data key that doubles as the
    SSE event name (Anthropic and Responses put the event type in both places)."""

    __slots__ = ("_first", "done", "event_field", "framing")

    def __init__(self, framing: str, event_field: str | None = None, done: str | None = None) -> None:
        self.framing = framing
        self.event_field = event_field
        self.done = done
        self._first = True

    def write(self, data: Any) -> bytes:
        if self.framing == "ndjson":
            return ndjson_line(data)
        if self.framing == "json-array":
            prefix = b"[" if self._first else b",\r\n"
            self._first = False
            return prefix + orjson.dumps(data)
        event = data.get(self.event_field) if self.event_field and isinstance(data, dict) else None
        return sse_event(data, event)

    def end(self) -> bytes:
        if self.framing == "json-array":
            return b"[]" if self._first else b"]"
        if self.framing == "sse" and self.done:
            return b"data: " + self.done.encode() + b"\n\n"
        return b""
