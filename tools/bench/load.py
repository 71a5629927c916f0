"""A small closed-loop HTTP load generator and the figures it reports."""

from __future__ import annotations

import asyncio
import itertools
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)")


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


class _Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends the same request again as soon as the answer
    is complete. Raw protocol, not aiohttp: on a 2-core machine the load generator shares the CPU
    with what it measures, so the less it spends per request the more the figures say about the
    gateway."""

    def __init__(self, request: Callable[[], bytes], stop_at: float, result: Result, done: asyncio.Future[None]) -> None:
        self.request, self.stop_at, self.result, self.done = request, stop_at, result, done
        self.buf = bytearray()
        self.started = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        self.started = time.perf_counter()
        self.transport.write(self.request())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        length = _LENGTH.search(head)
        if length:
            if len(self.buf) < end + 4 + int(length[1]):
                return
        elif not self.buf.endswith(b"0\r\n\r\n"):  # chunked: complete at the last chunk
            return
        now = time.perf_counter()
        self.result.latencies.append(now - self.started)
        if head[9:12] != b"200":
            self.result.errors += 1
        self.buf.clear()
        if now < self.stop_at:
            self._send()
        else:
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


_COUNT = itertools.count()


def _requests(url: str, body: bytes, headers: dict[str, str]) -> Callable[[], bytes]:
    """Request bytes, each time with `{n}` in the body replaced by a counter: unique bodies, so a
    response cache (on by default) cannot answer the benchmark from memory."""
    u = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    prefix = f"POST {u.path or '/'} HTTP/1.1\r\nhost: {u.hostname}:{u.port}\r\n{head}".encode()
    pieces = body.split(b"{n}")
    count = _COUNT  # one counter for the whole process: a run never repeats an earlier run's body

    def make() -> bytes:
        b = str(next(count)).encode().join(pieces)
        return b"%scontent-length: %d\r\n\r\n%s" % (prefix, len(b), b)

    return make


async def _run(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> Result:
    u = urlsplit(url)
    make = _requests(url, body, headers)
    result = Result(0, 0, 0.0, [])
    loop = asyncio.get_running_loop()
    stop_at = time.perf_counter() + seconds
    done = [loop.create_future() for _ in range(concurrency)]
    t0 = time.perf_counter()
    for fut in done:
        await loop.create_connection(lambda fut=fut: _Client(make, stop_at, result, fut), u.hostname, u.port)  # type: ignore[misc]
    await asyncio.wait_for(asyncio.gather(*done), seconds + 30)
    result.seconds = time.perf_counter() - t0
    result.requests = len(result.latencies)
    return result


def run(url: str, body: bytes, concurrency: int, seconds: float, headers: dict[str, str] | None = None) -> Result:
    h = {"content-type": "application/json", "authorization": "Bearer bench-key", **(headers or {})}
    return _loop_run(_run(url, body, h, concurrency, seconds))


def _loop_run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _ttfb(url: str, body: bytes, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            t = time.perf_counter()
            async with session.post(url, data=body.replace(b"{n}", str(i).encode()), headers={"content-type": "application/json", "authorization": "Bearer bench-key"}) as r:
                async for chunk in r.content.iter_any():
                    if b"word" in chunk:
                        out.append(time.perf_counter() - t)
                        break
                await r.read()
    return out


def ttfb(url: str, body: bytes, n: int) -> float:
    """Median time to the first content-bearing stream chunk, in ms."""
    return statistics.median(asyncio.run(_ttfb(url, body, n))) * 1000
