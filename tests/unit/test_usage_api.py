"""The usage management API against a stand-in gateway (usage store, budget book, runtime)."""

import asyncio
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import orjson
import pytest

from engine.admin import usage_api
from engine.budget import BudgetBook, BudgetSpec
from engine.http import Request, Router
from engine.pricing import Price
from engine.usage import UsageStore

T = datetime(2026, 3, 15, 12, 0, tzinfo=UTC).timestamp()


def make_gw(data_dir, usage=True):
    keys = {"team-a": SimpleNamespace(budget=BudgetSpec("monthly", 50_000_000)), "team-b": SimpleNamespace(budget=None)}
    prices = {"openai/gpt-4.1": Price.from_spec({"input": 2, "output": 8, "cached_input": 0.5}),
              "anthropic/claude-sonnet-4-5": Price.from_spec({"input": 3, "output": 15, "cache_write": 3.75})}
    return SimpleNamespace(usage=UsageStore(data_dir) if usage else None, budgets=BudgetBook(data_dir),
                           runtime=SimpleNamespace(keys=keys, prices=prices))


def call(gw, method, path, query="", body=None):
    router = Router()
    usage_api.register(router, gw)
    handler, params, _ = router.match(method, path)
    assert handler is not None, f"no route {method} {path}"
    raw = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""

    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}

    req = Request({"type": "http", "method": method, "path": path, "headers": [], "query_string": query.encode(),
                   "client": ("10.0.0.5", 4711)}, receive)
    req.params = params
    resp = asyncio.run(handler(req))
    return resp.status, orjson.loads(resp.body)


def rec(**kw):
    base = {"request_id": "r", "attempt": 0, "final": True, "ts": T, "key_name": "team-a", "client_format": "openai-chat",
            "model_requested": "coding", "combo": "coding", "provider": "openai", "account": "acct-1",
            "upstream_model": "gpt-4.1", "status": 200, "input_tokens": 100, "output_tokens": 10, "cached_tokens": 0,
            "cost_micro_usd": 280, "latency_ms": 100.0}
    return {**base, **kw}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    gw = make_gw(tmp_path_factory.mktemp("api"))
    s = gw.usage
    s.record(rec(request_id="a", ts=T + 300))
    s.record(rec(request_id="b", ts=T + 600, attempt=0, final=False, status=429, error_class="rate_limit",
                 provider="anthropic", upstream_model="claude-sonnet-4-5", cost_micro_usd=0, input_tokens=0, output_tokens=0))
    s.record(rec(request_id="b", ts=T + 601, attempt=1, final=True))
    s.record(rec(request_id="c", ts=T + 4200, key_name="team-b", combo=None, model_requested="gpt-4.1",
                 payload={"body": {"messages": [{"role": "user", "content": "hi"}]}, "headers": {"authorization": "Bearer x"}}))
    s.record(rec(request_id="d", ts=T + 4300, status=500, error_class="server", cost_micro_usd=None))
    now = time.time()
    for i in range(100):  # recent traffic for telemetry: latencies 1..100 ms
        s.record(rec(request_id=f"t{i}", ts=now - 60, provider="groq", latency_ms=float(i + 1)))
    s.record(rec(request_id="hit", ts=now - 60, provider="groq", latency_ms=0.1, cache="HIT"))
    s.record(rec(request_id="old", ts=now - 7200, provider="groq", latency_ms=99999.0))
    s.audit("system", "config.reload", "config.yaml", {"ok": True})
    s.flush()
    yield gw
    s.close()


def test_history_buckets_and_filters(gw):
    status, body = call(gw, "GET", "/api/usage/history", "from=2026-03-15T12:00:00Z&to=2026-03-15T14:00:00Z&bucket=hour")
    assert status == 200
    assert body["bucket"] == "hour" and body["from"] == "2026-03-15T12:00:00Z"
    first, second = body["series"]
    assert first["t"] == "2026-03-15T12:00:00Z"
    assert (first["requests"], first["attempts"], first["errors"], first["fallbacks"]) == (2, 3, 0, 1)
    assert first["cost_usd"] == 0.00056 and first["input_tokens"] == 200
    assert (second["requests"], second["errors"], second["unpriced"]) == (2, 1, 1)
    _, only_b = call(gw, "GET", "/api/usage/history", f"from={int(T)}&to={int(T) + 7200}&key=team-b")
    assert only_b["bucket"] == "minute" and sum(p["requests"] for p in only_b["series"]) == 1
    _, by_model = call(gw, "GET", "/api/usage/history", f"from={int(T)}&to={int(T) + 7200}&model=claude-sonnet-4-5&bucket=day")
    assert by_model["series"][0]["attempts"] == 1


