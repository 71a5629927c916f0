"""Minimal ASGI request/response primitives and the router.

Why not Starlette: the gateway's CPU budget per request is a fraction of a millisecond, and a
framework's middleware stack and request object cost a measurable share of it. This module is the
whole web layer: a `Request` that reads the ASGI scope lazily, three response kinds, and a router
that matches static paths with one dict lookup and templated paths with precompiled regexes.

Public surface: Request, Response, JSONResponse, StreamingResponse, Router, Handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Request:
    """One HTTP request. Headers are lower-cased; the body is read once and kept."""

    __slots__ = ("_body", "_headers", "_query", "client", "method", "params", "path", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.params: dict[str, str] = {}
        client = scope.get("client")
        self.client: str = client[0] if client else ""
        self._headers: dict[str, str] | None = None
        self._query: dict[str, str] | None = None
        self._body: bytes | None = None

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope["headers"]}
        return self._headers

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            self._query = dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1")))
        return self._query

    async def body(self, limit: int | None = None) -> bytes:
        """The whole body. With `limit`, raise BodyTooLarge once more than `limit` bytes arrive."""
        if self._body is None:
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await self.receive()
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise BodyTooLarge(limit)
                    chunks.append(chunk)
                more = message.get("more_body", False)
            self._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._body

    async def stream(self) -> AsyncIterator[bytes]:
        """The body chunk by chunk, for uploads that should not be held in memory twice."""
        more = True
        while more:
            message = await self.receive()
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            more = message.get("more_body", False)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the limit of {limit} bytes")
        self.limit = limit


def _raw_headers(headers: dict[str, str] | None, content_type: str | None) -> list[tuple[bytes, bytes]]:
    raw = [(b"content-type", content_type.encode())] if content_type else []
    if headers:
        raw.extend((k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items())
    return raw


class Response:
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

    async def __call__(self, send: Send, receive: Receive | None = None) -> None:
        raw = _raw_headers(self.headers, self.media_type)
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

    async def __call__(self, send: Send, receive: Receive | None = None) -> None:
        raw = _raw_headers(self.headers, self.media_type)
        if self.media_type == "text/event-stream":
            raw.append((b"cache-control", b"no-cache"))
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        # A client that goes away must stop the upstream read at once (and be recorded as such):
        # the server does not raise on a closed connection, so one task pumps the chunks while
        # another waits for http.disconnect; whichever ends first ends the other. (A task per
        # chunk raced against the disconnect cost more than relaying the chunk.)
        pump = asyncio.ensure_future(self._pump(send))
        gone = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
        try:
            if gone is not None:
                await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not pump.done():
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
                    return
            await pump
        finally:
            if gone is not None:
                gone.cancel()
            if not pump.done():  # we were cancelled ourselves
                pump.cancel()
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError):  # already finished by the cancellation
                    await aclose()

    async def _pump(self, send: Send) -> None:
        async for chunk in self.chunks:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


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
