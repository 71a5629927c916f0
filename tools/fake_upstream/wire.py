"""HTTP plumbing shared by the provider modules: the parsed request, replies and framing.

A handler returns a `Reply`. A plain reply carries `body`; a streaming reply carries `chunks`,
an async iterator of byte strings. Raising `BrokenStream` inside `chunks` makes the ASGI app
abort the connection mid-body, which a client sees as a truncated (not a cleanly ended) stream.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

Headers = list[tuple[bytes, bytes]]

CT_JSON = (b"content-type", b"application/json")
CT_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
CT_NDJSON = (b"content-type", b"application/x-ndjson")

# Headers that carry credentials; never echoed back by /_stats.
SECRET_HEADERS = frozenset(
    {"authorization", "x-api-key", "x-goog-api-key", "api-key", "proxy-authorization", "cookie"}
)


class BrokenStream(Exception):
    """Raised inside a streaming body to cut the connection without a clean end."""


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    query_string: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    json_error: bool = False
    route: str = ""
    model: str | None = None
    params: dict[str, str] = field(default_factory=dict)


class Reply:
    __slots__ = ("body", "chunks", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: bytes = b"",
        chunks: AsyncIterator[bytes] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.chunks = chunks


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def json_reply(status: int, obj: Any, headers: Headers | None = None) -> Reply:
    body = orjson.dumps(obj)
    out: Headers = [CT_JSON, (b"content-length", str(len(body)).encode())]
    if headers:
        out.extend(headers)
    return Reply(status, out, body)


def stream_reply(
    chunks: AsyncIterator[bytes], content_type: tuple[bytes, bytes], headers: Headers | None = None
) -> Reply:
    out: Headers = [content_type, (b"cache-control", b"no-cache")]
    if headers:
        out.extend(headers)
    return Reply(200, out, chunks=chunks)


def sse(obj: Any, event: str | None = None) -> bytes:
    """One server-sent event, `event:` line first when named (Anthropic names every event)."""
    data = orjson.dumps(obj)
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def rand_id(n: int) -> str:
    """Random base62 string: ids only need to be unique, never reproducible."""
    return "".join(_ALNUM[b % 62] for b in os.urandom(n))


def now() -> int:
    return int(time.time())


def header_list(pairs: dict[str, Any] | None) -> Headers:
    if not pairs:
        return []
    return [(k.lower().encode(), str(v).encode()) for k, v in pairs.items()]


Frame = tuple[bytes, bool]  # (bytes to send, counts as a content chunk)


async def drive(
    frames: list[Frame], slow_ms: int = 0, cut: int | None = None, on_cut: bytes | None = None
) -> AsyncIterator[bytes]:
    """Yield `frames`, pausing `slow_ms` between content chunks and breaking after `cut` of them.

    On a cut, `on_cut` (a provider's in-band error event) is sent and the stream ends; without
    one the connection is aborted so the client sees a truncated body.
    """
    delay = slow_ms / 1000
    sent = 0
    for data, content in frames:
        if content:
            if cut is not None and sent >= cut:
                if on_cut is not None:
                    yield on_cut
                    return
                raise BrokenStream("cut by directive")
            if delay and sent:
                await asyncio.sleep(delay)
            sent += 1
        yield data
