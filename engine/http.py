"""Minimal HTTP request/response primitives (granian's RSGI, and ASGI) and the router.

Why not Starlette: the gateway's CPU budget per request is a fraction of a millisecond, and a
framework's middleware stack and request object cost a measurable share of it. This module is the
whole web layer: a `Request` that reads the scope lazily, three response kinds, and a router
that matches static paths with one dict lookup and templated paths with precompiled regexes.
The server speaks RSGI, granian's native interface: ~70 µs less CPU per request than its ASGI
(measured on a thin proxy, interleaved A/B), which builds and parses a message dict per event.

Public surface: Request, Response, JSONResponse, StreamingResponse, Router, Handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl

import orjson

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Request:
    """One HTTP request. Headers are lower-cased; the body is read once and kept.

    Built from granian's RSGI scope and protocol (`from_rsgi`, what the server speaks: no message
    dicts per request) or from an ASGI scope and `receive` (the constructor: any ASGI server, and
    the in-process tests)."""

    __slots__ = ("_body", "_chunks", "_headers", "_query", "_raw_headers", "_receive", "_whole", "client", "method",
                 "params", "path", "query_string")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.params: dict[str, str] = {}
        client = scope.get("client")
        self.client: str = client[0] if client else ""
        self.query_string: str = scope.get("query_string", b"").decode("latin-1")
        self._raw_headers: Any = scope["headers"]
        self._receive: Receive | None = receive
        self._whole: Callable[[], Awaitable[bytes]] | None = None  # RSGI: the body in one call
        self._chunks: AsyncIterator[bytes] | None = None
        self._headers: dict[str, str] | None = None
        self._query: dict[str, str] | None = None
        self._body: bytes | None = None

    @classmethod
    def from_rsgi(cls, scope: Any, proto: Any) -> Request:
        req = cls.__new__(cls)
        req.method, req.path, req.params = scope.method, scope.path, {}
        host, _, _ = scope.client.rpartition(":")  # "1.2.3.4:5678", "[::1]:5678"
        req.client = host.strip("[]")
        req.query_string = scope.query_string
        req._headers = dict(scope.headers.items())
        req._receive, req._whole, req._chunks = None, proto, proto
        req._raw_headers = req._query = req._body = None
        return req

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._raw_headers}
        return self._headers

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            self._query = dict(parse_qsl(self.query_string))
        return self._query

    async def body(self, limit: int | None = None) -> bytes:
        """The whole body. With `limit`, raise BodyTooLarge once more than `limit` bytes arrive."""
        if self._body is None:
            declared = self.headers.get("content-length", "")
            if self._whole is not None and declared.isdigit() and (limit is None or int(declared) <= limit):
                self._body = await self._whole()  # one call when the size is known and allowed
                return self._body
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.stream():
                size += len(chunk)
                if limit is not None and size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
            self._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._body

    async def stream(self) -> AsyncIterator[bytes]:
        """The body chunk by chunk, for uploads that should not be held in memory twice."""
        if self._chunks is not None:
            async for chunk in self._chunks:
                if chunk:
                    yield chunk
            return
        receive = self._receive
        more = receive is not None
        while more:
            message = await receive()  # type: ignore[misc]
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            more = message.get("more_body", False)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the limit of {limit} bytes")
        self.limit = limit


def _str_headers(headers: dict[str, str] | None, content_type: str | None) -> list[tuple[str, str]]:
    out = [("content-type", content_type)] if content_type else []
    if headers:
        out.extend((k.lower(), str(v)) for k, v in headers.items())
    return out


def _raw_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


class Response:
    """A whole answer. `rsgi(proto)` sends it on granian's RSGI protocol, `__call__(send)` on ASGI."""

    media_type: str | None = "text/plain; charset=utf-8"

    def __init__(
        self,
        body: bytes | str = b"",
        status: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.body = body.encode() if isinstance(body, str) else body
        self.status = status
        self.headers: dict[str, str] = dict(headers) if headers else {}
        if media_type is not None:
            self.media_type = media_type

    async def rsgi(self, proto: Any) -> None:
        proto.response_bytes(self.status, _str_headers(self.headers, self.media_type), self.body)

    async def __call__(self, send: Send, receive: Receive | None = None) -> None:
        raw = _raw_headers(_str_headers(self.headers, self.media_type))
        raw.append((b"content-length", str(len(self.body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        await send({"type": "http.response.body", "body": self.body})


class JSONResponse(Response):
    media_type = "application/json"

    def __init__(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(orjson.dumps(data), status, headers)


class StreamingResponse(Response):
    """Sends each chunk of `chunks` as it is produced: nothing is buffered."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str = "text/event-stream",
    ) -> None:
        super().__init__(b"", status, headers, media_type)
        self.chunks = chunks

    def _headers(self) -> list[tuple[str, str]]:
        out = _str_headers(self.headers, self.media_type)
        if self.media_type == "text/event-stream":
            out.append(("cache-control", "no-cache"))
        return out

    async def rsgi(self, proto: Any) -> None:
        transport = proto.response_stream(self.status, self._headers())

        async def pump() -> None:
            async for chunk in self.chunks:
                if chunk:
                    await transport.send_bytes(chunk)

        await self._relay(pump(), proto.client_disconnect())

    async def __call__(self, send: Send, receive: Receive | None = None) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": _raw_headers(self._headers())})

        async def pump() -> None:
            async for chunk in self.chunks:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        await self._relay(pump(), _disconnected(receive) if receive is not None else None)

    async def _relay(self, pump: Coroutine[Any, Any, None], gone: Awaitable[Any] | None) -> None:
        """Run `pump` until it ends or the client goes (`gone` resolves), whichever comes first.

        A client that goes away must stop the upstream read at once (and be recorded as such): the
        server does not raise on a closed connection, so one task pumps the chunks while another
        waits for the disconnect. (A task per chunk raced against the disconnect cost more than
        relaying the chunk.)"""
        task = asyncio.ensure_future(pump)
        watcher = asyncio.ensure_future(gone) if gone is not None else None
        try:
            if watcher is not None:
                await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    return
            await task
        finally:
            if watcher is not None:
                watcher.cancel()
            if not task.done():  # we were cancelled ourselves
                task.cancel()
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError):  # already finished by the cancellation
                    await aclose()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


Handler = Callable[[Request], Awaitable[Response]]
_PARAM = re.compile(r"\{(\w+)(:path)?\}")


class Router:
    """Method + path to handler. `{name}` matches one segment, `{name:path}` the rest of the path."""

    def __init__(self) -> None:
        self.static: dict[tuple[str, str], Handler] = {}
        self.dynamic: list[tuple[str, re.Pattern[str], Handler]] = []
        self.paths: set[str] = set()

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.paths.add(path)
        if "{" not in path:
            self.static[(method, path)] = handler
            return

        def group(m: re.Match[str]) -> str:
            return f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)"

        self.dynamic.append((method, re.compile("^" + _PARAM.sub(group, re.escape(path).replace(r"\{", "{").replace(r"\}", "}")) + "$"), handler))

    def route(self, methods: str, *paths: str) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            for path in paths:
                for method in methods.split(","):
                    self.add(method.strip(), path, handler)
            return handler

        return decorate

    def match(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], bool]:
        """(handler, path params, path_known). path_known tells 405 from 404."""
        handler = self.static.get((method, path))
        if handler is not None:
            return handler, {}, True
        known = path in self.paths
        for m, pattern, h in self.dynamic:
            found = pattern.match(path)
            if found:
                if m == method:
                    return h, found.groupdict(), True
                known = True
        if not known:
            known = any(p == path for (_, p) in self.static)
        return None, {}, known
