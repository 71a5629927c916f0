"""The routing and resilience management API against a stand-in gateway: a Runtime built from the
dataclasses, a Resilience on a fake clock, and seeded RoutingStats."""

from __future__ import annotations

import asyncio
import dataclasses
from types import MappingProxyType as MP
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from engine.admin import routing_api
from engine.errors import UpstreamError
from engine.http import Request, Router
from engine.pricing import Price
from engine.resilience import Resilience
from engine.routing import resolve
from engine.runtime import Combo, ComboTarget, Model, Runtime, ServerSettings
from engine.strategies import RoutingStats
from tests.unit.test_resilience import T0, Clock
from tests.unit.test_strategies import make_conn

RAW = {
    "providers": {
        "openai": {"accounts": [{"label": "team"}, {"label": "backup"}], "account_strategy": "round-robin", "rpm": 100},
        "anthropic": {"resilience_profile": "strict"},
    },
    "resilience": {"profiles": {"strict": {"failure_threshold": 1, "reset_s": 60}}},
}


def models(*ms: Model) -> MP[str, Model]:
    return MP({m.id: m for m in ms})


def make_runtime(fingerprint: str = "fp1") -> Runtime:
    openai = dataclasses.replace(
        make_conn("openai", ("team", "backup"), rate_limit_headers={"remaining_requests": "x-ratelimit-remaining-requests",
                                                                    "reset_requests": "x-ratelimit-reset-requests"}),
        models=models(Model("gpt-4.1", context=1_000_000, capabilities=frozenset({"tools", "vision"}), price=Price(input=2_000_000, output=8_000_000)),
                      Model("gpt-4.1-mini", context=1_000_000, capabilities=frozenset({"tools", "vision"})),
                      Model("o3", context=200_000, capabilities=frozenset({"tools", "reasoning"}))))
    anthropic = dataclasses.replace(make_conn("anthropic"), models=models(
        Model("claude-sonnet-4-5", context=200_000, capabilities=frozenset({"tools", "vision", "reasoning"}))))
    conns = {"openai": openai, "anthropic": anthropic}
    combos = {
        "coding": Combo("coding", "round-robin", (ComboTarget("anthropic/claude-sonnet-4-5"), ComboTarget("openai/gpt-4.1"), ComboTarget("fast")),
                        MP({"retries": 1, "fallback_on": ("5xx", "429")})),
        "think": Combo("think", "priority", (ComboTarget("openai/o3"), ComboTarget("anthropic/claude-sonnet-4-5"))),
    }
    index: dict[str, tuple[str, ...]] = {}
    for cid, c in conns.items():
        for mid in c.models:
            index[mid] = (*index.get(mid, ()), cid)
    return Runtime(generation=1, fingerprint=fingerprint, config_file="<test>", data_dir="/nonexistent", server=ServerSettings(),
                   settings=MP({}), formats=MP({}), providers=MP({}), connections=MP(conns), prefixes=MP({c: c for c in conns}),
                   aliases=MP({"fast": "openai/gpt-4.1-mini"}), combos=MP(combos), keys=MP({}), keys_by_hash=MP({}),
                   model_index=MP(index), prices=MP({}), raw_config=MP(RAW))


@pytest.fixture
def gw() -> SimpleNamespace:
    g = SimpleNamespace(runtime=make_runtime(), resilience=Resilience(clock=Clock()), routing_stats=RoutingStats(seed=1))
    g.resilience.configure(g.runtime)  # what the gateway does at start and after each reload
    return g


def call(gw: Any, method: str, path: str, query: str = "", body: Any = None) -> tuple[int, Any]:
    router = Router()
    routing_api.register(router, gw)
    handler, params, _ = router.match(method, path)
    assert handler is not None, f"no route {method} {path}"
    raw = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    req = Request({"type": "http", "method": method, "path": path, "headers": [], "query_string": query.encode(), "client": ("127.0.0.1", 1)}, receive)
    req.params = params
    resp = asyncio.run(handler(req))
    return resp.status, orjson.loads(resp.body)


def fail(gw: Any, conn_id: str, label: str, status: int, **kw: Any) -> None:
    from engine.attempts import classify

    conn = gw.runtime.connections[conn_id]
    e = UpstreamError("x", status=status, **kw)
    gw.resilience.failure(conn, next(a for a in conn.accounts if a.label == label), e, classify(e))


