"""Upstream HTTP: auth kinds, URLs, timeouts, and transport errors mapped once into UpstreamError
with provider, model and attempt attached.

Requests and responses are httpx's; they go through an httpx transport directly (our aiohttp one,
engine/transport.py, unless a test passes another). httpx's client layer is skipped: its cookie
jar, auth flows and redirect handling cost about a sixth of the gateway's CPU per proxied request
and do nothing for an API gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from .errors import UpstreamError
from .transport import AiohttpTransport

if TYPE_CHECKING:
    from .runtime import Account, Connection, Model

AUTH_KINDS: dict[str, Callable[[dict[str, str], dict[str, str], dict[str, Any], str], None]] = {}


def register_auth(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def deco(fn: Callable[..., None]) -> Callable[..., None]:
        AUTH_KINDS[name] = fn
        return fn

    return deco


@register_auth("bearer")
def _bearer(headers: dict[str, str], query: dict[str, str], auth: dict[str, Any], key: str) -> None:
    if key:
        headers["authorization"] = f"Bearer {key}"


@register_auth("header")
def _header(headers: dict[str, str], query: dict[str, str], auth: dict[str, Any], key: str) -> None:
    if key:
        headers[auth["header"].lower()] = f"{auth.get('prefix', '')}{key}"


@register_auth("query")
def _query(headers: dict[str, str], query: dict[str, str], auth: dict[str, Any], key: str) -> None:
    if key:
        query[auth["param"]] = key


@register_auth("none")
def _none(headers: dict[str, str], query: dict[str, str], auth: dict[str, Any], key: str) -> None:
    return None


class Upstream:
    """The shared transport. Lives across reloads: connection pools are state, not config."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.transport = transport or AiohttpTransport()
        self._prepared: dict[tuple[object, ...], tuple[Connection, httpx.URL, httpx.Headers]] = {}

    async def aclose(self) -> None:
        await self.transport.aclose()

    def forget(self) -> None:
        """Drop prepared requests (a new runtime has new connections; the old ones can go)."""
        self._prepared.clear()

    def build(
        self, conn: Connection, account: Account, endpoint: str, model: Model, *, stream: bool, body: bytes | None, method: str = "POST"
    ) -> httpx.Request:
        ep = conn.spec.endpoints.get(endpoint)
        if ep is None:
            raise UpstreamError(f"provider '{conn.id}' has no {endpoint} endpoint", status=400, retryable=True, provider=conn.id)
        path = ep.get("stream_path") if stream and ep.get("stream_path") else ep["path"]
        upstream_model = model.upstream or model.id
        # URL parsing and header assembly cost more than the rest of the request: done once per
        # (connection, path, model, key) and reused. Connections are immutable and a reload makes
        # new ones, so the entry is checked to belong to this very object.
        key = (id(conn), path, upstream_model, account.api_key, stream, body is not None)
        hit = self._prepared.get(key)
        if hit is None or hit[0] is not conn:
            headers = dict(conn.headers)
            query: dict[str, str] = {}
            AUTH_KINDS[conn.spec.auth["kind"]](headers, query, dict(conn.spec.auth), account.api_key)
            headers["accept"] = "text/event-stream" if stream else "application/json"
            if body is not None:
                headers["content-type"] = "application/json"
            url = httpx.URL(conn.base_url + path.replace("{model}", quote(upstream_model, safe="")))
            if query:  # merged, not replaced: stream paths carry their own (?alt=sse)
                url = url.copy_merge_params(query)
            if len(self._prepared) > 4096:
                self._prepared.clear()
            hit = self._prepared[key] = (conn, url, httpx.Headers(headers))
        _, url, prepared = hit
        if body is None:
            return httpx.Request(ep.get("method", method), url, headers=prepared)
        # A body given as a stream skips httpx's content encoding and header defaults (Host and
        # Content-Length, which the transport sets from the URL and the bytes anyway).
        request = httpx.Request(ep.get("method", method), url, headers=prepared, stream=httpx.ByteStream(body))
        request.read()
        return request

    async def send(self, request: httpx.Request, conn: Connection, model: Model, attempt: int) -> httpx.Response:
        """Send and return once headers arrived (the body streams). Maps every transport failure."""
        t = conn.timeouts  # the defaults merged in at compile time (runtime.DEFAULT_TIMEOUTS)
        # httpx's timeout keys, plus `total`, which our transport enforces and others ignore.
        request.extensions["timeout"] = {"connect": t["connect"], "read": t["idle"], "write": t["idle"], "pool": t["connect"], "total": t["total"]}
        try:
            async with asyncio.timeout(t["first_byte"]):
                return await self.transport.handle_async_request(request)
        except TimeoutError:
            raise UpstreamError(
                f"{conn.id} did not answer within {t['first_byte']:g}s", status=504, kind="timeout", provider=conn.id, model=model.id, attempt=attempt
            ) from None
        except httpx.TimeoutException as e:
            raise UpstreamError(f"{conn.id} timed out ({e.__class__.__name__})", status=504, kind="timeout", provider=conn.id, model=model.id, attempt=attempt) from None
        except httpx.HTTPError as e:
            raise UpstreamError(
                f"cannot reach {conn.id} ({e.__class__.__name__})", status=502, kind="bad_gateway", provider=conn.id, model=model.id, attempt=attempt
            ) from None


def transport_error(e: Exception, conn_id: str) -> UpstreamError:
    """A failure while reading a body that already started."""
    if isinstance(e, httpx.TimeoutException):
        return UpstreamError(f"{conn_id} timed out mid-answer ({e})", status=504, kind="timeout", provider=conn_id)
    return UpstreamError(f"{conn_id} closed the connection mid-answer ({e.__class__.__name__})", status=502, kind="bad_gateway", provider=conn_id)
