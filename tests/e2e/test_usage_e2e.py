"""Usage records, cost, SQL access, budgets and durability end to end (issue 5): the real server,
official SDKs, fake upstreams, and the data read back with SQL.

Each test names its requests with a model alias of its own (`model_requested` in the records), so
the tests of the shared gateway never count each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
import yaml

from engine.sqlcli import run_query
from tests.support import ROOT, Gateway, demo_providers
from tools.fake_upstream.launch import FakeUpstream

ALICE = "sk-alice-usage-0001"
TINY = "sk-tiny-budget-0001"
TINY_LIMIT = Decimal("0.001")  # USD: a handful of requests
NO_CACHE = {"x-omniroute-no-cache": "true"}  # usage of upstream calls is what is tested here
ALIASES = (
    "u-ok",
    "u-err",
    "u-stream",
    "u-stream-x",
    "u-cancel",
    "u-cost",
    "u-sql",
    "u-api",
    "u-burst",
    "u-term",
    "u-multi",
    "u-cut",
)


def _config(fake_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "providers": demo_providers(fake_url),
        "keys": [
            {"name": "alice", "key": ALICE},
            {"name": "tiny", "key": TINY, "budget": {"period": "monthly", "limit_usd": float(TINY_LIMIT)}},
        ],
        "aliases": {a: "openai/gpt-4.1" for a in ALIASES},
        "combos": {"u-fb": {"strategy": "priority", "targets": ["openai/fail-503", "openai/gpt-4.1"]}},
        "resilience": {
            "profiles": {"default": {"failure_threshold": 1000, "cooldown_base_s": 0, "cooldown_max_s": 1}}
        },
        **extra,
    }


@pytest.fixture(scope="module")
def gw(launch: Any, fake: FakeUpstream) -> Gateway:
    return launch(_config(fake.base_url))  # type: ignore[no-any-return]


def data_dir(gw: Gateway) -> Path:
    return gw.workdir / "data"


def oai(gw: Gateway, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0, default_headers=NO_CACHE)


def chat(gw: Gateway, model: str, content: str = "hi", key: str = ALICE, **kw: Any) -> Any:
    return oai(gw, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], **kw
    )


def sql(gw: Gateway, query: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    """Rows of a query through POST /api/usage/query, as dicts."""
    body: dict[str, Any] = {"sql": query}
    if params is not None:
        body["params"] = params
    r = httpx.post(f"{gw.base_url}/api/usage/query", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    return [dict(zip(out["columns"], row, strict=True)) for row in out["rows"]]


def rows_for(gw: Gateway, model: str, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The usage rows of one model alias, once there are `n` of them (records flush every ~0.5 s)."""
    t0 = time.monotonic()
    while True:
        rows = sql(gw, "SELECT * FROM usage WHERE model_requested = ? ORDER BY ts, attempt", [model])
        if len(rows) >= n or time.monotonic() - t0 > timeout:
            assert len(rows) == n, rows
            return rows
        time.sleep(0.1)


def count_offline(data: Path, where: str = "true") -> int:
    """Rows in the data directory, read with the server stopped (or dead)."""
    _, rows = run_query(data, f"SELECT count(*) FROM usage WHERE {where}")
    return int(rows[0][0])


def spec_price(provider: str, model: str) -> dict[str, Decimal]:
    spec = yaml.safe_load((ROOT / "specs" / "providers" / f"{provider}.yaml").read_text())
    return {k: Decimal(str(v)) for k, v in spec["models"][model]["price"].items()}


def usd(micro_times_million: Decimal) -> Decimal:
    return (micro_times_million / Decimal(10**6)).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


# ------------------------------------------------------------------ one row per attempt


