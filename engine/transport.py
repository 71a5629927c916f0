"""An httpx transport on one aiohttp session: httpx's request and response types, aiohttp's
connection handling.

Measured in tools/bench (thin-proxy section), httpx's own transport costs several times the CPU
of raw aiohttp per proxied request, and the `httpx-aiohttp` package about twice. What remains of
the gap is conversion: header models rebuilt in both directions, URL strings re-parsed on every
call. This transport converts each thing once: request headers go to aiohttp as plain pairs, the
URL is parsed by yarl once per distinct URL, response headers reach httpx as the raw pairs aiohttp
already has, and `read_body`/`body_chunks` take the body straight from aiohttp (which
decompresses it). The gateway calls `handle_async_request` directly (engine/upstream.py): httpx's
client layer adds cookies, auth and redirect handling an API gateway has no use for.

Errors are httpx's: a connect failure is `httpx.ConnectError`, a silent upstream
`httpx.ReadTimeout`, a dropped connection `httpx.RemoteProtocolError` or `httpx.ReadError`, so
callers map one family.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx
from yarl import URL

_URLS: dict[str, URL] = {}


def _yarl(url: httpx.URL) -> URL:
    text = str(url)
    hit = _URLS.get(text)
    if hit is None:
        if len(_URLS) > 4096:
            _URLS.clear()
        hit = _URLS[text] = URL(text, encoded=True)  # httpx already percent-encoded it
    return hit


def _mapped(e: BaseException) -> httpx.TransportError:
    if isinstance(e, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(e) or "connect timed out")
    if isinstance(e, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(e))
    if isinstance(e, aiohttp.ServerTimeoutError):  # sock_read: nothing arrived for that long
        return httpx.ReadTimeout(str(e) or "idle timeout")
    if isinstance(e, TimeoutError):  # aiohttp's whole-exchange timer
        return httpx.ReadTimeout("the answer took longer than the total timeout")
    if isinstance(e, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(str(e) or "server disconnected")
    return httpx.ReadError(str(e) or e.__class__.__name__)


def _identity(raw: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]]:
    """Response headers for a body aiohttp already decompressed: without its encoding and length."""
    for k, _ in raw:
        if len(k) == 16 and k.lower() == b"content-encoding":
            return [(k, v) for k, v in raw if k.lower() not in (b"content-encoding", b"content-length")]
    return raw


class _Body(httpx.AsyncByteStream):
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as e:
            raise _mapped(e) from e

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise _mapped(e) from e

    async def aclose(self) -> None:
        self._resp.release()


async def read_body(resp: httpx.Response) -> bytes:
    """The whole body of `resp`. From this transport, straight from aiohttp (already decompressed):
    httpx's decoder chain and chunker cost more than the read itself."""
    stream = resp.stream
    return await stream.read() if isinstance(stream, _Body) else await resp.aread()


def body_chunks(resp: httpx.Response) -> AsyncIterator[bytes]:
    """The body of `resp` as it arrives (see read_body)."""
    stream = resp.stream
    return stream.__aiter__() if isinstance(stream, _Body) else resp.aiter_bytes()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One keep-alive pool for every upstream, created in the loop that first uses it (aiohttp
    sessions belong to the loop that made them)."""

    def __init__(self, max_connections: int = 1000, keepalive_s: float = 60.0) -> None:
        self._limit = max_connections
        self._keepalive = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=self._keepalive, ttl_dns_cache=300)
        # No default User-Agent: the request carries what upstream.py built. No cookie jar: one
        # session serves every account and client, and a cookie an upstream set for one of them
        # must never ride along on another's request. aiohttp decompresses; the response httpx
        # sees is then identity-encoded (see _identity).
        self._session = aiohttp.ClientSession(
            connector=connector, skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar()
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        t = request.extensions.get("timeout") or {}
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        data: object
        try:
            data = request.content or None
        except httpx.RequestNotRead:  # a streamed upload: aiohttp sends it chunked itself
            data = request.stream
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        try:
            resp = await session.request(
                request.method, _yarl(request.url), headers=headers, data=data, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=t.get("total"), sock_connect=t.get("connect"), sock_read=t.get("read"), connect=t.get("pool")
                ),
            )
        except (TimeoutError, aiohttp.ClientError) as e:
            raise _mapped(e) from e
        return httpx.Response(
            resp.status, headers=_identity(resp.raw_headers), stream=_Body(resp), request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (resp.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