def test_get_resilience_shows_profiles_breakers_and_accounts_without_keys(gw: Any) -> None:
    fail(gw, "anthropic", "a", 500)
    status, data = call(gw, "GET", "/api/resilience")
    assert status == 200
    assert data["profiles"]["strict"]["failure_threshold"] == 1 and data["profiles"]["default"]["failure_threshold"] == 5
    assert data["connections"]["anthropic"]["breaker"]["state"] == "open"
    assert data["connections"]["openai"]["account_strategy"] == "round-robin"
    assert [a["account"] for a in data["accounts"]] == ["team", "backup", "a"]
    assert b"sk-secret" not in orjson.dumps(data)


def test_put_resilience_validates_and_overrides(gw: Any) -> None:
    status, data = call(gw, "PUT", "/api/resilience", body={"profiles": {"strict": {"reset_s": 5}}})
    assert status == 200
    assert data["profiles"]["strict"] == {**data["profiles"]["strict"], "failure_threshold": 1, "reset_s": 5}
    assert set(data["overrides"]) == {"strict"}
    status, data = call(gw, "PUT", "/api/resilience", body={"profiles": {"strict": {"reset": 5}}})
    assert status == 400 and data["error"]["message"].startswith("profiles.strict.reset: unknown key (valid keys: failure_threshold")
    status, data = call(gw, "PUT", "/api/resilience", body=b"{nope")
    assert status == 400 and data["error"]["message"] == "the body must be JSON"
    status, data = call(gw, "PUT", "/api/resilience", body={"profiles": {"x": {"failure_threshold": -1}}})
    assert status == 400 and "must be an integer >= 1" in data["error"]["message"]


def test_reset_closes_all_breakers(gw: Any) -> None:
    fail(gw, "anthropic", "a", 500)
    assert call(gw, "POST", "/api/resilience/reset") == (200, {"closed": 2})
    assert call(gw, "GET", "/api/resilience")[1]["connections"]["anthropic"]["breaker"]["state"] == "closed"


