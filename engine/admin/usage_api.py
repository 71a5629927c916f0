"""Management API for usage analytics, budgets, telemetry, the audit log and prices.

Routes (admin authentication is applied by the router before these handlers run):
    GET  /api/usage/history        time buckets of requests, tokens, cost, errors
    GET  /api/usage/logs           attempts, newest first, paged (?limit, ?offset)
    GET  /api/usage/request-logs   client requests (final attempts, with payloads), newest first
    GET  /api/usage/{connectionId} totals, models, accounts and error classes of one connection
    GET  /api/usage/budget         every key's budget and spend; POST sets one {"keyId","limit","period"}
    GET  /api/telemetry/summary    latency p50/p95/p99 per provider over ?window (default 1h)
    GET  /api/compliance/audit-log configuration and key changes, newest first (?limit)
    POST /api/usage/query          {"sql": "SELECT ..."} -> {"columns", "rows"}; read-only
    GET  /api/pricing              USD per million tokens per "connection/model"
Filters shared by history, logs and request-logs: key, model (asked for or upstream), provider,
combo, from, to (ISO-8601 or epoch seconds). DuckDB work runs in a thread: the loop never waits.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from engine.budget import PERIODS, BudgetSpec
from engine.http import JSONResponse, Request, Response
from engine.pricing import usd_to_micro
from engine.usage import QueryError, jsonable

Handler = Callable[[Request], Awaitable[Response]]
_BUCKETS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1),
            "week": timedelta(weeks=1), "month": timedelta(days=31)}
_LOG_COLUMNS = ("ts, request_id, attempt, final, key_name, client_format, route, model_requested, combo, provider, "
                "account, upstream_model, modality, status, error_class, input_tokens, output_tokens, cached_tokens, "
                "cache_write_tokens, reasoning_tokens, cost_usd, latency_ms, ttfb_ms, stream, cache, bytes_in, "
                "bytes_out, lossy, tags")
_WINDOW = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class BadRequest(Exception):
    """A parameter the caller must fix; becomes a 400 with this message."""


def _error(message: str, status: int = 400, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status=status)


def _handler(fn: Callable[[Request, Any], Awaitable[Any]], gw: Any, needs_store: bool = True) -> Handler:
    """Wrap a handler body: 400 for BadRequest and query errors, 503 when analytics are off."""

    async def handle(req: Request) -> Response:
        if needs_store and getattr(gw, "usage", None) is None:
            return _error("usage analytics are disabled: the data directory was not usable at start "
                          "(see the server log)", 503, "service_unavailable")
        try:
            result = await fn(req, gw)
        except (BadRequest, QueryError) as e:
            return _error(str(e))
        return result if isinstance(result, Response) else JSONResponse(result)

    return handle


def _query(gw: Any, sql: str, params: list[Any] | None = None, **kw: Any) -> Awaitable[tuple[list[str], list[tuple[Any, ...]]]]:
    return asyncio.to_thread(gw.usage.query, sql, params, **kw)


def _dicts(columns: list[str], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        item = {c: jsonable(v) for c, v in zip(columns, row, strict=True)}
        for name in ("payload", "detail"):  # JSON columns come back as text
            if isinstance(item.get(name), str):
                item[name] = orjson.loads(item[name])
        out.append(item)
    return out


# -- parameters -------------------------------------------------------------------------------


def _time(q: dict[str, str], name: str, default: datetime) -> datetime:
    raw = q.get(name)
    if not raw:
        return default
    try:
        t = datetime.fromtimestamp(float(raw), UTC)
    except ValueError:
        try:
            t = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
        except ValueError:
            raise BadRequest(f"`{name}` must be an ISO-8601 time (2026-01-31T00:00:00Z) or epoch seconds, got {raw!r}")
        t = t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
    return t.replace(tzinfo=None)  # the usage tables hold naive UTC


def _int(q: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        n = int(raw)
    except ValueError:
        raise BadRequest(f"`{name}` must be a whole number between {lo} and {hi}, got {raw!r}")
    if not lo <= n <= hi:
        raise BadRequest(f"`{name}` must be between {lo} and {hi}, got {n}")
    return n


def _window(q: dict[str, str], default: float) -> float:
    raw = q.get("window", "").strip().lower()
    if not raw:
        return default
    m = _WINDOW.match(raw)
    if not m or float(m.group(1)) <= 0:
        raise BadRequest(f"`window` must be a duration like 900, 15m, 1h or 7d, got {raw!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _filters(q: dict[str, str], default_span: timedelta) -> tuple[str, list[Any], datetime, datetime]:
    """WHERE clause and parameters for the shared filters, plus the time range."""
    now = datetime.now(UTC).replace(tzinfo=None)
    end = _time(q, "to", now)
    start = _time(q, "from", end - default_span)
    if start >= end:
        raise BadRequest(f"`from` ({start.isoformat()}Z) must be before `to` ({end.isoformat()}Z)")
    where: list[str] = ["ts >= ?", "ts < ?"]
    params: list[Any] = [start, end]
    for name, column in (("key", "key_name"), ("provider", "provider"), ("combo", "combo")):
        if q.get(name):
            where.append(f"{column} = ?")
            params.append(q[name])
    if q.get("model"):
        where.append("(model_requested = ? OR upstream_model = ?)")
        params += [q["model"], q["model"]]
    return " AND ".join(where), params, start, end


# -- handlers ---------------------------------------------------------------------------------


async def history(req: Request, gw: Any) -> dict[str, Any]:
    q = req.query
    where, params, start, end = _filters(q, timedelta(days=1))
    bucket = q.get("bucket") or next(b for b, span in (("minute", timedelta(hours=2)), ("hour", timedelta(days=3)),
                                                       ("day", timedelta(days=120)), ("week", timedelta.max))
                                     if end - start <= span)
    if bucket not in _BUCKETS:
        raise BadRequest(f"`bucket` must be one of {', '.join(_BUCKETS)}, got {bucket!r}")
    sql = f"""SELECT date_trunc('{bucket}', ts) AS t,
        count(*) FILTER (WHERE final) AS requests, count(*) AS attempts,
        count(*) FILTER (WHERE final AND (error_class IS NOT NULL OR status >= 400)) AS errors,
        count(*) FILTER (WHERE final AND attempt > 0) AS fallbacks,
        sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
        sum(cached_tokens) AS cached_tokens, sum(reasoning_tokens) AS reasoning_tokens,
        coalesce(sum(cost_usd), 0) AS cost_usd, count(*) FILTER (WHERE cost_micro_usd IS NULL
            AND input_tokens + output_tokens > 0) AS unpriced
        FROM usage WHERE {where} GROUP BY t ORDER BY t"""
    columns, rows = await _query(gw, sql, params, max_rows=100_000)
    return {"bucket": bucket, "from": jsonable(start), "to": jsonable(end), "series": _dicts(columns, rows)}


async def _page(req: Request, gw: Any, view: str, extra: str) -> dict[str, Any]:
    q = req.query
    where, params, _, _ = _filters(q, timedelta(days=3650))
    limit, offset = _int(q, "limit", 100, 1, 1000), _int(q, "offset", 0, 0, 10**9)
    sql = (f"SELECT {_LOG_COLUMNS}{extra} FROM {view} WHERE {where} "
           "ORDER BY ts DESC, request_id DESC, attempt DESC LIMIT ? OFFSET ?")
    columns, rows = await _query(gw, sql, [*params, limit + 1, offset])
    return {"items": _dicts(columns, rows[:limit]), "limit": limit, "offset": offset, "hasMore": len(rows) > limit}


async def logs(req: Request, gw: Any) -> dict[str, Any]:
    return await _page(req, gw, "usage", "")


async def request_logs(req: Request, gw: Any) -> dict[str, Any]:
    return await _page(req, gw, "requests", ", payload")


async def connection(req: Request, gw: Any) -> dict[str, Any]:
    conn = req.params["connectionId"]
    where, params, start, end = _filters({**req.query, "provider": conn}, timedelta(days=30))
    totals_sql = f"""SELECT count(*) AS attempts, count(*) FILTER (WHERE error_class IS NOT NULL OR status >= 400) AS errors,
        sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cached_tokens) AS cached_tokens,
        sum(reasoning_tokens) AS reasoning_tokens, coalesce(sum(cost_usd), 0) AS cost_usd,
        quantile_cont(latency_ms, 0.5) AS p50_ms, quantile_cont(latency_ms, 0.95) AS p95_ms,
        max(ts) AS last_used FROM usage WHERE {where}"""
    columns, rows = await _query(gw, totals_sql, params)
    out: dict[str, Any] = {"connectionId": conn, "from": jsonable(start), "to": jsonable(end),
                           "totals": _dicts(columns, rows)[0]}
    for name, column in (("models", "upstream_model"), ("accounts", "account"), ("errors", "error_class")):
        cond = " AND error_class IS NOT NULL" if name == "errors" else ""
        sql = (f"SELECT {column} AS name, count(*) AS attempts, sum(input_tokens) AS input_tokens, "
               f"sum(output_tokens) AS output_tokens, coalesce(sum(cost_usd), 0) AS cost_usd "
               f"FROM usage WHERE {where}{cond} GROUP BY 1 ORDER BY attempts DESC LIMIT 100")
        out[name] = _dicts(*await _query(gw, sql, params))
    return out


async def telemetry(req: Request, gw: Any) -> dict[str, Any]:
    window = _window(req.query, 3600.0)
    since = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=window)
    # Cache hits never reached a provider, so they would flatter its latency.
    sql = """SELECT provider, quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.95),
        quantile_cont(latency_ms, 0.99), count(*) FROM usage
        WHERE ts >= ? AND provider IS NOT NULL AND latency_ms IS NOT NULL AND cache IS DISTINCT FROM 'HIT'
        GROUP BY provider ORDER BY provider"""
    _, rows = await _query(gw, sql, [since])
    return {"window_seconds": window, "providers": {
        p: {"p50": round(p50, 1), "p95": round(p95, 1), "p99": round(p99, 1), "count": n} for p, p50, p95, p99, n in rows}}


async def audit_log(req: Request, gw: Any) -> dict[str, Any]:
    limit = _int(req.query, "limit", 100, 1, 1000)
    columns, rows = await _query(gw, "SELECT ts, actor, action, target, detail FROM audit ORDER BY ts DESC LIMIT ?", [limit])
    return {"items": _dicts(columns, rows)}


async def query(req: Request, gw: Any) -> dict[str, Any]:
    body = await _json_body(req)
    sql, params = body.get("sql"), body.get("params")
    if not isinstance(sql, str) or not sql.strip():
        raise BadRequest('send {"sql": "SELECT ..."} with one read-only statement')
    if params is not None and not isinstance(params, list):
        raise BadRequest("`params` must be a list of values for the ? placeholders")
    max_rows = body.get("maxRows", 1000)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or not 1 <= max_rows <= 100_000:
        raise BadRequest(f"`maxRows` must be a whole number from 1 to 100000, got {max_rows!r}")
    columns, rows = await _query(gw, sql, params, max_rows=max_rows)
    return {"columns": columns, "rows": [[jsonable(v) for v in row] for row in rows[:max_rows]],
            "truncated": len(rows) > max_rows}


async def _json_body(req: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await req.body(limit=1 << 20))
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"the body must be a JSON object: {e}")
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _keys(gw: Any) -> dict[str, Any]:
    return dict(getattr(gw.runtime, "keys", None) or {})


async def budget_get(req: Request, gw: Any) -> dict[str, Any]:
    book, keys = gw.budgets, _keys(gw)
    only = req.query.get("keyId")
    if only is not None and only not in keys:
        raise BadRequest(f"unknown key {only!r} (known keys: {', '.join(sorted(keys)) or 'none'})")
    overrides = book.overrides()
    items = []
    for name in sorted(keys if only is None else [only]):
        configured = getattr(keys[name], "budget", None)
        spec = book.effective(name, configured)
        if spec is not None:
            items.append({**book.status(name, spec), "source": "api" if name in overrides else "config"})
    return {"budgets": items}


async def budget_post(req: Request, gw: Any) -> dict[str, Any]:
    body = await _json_body(req)
    keys, book = _keys(gw), gw.budgets
    key = body.get("keyId")
    if not isinstance(key, str) or key not in keys:
        raise BadRequest(f"`keyId` must name an API key (known keys: {', '.join(sorted(keys)) or 'none'}), got {key!r}")
    if body.get("limit") is None:  # null limit: drop the API budget, the config's applies again
        book.set_override(key, None)
        _audit(gw, req, "budget.clear", key, None)
        spec = book.effective(key, getattr(keys[key], "budget", None))
        return {"budget": book.status(key, spec) if spec else None}
    period = body.get("period", "monthly")
    if period not in PERIODS:
        raise BadRequest(f"`period` must be one of {', '.join(PERIODS)}, got {period!r}")
    try:
        spec = BudgetSpec(period, usd_to_micro(body["limit"], "`limit` (USD)"), float(body.get("warnAt", 0.8)))
    except (TypeError, ValueError) as e:
        raise BadRequest(str(e))
    if not book.tracks(key) and gw.usage is not None:
        # No spend counted for this key yet (it had no budget): count this period's records first.
        await asyncio.to_thread(gw.usage.flush)
        await asyncio.to_thread(book.rebuild, gw.usage, None, key)
    book.set_override(key, spec)
    _audit(gw, req, "budget.set", key, spec.to_config())
    return {"budget": {**book.status(key, spec), "source": "api"}}


def _audit(gw: Any, req: Request, action: str, target: str, detail: dict[str, Any] | None) -> None:
    if gw.usage is not None:
        gw.usage.audit(f"admin@{req.client or 'local'}", action, target, detail)


async def pricing(req: Request, gw: Any) -> dict[str, Any]:
    prices = getattr(gw.runtime, "prices", None) or {}
    provider = req.query.get("provider")
    models = {name: p.to_dict() for name, p in sorted(prices.items())
              if p is not None and (not provider or name.split("/", 1)[0] == provider)}
    return {"unit": "USD per million tokens; per_image and per_audio_second in USD per unit", "models": models}


def register(router: Any, gw: Any) -> None:
    """Add the routes to `router` (anything with `add(method, path, handler)`)."""
    routes: list[tuple[str, str, Callable[[Request, Any], Awaitable[Any]], bool]] = [
        ("GET", "/api/usage/history", history, True),
        ("GET", "/api/usage/logs", logs, True),
        ("GET", "/api/usage/request-logs", request_logs, True),
        ("GET", "/api/usage/budget", budget_get, False),
        ("POST", "/api/usage/budget", budget_post, False),
        ("POST", "/api/usage/query", query, True),
        ("GET", "/api/telemetry/summary", telemetry, True),
        ("GET", "/api/compliance/audit-log", audit_log, True),
        ("GET", "/api/pricing", pricing, False),
        ("GET", "/api/usage/{connectionId}", connection, True),  # after the static /api/usage/* paths
    ]
    for method, path, fn, needs_store in routes:
        router.add(method, path, _handler(fn, gw, needs_store))
