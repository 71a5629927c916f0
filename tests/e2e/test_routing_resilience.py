"""Routing and resilience end to end (issue 4): the real server, official SDKs, fake upstreams.

One gateway serves the whole module. Tests that change long-lived state (cooldowns, disabled
accounts, breakers) each use a connection of their own, so they do not disturb one another: state
is keyed by connection id. The default resilience profile is made lenient (a high breaker
threshold, no backoff) so the failures provoked on the shared `openai` connection never block the
other tests; the `tight` profile of the `brk` connection is the one whose breaker is exercised.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.support import ROOT, Gateway, demo_providers, free_port
from tools.fake_upstream.launch import FakeUpstream

FAIL_CODES = (408, 500, 502, 503, 504)
CLIENT_CODES = (400, 404, 422)
BACKUP = "anthropic/claude-haiku-4-5"
# Routing is what is tested here: the response cache must not answer instead of the targets.
NO_CACHE = {"x-omniroute-no-cache": "true"}


def _config(fake_url: str) -> dict[str, Any]:
    providers = demo_providers(fake_url)
    oa = f"{fake_url}/openai/v1"
    providers["openai"]["models"] = {
        **{f"fail-{c}": {} for c in (*FAIL_CODES, *CLIENT_CODES)},
        "notools-1": {"capabilities": ["json"], "context": 128000},
        "ctx-small": {"context": 4000, "capabilities": ["tools"]},
        "ctx-mid": {"context": 16000, "capabilities": ["tools"]},
        "ctx-big": {"context": 1000000, "capabilities": ["tools"]},
        "slow-600": {},
        # cheap input and dear output versus the reverse: which is cheaper depends on max_tokens
        "io-a": {"price": {"input": 1, "output": 10}},
        "io-b": {"price": {"input": 5, "output": 1}},
    }
    providers.update(
        {
            "oa429": {"spec": "openai", "base_url": oa, "api_key": "sk-oa429", "models": {"fail-429": {}}},
            "oaslow": {
                "spec": "openai",
                "base_url": oa,
                "api_key": "sk-slow",
                "timeouts": {"first_byte": 0.5},
                "models": {"slow-3000": {}},
            },
            "down": {
                "spec": "openai",
                "base_url": f"http://127.0.0.1:{free_port()}/v1",
                "api_key": "sk-down",
            },
            "pool": {
                "spec": "openai",
                "base_url": oa,
                "accounts": [{"api_key": "quota-1"}, {"api_key": "sk-good"}],
            },
            "authpool": {
                "spec": "openai",
                "base_url": oa,
                "accounts": [{"api_key": "bad-1"}, {"api_key": "sk-good-2"}],
            },
            "retry": {"spec": "openai", "base_url": oa, "api_key": "sk-retry", "models": {"retry-model": {}}},
            "brk": {
                "spec": "openai",
                "base_url": oa,
                "api_key": "sk-brk",
                "resilience_profile": "tight",
                "models": {"brk-model": {}},
            },
        }
    )
    combos: dict[str, Any] = {
        "prio": {"strategy": "priority", "targets": ["openai/gpt-4.1-mini", "openai/gpt-4.1"]},
        "rr": {"strategy": "round-robin", "targets": ["openai/gpt-4.1", BACKUP]},
        "wt": {
            "strategy": "weighted",
            "targets": [
                {"model": "openai/gpt-4.1", "weight": 9},
                {"model": BACKUP, "weight": 1},
                {"model": "openai/gpt-4.1-mini", "weight": 0},
            ],
        },
        "rnd": {"strategy": "random", "targets": ["openai/gpt-4.1", BACKUP]},
        "deck": {"strategy": "strict-random", "targets": ["openai/gpt-4.1", BACKUP, "openai/gpt-4.1-mini"]},
        "lu": {"strategy": "least-used", "targets": ["openai/gpt-4.1", BACKUP]},
        "lat": {"strategy": "latency-optimized", "targets": ["openai/slow-600", "openai/gpt-4.1-nano"]},
        # gpt-4.1 2/8, gpt-4.1-nano 0.10/0.40, claude-sonnet-4-5 3/15 USD per million; fail-500 has no price
        "cheap": {
            "strategy": "cost-optimized",
            "targets": [
                "openai/fail-500",
                "openai/gpt-4.1",
                "openai/gpt-4.1-nano",
                "anthropic/claude-sonnet-4-5",
            ],
        },
        "cost-io": {"strategy": "cost-optimized", "targets": ["openai/io-b", "openai/io-a"]},
        "ctx": {
            "strategy": "context-optimized",
            "targets": ["openai/ctx-big", "openai/ctx-small", "openai/ctx-mid"],
        },
        "cap": {"strategy": "priority", "targets": ["openai/notools-1", "openai/gpt-4.1"]},
        "fb-429": {"targets": ["oa429/fail-429", BACKUP]},
        "fb-timeout": {"targets": ["oaslow/slow-3000", BACKUP]},
        "fb-network": {"targets": ["down/gpt-4.1", BACKUP]},
        "retry1": {"targets": ["retry/retry-model"], "retries": 1, "retry_backoff_ms": 50},
        "retry0": {"targets": ["retry/retry-model"]},
        "midstream": {"targets": ["openai/gpt-4.1", BACKUP]},
        "live": {"targets": ["openai/gpt-4.1"]},
        **{f"fb-{c}": {"targets": [f"openai/fail-{c}", BACKUP]} for c in (*FAIL_CODES, *CLIENT_CODES)},
    }
    return {
        "providers": providers,
        "combos": combos,
        "resilience": {
            "profiles": {
                "default": {"failure_threshold": 1000, "cooldown_base_s": 0, "cooldown_max_s": 1},
                # a long reset_s while the open state is checked; the test shortens it through PUT /api/resilience
                "tight": {
                    "failure_threshold": 2,
                    "window_s": 60,
                    "reset_s": 30,
                    "cooldown_base_s": 0,
                    "cooldown_max_s": 1,
                },
            }
        },
    }


@pytest.fixture(scope="module")
def gw(launch: Any, fake: FakeUpstream) -> Gateway:
    return launch(_config(fake.base_url))  # type: ignore[no-any-return]


def oai(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.base_url}/v1", api_key="anything", max_retries=0, default_headers=NO_CACHE
    )


def claude(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.base_url, api_key="anything", max_retries=0, default_headers=NO_CACHE
    )


def ask(gw: Gateway, model: str, content: str = "hi", **kw: Any) -> Any:
    """A non-stream chat through the OpenAI SDK; the raw response (headers) with `.parse()`."""
    return oai(gw).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **kw
    )


def served(gw: Gateway, model: str, n: int, http: httpx.Client) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        r = http.post(
            f"{gw.base_url}/v1/chat/completions",
            headers=NO_CACHE,
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        )
        assert r.status_code == 200, r.text
        counts[r.headers["x-omniroute-model"]] += 1
    return counts


def received(fake: FakeUpstream, marker: str) -> list[dict[str, Any]]:
    return [r for r in fake.stats()["requests"] if marker in str(r.get("body"))]


def admin(gw: Gateway, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{gw.base_url}{path}", timeout=10, headers=NO_CACHE, **kw)


def account(gw: Gateway, label: str) -> dict[str, Any]:
    accounts = admin(gw, "GET", "/api/rate-limits").json()["accounts"]
    return next(a for a in accounts if a["account"] == label)


def wait_for(pred: Any, timeout: float = 5.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def reload(gw: Gateway, edit: Any) -> None:
    gen = gw.health()["generation"]
    cfg = yaml.safe_load(gw.config_path.read_text())
    edit(cfg)
    gw.write_config(cfg)
    wait_for(lambda: gw.health()["generation"] == gen + 1)


# ------------------------------------------------------------------ strategies


def test_priority_always_serves_the_first_target(gw: Gateway) -> None:
    with httpx.Client() as http:
        assert served(gw, "prio", 4, http) == {"openai/gpt-4.1-mini": 4}


def test_round_robin_alternates(gw: Gateway) -> None:
    seq = [ask(gw, "rr").headers["x-omniroute-model"] for _ in range(6)]
    assert set(seq) == {"openai/gpt-4.1", BACKUP}
    assert all(a != b for a, b in itertools.pairwise(seq)), seq


def test_weighted_follows_the_weights(gw: Gateway) -> None:
    with httpx.Client() as http:
        counts = served(gw, "wt", 60, http)
    # weight 9 vs 1: expected 54 vs 6 (sd ~2.3); weight 0 is only ever a fallback
    assert counts["openai/gpt-4.1"] >= 44 and counts[BACKUP] >= 1, counts
    assert counts["openai/gpt-4.1-mini"] == 0, counts


def test_random_serves_both_targets(gw: Gateway) -> None:
    with httpx.Client() as http:
        counts = served(gw, "rnd", 60, http)
    # p = 0.5 each: expected 30 (sd ~3.9); 15..45 fails about once in 10,000 runs
    assert 15 <= counts["openai/gpt-4.1"] <= 45 and counts["openai/gpt-4.1"] + counts[BACKUP] == 60, counts


def test_strict_random_deals_each_target_first_once_per_cycle(gw: Gateway) -> None:
    seq = [ask(gw, "deck").headers["x-omniroute-model"] for _ in range(9)]
    for cycle in (seq[0:3], seq[3:6], seq[6:9]):
        assert sorted(cycle) == sorted([BACKUP, "openai/gpt-4.1", "openai/gpt-4.1-mini"]), seq


def test_least_used_avoids_the_target_busy_with_a_stream(gw: Gateway) -> None:
    assert ask(gw, "lu").headers["x-omniroute-model"] == "openai/gpt-4.1"  # a tie keeps the written order
    stream = oai(gw).chat.completions.create(
        model="lu", messages=[{"role": "user", "content": "[[words:5]] [[slow:400]]"}], stream=True
    )
    chunks = iter(stream)
    next(chunks)  # the stream holds gpt-4.1 in flight
    assert ask(gw, "lu").headers["x-omniroute-model"] == BACKUP
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason == "stop"
    assert ask(gw, "lu").headers["x-omniroute-model"] == "openai/gpt-4.1"


def test_latency_optimized_measures_once_then_prefers_the_fast_target(gw: Gateway) -> None:
    seq = [ask(gw, "lat").headers["x-omniroute-model"] for _ in range(4)]
    # an unmeasured target goes first once; slow-600 then sinks below the fast one
    assert seq[0] == "openai/slow-600" and seq[1:] == ["openai/gpt-4.1-nano"] * 3, seq
    stats = next(c for c in admin(gw, "GET", "/api/combos").json()["combos"] if c["name"] == "lat")["targets"]
    assert stats[0]["stats"]["openai/slow-600"]["latency_ms"] >= 600
    assert stats[1]["stats"]["openai/gpt-4.1-nano"]["latency_ms"] < 600


def test_cost_optimized_picks_the_cheapest_priced_target(gw: Gateway) -> None:
    r = ask(gw, "cheap", max_tokens=20)
    assert r.headers["x-omniroute-model"] == "openai/gpt-4.1-nano"
    assert r.headers["x-omniroute-attempts"] == "1"
    plan = admin(gw, "GET", "/api/route/explain", params={"model": "cheap", "max_tokens": 20}).json()
    order = [a["key"] for a in plan["attempts"]]
    # by price for this size; the unpriced target comes last
    assert order == [
        "openai/gpt-4.1-nano",
        "openai/gpt-4.1",
        "anthropic/claude-sonnet-4-5",
        "openai/fail-500",
    ]


def test_cost_optimized_prices_the_requests_own_max_tokens(gw: Gateway) -> None:
    # ~30 input tokens: with max_tokens 1, io-a costs 30*1 + 1*10 = 40 and io-b 30*5 + 1*1 = 151 (x1e-6 USD)
    plan = admin(
        gw, "GET", "/api/route/explain", params={"model": "cost-io", "max_tokens": 1, "input_tokens": 30}
    ).json()
    assert [a["key"] for a in plan["attempts"]] == ["openai/io-a", "openai/io-b"]
    words = "word " * 24  # ~30 input tokens at 4 characters a token
    assert ask(gw, "cost-io", words, max_tokens=1).headers["x-omniroute-model"] == "openai/io-a"
    # with room for 1000 output tokens io-b is the cheap one
    assert ask(gw, "cost-io", words, max_tokens=1000).headers["x-omniroute-model"] == "openai/io-b"


def test_context_optimized_picks_the_smallest_window_that_fits(gw: Gateway, fake: FakeUpstream) -> None:
    assert ask(gw, "ctx", max_tokens=50).headers["x-omniroute-model"] == "openai/ctx-small"
    # 6000 output tokens do not fit 4000: the 16000 window is next
    assert ask(gw, "ctx", max_tokens=6000).headers["x-omniroute-model"] == "openai/ctx-mid"
    # ~7500 input tokens (30,000 characters) do not fit 4000 either
    marker = uuid.uuid4().hex
    big = f"{marker} " + "word " * 6000
    r = ask(gw, "ctx", big, max_tokens=10)
    assert r.headers["x-omniroute-model"] == "openai/ctx-mid"
    assert [x["body"]["model"] for x in received(fake, marker)] == ["ctx-mid"]  # ctx-small was never called


def test_capability_filter_skips_a_target_without_tools(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    r = ask(gw, "cap", f"{marker} [[tool]]", tools=tools)
    assert r.headers["x-omniroute-model"] == "openai/gpt-4.1"
    assert r.headers["x-omniroute-attempts"] == "1"  # filtered before any attempt, not a failure
    assert r.parse().choices[0].message.tool_calls[0].function.name == "get_weather"
    assert [x["body"]["model"] for x in received(fake, marker)] == ["gpt-4.1"]
    # without tools the first target serves
    assert ask(gw, "cap").headers["x-omniroute-model"] == "openai/notools-1"
    plan = admin(gw, "GET", "/api/route/explain", params={"model": "cap", "needs": "tools"}).json()
    first, second = plan["attempts"]
    assert first["key"] == "openai/notools-1" and first["skipped"] == "model lacks tools"
    assert second["key"] == "openai/gpt-4.1" and second["skipped"] is None
    assert (
        admin(gw, "GET", "/api/route/explain", params={"model": "cap"}).json()["attempts"][0]["skipped"]
        is None
    )


def test_cli_explain_shows_the_skip_reason(gw: Gateway) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "explain", "-c", str(gw.config_path), "cap", "--needs", "tools"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "cap: combo cap (priority)"
    first = next(ln for ln in lines if "1. openai/notools-1" in ln)
    second = next(ln for ln in lines if "2. openai/gpt-4.1" in ln)
    assert first.endswith("SKIPPED: model lacks tools") and "SKIPPED" not in second


# ------------------------------------------------------------------ fallback by failure class


@pytest.mark.parametrize("code", FAIL_CODES)
def test_fallback_on_upstream_failure(gw: Gateway, fake: FakeUpstream, code: int) -> None:
    marker = uuid.uuid4().hex
    r = ask(gw, f"fb-{code}", marker)
    assert r.status_code == 200
    assert marker in r.parse().choices[0].message.content
    assert r.headers["x-omniroute-model"] == BACKUP
    assert r.headers["x-omniroute-provider"] == "anthropic"
    assert r.headers["x-omniroute-attempts"] == "2"
    assert r.headers["x-omniroute-fallbacks"] == "1"
    assert [x["route"] for x in received(fake, marker)] == ["openai.chat", "anthropic.messages"]


def test_fallback_on_429_and_the_account_cools_for_retry_after(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    r = ask(gw, "fb-429", marker)  # fail-429 answers with Retry-After: 1
    assert r.headers["x-omniroute-model"] == BACKUP and r.headers["x-omniroute-attempts"] == "2"
    wait_for(lambda: account(gw, "oa429")["available"], 3)  # back after the upstream's 1 s
    # a longer Retry-After: the account cools that long, and the combo skips it meanwhile
    fake.script(
        {
            "status": 429,
            "headers": {"retry-after": "30"},
            "body": {
                "error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
            },
        },
        model="fail-429",
    )
    r = ask(gw, "fb-429", marker)
    assert r.headers["x-omniroute-model"] == BACKUP and r.headers["x-omniroute-attempts"] == "2"
    view = account(gw, "oa429")
    assert view["available"] is False and "429" in view["reason"]
    assert 25 < view["retry_at"] - time.time() <= 30
    r = ask(gw, "fb-429", marker)
    assert r.headers["x-omniroute-model"] == BACKUP and r.headers["x-omniroute-attempts"] == "1"
    assert [x["route"] for x in received(fake, marker)] == [
        "openai.chat",
        "anthropic.messages",
        "openai.chat",
        "anthropic.messages",
        "anthropic.messages",
    ]


def test_error_directive_fails_every_target_after_falling_back(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    with pytest.raises(openai.APIStatusError) as e:  # both targets read the directive
        ask(gw, "midstream", f"{marker} [[error:502]]")
    assert e.value.status_code == 502
    assert e.value.response.headers["x-omniroute-attempts"] == "2"
    assert e.value.response.headers["x-omniroute-model"] == BACKUP
    assert [x["route"] for x in received(fake, marker)] == ["openai.chat", "anthropic.messages"]


def test_fallback_on_timeout(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    t0 = time.monotonic()
    r = ask(gw, "fb-timeout", marker)
    took = time.monotonic() - t0
    assert r.headers["x-omniroute-model"] == BACKUP and r.headers["x-omniroute-attempts"] == "2"
    assert 0.4 < took < 3.0, took  # first_byte 0.5 s, not the fake's 3 s
    assert [x["route"] for x in received(fake, marker)] == ["openai.chat", "anthropic.messages"]


def test_fallback_on_network_error(gw: Gateway) -> None:
    r = ask(gw, "fb-network")
    assert r.headers["x-omniroute-model"] == BACKUP and r.headers["x-omniroute-attempts"] == "2"


@pytest.mark.parametrize("code", CLIENT_CODES)
def test_no_fallback_on_client_error(gw: Gateway, fake: FakeUpstream, code: int) -> None:
    marker = uuid.uuid4().hex
    with pytest.raises(openai.APIStatusError) as e:
        ask(gw, f"fb-{code}", marker)
    assert e.value.status_code == code
    assert e.value.response.headers["x-omniroute-model"] == f"openai/fail-{code}"
    assert e.value.response.headers["x-omniroute-attempts"] == "1"
    body = e.value.response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    assert [x["route"] for x in received(fake, marker)] == ["openai.chat"]  # the backup was never called


# ------------------------------------------------------------------ retries


def test_retry_on_the_same_target_honours_retry_after(gw: Gateway, fake: FakeUpstream) -> None:
    fake.script({"status": 503, "headers": {"retry-after": "1"}}, model="retry-model")
    t0 = time.monotonic()
    r = ask(gw, "retry1")
    took = time.monotonic() - t0
    assert r.status_code == 200
    assert r.headers["x-omniroute-model"] == "retry/retry-model" and r.headers["x-omniroute-attempts"] == "2"
    assert 0.9 <= took < 3.0, took  # waited the upstream's Retry-After (1 s), not the 50 ms backoff


def test_without_retries_the_failure_is_returned(gw: Gateway, fake: FakeUpstream) -> None:
    fake.script({"status": 503, "headers": {"retry-after": "1"}}, model="retry-model")
    with pytest.raises(openai.InternalServerError) as e:
        ask(gw, "retry0")
    assert e.value.status_code == 503 and e.value.response.headers["x-omniroute-attempts"] == "1"
    assert ask(gw, "retry0").status_code == 200


# ------------------------------------------------------------------ accounts


def test_quota_account_fails_over_to_the_next_account(gw: Gateway) -> None:
    r = ask(gw, "pool/gpt-4.1")
    assert r.status_code == 200 and r.headers["x-omniroute-attempts"] == "2"
    q = account(gw, "pool#1")
    assert q["available"] is False and q["reason"] == "quota exhausted" and q["failures"] == 1
    # the fake's quota answer says Retry-After: 1, which wins over quota_cooldown_s (3600 s)
    assert q["cooling_until"] is not None and q["cooling_until"] - time.time() <= 1.5
    good = account(gw, "pool#2")
    assert good["available"] is True and good["requests"] == 1
    assert good["learned"], good  # from the fake's x-ratelimit-* headers
    wait_for(lambda: account(gw, "pool#1")["available"], 3)
    r = ask(gw, "pool/gpt-4.1")  # fill-first: #1 is tried again, still out of quota, #2 serves
    assert r.status_code == 200 and r.headers["x-omniroute-attempts"] == "2"
    assert account(gw, "pool#1")["requests"] == 2 and account(gw, "pool#2")["requests"] == 2


def test_bad_key_account_stays_disabled_until_the_config_changes(gw: Gateway) -> None:
    r = ask(gw, "authpool/gpt-4.1")
    assert r.status_code == 200 and r.headers["x-omniroute-attempts"] == "2"
    bad = account(gw, "authpool#1")
    assert bad["available"] is False and bad["disabled"] is True and bad["retry_at"] is None
    assert "credentials" in bad["reason"]
    time.sleep(1.1)  # not a cooldown: time does not bring it back
    for _ in range(3):
        assert ask(gw, "authpool/gpt-4.1").headers["x-omniroute-attempts"] == "1"
    assert account(gw, "authpool#1")["requests"] == 1 and account(gw, "authpool#2")["requests"] == 4

    def fix(cfg: dict[str, Any]) -> None:
        cfg["providers"]["authpool"]["accounts"][0]["api_key"] = "sk-fixed-1"

    reload(gw, fix)
    assert account(gw, "authpool#1")["available"] is True
    r = ask(gw, "authpool/gpt-4.1")
    assert r.headers["x-omniroute-attempts"] == "1"
    assert account(gw, "authpool#1")["requests"] == 2  # fill-first: the fixed account serves again


# ------------------------------------------------------------------ circuit breaker


def _breaker(gw: Gateway) -> dict[str, Any]:
    return admin(gw, "GET", "/api/resilience").json()["connections"]["brk"]["breaker"]  # type: ignore[no-any-return]


def test_circuit_breaker_opens_half_opens_and_closes(gw: Gateway, fake: FakeUpstream) -> None:
    snap = admin(gw, "GET", "/api/resilience").json()
    assert snap["profiles"]["tight"]["failure_threshold"] == 2 and snap["profiles"]["tight"]["reset_s"] == 30
    assert _breaker(gw)["state"] == "closed"
    trips = _breaker(gw)["trips"]
    fake.script(500, 500, model="brk-model")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as e:
            ask(gw, "brk/brk-model")
        assert e.value.status_code == 500
    assert _breaker(gw)["state"] == "open"

    # open: refused without calling upstream, 503 + Retry-After (the reset time) in each client's format
    before = fake.stats()["counts"].get("openai.chat", 0)
    with pytest.raises(openai.InternalServerError) as e:
        ask(gw, "brk/brk-model")
    assert e.value.status_code == 503
    assert "circuit breaker of brk is open" in e.value.response.json()["error"]["message"]
    assert 20 <= int(e.value.response.headers["retry-after"]) <= 30
    with pytest.raises(anthropic.APIStatusError) as ae:
        claude(gw).messages.create(
            model="brk/brk-model", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
    assert ae.value.status_code == 503 and ae.value.response.headers["retry-after"]
    body = ae.value.response.json()
    assert body["type"] == "error" and "circuit breaker of brk is open" in body["error"]["message"]
    gem = admin(
        gw,
        "POST",
        "/v1beta/models/brk/brk-model:generateContent",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert (
        gem.status_code == 503
        and gem.json()["error"]["status"] == "UNAVAILABLE"
        and gem.headers["retry-after"]
    )
    oll = admin(
        gw,
        "POST",
        "/api/chat",
        json={"model": "brk/brk-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert oll.status_code == 503 and "circuit breaker of brk is open" in oll.json()["error"]
    assert fake.stats()["counts"].get("openai.chat", 0) == before

    avail = admin(gw, "GET", "/api/models/availability").json()
    entry = next(m for m in avail["models"] if m["model"] == "brk/brk-model")
    assert (
        entry["available"] is False
        and "circuit breaker" in entry["reason"]
        and entry["retry_at"] > time.time() + 10
    )

    # a run-time override shortens reset_s: the breaker turns half-open within 2 s and admits
    # one probe, which fails, so it opens again
    put = admin(gw, "PUT", "/api/resilience", json={"profiles": {"tight": {"reset_s": 2}}})
    assert put.status_code == 200 and put.json()["overrides"]["tight"]["reset_s"] == 2
    try:
        wait_for(lambda: _breaker(gw)["state"] == "half-open", 6)
        fake.script(500, model="brk-model")
        with pytest.raises(openai.InternalServerError) as e:
            ask(gw, "brk/brk-model")
        assert e.value.status_code == 500
        assert _breaker(gw)["state"] == "open"

        # half-open again after 2 s: a slow successful probe; a second request meanwhile is refused
        wait_for(lambda: _breaker(gw)["state"] == "half-open", 6)
        fake.script({"status": 200, "delay_ms": 1500}, model="brk-model")
        result: dict[str, Any] = {}
        calls = fake.stats()["counts"].get("openai.chat", 0)
        probe = threading.Thread(target=lambda: result.update(r=ask(gw, "brk/brk-model")))
        probe.start()
        wait_for(lambda: fake.stats()["counts"].get("openai.chat", 0) > calls)  # the probe reached upstream
        with pytest.raises(openai.InternalServerError) as e:
            ask(gw, "brk/brk-model")
        assert e.value.status_code == 503
        probe.join(10)
        assert result["r"].status_code == 200
        assert _breaker(gw)["state"] == "closed"
        assert ask(gw, "brk/brk-model").status_code == 200
        assert _breaker(gw)["trips"] == trips + 2
    finally:
        admin(gw, "PUT", "/api/resilience", json={"profiles": {}})


def test_reset_and_availability_clear_reopen_a_blocked_provider(gw: Gateway, fake: FakeUpstream) -> None:
    def trip() -> None:
        fake.script(500, 500, model="brk-model")
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                ask(gw, "brk/brk-model")
        assert _breaker(gw)["state"] == "open"

    trip()
    r = admin(gw, "POST", "/api/resilience/reset")
    assert r.status_code == 200 and r.json()["closed"] >= 1
    assert _breaker(gw)["state"] == "closed"
    assert ask(gw, "brk/brk-model").status_code == 200

    trip()
    r = admin(gw, "POST", "/api/models/availability", json={"model": "brk/brk-model"})
    assert r.status_code == 200 and r.json()["connections"] == ["brk"]
    entry = next(
        m
        for m in admin(gw, "GET", "/api/models/availability").json()["models"]
        if m["model"] == "brk/brk-model"
    )
    assert entry["available"] is True and entry["reason"] is None
    assert ask(gw, "brk/brk-model").status_code == 200
    bad = admin(gw, "POST", "/api/models/availability", json={"provider": "nosuch"})
    assert bad.status_code == 400 and "unknown provider 'nosuch'" in bad.json()["error"]["message"]


# ------------------------------------------------------------------ management views


def test_combos_view_counts_requests_per_target(gw: Gateway) -> None:
    ask(gw, "prio")
    combos = {c["name"]: c for c in admin(gw, "GET", "/api/combos").json()["combos"]}
    assert combos["rr"]["strategy"] == "round-robin" and combos["wt"]["strategy"] == "weighted"
    prio = combos["prio"]
    assert [t["ref"] for t in prio["targets"]] == ["openai/gpt-4.1-mini", "openai/gpt-4.1"]
    assert prio["targets"][0]["stats"]["openai/gpt-4.1-mini"]["requests"] >= 1
    assert combos["retry1"]["settings"]["retries"] == 1
    assert [t["weight"] for t in combos["wt"]["targets"]] == [9, 1, 0]


def test_rate_limits_and_availability_views(gw: Gateway) -> None:
    ask(gw, "openai/gpt-4.1")
    accounts = admin(gw, "GET", "/api/rate-limits", params={"provider": "openai"}).json()["accounts"]
    assert [a["account"] for a in accounts] == ["openai"]
    view = accounts[0]
    assert view["available"] is True and view["requests"] >= 1
    assert "sk-" not in str(accounts)  # never a key
    assert admin(gw, "GET", "/api/rate-limits", params={"provider": "nosuch"}).status_code == 400
    avail = admin(gw, "GET", "/api/models/availability").json()
    gpt = next(m for m in avail["models"] if m["model"] == "openai/gpt-4.1")
    assert gpt["available"] is True
    down = next(c for c in avail["combos"] if c["combo"] == "prio")
    assert down["available"] is True and down["unavailable_targets"] == []


def test_resilience_put_validates_and_overrides(gw: Gateway) -> None:
    bad = admin(gw, "PUT", "/api/resilience", json={"profiles": {"tight": {"reset_seconds": 1}}})
    assert bad.status_code == 400 and "reset_seconds" in bad.json()["error"]["message"]
    ok = admin(gw, "PUT", "/api/resilience", json={"profiles": {"spare": {"failure_threshold": 7}}})
    assert ok.status_code == 200 and ok.json()["overrides"]["spare"]["failure_threshold"] == 7
    assert admin(gw, "GET", "/api/resilience").json()["profiles"]["spare"]["failure_threshold"] == 7
    assert admin(gw, "PUT", "/api/resilience", json={"profiles": {}}).json()["overrides"] == {}


# ------------------------------------------------------------------ streams


def test_mid_stream_failure_ends_the_openai_stream_with_an_error(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    stream = oai(gw).chat.completions.create(
        model="midstream",
        messages=[{"role": "user", "content": f"{marker} [[words:10]] [[cut:3]]"}],
        stream=True,
    )
    words = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                words.append(chunk.choices[0].delta.content.strip())
    assert words == ["word1", "word2", "word3"]
    assert [x["route"] for x in received(fake, marker)] == ["openai.chat"]  # no fallback after the first byte


def test_mid_stream_failure_ends_the_anthropic_stream_with_an_error_event(
    gw: Gateway, fake: FakeUpstream
) -> None:
    marker = uuid.uuid4().hex
    text = []
    with (
        pytest.raises(anthropic.APIStatusError) as e,
        claude(gw).messages.stream(
            model="midstream",
            max_tokens=100,
            messages=[{"role": "user", "content": f"{marker} [[words:10]] [[cut:3]]"}],
        ) as s,
    ):
        for t in s.text_stream:  # the error event raises while iterating
            text.append(t.strip())
    assert text == ["word1", "word2", "word3"]
    assert e.value.body["type"] == "error"  # type: ignore[index]
    assert [x["route"] for x in received(fake, marker)] == ["openai.chat"]


def test_combo_reload_while_a_stream_runs(gw: Gateway) -> None:
    words: list[str] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for c in oai(gw).chat.completions.create(
                model="live", messages=[{"role": "user", "content": "[[words:25]] [[slow:200]]"}], stream=True
            ):
                if c.choices and c.choices[0].delta.content:
                    words.append(c.choices[0].delta.content.strip())
        except BaseException as e:  # reported below
            errors.append(e)

    assert ask(gw, "live").headers["x-omniroute-model"] == "openai/gpt-4.1"
    t = threading.Thread(target=consume)
    t.start()
    wait_for(lambda: len(words) >= 2)

    def switch(cfg: dict[str, Any]) -> None:
        cfg["combos"]["live"] = {"strategy": "priority", "targets": [BACKUP]}

    reload(gw, switch)
    at_reload = len(words)
    r = ask(gw, "live")
    assert r.headers["x-omniroute-model"] == BACKUP
    t.join(15)
    assert at_reload < 25  # the reload happened while the stream ran ...
    assert not errors and words == [f"word{i}" for i in range(1, 26)]  # ... and it finished on the old plan
