"""Rate limits and concurrency per key: sliding windows on a frozen clock, never more admitted than
the limit under 50 concurrent asyncio tasks (or threads), settle and refund, limits that change."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from types import SimpleNamespace as NS

import pytest

from engine.errors import RateLimited
from engine.policy import Facts, Limit, compile_policies
from engine.policy_state import PolicyState

T0 = 1_767_614_400.0  # 2026-01-05 12:00 UTC, a whole minute


def lim(**kw: int) -> list[Limit]:
    return [Limit("r", **kw)]


def test_rpm_window_slides() -> None:
    st = PolicyState()
    for t in (0, 10, 20):
        st.admit("a", lim(rpm=3), T0 + t)
    with pytest.raises(RateLimited) as e:
        st.admit("a", lim(rpm=3), T0 + 30)
    # the first request's bucket [0 s, 1 s) leaves the window at 61 s: 31 s from now
    assert e.value.retry_after == pytest.approx(31.0)
    assert e.value.headers == {"retry-after": "31"} and e.value.status == 429
    assert "rate limit of rule 'r' reached: 3 requests per minute for key 'a'" in e.value.message
    with pytest.raises(RateLimited):
        st.admit("a", lim(rpm=3), T0 + 60.5)  # still inside: buckets are counted whole
    st.admit("a", lim(rpm=3), T0 + 61)
    with pytest.raises(RateLimited) as e2:
        st.admit("a", lim(rpm=3), T0 + 62)
    assert e2.value.retry_after == pytest.approx(9.0)  # the request at 10 s leaves at 71 s


def test_rpd_and_keys_are_separate() -> None:
    st = PolicyState()
    st.admit("a", lim(rpd=2), T0)
    st.admit("a", lim(rpd=2), T0 + 3600)
    with pytest.raises(RateLimited) as e:
        st.admit("a", lim(rpd=2), T0 + 7200)
    assert "2 requests per day" in e.value.message
    assert e.value.retry_after == pytest.approx(86400 + 1440 - 7200)  # day buckets are 24 min wide
    st.admit("b", lim(rpd=2), T0 + 7200)  # another key has its own count
    st.admit(None, lim(rpd=2), T0 + 7200)  # so do requests without a key
    st.admit("a", lim(rpd=2), T0 + 86400 + 1440)


def test_tokens_are_estimated_then_settled() -> None:
    st = PolicyState()
    a1 = st.admit("a", lim(tpm=1000), T0, tokens=400)
    st.release(a1, actual_tokens=900, now=T0 + 1)  # the answer was long: 900 counted
    with pytest.raises(RateLimited) as e:
        st.admit("a", lim(tpm=1000), T0 + 2, tokens=200)
    assert "1000 tokens per minute" in e.value.message
    a2 = st.admit("a", lim(tpm=1000), T0 + 2, tokens=100)
    st.release(a2, actual_tokens=20, now=T0 + 3)  # shorter than estimated: the rest comes back
    st.admit("a", lim(tpm=1000), T0 + 4, tokens=80)
    with pytest.raises(RateLimited) as big:
        st.admit("a", lim(tpm=1000), T0 + 90, tokens=5000)
    assert big.value.retry_after is None and "needs about 5000 tokens, more than the 1000 tokens per minute" in big.value.message


def test_settling_after_the_window_counts_now() -> None:
    st = PolicyState()
    adm = st.admit("a", lim(tpm=1000), T0, tokens=10)
    st.release(adm, actual_tokens=990, now=T0 + 120)  # a long stream: its bucket has left the window
    with pytest.raises(RateLimited):  # the 980 not yet counted are counted now
        st.admit("a", lim(tpm=1000), T0 + 121, tokens=21)
    st.admit("a", lim(tpm=1000), T0 + 121, tokens=20)


def test_refund_returns_everything() -> None:
    st = PolicyState()
    adm = st.admit("a", lim(rpm=1, tpm=100), T0, tokens=50)
    with pytest.raises(RateLimited):
        st.admit("a", lim(rpm=1, tpm=100), T0 + 1)
    st.release(adm, refund=True, now=T0 + 1)
    st.admit("a", lim(rpm=1, tpm=100), T0 + 1, tokens=100)


def test_max_concurrent_and_double_release() -> None:
    st = PolicyState()
    limits = [Limit("conc", max_concurrent=2)]
    a1, a2 = st.admit("a", limits, T0), st.admit("a", limits, T0)
    with pytest.raises(RateLimited) as e:
        st.admit("a", limits, T0)
    assert "allows key 'a' 2 request(s) at once" in e.value.message and e.value.retry_after == 1.0
    st.release(a1)
    st.release(a1)  # harmless
    assert st.inflight("conc", "a") == 1
    a3 = st.admit("a", limits, T0)
    st.release(a2)
    st.release(a3)
    assert st.inflight("conc", "a") == 0


def test_a_refusal_charges_nothing() -> None:
    st = PolicyState()
    limits = [Limit("loose", rpm=100, max_concurrent=10), Limit("tight", rpm=1)]
    st.admit("a", limits, T0)
    for _ in range(5):
        with pytest.raises(RateLimited) as e:
            st.admit("a", limits, T0 + 1)
        assert "'tight'" in e.value.message and "'loose'" not in e.value.message
    used = {(s["rule"], s["window"]): s["used"] for s in st.snapshot(T0 + 1)}
    assert used == {("loose", "rpm"): 1, ("tight", "rpm"): 1, ("loose", "concurrent"): 1}


def test_changed_limit_applies_to_what_was_counted() -> None:
    st = PolicyState()
    for _ in range(3):
        st.admit("a", [Limit("r", rpm=10)], T0)
    with pytest.raises(RateLimited):  # a reload lowered the limit of the same rule
        st.admit("a", [Limit("r", rpm=3)], T0 + 1)
    st.admit("a", [Limit("renamed", rpm=3)], T0 + 1)  # a new rule name starts a new count


def test_empty_decision_and_datetime_clock() -> None:
    st = PolicyState(clock=lambda: T0)
    adm = st.admit("a", [], None)
    assert adm.charges == [] and adm.slots == []
    st.release(adm)
    when = datetime.fromtimestamp(T0, UTC)
    st.admit("a", lim(rpm=1), when)
    with pytest.raises(RateLimited):
        st.admit("a", lim(rpm=1))  # the injected clock says T0 too


def test_idle_windows_are_forgotten() -> None:
    st = PolicyState()
    st.admit("a", lim(rpm=5), T0)
    st._sweep(T0 + 30)
    assert len(st._windows) == 1
    st._sweep(T0 + 120)
    assert st._windows == {} and st.snapshot(T0 + 120) == []


def test_admit_from_a_compiled_decision() -> None:
    ps = compile_policies([{"name": "team", "match": {"field": "key", "glob": "team-*"}, "rate_limit": {"rpm": 2}}],
                          [NS(name="team-a", models=(), rpm=5, rpd=None, schedule=None)], lambda p, m: None)
    d = ps.evaluate(Facts(key="team-a"))
    assert [x.rule for x in d.limits] == ["key:team-a:limits", "team"]
    st = PolicyState()
    st.admit("team-a", d, T0)
    st.admit("team-a", d, T0)
    with pytest.raises(RateLimited, match="rule 'team'"):
        st.admit("team-a", d, T0)


def test_fifty_concurrent_tasks_never_exceed_the_limits() -> None:
    st = PolicyState()
    limits = [Limit("r", rpm=10), Limit("c", max_concurrent=3)]
    admitted: list[int] = []
    refused: list[str] = []
    inflight = 0
    peak = 0

    async def one(i: int) -> None:
        nonlocal inflight, peak
        await asyncio.sleep(0)
        try:
            adm = st.admit("k", limits, T0)
        except RateLimited as e:
            refused.append(e.message)
            return
        admitted.append(i)
        inflight += 1
        peak = max(peak, inflight)
        for _ in range(3):
            await asyncio.sleep(0)  # hold the slot while other tasks try
        inflight -= 1
        st.release(adm, actual_tokens=1, now=T0)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(50)))

    asyncio.run(main())
    assert len(admitted) <= 10 and peak <= 3
    assert len(admitted) + len(refused) == 50 and st.inflight("c", "k") == 0

    # with no concurrency cap, exactly the limit gets through
    st2 = PolicyState()
    ok: list[int] = []

    async def two(i: int) -> None:
        await asyncio.sleep(0)
        try:
            st2.admit("k", [Limit("r", rpm=10)], T0)
            ok.append(i)
        except RateLimited:
            pass

    async def main2() -> None:
        await asyncio.gather(*(two(i) for i in range(50)))

    asyncio.run(main2())
    assert len(ok) == 10


def test_threads_never_exceed_the_limit() -> None:
    st = PolicyState()

    def one(_: int) -> bool:
        try:
            st.admit("k", [Limit("r", rpm=25, tpm=10_000)], T0, tokens=10)
            return True
        except RateLimited:
            return False

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert sum(results) == 25


def test_reload_while_requests_run() -> None:
    """A request admitted under the old rule set releases into the same counters after a reload."""
    keys = [NS(name="k", models=(), rpm=None, rpd=None, schedule=None)]
    old = compile_policies([{"name": "conc", "max_concurrent": 2, "rate_limit": {"rpm": 100}}], keys, lambda p, m: None)
    new = compile_policies([{"name": "conc", "max_concurrent": 1, "rate_limit": {"rpm": 2}}], keys, lambda p, m: None)
    st = PolicyState()
    running = [st.admit("k", old.evaluate(Facts(key="k")), T0) for _ in range(2)]
    with pytest.raises(RateLimited):  # the new, lower limits apply at once to what is in flight
        st.admit("k", new.evaluate(Facts(key="k")), T0 + 1)
    st.release(running[0], actual_tokens=10, now=T0 + 1)
    with pytest.raises(RateLimited):  # one still running: max_concurrent 1 is reached
        st.admit("k", new.evaluate(Facts(key="k")), T0 + 1)
    st.release(running[1], actual_tokens=10, now=T0 + 1)
    with pytest.raises(RateLimited, match="2 requests per minute"):  # concurrency is free, rpm 2 is used up
        st.admit("k", new.evaluate(Facts(key="k")), T0 + 1)
    st.admit("k", new.evaluate(Facts(key="k")), T0 + 61)
    assert st.inflight("conc", "k") == 1