def test_history_rejects_bad_parameters(gw):
    for query, message in [("bucket=fortnight", "`bucket` must be one of"), ("from=yesterday", "ISO-8601"),
                           ("from=2026-03-15T14:00:00Z&to=2026-03-15T12:00:00Z", "must be before")]:
        status, body = call(gw, "GET", "/api/usage/history", query)
        assert status == 400 and message in body["error"]["message"]
        assert body["error"]["type"] == "invalid_request_error"


def test_logs_are_paged_newest_first(gw):
    q = f"from={int(T)}&to={int(T) + 7200}"
    _, page1 = call(gw, "GET", "/api/usage/logs", q + "&limit=2")
    assert [(i["request_id"], i["attempt"]) for i in page1["items"]] == [("d", 0), ("c", 0)]
    assert page1["hasMore"] is True and "payload" not in page1["items"][0]
    _, page2 = call(gw, "GET", "/api/usage/logs", q + "&limit=2&offset=2")
    assert [(i["request_id"], i["attempt"]) for i in page2["items"]] == [("b", 1), ("b", 0)]
    _, last = call(gw, "GET", "/api/usage/logs", q + "&limit=2&offset=4")
    assert last["hasMore"] is False and len(last["items"]) == 1
    status, body = call(gw, "GET", "/api/usage/logs", "limit=5000")
    assert status == 400 and "between 1 and 1000" in body["error"]["message"]


def test_request_logs_are_one_per_request_with_payloads(gw):
    _, body = call(gw, "GET", "/api/usage/request-logs", f"from={int(T)}&to={int(T) + 7200}")
    assert [i["request_id"] for i in body["items"]] == ["d", "c", "b", "a"]
    c = body["items"][1]
    assert c["payload"] == {"body": {"messages": [{"role": "user", "content": "hi"}]}, "headers": {"authorization": "***"}}
    assert body["items"][2]["attempt"] == 1  # the fallback that answered


def test_connection_usage(gw):
    status, body = call(gw, "GET", "/api/usage/anthropic", f"from={int(T)}&to={int(T) + 7200}")
    assert status == 200 and body["connectionId"] == "anthropic"
    assert body["totals"]["attempts"] == 1 and body["totals"]["errors"] == 1
    assert body["errors"] == [{"name": "rate_limit", "attempts": 1, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}]
    _, openai = call(gw, "GET", "/api/usage/openai", f"from={int(T)}&to={int(T) + 7200}")
    assert openai["totals"]["attempts"] == 4 and openai["models"][0]["name"] == "gpt-4.1"


def test_telemetry_percentiles_per_provider(gw):
    _, body = call(gw, "GET", "/api/telemetry/summary", "window=15m")
    assert body["window_seconds"] == 900
    assert body["providers"] == {"groq": {"p50": 50.5, "p95": 95.0, "p99": 99.0, "count": 100}}
    status, err = call(gw, "GET", "/api/telemetry/summary", "window=soon")
    assert status == 400 and "15m" in err["error"]["message"]


def test_audit_log(gw):
    _, body = call(gw, "GET", "/api/compliance/audit-log", "limit=5")
    assert body["items"][0]["action"] == "config.reload" and body["items"][0]["detail"] == {"ok": True}


def test_query_endpoint(gw):
    status, body = call(gw, "POST", "/api/usage/query", body={"sql": "SELECT key_name, count(*) AS n FROM requests "
                                                              "WHERE ts < ? GROUP BY 1 ORDER BY 1", "params": ["2026-03-16"]})
    assert status == 200
    assert body == {"columns": ["key_name", "n"], "rows": [["team-a", 3], ["team-b", 1]], "truncated": False}
    _, capped = call(gw, "POST", "/api/usage/query", body={"sql": "SELECT * FROM usage", "maxRows": 2})
    assert len(capped["rows"]) == 2 and capped["truncated"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"sql": "DELETE FROM usage"}, "refused a DELETE statement"),
        ({"sql": "SELECT 1; DROP VIEW usage"}, "refused a DROP statement"),
        ({"sql": "SELECT nope"}, "nope"),
        ({}, 'send {"sql"'),
        ({"sql": "SELECT 1", "params": "x"}, "`params` must be a list"),
        ({"sql": "SELECT 1", "maxRows": 0}, "`maxRows`"),
        (b"not json", "JSON object"),
        ([1, 2], "JSON object"),
    ],
)
def test_query_endpoint_refusals(gw, body, message):
    status, resp = call(gw, "POST", "/api/usage/query", body=body)
    assert status == 400 and message in resp["error"]["message"]


