"""GET/DELETE /api/cache against a stand-in gateway holding a real cache and idempotency registry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from engine.admin import cache_api
from engine.cache import CacheRules, ResponseCache
from engine.http import Request, Router
from engine.idempotency import IdempotencyRegistry, Ticket

ANSWER = {"id": "r", "model": "m", "content": [{"type": "text", "text": "hi"}], "stop_reason": "stop", "usage": {}}


@pytest.fixture
def gw(tmp_path: Path) -> Any:
    g = SimpleNamespace(cache=ResponseCache(tmp_path, CacheRules(max_entries=50)), idempotency=IdempotencyRegistry(window_s=5))
    yield g
    g.cache.close()


def call(gw: Any, method: str, query: str = "") -> tuple[int, Any]:
    router = Router()
    cache_api.register(router, gw)
    handler, _, _ = router.match(method, "/api/cache")
    assert handler is not None

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": method, "path": "/api/cache", "headers": [], "query_string": query.encode(),
             "client": ("127.0.0.1", 1)}
    resp = asyncio.run(handler(Request(scope, receive)))
    return resp.status, orjson.loads(resp.body)


def test_get_reports_both_parts(gw: Any) -> None:
    gw.cache.put("a", ANSWER, "openai/gpt-4.1")
    gw.cache.get("a")
    gw.cache.get("b")
    gw.cache.flush()

    async def run_one() -> None:
        t = await gw.idempotency.begin("team", "k1", "d")
        assert isinstance(t, Ticket)
        t.complete(200, body=b"{}")

    asyncio.run(run_one())
    status, body = call(gw, "GET")
    assert status == 200
    sc = body["semanticCache"]
    assert {k: sc[k] for k in ("memorySize", "memoryMaxSize", "dbSize", "hitRate")} == {
        "memorySize": 1, "memoryMaxSize": 50, "dbSize": 1, "hitRate": 0.5}
    assert body["idempotency"] == {"activeKeys": 1, "windowMs": 5000}


def test_delete_clears_all_or_one_model(gw: Any) -> None:
    gw.cache.put("a", ANSWER, "openai/gpt-4.1")
    gw.cache.put("b", ANSWER, "anthropic/claude-sonnet-4-5")
    gw.cache.put("c", ANSWER, "anthropic/claude-sonnet-4-5")
    assert call(gw, "DELETE", "model=openai/gpt-4.1") == (200, {"cleared": 1, "model": "openai/gpt-4.1"})
    assert call(gw, "DELETE") == (200, {"cleared": 2})
    _, body = call(gw, "GET")
    assert body["semanticCache"]["memorySize"] == 0 and body["semanticCache"]["dbSize"] == 0


def test_empty_model_is_a_clear_error(gw: Any) -> None:
    status, body = call(gw, "DELETE", "model=")
    assert status == 400 and "'model' must not be empty" in body["error"]["message"]


def test_without_a_cache_the_routes_still_answer() -> None:
    bare = SimpleNamespace()
    assert call(bare, "GET") == (200, {"semanticCache": {"memorySize": 0, "memoryMaxSize": 0, "dbSize": 0, "hitRate": 0.0},
                                       "idempotency": {"activeKeys": 0, "windowMs": 0}})
    assert call(bare, "DELETE") == (200, {"cleared": 0})