def test_success_is_recorded(gw: Gateway) -> None:
    out = chat(gw, "u-ok", "[[words:7]]")
    (row,) = rows_for(gw, "u-ok", 1)
    assert (
        row["final"] is True and row["attempt"] == 0 and row["status"] == 200 and row["error_class"] is None
    )
    assert (
        row["key_name"] == "alice"
        and row["client_format"] == "openai-chat"
        and row["route"] == "/v1/chat/completions"
    )
    assert (
        row["provider"] == "openai"
        and row["provider_spec"] == "openai"
        and row["upstream_model"] == "gpt-4.1"
    )
    assert row["account"] == "openai" and row["modality"] == "chat" and row["stream"] is False
    assert (
        row["input_tokens"] == out.usage.prompt_tokens
        and row["output_tokens"] == out.usage.completion_tokens == 7
    )
    assert row["latency_ms"] > 0 and row["ttfb_ms"] > 0 and row["bytes_in"] > 0 and row["bytes_out"] > 0
    assert row["cost_usd"] is not None and row["combo"] is None


def test_upstream_error_is_recorded(gw: Gateway) -> None:
    with pytest.raises(openai.InternalServerError):
        chat(gw, "u-err", "[[error:500]]")
    (row,) = rows_for(gw, "u-err", 1)
    assert row["status"] == 500 and row["error_class"] == "server" and row["final"] is True
    assert row["output_tokens"] == 0 and row["cost_usd"] is None


def test_fallback_leaves_one_row_per_attempt(gw: Gateway) -> None:
    chat(gw, "u-fb")
    first, second = rows_for(gw, "u-fb", 2)
    assert first["request_id"] == second["request_id"]
    assert (first["attempt"], first["final"], first["status"], first["error_class"]) == (
        0,
        False,
        503,
        "server",
    )
    assert first["upstream_model"] == "fail-503"
    assert (second["attempt"], second["final"], second["status"], second["error_class"]) == (
        1,
        True,
        200,
        None,
    )
    assert second["upstream_model"] == "gpt-4.1" and first["combo"] == second["combo"] == "u-fb"
    (req,) = sql(gw, "SELECT attempt, status FROM requests WHERE model_requested = 'u-fb'")
    assert req == {"attempt": 1, "status": 200}


