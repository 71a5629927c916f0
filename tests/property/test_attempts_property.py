"""For any combo and any sequence of upstream outcomes, the attempt loop either succeeds from some
target or fails with the last meaningful error; it never calls the same account of a target twice
unless retries say so, never exceeds max_attempts, and never sleeps past the deadline."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.attempts import FALLBACK_CLASSES, classify, run_attempts
from engine.errors import Unavailable, UpstreamError
from engine.resilience import Resilience
from engine.strategies import RoutingStats
from tests.unit.test_resilience import Clock, runtime
from tests.unit.test_strategies import make_conn, make_target

OUTCOMES = ["ok", 400, 401, 402, 403, 404, 408, 422, 429, "429-quota", 500, 503, 529, "timeout", "network", "unsupported"]


def upstream_error(outcome: Any, retry_after: float | None) -> UpstreamError:
    if outcome == "timeout":
        return UpstreamError("timed out", status=504, kind="timeout")
    if outcome == "network":
        return UpstreamError("cannot reach", status=502, kind="bad_gateway")
    if outcome == "unsupported":
        return UpstreamError("no such endpoint", status=400, retryable=True)
    if outcome == "429-quota":
        return UpstreamError("insufficient_quota", status=429, retry_after=retry_after)
    return UpstreamError(f"status {outcome}", status=outcome, retry_after=retry_after if outcome in (429, 503) else None)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    conns = [make_conn(f"c{i}", tuple(f"k{j}" for j in range(draw(st.integers(1, 3))))) for i in range(draw(st.integers(1, 3)))]
    targets = [make_target(conn=draw(st.sampled_from(conns)), mid=draw(st.sampled_from(["m1", "m2"]))) for _ in range(draw(st.integers(1, 5)))]
    combo: dict[str, Any] = {}
    if draw(st.booleans()):
        combo["retries"] = draw(st.integers(0, 2))
    if draw(st.booleans()):
        combo["max_attempts"] = draw(st.integers(1, 8))
    if draw(st.booleans()):
        combo["fallback_on"] = draw(st.lists(st.sampled_from(sorted(FALLBACK_CLASSES)), unique=True))
    if draw(st.booleans()):
        combo["retry_backoff_ms"] = draw(st.integers(0, 2000))
    if draw(st.booleans()):
        combo["deadline_s"] = draw(st.floats(0.5, 30))
    outcomes = draw(st.lists(st.tuples(st.sampled_from(OUTCOMES), st.sampled_from([None, 0.5, 3.0, 120.0]), st.floats(0, 4)), max_size=25))
    return {
        "conns": conns, "targets": targets, "settings": combo, "outcomes": outcomes,
        "threshold": draw(st.integers(1, 5)), "strategy": draw(st.sampled_from(["fill-first", "round-robin", "least-used", "random"])),
        "precooled": draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.sampled_from([429, 401, 500])), max_size=3)),
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_attempts_end_with_a_success_or_the_last_meaningful_error(sc: dict[str, Any]) -> None:
    clock = Clock()
    r = Resilience(clock=clock, rng=random.Random(0))
    providers = {c.id: {"account_strategy": sc["strategy"], "resilience_profile": "p"} for c in sc["conns"]}
    r.configure(runtime(providers=providers, resilience={"profiles": {"p": {"failure_threshold": sc["threshold"]}}}))
    for ci, ai, status in sc["precooled"]:  # state left by earlier requests
        conn = sc["conns"][ci % len(sc["conns"])]
        acc = conn.accounts[ai % len(conn.accounts)]
        e = upstream_error(status, 5.0)
        r.failure(conn, acc, e, classify(e), "fp1")
    stats = RoutingStats(seed=0)
    settings_ = sc["settings"]
    outcomes = list(sc["outcomes"])
    calls: list[tuple[str, str, int]] = []
    raised: list[UpstreamError] = []
    start = clock()

    async def send(target: Any, account: Any, attempt: int) -> str:
        calls.append((target.key, account.label, attempt))
        outcome, retry_after, cost = outcomes.pop(0) if outcomes else ("ok", None, 0.0)
        clock.advance(cost)
        if outcome == "ok":
            return f"{target.key}@{account.label}#{attempt}"
        e = upstream_error(outcome, retry_after)
        raised.append(e)
        raise e

    async def sleep(d: float) -> None:
        if "deadline_s" in settings_:
            assert clock() + d < start + settings_["deadline_s"], "slept past the deadline"
        clock.advance(d)

    result: Any = None
    error: BaseException | None = None
    try:
        result = asyncio.run(run_attempts(sc["targets"], settings_, r, send, fingerprint="fp1", sleep=sleep, stats=stats))
    except (UpstreamError, Unavailable) as e:
        error = e

    # attempt numbers count up from 0, one per call
    assert [c[2] for c in calls] == list(range(len(calls)))
    if "max_attempts" in settings_:
        assert len(calls) <= settings_["max_attempts"]
    # the same account of the same target again only by a retry, and retries follow at once
    retries = settings_.get("retries", 0)
    pairs = [c[:2] for c in calls]
    for pair, n in Counter(pairs).items():
        assert n <= 1 + retries, f"{pair} called {n} times with retries={retries}"
        first = pairs.index(pair)
        assert pairs[first:first + n] == [pair] * n, f"{pair} called again after other attempts"
    if error is None:
        assert result == f"{calls[-1][0]}@{calls[-1][1]}#{calls[-1][2]}"
    elif not calls:
        assert isinstance(error, Unavailable) and error.status == 503
    else:
        meaningful = [e for e in raised if classify(e) != "unsupported"]
        assert error is (meaningful[-1] if meaningful else raised[-1])
        if classify(raised[-1]) == "client":
            assert error is raised[-1]
    # a client error is never followed by another attempt
    for i, e in enumerate(raised[:-1]):
        assert classify(e) != "client", f"attempt after a client error ({e.status}) at {i}"
    # nothing stays in flight once the request is over
    assert all(s.in_flight == 0 for s in r.accounts.values())
    assert all(s.in_flight == 0 for s in stats.targets.values())
