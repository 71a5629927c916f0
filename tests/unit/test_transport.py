"""engine/transport.py against a raw HTTP/1.1 server on loopback: bodies, compression, uploads,
and every failure surfacing as the httpx exception callers map."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from engine.transport import AiohttpTransport, body_chunks, read_body

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _request_of(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    chunked = False
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return head, body
    return head, await reader.readexactly(length)


async def _serve(handler: Handler, fn: Callable[[str], Awaitable[None]]) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await fn(f"http://127.0.0.1:{port}/v1/x")
    finally:
        server.close()


def _answer(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return f"HTTP/1.1 {status} X\r\n{lines}content-length: {len(body)}\r\n\r\n".encode() + body


def test_gzip_bodies_arrive_decompressed_with_identity_headers() -> None:
    payload = b'{"ok": true}' * 50

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_of(reader)
        writer.write(_answer(200, [("content-type", "application/json"), ("content-encoding", "gzip")], gzip.compress(payload)))
        await writer.drain()
        writer.close()

    async def check(url: str) -> None:
        t = AiohttpTransport()
        resp = await t.handle_async_request(httpx.Request("GET", url))
        assert resp.status_code == 200 and "content-encoding" not in resp.headers
        assert await read_body(resp) == payload
        await resp.aclose()
        await t.aclose()

    asyncio.run(_serve(handler, check))


def test_request_body_headers_and_streamed_uploads_reach_the_server() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                seen.append(await _request_of(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(_answer(200, [("x-n", str(len(seen))), ("set-cookie", "session=abc; Path=/")], b"data: a\n\ndata: b\n\n"))
            await writer.drain()

    async def upload() -> AsyncIterator[bytes]:
        for part in (b"one-", b"two-", b"three"):
            yield part

    async def check(url: str) -> None:
        url = url.replace("127.0.0.1", "localhost")  # a host name: cookie jars ignore IP hosts
        t = AiohttpTransport()
        r1 = await t.handle_async_request(httpx.Request("POST", url, content=b'{"a":1}', headers={"authorization": "Bearer k"}))
        assert [c async for c in body_chunks(r1)] != [] and r1.headers["x-n"] == "1"
        await r1.aclose()
        r2 = await t.handle_async_request(httpx.Request("POST", url, content=upload(), headers={"content-length": "13"}))
        assert await read_body(r2) == b"data: a\n\ndata: b\n\n"
        await r2.aclose()
        await t.aclose()

    asyncio.run(_serve(handler, check))
    (head1, body1), (_, body2) = seen
    assert body1 == b'{"a":1}' and b"authorization: bearer k" in head1.lower()
    assert b"user-agent" not in head1.lower()  # no client identity added
    assert body2 == b"one-two-three"
    assert not any(b"cookie" in head.lower() for head, _ in seen)  # an upstream's cookie never rides along


def test_connect_failure_is_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the call: nothing listens

    async def go() -> None:
        t = AiohttpTransport()
        try:
            with pytest.raises(httpx.ConnectError):
                await t.handle_async_request(httpx.Request("GET", f"http://127.0.0.1:{port}/"))
        finally:
            await t.aclose()

    asyncio.run(go())


def test_silence_is_read_timeout_and_a_cut_body_is_a_transport_error() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_of(reader)
        await asyncio.sleep(2)

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_of(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async def times_out(url: str) -> None:
        t = AiohttpTransport()
        req = httpx.Request("GET", url, extensions={"timeout": {"connect": 1.0, "read": 0.2, "pool": 1.0}})
        with pytest.raises(httpx.ReadTimeout):
            await t.handle_async_request(req)
        await t.aclose()

    async def breaks(url: str) -> None:
        t = AiohttpTransport()
        resp = await t.handle_async_request(httpx.Request("GET", url))
        with pytest.raises(httpx.TransportError):
            await read_body(resp)
        await resp.aclose()
        await t.aclose()

    asyncio.run(_serve(silent, times_out))
    asyncio.run(_serve(cut, breaks))


def test_total_timeout_cuts_a_trickling_body() -> None:
    """`total` bounds the whole exchange: a body that keeps trickling in (never idle long enough
    for the read timeout) is still cut."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_of(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(40):
            writer.write(b"2\r\nok\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.close()

    async def cut(url: str) -> None:
        t = AiohttpTransport()
        req = httpx.Request("GET", url, extensions={"timeout": {"connect": 1.0, "read": 1.0, "pool": 1.0, "total": 0.4}})
        resp = await t.handle_async_request(req)
        with pytest.raises(httpx.ReadTimeout, match="total timeout"):
            await read_body(resp)
        await resp.aclose()
        await t.aclose()

    asyncio.run(_serve(trickle, cut))