def test_openai_stream_is_recorded(gw: Gateway) -> None:
    chunks = list(chat(gw, "u-stream", "[[words:12]]", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split()[-1] == "word12"
    (row,) = rows_for(gw, "u-stream", 1)
    assert row["stream"] is True and row["status"] == 200 and row["error_class"] is None
    assert row["output_tokens"] == 12 and row["input_tokens"] > 0
    assert 0 < row["ttfb_ms"] <= row["latency_ms"] and row["bytes_out"] > 0


def test_translated_stream_is_recorded(gw: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gw.base_url, api_key=ALICE, max_retries=0, default_headers=NO_CACHE)
    with client.messages.stream(
        model="u-stream-x", max_tokens=100, messages=[{"role": "user", "content": "[[words:9]]"}]
    ) as s:
        text = "".join(s.text_stream)
    assert text.split()[-1] == "word9"
    (row,) = rows_for(gw, "u-stream-x", 1)
    assert (
        row["client_format"] == "anthropic-messages"
        and row["route"] == "/v1/messages"
        and row["stream"] is True
    )
    assert row["output_tokens"] == 9 and row["provider"] == "openai" and row["error_class"] is None


def test_mid_stream_failure_is_recorded(gw: Gateway) -> None:
    words = []
    with pytest.raises(openai.APIError):
        for c in chat(gw, "u-cut", "[[words:10]] [[cut:3]]", stream=True):
            if c.choices and c.choices[0].delta.content:
                words.append(c.choices[0].delta.content)
    assert len(words) == 3
    (row,) = rows_for(gw, "u-cut", 1)
    assert row["final"] is True and row["status"] == 502 and row["error_class"] == "network"
    assert 0 < row["output_tokens"] <= 10 and row["stream"] is True


def test_cancelled_stream_is_recorded_with_the_tokens_seen(gw: Gateway) -> None:
    body = {
        "model": "u-cancel",
        "stream": True,
        "messages": [{"role": "user", "content": "[[words:30]] [[slow:50]]"}],
    }
    seen = 0
    with httpx.stream(
        "POST",
        f"{gw.base_url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {ALICE}", **NO_CACHE},
        timeout=30,
    ) as r:
        for line in r.iter_lines():
            if '"content"' in line:
                seen += 1
            if seen >= 4:
                break  # the client goes away mid-stream
    (row,) = rows_for(gw, "u-cancel", 1, timeout=8)
    assert row["error_class"] == "cancelled" and row["final"] is True and row["stream"] is True
    assert 0 < row["output_tokens"] < 30
    assert (
        row["cost_usd"] is not None and Decimal(str(row["cost_usd"])) > 0
    )  # tokens seen so far are paid for


def test_cost_matches_the_spec_price(gw: Gateway) -> None:
    price = spec_price("openai", "gpt-4.1")  # USD per million tokens
    out = chat(gw, "u-cost", "price check [[words:33]] [[cached:6]]")
    u = out.usage
    cached = u.prompt_tokens_details.cached_tokens
    assert cached == 6 and u.completion_tokens == 33
    expected = usd(
        (u.prompt_tokens - cached) * price["input"]
        + cached * price["cached_input"]
        + u.completion_tokens * price["output"]
    )
    (row,) = rows_for(gw, "u-cost", 1)
    assert row["cached_tokens"] == 6 and row["input_tokens"] == u.prompt_tokens
    assert Decimal(str(row["cost_usd"])) == expected
    assert row["cost_micro_usd"] == int(expected * 10**6)
    # /api/pricing shows the same price
    listed = httpx.get(f"{gw.base_url}/api/pricing").json()["models"]["openai/gpt-4.1"]
    assert {k: Decimal(str(v)) for k, v in listed.items()} == price


# ------------------------------------------------------------------ SQL


def run_sql_cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "sql", "--data-dir", str(data), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sql_cli_reads_while_the_server_runs_and_refuses_writes(gw: Gateway) -> None:
    for _ in range(3):
        chat(gw, "u-sql")
    rows_for(gw, "u-sql", 3)
    out = run_sql_cli(
        data_dir(gw),
        "SELECT count(*) AS n, sum(output_tokens) > 0 AS tokens FROM requests "
        "WHERE model_requested = 'u-sql'",
        "--format",
        "json",
    )
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout) == [{"n": 3, "tokens": True}]
    for write in (
        "DELETE FROM usage",
        "DROP VIEW usage",
        "SELECT 1; DELETE FROM usage",
        "COPY (SELECT 1) TO '/tmp/omniroute-e2e-copy.csv'",
    ):
        bad = run_sql_cli(data_dir(gw), write)
        assert bad.returncode == 1, (write, bad.stdout, bad.stderr)
        assert "refused" in bad.stderr and bad.stdout == ""
    assert not Path("/tmp/omniroute-e2e-copy.csv").exists()
    # the API refuses too, and the server keeps serving
    r = httpx.post(f"{gw.base_url}/api/usage/query", json={"sql": "DELETE FROM usage"})
    assert r.status_code == 400 and "refused" in r.json()["error"]["message"]
    assert len(rows_for(gw, "u-sql", 3)) == 3


# ------------------------------------------------------------------ management endpoints


