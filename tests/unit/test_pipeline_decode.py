"""How often the chat pipeline decodes a request, in process (a mock transport answers upstream):
the same-format fast path decodes only what the cache key needs, a request the cache cannot take
is never decoded, and a format without a peek is decoded once, not twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from engine.app import App
from engine.compile import build
from engine.gateway import Gateway
from engine.translate import Format
from engine.upstream import Upstream

ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts: dict[str, int] = {}
    real = Format.decode_request

    def counting(self: Format, *a: Any, **k: Any) -> dict[str, Any]:
        counts[self.id] = counts.get(self.id, 0) + 1
        return real(self, *a, **k)

    monkeypatch.setattr(Format, "decode_request", counting)
    return counts


def post(tmp_path: Path, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    rt = build(None, text=f"data_dir: {tmp_path}\nproviders:\n  openai: {{api_key: sk-test, base_url: 'http://upstream.test/v1'}}\n", env={})
    gw = Gateway(rt, upstream=Upstream(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=ANSWER))))
    app = App(gw)
    raw = orjson.dumps(body)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await gw.start()
        try:
            scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "client": ("127.0.0.1", 1),
                     "headers": [(b"content-type", b"application/json"), (b"anthropic-version", b"2023-06-01")]}
            await app(scope, receive, send)
        finally:
            await gw.close()

    asyncio.run(run())
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, orjson.loads(sent[1]["body"])


def test_fast_path_decodes_once_for_the_cache_key(tmp_path: Path, decodes: dict[str, int]) -> None:
    status, headers, body = post(tmp_path, "/v1/chat/completions", {"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
    assert (status, headers["x-omniroute-cache"], body["choices"][0]["message"]["content"]) == (200, "MISS", "Paris.")
    assert decodes == {"openai-chat": 1}


def test_a_request_the_cache_cannot_take_is_never_decoded(tmp_path: Path, decodes: dict[str, int]) -> None:
    status, headers, _ = post(tmp_path, "/v1/chat/completions",
                              {"model": "openai/gpt-4.1", "temperature": 0.9, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and "x-omniroute-cache" not in headers
    assert decodes == {}


def test_a_format_without_peek_is_decoded_once(tmp_path: Path, decodes: dict[str, int]) -> None:
    status, headers, body = post(tmp_path, "/v1/messages",
                                 {"model": "openai/gpt-4.1", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
    assert (status, headers["x-omniroute-cache"], body["content"][0]["text"]) == (200, "MISS", "Paris.")
    assert decodes == {"anthropic-messages": 1}
