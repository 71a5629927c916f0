"""What a response-cache miss adds to a whole request, in process: the real App, Gateway, cache
(memory and SQLite tiers, writer thread included) and usage store, with httpx's MockTransport as
the upstream, so neither the server, the network nor the load generator blur a difference of a
few tens of microseconds. Requests with `X-OmniRoute-No-Cache` and without it alternate in short
rounds and every body is new (each cached request is a miss). CPU is the process's, all threads.
Run alone: `python -m tools.bench.pipeline_bench`."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
from typing import Any

import httpx
import orjson

from engine.app import App
from engine.compile import build
from engine.gateway import Gateway
from engine.upstream import Upstream

ANSWER = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! You said: Hello there"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
ROUTES = {  # client route -> a body in that client's format ({n} makes each one new)
    "openai-chat (same format: the fast path)": ("/v1/chat/completions", {"max_tokens": 16}),
    "anthropic-messages (translated)": ("/v1/messages", {"max_tokens": 16}),
}


async def _measure(tmp: str, rounds: int, per_round: int) -> list[tuple[str, float, float]]:
    rt = build(None, text=f"data_dir: {tmp}\nproviders:\n  openai: {{api_key: sk-bench, base_url: 'http://upstream.test/v1'}}\n", env={})
    upstream = httpx.MockTransport(lambda r: httpx.Response(200, content=ANSWER, headers={"content-type": "application/json"}))
    app = App(Gateway(rt, upstream=Upstream(transport=upstream)))
    await app.startup()
    count = itertools.count()

    async def one(path: str, extra: dict[str, Any], no_cache: bool) -> None:
        raw = orjson.dumps({"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": f"Hello there {next(count)}"}], **extra})

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            pass

        headers = [(b"content-type", b"application/json"), (b"anthropic-version", b"2023-06-01")]
        if no_cache:
            headers.append((b"x-omniroute-no-cache", b"true"))
        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "client": ("127.0.0.1", 1), "headers": headers}
        await app(scope, receive, send)

    out = []
    try:
        for name, (path, extra) in ROUTES.items():
            for _ in range(200):  # warm both paths
                await one(path, extra, True)
                await one(path, extra, False)
            cpu = {True: 0.0, False: 0.0}
            for _ in range(rounds):
                for no_cache in (True, False):
                    t = time.process_time()
                    for _ in range(per_round):
                        await one(path, extra, no_cache)
                    cpu[no_cache] += time.process_time() - t
            n = rounds * per_round
            out.append((name, cpu[True] / n * 1e6, cpu[False] / n * 1e6))
    finally:
        await app.shutdown()
    return out


def run(rounds: int = 12, per_round: int = 250) -> list[tuple[str, str, str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(_measure(tmp, rounds, per_round))
    return [(name, f"{a:.1f}", f"{b:.1f}", f"{b - a:+.1f}") for name, a, b in figures]


def main() -> None:
    from tools.bench.__main__ import table

    table("A cache miss in a whole request, in process (µs CPU per request, all threads; target: a miss adds <= 30)",
          run(), ("client route", "uncached", "cache miss", "miss adds"))


if __name__ == "__main__":
    main()