def test_usage_endpoints_answer_with_real_data(gw: Gateway) -> None:
    for _ in range(2):
        chat(gw, "u-api", "[[words:5]]")
    rows_for(gw, "u-api", 2)
    hist = httpx.get(f"{gw.base_url}/api/usage/history", params={"model": "u-api", "bucket": "hour"}).json()
    assert hist["bucket"] == "hour"
    assert (
        sum(s["requests"] for s in hist["series"]) == 2
        and sum(s["output_tokens"] for s in hist["series"]) == 10
    )
    logs = httpx.get(f"{gw.base_url}/api/usage/logs", params={"model": "u-api", "limit": 1}).json()
    assert len(logs["items"]) == 1 and logs["hasMore"] is True
    item = logs["items"][0]
    assert item["model_requested"] == "u-api" and item["key_name"] == "alice" and item["ts"].endswith("Z")
    tele = httpx.get(f"{gw.base_url}/api/telemetry/summary", params={"window": "1h"}).json()
    oa = tele["providers"]["openai"]
    assert tele["window_seconds"] == 3600 and oa["count"] >= 2 and 0 < oa["p50"] <= oa["p95"] <= oa["p99"]
    conn = httpx.get(f"{gw.base_url}/api/usage/openai").json()
    assert conn["totals"]["attempts"] >= 2 and any(m["name"] == "gpt-4.1" for m in conn["models"])
    prices = httpx.get(f"{gw.base_url}/api/pricing", params={"provider": "anthropic"}).json()["models"]
    assert prices and all(k.startswith("anthropic/") for k in prices)
    assert prices["anthropic/claude-sonnet-4-5"]["input"] == float(
        spec_price("anthropic", "claude-sonnet-4-5")["input"]
    )


# ------------------------------------------------------------------ several workers, kill -9


async def _many(gw: Gateway, n: int) -> list[int]:
    body = {"model": "u-multi", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}

    async def one() -> int:
        # a connection per request, so the kernel spreads them over both workers
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(
                f"{gw.base_url}/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {ALICE}", **NO_CACHE},
            )
            return r.status_code

    return await asyncio.gather(*(one() for _ in range(n)))


def test_two_workers_record_everything_and_kill_9_leaves_data_that_opens(
    launch: Any, fake: FakeUpstream
) -> None:
    g = launch(_config(fake.base_url), workers=2)
    # /health answered from one worker; the other may still be building its runtime
    deadline = time.monotonic() + 30
    while "Started worker-2" not in g.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    codes = asyncio.run(_many(g, 40))
    assert codes == [200] * 40
    rows = rows_for(g, "u-multi", 40, timeout=10)  # flushed
    assert len({r["request_id"] for r in rows}) == 40
    by_worker = sql(g, "SELECT worker, count(*) AS n FROM usage WHERE model_requested = 'u-multi' GROUP BY 1")
    assert sum(w["n"] for w in by_worker) == 40 and {w["worker"] for w in by_worker} == {"w0", "w1"}, (
        by_worker
    )
    assert not re.search(r"lock|Traceback|ERROR", g.log(), re.IGNORECASE), g.log()

    codes = asyncio.run(_many(g, 6))  # maybe still in memory when the processes die
    from tools.gateway_proc import process_tree

    assert g.proc is not None and len(process_tree(g.proc.pid)) == 3  # granian's supervisor and both workers
    os.killpg(g.proc.pid, signal.SIGKILL)  # kill -9, the whole group at once
    g.proc.wait(10)
    survived = count_offline(data_dir(g), "model_requested = 'u-multi'")  # opens cleanly, read-only
    assert 40 <= survived <= 46  # at most one flush interval is lost


# ------------------------------------------------------------------ budgets, SIGTERM, restart


async def _burst(gw: Gateway, n: int) -> list[httpx.Response]:
    body = {"model": "u-burst", "max_tokens": 20, "messages": [{"role": "user", "content": "[[words:20]]"}]}
    headers = {"authorization": f"Bearer {TINY}", **NO_CACHE}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as http:
        return await asyncio.gather(
            *(http.post(f"{gw.base_url}/v1/chat/completions", json=body, headers=headers) for _ in range(n))
        )


def _next_month_iso() -> str:
    now = datetime.now(UTC)
    start = now.replace(year=now.year + 1, month=1) if now.month == 12 else now.replace(month=now.month + 1)
    return start.strftime("%Y-%m-01T00:00:00Z")


