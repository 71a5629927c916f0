"""The attempt loop: fallback per failure class, no fallback on client errors, retries with
backoff honouring Retry-After, deadline and attempt limits, account rotation, breakers, concurrency
caps, stats and explain. `send` is a recording fake; time is a fake clock advanced by a fake sleep."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from engine.attempts import classify, explain, run_attempts
from engine.errors import ClientError, Unavailable, UpstreamError
from engine.routing import Target
from engine.strategies import RoutingStats
from tests.unit.test_resilience import T0, Clock, state
from tests.unit.test_strategies import make_conn, make_target


def E(status: int, kind: str | None = None, message: str | None = None, **kw: Any) -> UpstreamError:
    return UpstreamError(message or f"upstream said {status}", status=status, kind=kind, **kw)


class Upstream:
    """A recording fake `send`. The script maps 'conn/model@label' or 'conn/model' to outcomes, used in
    turn: 'ok', an exception to raise, or an async callable to await. Unscripted calls answer 'ok'."""

    def __init__(self, script: dict[str, list[Any]] | None = None, clock: Clock | None = None, cost_s: float = 0.0) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.calls: list[tuple[str, str, int]] = []
        self.clock, self.cost_s = clock, cost_s

    async def __call__(self, target: Target, account: Any, attempt: int) -> str:
        self.calls.append((target.key, account.label, attempt))
        if self.cost_s:
            self.clock.advance(self.cost_s)
        queue = self.script.get(f"{target.key}@{account.label}") or self.script.get(target.key) or []
        outcome = queue.pop(0) if queue else "ok"
        if isinstance(outcome, BaseException):
            raise outcome
        if callable(outcome):
            return await outcome()
        return f"{target.key}@{account.label}"


@dataclass
class Run:
    result: Any = None
    error: BaseException | None = None
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [f for k, f in self.events if k == kind]


def run(targets: list[Target], settings: dict[str, Any] | None = None, script: dict[str, list[Any]] | None = None, *,
        r: Any = None, clock: Clock | None = None, stats: RoutingStats | None = None, cost_s: float = 0.0, **kw: Any) -> Run:
    if r is None:
        r, clock = state()
    clock = clock or r.clock
    up = Upstream(script, clock, cost_s)
    out = Run()

    async def sleep(d: float) -> None:
        out.sleeps.append(d)
        clock.advance(d)

    async def main() -> Any:
        return await run_attempts(targets, settings or {}, r, up, fingerprint="fp1", sleep=sleep,
                                  on_event=lambda kind, **f: out.events.append((kind, f)), stats=stats, **kw)

    try:
        out.result = asyncio.run(main())
    except (UpstreamError, Unavailable, ClientError) as e:
        out.error = e
    out.calls = up.calls
    return out


def three() -> list[Target]:
    return [make_target("p1"), make_target("p2"), make_target("p3")]


def test_the_first_target_answers() -> None:
    out = run(three())
    assert out.result == "p1/m@a" and out.calls == [("p1/m", "a", 0)]
    assert out.kinds("success") == [{"target": "p1/m", "account": "a", "attempt": 0}]


@pytest.mark.parametrize(("error", "cls"), [
    (E(408), "408"), (E(429), "429"), (E(500), "5xx"), (E(503), "5xx"), (E(529), "5xx"),
    (E(504, kind="timeout"), "timeout"), (E(502, kind="bad_gateway"), "network"),
    (E(401), "auth"), (E(403), "auth"), (E(402), "quota"), (E(429, message="insufficient_quota"), "quota"),
])
def test_each_failure_class_falls_back_to_the_next_target(error: UpstreamError, cls: str) -> None:
    assert classify(error) == cls
    out = run(three(), script={"p1/m": [error]})
    assert out.result == "p2/m@a"
    assert [c[0] for c in out.calls] == ["p1/m", "p2/m"]
    assert out.kinds("failure")[0] == {"target": "p1/m", "account": "a", "attempt": 0, "status": error.status,
                                             "error_class": cls, "action": "next_target"}


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
def test_a_client_error_is_returned_at_once(status: int) -> None:
    e = E(status)
    out = run(three(), script={"p1/m": [e]})
    assert out.error is e and out.calls == [("p1/m", "a", 0)]
    assert out.kinds("failure")[0]["action"] == "stop"


def test_a_retryable_4xx_means_this_target_cannot_serve_it() -> None:
    unsupported = E(400, retryable=True)  # e.g. the provider has no endpoint for this request kind
    out = run(three(), script={"p1/m": [unsupported]})
    assert out.result == "p2/m@a"
    out = run(three(), script={"p1/m": [unsupported], "p2/m": [E(500)], "p3/m": [E(400, retryable=True)]})
    assert out.error.status == 500  # the last meaningful error, not the last unsupported one


def test_fallback_on_limits_which_classes_move_on() -> None:
    out = run(three(), {"fallback_on": ["5xx", "timeout"]}, {"p1/m": [E(429)]})
    assert out.error.status == 429 and len(out.calls) == 1
    out = run(three(), {"fallback_on": ["5xx", "timeout"]}, {"p1/m": [E(503)]})
    assert out.result == "p2/m@a"
    out = run(three(), {"fallback_on": []}, {"p1/m": [E(500)]})
    assert out.error.status == 500 and len(out.calls) == 1


def test_an_error_marked_not_retryable_stops() -> None:
    out = run(three(), script={"p1/m": [E(500, retryable=False)]})
    assert out.error.status == 500 and len(out.calls) == 1


def test_retries_on_the_same_target_back_off_doubling() -> None:
    out = run(three(), {"retries": 2, "retry_backoff_ms": 100}, {"p1/m": [E(500), E(503)]})
    assert out.result == "p1/m@a"
    assert out.calls == [("p1/m", "a", 0), ("p1/m", "a", 1), ("p1/m", "a", 2)]
    assert out.sleeps == [pytest.approx(0.1), pytest.approx(0.2)]
    assert [f["delay_s"] for f in out.kinds("retry")] == out.sleeps


def test_retries_honour_retry_after() -> None:
    out = run(three(), {"retries": 1, "retry_backoff_ms": 100}, {"p1/m": [E(503, retry_after=3)]})
    assert out.result == "p1/m@a" and out.sleeps == [3]


def test_retry_after_is_capped_by_the_deadline() -> None:
    out = run(three(), {"retries": 1, "deadline_s": 2}, {"p1/m": [E(503, retry_after=5)]})
    assert out.sleeps == [] and out.result == "p2/m@a"  # waiting 5 s would pass the deadline: move on


def test_a_very_long_retry_after_without_deadline_moves_on() -> None:
    out = run(three(), {"retries": 1}, {"p1/m": [E(503, retry_after=3600)]})
    assert out.sleeps == [] and out.result == "p2/m@a"


def test_retries_exhausted_then_next_target() -> None:
    out = run(three(), {"retries": 1, "retry_backoff_ms": 0}, {"p1/m": [E(500), E(500)]})
    assert [c[0] for c in out.calls] == ["p1/m", "p1/m", "p2/m"] and out.result == "p2/m@a"


def test_max_attempts_caps_every_call() -> None:
    out = run(three(), {"max_attempts": 2, "retries": 3, "retry_backoff_ms": 0}, {"p1/m": [E(500)] * 5, "p2/m": [E(500)]})
    assert len(out.calls) == 2 and out.error.status == 500


def test_the_deadline_stops_further_attempts() -> None:
    out = run(three(), {"deadline_s": 10}, {"p1/m": [E(500)], "p2/m": [E(502)]}, cost_s=6)
    assert [c[0] for c in out.calls] == ["p1/m", "p2/m"] and out.error.status == 502


def test_the_deadline_cuts_a_call_that_runs_past_it() -> None:
    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    r, _ = state()
    r.clock = time.time  # real time: the cut is asyncio's
    out = run(three(), {"deadline_s": 0.05}, {"p1/m": [slow]}, r=r)
    assert out.error.status == 504 and out.error.kind == "timeout"
    assert "deadline of 0.05s passed" in out.error.message
    assert out.calls == [("p1/m", "a", 0)]


def test_account_failures_rotate_to_other_accounts_of_the_same_connection() -> None:
    conn = make_conn("p", ("a", "b", "c"))
    ts = [make_target(conn=conn), make_target("q")]
    out = run(ts, script={"p/m@a": [E(429, retry_after=30)], "p/m@b": [E(401)]})
    assert out.calls == [("p/m", "a", 0), ("p/m", "b", 1), ("p/m", "c", 2)] and out.result == "p/m@c"
    assert [f["action"] for f in out.kinds("failure")] == ["next_account", "next_account"]


def test_a_5xx_does_not_rotate_accounts_it_moves_on() -> None:
    conn = make_conn("p", ("a", "b"))
    out = run([make_target(conn=conn), make_target("q")], script={"p/m@a": [E(500)]})
    assert [c[:2] for c in out.calls] == [("p/m", "a"), ("q/m", "a")]


def test_a_429_on_the_only_account_retries_after_retry_after() -> None:
    out = run([make_target("p")], {"retries": 1, "retry_backoff_ms": 100}, {"p/m": [E(429, retry_after=2)]})
    assert out.result == "p/m@a" and out.sleeps == [2] and len(out.calls) == 2


def test_no_account_is_called_twice_without_retries() -> None:
    conn = make_conn("p", ("a", "b"))
    ts = [make_target(conn=conn), make_target(conn=conn), make_target("q")]  # p/m listed twice
    out = run(ts, script={"p/m@a": [E(429)], "p/m@b": [E(429)], "q/m": [E(500)]})
    assert out.calls == [("p/m", "a", 0), ("p/m", "b", 1), ("q/m", "a", 2)]
    assert out.error.status == 500


def test_an_open_breaker_skips_its_targets_and_says_why() -> None:
    r, _clock = state({"p1": {"resilience_profile": "t"}}, {"profiles": {"t": {"failure_threshold": 1, "reset_s": 30}}})
    ts = three()
    run(ts, script={"p1/m": [E(500)]}, r=r)
    out = run(ts, r=r)
    assert out.result == "p2/m@a" and out.calls == [("p2/m", "a", 0)]
    assert out.kinds("skip") == [{"target": "p1/m", "reason": "circuit breaker of p1 is open", "retry_at": T0 + 30}]


def test_an_open_breaker_with_nothing_left_answers_503_with_retry_after() -> None:
    r, clock = state({"p": {"resilience_profile": "t"}}, {"profiles": {"t": {"failure_threshold": 2, "reset_s": 30}}})
    ts = [make_target("p")]
    first = run(ts, {"retries": 1, "retry_backoff_ms": 0}, {"p/m": [E(500), E(500)]}, r=r)
    assert first.error.status == 500  # a real error stays the answer of the request that saw it
    clock.advance(10)
    out = run(ts, r=r)
    assert isinstance(out.error, Unavailable) and out.error.status == 503
    assert out.error.headers == {"retry-after": "20"} and out.calls == []
    assert "p/m: circuit breaker of p is open" in out.error.message
    clock.advance(20)
    assert run(ts, r=r).result == "p/m@a"  # the half-open probe succeeds and closes it
    assert r.providers["p"].state == "closed"


def test_all_accounts_cooling_answers_503_with_the_soonest_recovery() -> None:
    r, _clock = state()
    conn = make_conn("p", ("a", "b"))
    r.failure(conn, conn.accounts[0], E(429, retry_after=40), "429")
    r.failure(conn, conn.accounts[1], E(429, retry_after=15), "429")
    out = run([make_target(conn=conn)], r=r)
    assert out.error.status == 503 and out.error.headers == {"retry-after": "15"}
    assert "a: rate limited by the upstream (429); b: rate limited" in out.error.message


def test_disabled_accounts_give_503_without_retry_after() -> None:
    r, _ = state()
    conn = make_conn("p")
    r.failure(conn, conn.accounts[0], E(401), "auth", "fp1")
    out = run([make_target(conn=conn)], r=r)
    assert out.error.status == 503 and out.error.headers == {}


def test_other_exceptions_propagate_and_release_what_the_attempt_held() -> None:
    r, _ = state()
    boom = ClientError("cannot carry: tools (strict_translation is on)")
    stats = RoutingStats()
    out = run(three(), script={"p1/m": [boom]}, r=r, stats=stats)
    assert out.error is boom
    assert r.accounts[("p1", "a")].in_flight == 0 and stats.targets["p1/m"].in_flight == 0


def test_cancellation_releases_in_flight() -> None:
    r, _ = state({"p1": {"max_concurrent": 1}})
    ts = three()

    async def main() -> None:
        gate = asyncio.Event()

        async def send(t: Target, a: Any, n: int) -> str:
            await gate.wait()
            return "never"

        task = asyncio.create_task(run_attempts(ts, {}, r, send, fingerprint="fp1"))
        await asyncio.sleep(0.01)
        assert r.accounts[("p1", "a")].in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert r.accounts[("p1", "a")].in_flight == 0 and r._slots["p1"].active == 0

    asyncio.run(main())


def test_outside_cancellation_is_not_mistaken_for_the_deadline() -> None:
    r, _ = state()
    r.clock = time.time

    async def main() -> None:
        async def send(t: Target, a: Any, n: int) -> str:
            await asyncio.sleep(5)
            return "never"

        task = asyncio.create_task(run_attempts(three(), {"deadline_s": 10}, r, send, fingerprint="fp1"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert r.accounts[("p1", "a")].in_flight == 0

    asyncio.run(main())


def test_a_full_connection_fails_over_after_the_queue_timeout() -> None:
    r, _ = state({"p1": {"max_concurrent": 1, "queue_timeout_s": 0.02}})
    ts = three()

    async def main() -> list[str]:
        gate = asyncio.Event()

        async def send(t: Target, a: Any, n: int) -> str:
            if t.key == "p1/m":
                await gate.wait()
            return t.key

        first = asyncio.create_task(run_attempts(ts, {}, r, send, fingerprint="fp1"))
        await asyncio.sleep(0.005)
        events: list[Any] = []
        second = await run_attempts(ts, {}, r, send, fingerprint="fp1", on_event=lambda k, **f: events.append((k, f)))
        gate.set()
        assert events[0][0] == "skip" and "max_concurrent" in events[0][1]["reason"]
        return [await first, second]

    assert asyncio.run(main()) == ["p1/m", "p2/m"]


def test_hold_keeps_the_slot_until_the_stream_ends() -> None:
    r, _ = state({"p1": {"max_concurrent": 1, "queue_timeout_s": 0}})
    ts = three()
    stats = RoutingStats()
    releases: list[Any] = []

    async def main() -> tuple[str, str, str]:
        async def send(t: Target, a: Any, n: int) -> str:
            return t.key

        def hold(result: str, release: Any) -> bool:
            releases.append(release)
            return True

        a = await run_attempts(ts, {}, r, send, fingerprint="fp1", hold=hold, stats=stats)
        assert stats.targets["p1/m"].in_flight == 1 and r.accounts[("p1", "a")].in_flight == 1
        b = await run_attempts(ts, {}, r, send, fingerprint="fp1")  # p1 is full: the stream still holds it
        releases[0]()
        releases[0]()  # idempotent
        c = await run_attempts(ts, {}, r, send, fingerprint="fp1")
        return a, b, c

    assert asyncio.run(main()) == ("p1/m", "p2/m", "p1/m")
    assert stats.targets["p1/m"].in_flight == 0 and r.accounts[("p1", "a")].in_flight == 0


def test_stats_record_requests_failures_and_latency() -> None:
    stats = RoutingStats()
    run(three(), script={"p1/m": [E(500)]}, stats=stats)
    snap = stats.snapshot(["p1/m", "p2/m"])
    assert snap["p1/m"]["requests"] == 1 and snap["p1/m"]["failures"] == 1 and snap["p1/m"]["latency_ms"] >= 10_000
    assert snap["p2/m"]["requests"] == 1 and snap["p2/m"]["failures"] == 0 and snap["p2/m"]["in_flight"] == 0
    assert snap["p2/m"]["latency_ms"] is not None


def test_tokens_are_charged_to_client_side_tpm() -> None:
    r, _ = state({"p1": {"tpm": 1000}})
    out = run(three(), r=r, tokens=800)
    assert out.result == "p1/m@a"
    out = run(three(), r=r, tokens=800)
    assert out.result == "p2/m@a" and out.kinds("skip")[0]["target"] == "p1/m"


def test_an_empty_plan_is_unavailable() -> None:
    out = run([])
    assert isinstance(out.error, Unavailable) and "no target to try" in out.error.message


def test_explain_lists_each_target_with_accounts_breaker_and_skip_reason() -> None:
    r, _ = state({"p2": {"resilience_profile": "t"}}, {"profiles": {"t": {"failure_threshold": 1}}})
    pool = make_conn("p1", ("k1", "k2"))
    ts = [make_target(conn=pool, capabilities=frozenset({"tools"})), make_target("p2", capabilities=frozenset({"vision"})),
          make_target("p3", capabilities=frozenset({"vision"}), context=1000), make_target("p4", capabilities=frozenset({"vision"}))]
    r.failure(ts[1].connection, ts[1].connection.accounts[0], E(500), "5xx")
    r.failure(ts[3].connection, ts[3].connection.accounts[0], E(429, retry_after=9), "429")
    plan = explain([*ts, ts[3]], {}, r, {"vision"}, 2000, None)
    assert [p["skipped"] for p in plan] == [
        "model lacks vision", "circuit breaker of p2 is open", "context window of 1000 tokens is smaller than the 2000 needed (~2000 input)",
        "no account available", "listed earlier in the plan"]
    assert plan[0]["accounts"] == [{"label": "k1", "usable": True, "why": None, "retry_in_s": None},
                                   {"label": "k2", "usable": True, "why": None, "retry_in_s": None}]
    assert plan[1]["breaker"] == "open" and plan[0]["breaker"] == "closed"
    assert plan[3]["accounts"][0] == {"label": "a", "usable": False, "why": "rate limited by the upstream (429)", "retry_in_s": 9.0}
    assert b"sk-secret" not in orjson.dumps(plan)
    assert explain(ts[:1], {}, r)[0]["skipped"] is None
