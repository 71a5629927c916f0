"""Management API for the response cache and idempotency registry.

Routes (admin authentication is applied by the router before these handlers run):
    GET    /api/cache            {"semanticCache": {memorySize, memoryMaxSize, dbSize, hitRate, ...},
                                  "idempotency": {activeKeys, windowMs}}
    DELETE /api/cache[?model=M]  empty every tier (or only the answers of model M) -> {"cleared": n}

`model` is the name after alias resolution, as the cache stores it (e.g. openai/gpt-4.1). Both
handlers touch the SQLite file, so they run in a worker thread: the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from engine.http import JSONResponse, Request, Response

_EMPTY_CACHE = {"memorySize": 0, "memoryMaxSize": 0, "dbSize": 0, "hitRate": 0.0}
_EMPTY_IDEM = {"activeKeys": 0, "windowMs": 0}


def _error(message: str, status: int = 400, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status=status)


def register(router: Any, gw: Any) -> None:
    async def get_cache(req: Request) -> Response:
        cache = getattr(gw, "cache", None)
        idem = getattr(gw, "idempotency", None)
        stats = await asyncio.to_thread(cache.stats) if cache is not None else dict(_EMPTY_CACHE)
        return JSONResponse({
            "semanticCache": stats,
            "idempotency": idem.stats() if idem is not None else dict(_EMPTY_IDEM),
        })

    async def delete_cache(req: Request) -> Response:
        cache = getattr(gw, "cache", None)
        # parse_qsl drops `model=`; an empty model must not quietly become "clear everything"
        raw = parse_qs(req.query_string, keep_blank_values=True).get("model")
        model = raw[-1] if raw else None
        if model is not None and not model.strip():
            return _error("query parameter 'model' must not be empty: leave it out to clear every model")
        if cache is None:
            return JSONResponse({"cleared": 0})
        cleared = await asyncio.to_thread(cache.clear, model.strip() if model else None)
        body: dict[str, Any] = {"cleared": cleared}
        if model:
            body["model"] = model.strip()
        return JSONResponse(body)

    router.add("GET", "/api/cache", get_cache)
    router.add("DELETE", "/api/cache", delete_cache)