def test_budget_holds_under_concurrency_survives_sigterm_and_restart_then_shutdown(gw: Gateway) -> None:
    """Last test of the shared gateway: it ends with POST /api/shutdown."""
    answers = asyncio.run(_burst(gw, 20))
    ok = [r for r in answers if r.status_code == 200]
    blocked = [r for r in answers if r.status_code == 429]
    assert len(ok) + len(blocked) == 20 and ok and blocked, [r.status_code for r in answers]
    err = blocked[0].json()["error"]
    assert "'tiny'" in err["message"] and "monthly budget of $0.001" in err["message"]
    assert f"resets at {_next_month_iso()}" in err["message"] and err["type"] == "rate_limit_error"
    until_reset = (
        datetime.fromisoformat(_next_month_iso().replace("Z", "+00:00")) - datetime.now(UTC)
    ).total_seconds()
    assert abs(int(blocked[0].headers["retry-after"]) - until_reset) < 120
    # spend what is left, one at a time, until the key is refused
    extra = 0
    for _ in range(10):
        r = httpx.post(
            f"{gw.base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {TINY}", **NO_CACHE},
            json={
                "model": "u-burst",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "[[words:20]]"}],
            },
        )
        extra += 1
        if r.status_code == 429:
            break
        assert r.status_code == 200
    else:
        pytest.fail("the budget never ran out")
    # the Anthropic route answers in its own shape
    with pytest.raises(anthropic.RateLimitError) as e:
        anthropic.Anthropic(
            base_url=gw.base_url, api_key=TINY, max_retries=0, default_headers=NO_CACHE
        ).messages.create(model="u-burst", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "budget" in e.value.body["error"]["message"] and e.value.response.headers["retry-after"]  # type: ignore[index]
    total = 20 + extra + 1

    status = httpx.get(f"{gw.base_url}/api/usage/budget", params={"keyId": "tiny"}).json()["budgets"][0]
    assert status["reserved_micro_usd"] == 0 and 0 < status["spent_micro_usd"] <= 1000
    spent = status["spent_micro_usd"]
    # alice's requests right before the stop: in memory, not yet flushed
    for _ in range(5):
        chat(gw, "u-term")

    assert gw.stop(signal.SIGTERM) == 0
    data = data_dir(gw)
    assert count_offline(data, "key_name = 'tiny'") == total  # SIGTERM lost nothing
    assert count_offline(data, "model_requested = 'u-term'") == 5
    _, rows = run_query(
        data,
        "SELECT sum(cost_micro_usd), count(*) FILTER (WHERE error_class = 'budget' AND status = 429 "
        "AND final) FROM usage WHERE key_name = 'tiny'",
    )
    assert rows[0][0] == spent <= TINY_LIMIT * 10**6  # never over the limit
    assert rows[0][1] == len(blocked) + 2

    gw.start()
    # spend is rebuilt from the records: the key stays blocked
    status = httpx.get(f"{gw.base_url}/api/usage/budget", params={"keyId": "tiny"}).json()["budgets"][0]
    assert status["spent_micro_usd"] == spent
    with pytest.raises(openai.RateLimitError) as e2:
        chat(gw, "u-burst", key=TINY, max_tokens=20)
    assert "budget" in str(e2.value)
    assert chat(gw, "u-ok", "after restart").choices[0].message.content  # other keys are unaffected

    # POST /api/shutdown: graceful, like SIGTERM; nothing in memory is lost
    for _ in range(3):
        chat(gw, "u-term")
    r = httpx.post(f"{gw.base_url}/api/shutdown")
    assert r.status_code == 202 and r.json() == {"status": "shutting down"}
    assert gw.proc is not None and gw.proc.wait(20) == 0
    assert count_offline(data, "model_requested = 'u-term'") == 8
    _, audit = run_query(data, "SELECT action FROM audit WHERE action = 'system.shutdown'")
    assert audit == [("system.shutdown",)]
