"""A small closed-loop HTTP load generator (aiohttp) and the figures it reports."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import aiohttp


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


async def _run(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> Result:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return Result(len(latencies), errors, elapsed, latencies)


def run(url: str, body: bytes, concurrency: int, seconds: float, headers: dict[str, str] | None = None) -> Result:
    h = {"content-type": "application/json", "authorization": "Bearer bench-key", **(headers or {})}
    return asyncio.run(_run(url, body, h, concurrency, seconds))


async def _ttfb(url: str, body: bytes, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            t = time.perf_counter()
            async with session.post(url, data=body, headers={"content-type": "application/json", "authorization": "Bearer bench-key"}) as r:
                async for chunk in r.content.iter_any():
                    if b"word" in chunk:
                        out.append(time.perf_counter() - t)
                        break
                await r.read()
    return out


def ttfb(url: str, body: bytes, n: int) -> float:
    """Median time to the first content-bearing stream chunk, in ms."""
    return statistics.median(asyncio.run(_ttfb(url, body, n))) * 1000