def test_pricing(gw):
    _, body = call(gw, "GET", "/api/pricing")
    assert body["models"]["openai/gpt-4.1"] == {"input": 2.0, "output": 8.0, "cached_input": 0.5}
    _, only = call(gw, "GET", "/api/pricing", "provider=anthropic")
    assert list(only["models"]) == ["anthropic/claude-sonnet-4-5"]


def test_budget_get_and_post(tmp_path):
    gw = make_gw(tmp_path)
    gw.usage.record(rec(ts=time.time(), key_name="team-b", cost_micro_usd=1_250_000))
    _, body = call(gw, "GET", "/api/usage/budget")
    assert [(b["keyId"], b["period"], b["limit"], b["source"]) for b in body["budgets"]] == [("team-a", "monthly", 50.0, "config")]

    status, body = call(gw, "POST", "/api/usage/budget", body={"keyId": "team-b", "limit": 10, "period": "daily"})
    assert status == 200
    b = body["budget"]
    assert (b["keyId"], b["period"], b["limit"], b["source"]) == ("team-b", "daily", 10.0, "api")
    assert b["spent"] == 1.25  # counted from the records (flushed first) as the key had no budget before
    assert b["resets_at"].endswith("T00:00:00Z")
    assert BudgetBook(tmp_path).overrides() == {"team-b": BudgetSpec("daily", 10_000_000)}  # persisted

    _, body = call(gw, "POST", "/api/usage/budget", body={"keyId": "team-a", "limit": 5.5, "period": "weekly", "warnAt": 0.5})
    assert body["budget"]["limit"] == 5.5 and body["budget"]["warn_at"] == 0.5
    _, listed = call(gw, "GET", "/api/usage/budget", "keyId=team-a")
    assert [(b["period"], b["source"]) for b in listed["budgets"]] == [("weekly", "api")]

    _, cleared = call(gw, "POST", "/api/usage/budget", body={"keyId": "team-a", "limit": None})
    assert cleared["budget"]["period"] == "monthly"  # back to the config's budget
    gw.usage.flush()
    _, audit = call(gw, "GET", "/api/compliance/audit-log")
    assert [(i["actor"], i["action"], i["target"]) for i in audit["items"]][:1] == [("admin@10.0.0.5", "budget.clear", "team-a")]
    assert {i["action"] for i in audit["items"]} == {"budget.set", "budget.clear"}
    gw.usage.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"keyId": "nobody", "limit": 1, "period": "daily"}, "`keyId` must name an API key (known keys: team-a, team-b)"),
        ({"keyId": "team-a", "limit": 1, "period": "hourly"}, "`period` must be one of daily, weekly, monthly"),
        ({"keyId": "team-a", "limit": -1, "period": "daily"}, "`limit` (USD) must be a finite number >= 0"),
        ({"keyId": "team-a", "limit": "lots", "period": "daily"}, "`limit` (USD) must be a number"),
        ({"keyId": "team-a", "limit": 1, "period": "daily", "warnAt": 2}, "warn_at"),
    ],
)
def test_budget_post_validation(tmp_path, body, message):
    gw = make_gw(tmp_path, usage=False)
    status, resp = call(gw, "POST", "/api/usage/budget", body=body)
    assert status == 400 and message in resp["error"]["message"]


def test_analytics_off_is_503_but_budgets_and_prices_still_answer(tmp_path):
    gw = make_gw(tmp_path, usage=False)
    status, body = call(gw, "GET", "/api/usage/history")
    assert status == 503 and "disabled" in body["error"]["message"]
    assert call(gw, "GET", "/api/usage/budget")[0] == 200
    assert call(gw, "GET", "/api/pricing")[0] == 200