def test_rate_limits_per_account_with_learned_values(gw: Any) -> None:
    conn = gw.runtime.connections["openai"]
    gw.resilience.learn(conn, conn.accounts[0], {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"})
    gw.resilience.begin(conn, conn.accounts[1])
    status, data = call(gw, "GET", "/api/rate-limits", "provider=openai")
    assert status == 200
    team, backup = data["accounts"]
    assert team["learned"] == {"remaining_requests": 0.0, "reset_requests": 20.0}
    assert team["available"] is False and team["reason"] == "upstream request limit reached" and team["retry_at"] == T0 + 20
    assert backup["in_flight"] == 1 and backup["client_window"]["requests"] == 1
    assert call(gw, "GET", "/api/rate-limits")[1]["accounts"][-1]["connection"] == "anthropic"
    status, data = call(gw, "GET", "/api/rate-limits", "provider=nope")
    assert status == 400 and data["error"]["message"] == "unknown provider 'nope' (valid values: anthropic, openai)"


def test_rate_limit_shows_the_configured_limits(gw: Any) -> None:
    status, data = call(gw, "GET", "/api/rate-limit")
    assert status == 200 and data["window_s"] == 60
    assert data["connections"]["openai"] == {"account_strategy": "round-robin", "max_concurrent": None, "queue_timeout_s": 5.0,
                                             "rpm": 100, "tpm": None, "profile": "default"}
    assert data["connections"]["anthropic"]["profile"] == "strict"


def test_availability_says_why_and_post_clears_a_models_cooldown(gw: Any) -> None:
    fail(gw, "anthropic", "a", 429, retry_after=30)
    status, data = call(gw, "GET", "/api/models/availability")
    assert status == 200
    by_model = {m["model"]: m for m in data["models"]}
    claude = by_model["anthropic/claude-sonnet-4-5"]
    assert claude["available"] is False and claude["retry_at"] == T0 + 30
    assert claude["reason"] == "no account available (a: rate limited by the upstream (429))"
    assert by_model["openai/gpt-4.1"]["available"] is True
    combos = {c["combo"]: c for c in data["combos"]}
    assert combos["coding"]["available"] is True
    assert [t["target"] for t in combos["coding"]["unavailable_targets"]] == ["anthropic/claude-sonnet-4-5"]
    status, data = call(gw, "POST", "/api/models/availability", body={"model": "anthropic/claude-sonnet-4-5"})
    assert (status, data) == (200, {"cleared_accounts": 1, "connections": ["anthropic"]})
    assert call(gw, "GET", "/api/models/availability")[1]["models"][-1]["available"] is True
    assert call(gw, "POST", "/api/models/availability", body={"model": "coding"})[1]["connections"] == ["anthropic", "openai"]
    assert call(gw, "POST", "/api/models/availability", body={"provider": "openai"})[1]["connections"] == ["openai"]


@pytest.mark.parametrize(("body", "message"), [
    ({}, 'send {"model": "<provider/model, alias or combo>"} or {"provider": "<connection id>"}'),
    ({"provider": "nope"}, "unknown provider 'nope' (valid values: anthropic, openai)"),
    ({"model": "nope/x"}, "unknown model 'nope/x': no provider 'nope' (configured providers: anthropic, openai)"),
])
def test_availability_post_errors_name_what_to_fix(gw: Any, body: Any, message: str) -> None:
    status, data = call(gw, "POST", "/api/models/availability", body=body)
    assert status == 400 and data["error"]["message"] == message


def test_combos_with_per_target_stats(gw: Any) -> None:
    gw.routing_stats.started("openai/gpt-4.1")
    gw.routing_stats.observe("openai/gpt-4.1", True, 120.0)
    gw.routing_stats.ended("openai/gpt-4.1")
    status, data = call(gw, "GET", "/api/combos")
    assert status == 200
    coding = next(c for c in data["combos"] if c["name"] == "coding")
    assert coding["strategy"] == "round-robin" and coding["settings"] == {"retries": 1, "fallback_on": ["5xx", "429"]}
    assert coding["targets"][1] == {"ref": "openai/gpt-4.1", "weight": 1.0,
                                    "stats": {"openai/gpt-4.1": {"requests": 1, "failures": 0, "in_flight": 0, "latency_ms": 120.0}}}
    assert list(coding["targets"][2]["stats"]) == ["openai/gpt-4.1-mini"]  # an alias shows the model it names


def test_explain_shows_the_next_order_without_consuming_it(gw: Any) -> None:
    status, data = call(gw, "GET", "/api/route/explain", "model=coding")
    assert status == 200
    assert (data["combo"], data["strategy"], data["chain"]) == ("coding", "round-robin", ["coding", "fast"])
    assert [a["key"] for a in data["attempts"]] == ["anthropic/claude-sonnet-4-5", "openai/gpt-4.1", "openai/gpt-4.1-mini"]
    again = call(gw, "GET", "/api/route/explain", "model=coding")[1]
    assert [a["key"] for a in again["attempts"]] == [a["key"] for a in data["attempts"]]
    # a real request moves the round-robin cursor on; explain then shows the next order
    resolve(gw.runtime, "coding", {"stats": gw.routing_stats})
    moved = call(gw, "GET", "/api/route/explain", "model=coding")[1]
    assert moved["attempts"][0]["key"] == "openai/gpt-4.1"
    assert data["attempts"][1]["price"] == {"input": 2.0, "output": 8.0}
    assert b"sk-secret" not in orjson.dumps(data)


def test_explain_names_skips_for_needs_size_breakers_and_cooldowns(gw: Any) -> None:
    fail(gw, "anthropic", "a", 500)  # 'strict' profile: one failure opens the breaker
    status, data = call(gw, "GET", "/api/route/explain", "model=think&needs=vision&input_tokens=1000&max_tokens=500")
    assert status == 200
    assert [(a["key"], a["skipped"]) for a in data["attempts"]] == [
        ("openai/o3", "model lacks vision"), ("anthropic/claude-sonnet-4-5", "circuit breaker of anthropic is open")]
    data = call(gw, "GET", "/api/route/explain", "model=openai/o3&input_tokens=199000&max_tokens=2000")[1]
    assert data["combo"] is None and "context window of 200000 tokens" in data["attempts"][0]["skipped"]


@pytest.mark.parametrize(("query", "message"), [
    ("", "give the model to explain: /api/route/explain?model=<name>"),
    ("model=coding&needs=telepathy", "unknown need 'telepathy' (valid values: tools, vision, reasoning)"),
    ("model=coding&max_tokens=lots", "max_tokens must be a whole number of tokens, got 'lots'"),
    ("model=coding&input_tokens=-1", "input_tokens must be >= 0, got -1"),
    ("model=gpt-9", "unknown model 'gpt-9' (use provider/model, an alias or a combo; GET /v1/models lists them)"),
])
def test_explain_errors_name_what_to_fix(gw: Any, query: str, message: str) -> None:
    status, data = call(gw, "GET", "/api/route/explain", query)
    assert status == 400 and data["error"]["message"] == message


def test_a_reload_is_adopted_before_answering(gw: Any) -> None:
    call(gw, "GET", "/api/rate-limit")
    raw = {**RAW, "providers": {**RAW["providers"], "openai": {"account_strategy": "least-used"}}}
    gw.runtime = dataclasses.replace(make_runtime("fp2"), raw_config=MP(raw))
    assert call(gw, "GET", "/api/rate-limit")[1]["connections"]["openai"]["account_strategy"] == "least-used"
