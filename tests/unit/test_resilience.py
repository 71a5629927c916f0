"""Resilience state: breaker transitions, account cooldowns, header learning, account choice,
client-side limits and the concurrency queue. Time is a fake clock the tests advance."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest

from engine.account_limits import parse_delay
from engine.attempts import classify
from engine.errors import UpstreamError
from engine.resilience import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Breaker,
    Profile,
    Resilience,
    check_config,
    profiles_from_config,
)
from tests.unit.test_strategies import make_conn

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: wall-clock time, since reset headers are dates
OPENAI_HEADERS = {
    "limit_requests": "x-ratelimit-limit-requests", "remaining_requests": "x-ratelimit-remaining-requests",
    "reset_requests": "x-ratelimit-reset-requests", "limit_tokens": "x-ratelimit-limit-tokens",
    "remaining_tokens": "x-ratelimit-remaining-tokens", "reset_tokens": "x-ratelimit-reset-tokens",
}


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def runtime(fingerprint: str = "fp1", providers: dict | None = None, resilience: dict | None = None) -> SimpleNamespace:
    raw = {"providers": providers or {}, **({"resilience": resilience} if resilience is not None else {})}
    return SimpleNamespace(fingerprint=fingerprint, raw_config=raw)


def state(providers: dict | None = None, resilience: dict | None = None, seed: int = 0) -> tuple[Resilience, Clock]:
    import random

    clock = Clock()
    r = Resilience(clock=clock, rng=random.Random(seed))
    r.configure(runtime(providers=providers, resilience=resilience))
    return r, clock


def err(status: int, *, kind: str | None = None, retry_after: float | None = None, message: str = "x", body: bytes = b"",
        headers: dict[str, str] | None = None) -> UpstreamError:
    return UpstreamError(message, status=status, kind=kind, retry_after=retry_after, body=body, headers=headers)


def fail(r: Resilience, conn, label: str, e: UpstreamError) -> float | None:
    return r.failure(conn, next(a for a in conn.accounts if a.label == label), e, classify(e))


# ------------------------------------------------------------------ profiles


def test_profiles_defaults_custom_and_default_profile() -> None:
    assert profiles_from_config(None) == {"default": Profile()}
    ps = profiles_from_config({"profiles": {"fast": {"failure_threshold": 2, "reset_s": 5}}, "default_profile": "fast"})
    assert ps["fast"] == Profile(failure_threshold=2, reset_s=5)
    assert ps["default"] is ps["fast"]


@pytest.mark.parametrize(("raw", "message"), [
    ({"profiles": {"x": {"failure_treshold": 2}}}, "resilience.profiles.x.failure_treshold: unknown key (valid keys: failure_threshold"),
    ({"profiles": {"x": {"failure_threshold": 0}}}, "resilience.profiles.x.failure_threshold: must be an integer >= 1, got 0"),
    ({"profiles": {"x": {"reset_s": "soon"}}}, "resilience.profiles.x.reset_s: must be a number of seconds >= 0, got 'soon'"),
    ({"profiles": {"x": {"window_s": 0}}}, "resilience.profiles.x.window_s: must be a number of seconds > 0"),
    ({"profiles": {"x": {"cooldown_base_s": 10, "cooldown_max_s": 5}}}, "cooldown_max_s (5) is below cooldown_base_s (10)"),
    ({"default_profile": "nope"}, "resilience.default_profile: unknown profile 'nope' (valid values: default)"),
    ({"breakers": {}}, "resilience.breakers: unknown key (valid keys: default_profile, profiles)"),
])
def test_profile_errors_name_what_to_fix(raw: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        profiles_from_config(raw)
    assert message in str(e.value)


def test_check_config_locates_problems() -> None:
    cfg = {"providers": {"openai": {"resilience_profile": "strict"}}, "resilience": {"profiles": {"lax": {}}}}
    assert check_config(cfg) == [(("providers", "openai", "resilience_profile"), "unknown profile 'strict' (valid values: default, lax)")]
    assert check_config({"resilience": {"profiles": {"x": {"reset_s": -1}}}})[0][0] == ("resilience", "profiles", "x", "reset_s")


# ------------------------------------------------------------------ breaker


def test_breaker_opens_after_n_real_failures_and_successes_do_not_reset_the_count() -> None:
    p = Profile(failure_threshold=3, window_s=60, reset_s=30)
    b, t = Breaker(), T0
    b.failure(t, p)
    b.success()  # OmniRoute's breaker would forget the failure here
    b.failure(t + 1, p)
    b.success()
    assert b.current(t + 2, p) == CLOSED
    b.failure(t + 2, p)
    assert b.current(t + 2, p) == OPEN
    assert b.blocked_until(t + 2, p) == t + 32


def test_breaker_failures_age_out_of_the_window() -> None:
    p = Profile(failure_threshold=2, window_s=10)
    b = Breaker()
    b.failure(T0, p)
    b.failure(T0 + 11, p)
    assert b.state == CLOSED
    b.failure(T0 + 12, p)
    assert b.state == OPEN


def test_breaker_half_open_admits_one_probe_then_closes_or_reopens() -> None:
    p = Profile(failure_threshold=1, reset_s=30)
    b = Breaker()
    b.failure(T0, p)
    assert b.blocked_until(T0 + 29, p) == T0 + 30
    assert b.current(T0 + 30, p) == HALF_OPEN
    assert b.blocked_until(T0 + 30, p) is None
    b.admit(T0 + 30)  # the probe
    assert b.blocked_until(T0 + 31, p) == T0 + 60  # nobody else while it runs
    b.failure(T0 + 31, p)  # the probe failed: open again, a new reset timer
    assert (b.state, b.blocked_until(T0 + 40, p), b.trips) == (OPEN, T0 + 61, 2)
    b.admit(T0 + 61)
    b.success()
    assert b.current(T0 + 62, p) == CLOSED and b.blocked_until(T0 + 62, p) is None


def test_a_probe_that_never_reports_frees_the_slot_after_reset_s() -> None:
    p = Profile(failure_threshold=1, reset_s=10)
    b = Breaker()
    b.failure(T0, p)
    b.admit(T0 + 10)
    assert b.blocked_until(T0 + 15, p) == T0 + 20
    assert b.blocked_until(T0 + 20, p) is None


def test_provider_breaker_counts_5xx_timeouts_network_but_not_client_errors() -> None:
    r, clock = state({"p": {"resilience_profile": "tight"}}, {"profiles": {"tight": {"failure_threshold": 3, "reset_s": 10}}})
    conn = make_conn("p", ("a", "b", "c", "d"))
    for _ in range(5):
        fail(r, conn, "a", err(400))
        fail(r, conn, "a", err(404))
    assert r.provider_block(conn) is None
    fail(r, conn, "a", err(500))
    fail(r, conn, "b", err(504, kind="timeout"))
    assert r.provider_block(conn) is None
    fail(r, conn, "c", err(502, kind="bad_gateway"))
    why, until = r.provider_block(conn)
    assert why == "circuit breaker of p is open" and until == T0 + 10
    clock.advance(10)
    assert r.provider_block(conn) is None  # half-open: one probe may go
    r.begin(conn, conn.accounts[3])
    assert r.provider_block(conn) is not None  # the probe is out
    r.success(conn, conn.accounts[3])
    assert r.provider_block(conn) is None and r.providers["p"].state == CLOSED


def test_429s_open_the_account_breaker_not_the_provider_breaker() -> None:
    r, clock = state({"p": {"resilience_profile": "t"}}, {"profiles": {"t": {"failure_threshold": 2, "reset_s": 100}}})
    conn = make_conn("p")
    fail(r, conn, "a", err(429, retry_after=1))
    clock.advance(2)
    fail(r, conn, "a", err(429, retry_after=1))
    clock.advance(2)
    assert r.provider_block(conn) is None
    assert r.account_block(conn, "a") == ("circuit breaker of account a is open", T0 + 102)


# ------------------------------------------------------------------ cooldowns


def test_429_with_retry_after_cools_the_account_until_then() -> None:
    r, clock = state()
    conn = make_conn("p", ("a", "b"))
    assert fail(r, conn, "a", err(429, retry_after=12)) == T0 + 12
    assert r.account_block(conn, "a") == ("rate limited by the upstream (429)", T0 + 12)
    assert r.pick(conn).label == "b"
    clock.advance(12)
    assert r.account_block(conn, "a") is None


def test_429_retry_after_header_as_http_date() -> None:
    r, _ = state()
    conn = make_conn("p")
    fail(r, conn, "a", err(429, headers={"retry-after": "Thu, 01 Jan 2026 00:01:00 GMT"}))
    assert r.account_block(conn, "a")[1] == T0 + 60


def test_429_without_retry_after_uses_the_learned_reset() -> None:
    r, clock = state()
    conn = make_conn("p", rate_limit_headers=OPENAI_HEADERS)
    a = conn.accounts[0]
    r.learn(conn, a, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s",
                      "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "1s"})
    assert fail(r, conn, "a", err(429)) == T0 + 360
    clock.advance(360)
    assert r.account_block(conn, "a") is None


def test_429_with_nothing_learned_backs_off_exponentially() -> None:
    r, clock = state()
    conn = make_conn("p")
    assert fail(r, conn, "a", err(429)) == T0 + 1
    clock.advance(1)
    assert fail(r, conn, "a", err(429)) == T0 + 1 + 2


def test_quota_cools_for_quota_cooldown_s_when_no_reset_is_known() -> None:
    r, _ = state()
    conn = make_conn("p")
    e = err(429, message="You exceeded your current quota", body=b'{"error":{"type":"insufficient_quota"}}')
    assert classify(e) == "quota"
    assert fail(r, conn, "a", e) == T0 + 3600
    assert r.account_block(conn, "a") == ("quota exhausted", T0 + 3600)
    assert classify(err(402)) == "quota"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_disable_the_account_until_the_config_changes(status: int) -> None:
    r, clock = state()
    conn = make_conn("p", ("a", "b"))
    assert fail(r, conn, "a", err(status)) is None
    why, until = r.account_block(conn, "a")
    assert f"refused this account's credentials ({status})" in why and until is None
    clock.advance(10**6)
    assert r.account_block(conn, "a") is not None  # time does not heal a wrong key
    r.configure(runtime(fingerprint="fp2"))
    assert r.account_block(conn, "a") is None


def test_5xx_and_timeouts_back_off_exponentially_up_to_the_cap_and_success_resets() -> None:
    r, clock = state({"p": {"resilience_profile": "b"}},
                     {"profiles": {"b": {"cooldown_base_s": 1, "cooldown_max_s": 5, "failure_threshold": 100}}})
    conn = make_conn("p")
    waits = []
    for e in (err(500), err(504, kind="timeout"), err(503), err(502, kind="bad_gateway"), err(500)):
        until = fail(r, conn, "a", e)
        waits.append(until - clock())
        clock.t = until
    assert waits == [0, 1, 2, 4, 5]  # a single failure is not backed off; the second in a row is
    fail(r, conn, "a", err(500))
    assert r.account_block(conn, "a", model="") is not None  # the failing model backs off...
    assert r.account_block(conn, "a", model="other") is None  # ...its siblings on the account do not
    r.success(conn, conn.accounts[0])
    assert fail(r, conn, "a", err(500)) - clock() == 0


def test_a_success_clears_a_backoff_but_not_a_429_cooldown() -> None:
    r, _ = state()
    conn = make_conn("p")
    a = conn.accounts[0]
    fail(r, conn, "a", err(500))
    fail(r, conn, "a", err(500))
    r.success(conn, a)  # a request that was already in flight came back fine
    assert r.account_block(conn, "a") is None
    fail(r, conn, "a", err(429, retry_after=30))
    r.success(conn, a)
    assert r.account_block(conn, "a") is not None


# ------------------------------------------------------------------ learning


@pytest.mark.parametrize(("value", "expected"), [
    ("1s", T0 + 1), ("6m0s", T0 + 360), ("20ms", T0 + 0.02), ("1h2m3.5s", T0 + 3723.5), ("30", T0 + 30), ("0.5", T0 + 0.5),
    ("2026-01-01T00:00:30Z", T0 + 30), ("2026-01-01T00:00:30+00:00", T0 + 30), ("Thu, 01 Jan 2026 00:00:30 GMT", T0 + 30),
    (str(int(T0 + 30)), T0 + 30), (str(int((T0 + 30) * 1000)), T0 + 30), ("", None), ("soon", None), ("-3", None), ("nan", None),
])
def test_parse_delay_reads_every_header_shape(value: str, expected: float | None) -> None:
    got = parse_delay(value, T0)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_learned_anthropic_headers_block_an_exhausted_account_until_the_reset() -> None:
    headers = {"remaining_tokens": "anthropic-ratelimit-tokens-remaining", "reset_tokens": "anthropic-ratelimit-tokens-reset",
               "limit_tokens": "anthropic-ratelimit-tokens-limit"}
    r, clock = state()
    conn = make_conn("anthropic", ("a", "b"), rate_limit_headers=headers)
    r.learn(conn, conn.accounts[0], {"anthropic-ratelimit-tokens-limit": "80000", "anthropic-ratelimit-tokens-remaining": "0",
                                     "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:45Z"})
    assert r.account_block(conn, "a") == ("upstream token limit reached", T0 + 45)
    assert r.pick(conn).label == "b"
    view = r.account_view(conn, conn.accounts[0])
    assert view["learned"] == {"limit_tokens": 80000.0, "remaining_tokens": 0.0, "reset_tokens": 45.0}
    clock.advance(45)
    assert r.account_block(conn, "a") is None


def test_learn_ignores_undeclared_and_unreadable_headers() -> None:
    r, _ = state()
    conn = make_conn("p", rate_limit_headers={"remaining_requests": "x-remaining", "reset_requests": "x-reset"})
    r.learn(conn, conn.accounts[0], {"x-remaining": "many", "x-reset": "later", "x-other": "0"})
    assert r.accounts[("p", "a")].limits.learned == {}
    r.learn(make_conn("q"), conn.accounts[0], {"x-remaining": "0"})  # spec declares nothing: nothing kept
    assert ("q", "a") not in r.accounts


# ------------------------------------------------------------------ picking accounts


def test_fill_first_exclude_and_none_available() -> None:
    r, _ = state()
    conn = make_conn("p", ("a", "b", "c"))
    assert r.pick(conn).label == "a"
    assert r.pick(conn, exclude={"a"}).label == "b"
    fail(r, conn, "b", err(429, retry_after=5))
    assert r.pick(conn, exclude={"a"}).label == "c"
    assert r.pick(conn, exclude={"a", "c"}) is None


def test_round_robin_rotates_with_stickiness() -> None:
    r, _ = state({"p": {"account_strategy": "round-robin"}})
    conn = make_conn("p", ("a", "b", "c"))
    assert [r.pick(conn).label for _ in range(4)] == ["a", "b", "c", "a"]
    r2, _ = state({"p": {"account_strategy": "round-robin", "resilience_profile": "s"}}, {"profiles": {"s": {"sticky_requests": 2}}})
    assert [r2.pick(conn).label for _ in range(6)] == ["a", "a", "b", "b", "c", "c"]
    fail(r2, conn, "a", err(429, retry_after=60))  # a cooling account is passed over
    assert [r2.pick(conn).label for _ in range(3)] == ["b", "b", "c"]


def test_least_used_and_random() -> None:
    r, _ = state({"p": {"account_strategy": "least-used"}})
    conn = make_conn("p", ("a", "b", "c"))
    r.begin(conn, conn.accounts[0])
    r.begin(conn, conn.accounts[1])
    assert r.pick(conn).label == "c"
    r.begin(conn, conn.accounts[2])
    r.end(conn, conn.accounts[1])
    assert r.pick(conn).label == "b"
    r3, _ = state({"p": {"account_strategy": "random"}}, seed=4)
    weighted = make_conn("p", ("a", "b"), weights=(0.0, 1.0))
    assert {r3.pick(weighted).label for _ in range(50)} == {"b"}
    picks = [r3.pick(conn).label for _ in range(300)]
    assert set(picks) == {"a", "b", "c"}
    one, _ = state({"p": {"account_strategy": "random"}}, seed=8)
    two, _ = state({"p": {"account_strategy": "random"}}, seed=8)
    assert [one.pick(conn).label for _ in range(20)] == [two.pick(conn).label for _ in range(20)]
    with pytest.raises(ValueError, match="unknown account strategy 'sticky'"):
        r.pick(conn, "sticky")


# ------------------------------------------------------------------ client-side limits


def test_client_side_rpm_blocks_until_the_minute_frees_a_slot() -> None:
    r, clock = state({"p": {"rpm": 2}})
    conn = make_conn("p", ("a", "b"))
    a = conn.accounts[0]
    r.begin(conn, a)
    clock.advance(10)
    r.begin(conn, a)
    assert r.account_block(conn, "a") == ("client-side limit of 2 requests per minute reached", T0 + 60)
    assert r.pick(conn).label == "b"
    clock.t = T0 + 60
    assert r.account_block(conn, "a") is None


def test_client_side_tpm_counts_estimates_and_output() -> None:
    r, clock = state({"p": {"tpm": 1000}})
    conn = make_conn("p")
    a = conn.accounts[0]
    assert r.account_block(conn, "a", tokens=5000) is None  # too big for tpm alone, but the window is empty
    r.begin(conn, a, tokens=600)
    r.add_tokens("p", "a", 300)
    assert r.account_block(conn, "a", tokens=50) is None
    assert r.account_block(conn, "a", tokens=200)[0] == "client-side limit of 1000 tokens per minute reached"
    clock.advance(60)
    assert r.account_block(conn, "a", tokens=200) is None


# ------------------------------------------------------------------ concurrency


def test_concurrency_cap_queues_in_order_and_times_out() -> None:
    async def main() -> None:
        r, _ = state({"p": {"max_concurrent": 1, "queue_timeout_s": 0.5}})
        conn = make_conn("p")
        assert await r.acquire_slot(conn)
        order: list[str] = []

        async def waiter(name: str) -> None:
            if await r.acquire_slot(conn):
                order.append(name)
                await asyncio.sleep(0)
                r.release_slot(conn)

        tasks = [asyncio.create_task(waiter(n)) for n in ("first", "second")]
        await asyncio.sleep(0.01)
        r.release_slot(conn)
        await asyncio.gather(*tasks)
        assert order == ["first", "second"]
        assert await r.acquire_slot(conn)
        r2, _ = state({"p": {"max_concurrent": 1, "queue_timeout_s": 0.02}})
        assert await r2.acquire_slot(conn)
        assert not await r2.acquire_slot(conn)  # waited 20 ms, nothing freed: fail over
        r3, _ = state({"p": {"max_concurrent": 1, "queue_timeout_s": 0}})
        assert await r3.acquire_slot(conn)
        assert not await r3.acquire_slot(conn)
        assert await r3.acquire_slot(make_conn("uncapped"))

    asyncio.run(main())


def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    async def main() -> None:
        r, _ = state({"p": {"max_concurrent": 1, "queue_timeout_s": 5}})
        conn = make_conn("p")
        assert await r.acquire_slot(conn)
        t = asyncio.create_task(r.acquire_slot(conn))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        r.release_slot(conn)
        assert await r.acquire_slot(conn)
        assert r._slots["p"].active == 1

    asyncio.run(main())


# ------------------------------------------------------------------ management


def test_reset_closes_breakers_and_clear_forgets_cooldowns_per_connection() -> None:
    r, _ = state({"p": {"resilience_profile": "t"}, "q": {"resilience_profile": "t"}}, {"profiles": {"t": {"failure_threshold": 1}}})
    p, q = make_conn("p"), make_conn("q")
    fail(r, p, "a", err(500))
    fail(r, p, "a", err(500))
    fail(r, q, "a", err(401))
    assert r.provider_block(p) is not None
    assert r.reset() == 2  # the provider breaker and the account breaker of p
    assert r.provider_block(p) is None
    assert r.account_block(p, "a", model="") is not None  # still backing off: reset only closes breakers
    assert r.clear(["p"]) == 1
    assert r.account_block(p, "a", model="") is None
    assert r.account_block(q, "a") is not None
    r.clear()
    assert r.account_block(q, "a") is None


def test_configure_is_cheap_for_the_same_fingerprint_and_overrides_survive_reloads() -> None:
    r, _ = state(resilience={"profiles": {"t": {"failure_threshold": 2}}})
    r.set_overrides({"profiles": {"t": {"reset_s": 1}, "new": {"failure_threshold": 9}}})
    assert r.profiles["t"] == Profile(failure_threshold=2, reset_s=1)  # over the config's profile
    r.configure(runtime(fingerprint="fp2", resilience={"profiles": {"t": {"failure_threshold": 3}}}))
    assert r.profiles["t"] == Profile(failure_threshold=3, reset_s=1) and r.profiles["new"].failure_threshold == 9
    assert r.overrides == {"t": Profile(failure_threshold=3, reset_s=1), "new": Profile(failure_threshold=9)}
    before = r.profiles
    r.configure(runtime(fingerprint="fp2", resilience={"bogus": 1}))  # same fingerprint: not even read
    assert r.profiles is before
    for bad, msg in [({"profiles": {"t": {"reset": 1}}}, "profiles.t.reset: unknown key"), ([], "body must be"),
                     ({"profiles": []}, "profiles: must be a mapping"), ({"x": 1}, "body must be")]:
        with pytest.raises(ValueError, match=msg):
            r.set_overrides(bad)


def test_snapshot_shows_accounts_by_label_and_never_a_key() -> None:
    r, _ = state({"p": {"rpm": 10}})
    conn = make_conn("p", ("a", "b"))
    fail(r, conn, "a", err(429, retry_after=3))
    r.begin(conn, conn.accounts[1])
    snap = r.snapshot([conn])
    dumped = orjson.dumps(snap)
    assert b"sk-secret" not in dumped
    assert [a["account"] for a in snap["accounts"]] == ["a", "b"]
    a, b = snap["accounts"]
    assert a["available"] is False and a["retry_at"] == T0 + 3 and a["cooling_until"] == T0 + 3
    assert b["in_flight"] == 1 and b["client_window"] == {"requests": 1, "tokens": 0}
    assert snap["connections"]["p"]["rpm"] == 10 and snap["connections"]["p"]["breaker"]["state"] == CLOSED
