"""Combo strategies: each ordering, deterministic with a seeded RoutingStats, and capability filtering.

The builders here (make_conn, make_target, make_combo) are shared by the other routing tests: they
build Connection/Target objects straight from the runtime dataclasses, with no spec files.
"""

from __future__ import annotations

import itertools
from collections import Counter
from types import MappingProxyType as MP
from typing import Any

import pytest

import engine.strategies as S
from engine.pricing import Price, cost_micro_usd
from engine.routing import STRATEGIES, Target
from engine.runtime import Account, Combo, Connection, Model, ProviderSpec

NEW = ("weighted", "round-robin", "random", "strict-random", "least-used", "cost-optimized", "latency-optimized", "context-optimized")


def make_spec(pid: str = "p", rate_limit_headers: dict[str, str] | None = None) -> ProviderSpec:
    return ProviderSpec(id=pid, name=pid, format="openai-chat", base_url="http://upstream.test", requires_base_url=False,
                        auth=MP({"kind": "bearer"}), headers=MP({}), endpoints=MP({}), rate_limit_headers=MP(rate_limit_headers or {}),
                        timeouts=MP({}), aliases=(), models=MP({}), file="")


def make_conn(cid: str = "p", accounts: tuple[str, ...] = ("a",), rate_limit_headers: dict[str, str] | None = None,
              weights: tuple[float, ...] | None = None) -> Connection:
    accs = tuple(Account(label, f"sk-secret-{cid}-{label}", (weights or (1.0,) * len(accounts))[i]) for i, label in enumerate(accounts))
    return Connection(id=cid, spec=make_spec(cid, rate_limit_headers), format=None,  # type: ignore[arg-type]
                      base_url="http://upstream.test", accounts=accs, headers=MP({}), models=MP({}), timeouts=MP({}))


def make_target(cid: str = "p", mid: str = "m", *, conn: Connection | None = None, weight: float = 1.0, **model: Any) -> Target:
    return Target(conn or make_conn(cid), Model(id=mid, upstream=mid, **model), f"{cid}/{mid}", weight)


def make_combo(name: str = "c", strategy: str = "priority", **settings: Any) -> Combo:
    return Combo(name, strategy, (), MP(settings))


def five() -> list[Target]:
    return [make_target(f"p{i}", "m") for i in range(5)]


def keys(ts: list[Target]) -> list[str]:
    return [t.key for t in ts]


def test_every_strategy_is_registered() -> None:
    assert set(NEW) | {"priority"} <= set(STRATEGIES)


@pytest.mark.parametrize("name", ["priority", *NEW])
@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_each_strategy_returns_a_permutation(name: str, n: int) -> None:
    stats = S.RoutingStats(seed=7)
    ts = [make_target(f"p{i}", "m", weight=float(i % 3), context=1000 * (i + 1), price=Price(input=i, output=i)) for i in range(n)]
    info = {"stats": stats, "input_tokens": 500, "max_tokens": 100, "needs": set()}
    for _ in range(4):
        out = STRATEGIES[name](list(ts), make_combo(strategy=name), info)
        assert sorted(keys(out)) == sorted(keys(ts))


def test_strategies_work_without_stats_or_sizes() -> None:
    for name in NEW:
        assert len(STRATEGIES[name](five(), make_combo(), {})) == 5


def test_weighted_follows_the_weights_and_is_reproducible() -> None:
    ts = [make_target("heavy", weight=3.0), make_target("light", weight=1.0), make_target("off", weight=0.0)]
    first = Counter()
    stats = S.RoutingStats(seed=42)
    for _ in range(4000):
        out = S.weighted(ts, make_combo(), {"stats": stats})
        assert out[-1].key == "off/m"  # weight 0: a fallback only
        first[out[0].key] += 1
    assert 0.72 < first["heavy/m"] / 4000 < 0.78
    a, b = S.RoutingStats(seed=1), S.RoutingStats(seed=1)
    assert [keys(S.weighted(ts, make_combo(), {"stats": a})) for _ in range(5)] == [
        keys(S.weighted(ts, make_combo(), {"stats": b})) for _ in range(5)]


def test_round_robin_rotates_per_combo_and_survives_a_reload() -> None:
    stats = S.RoutingStats()
    ts = five()
    firsts = [S.round_robin(ts, make_combo("a"), {"stats": stats})[0].key for _ in range(6)]
    assert firsts == ["p0/m", "p1/m", "p2/m", "p3/m", "p4/m", "p0/m"]
    assert keys(S.round_robin(ts, make_combo("b"), {"stats": stats}))[0] == "p0/m"  # its own cursor
    reloaded = make_combo("a")  # a new Combo object after a reload: the cursor carries on
    assert keys(S.round_robin(ts, reloaded, {"stats": stats})) == ["p1/m", "p2/m", "p3/m", "p4/m", "p0/m"]


def test_random_is_seeded_and_covers_all_orders() -> None:
    ts = five()[:3]
    stats = S.RoutingStats(seed=3)
    seen = {tuple(keys(S.random_order(ts, make_combo(), {"stats": stats}))) for _ in range(200)}
    assert len(seen) == 6

    def run() -> list[list[str]]:
        st = S.RoutingStats(seed=9)
        return [keys(S.random_order(ts, make_combo(), {"stats": st})) for _ in range(10)]

    assert run() == run()


def test_strict_random_deals_each_target_first_once_per_cycle() -> None:
    stats = S.RoutingStats(seed=5)
    ts = five()
    for _cycle in range(3):
        firsts = [S.strict_random(ts, make_combo(), {"stats": stats})[0].key for _ in range(5)]
        assert sorted(firsts) == sorted(keys(ts))
    # a reload that removes targets: the deck forgets them and the cycle goes on
    S.strict_random(ts, make_combo(), {"stats": stats})
    fewer = ts[:3]
    left = len([k for k in stats.decks["c"] if k in keys(fewer)])
    dealt = [S.strict_random(fewer, make_combo(), {"stats": stats})[0].key for _ in range(left + 3)]
    assert set(dealt) <= set(keys(fewer))
    assert sorted(dealt[left:]) == sorted(keys(fewer))  # a full new cycle after the old deck ran out


def test_least_used_prefers_fewest_in_flight_and_keeps_ties_in_order() -> None:
    stats = S.RoutingStats()
    ts = five()
    for _ in range(2):
        stats.started("p0/m")
    stats.started("p2/m")
    assert keys(S.least_used(ts, make_combo(), {"stats": stats})) == ["p1/m", "p3/m", "p4/m", "p2/m", "p0/m"]
    stats.ended("p0/m")
    stats.ended("p0/m")
    assert keys(S.least_used(ts, make_combo(), {"stats": stats}))[0] == "p0/m"


def test_cost_optimized_ranks_by_this_request_size_unknown_last() -> None:
    cheap_in = make_target("cheap-in", price=Price(input=100_000, output=10_000_000))  # $0.1 / $10 per M
    cheap_out = make_target("cheap-out", price=Price(input=5_000_000, output=1_000_000))  # $5 / $1 per M
    unknown = make_target("unknown")
    no_output_price = make_target("half", price=Price(input=1))
    ts = [unknown, no_output_price, cheap_out, cheap_in]
    big_prompt = S.cost_optimized(ts, make_combo(), {"input_tokens": 100_000, "max_tokens": 100})
    assert keys(big_prompt) == ["cheap-in/m", "cheap-out/m", "unknown/m", "half/m"]
    long_answer = S.cost_optimized(ts, make_combo(), {"input_tokens": 10, "max_tokens": 50_000})
    assert keys(long_answer)[:2] == ["cheap-out/m", "cheap-in/m"]
    assert keys(long_answer)[2:] == ["unknown/m", "half/m"]  # unknown prices keep their order


def test_cost_optimized_agrees_with_the_pricing_module() -> None:
    prices = [Price(input=i * 137_000, output=j * 911_000, cached_input=1) for i in range(1, 5) for j in range(1, 5)]
    ts = [make_target(f"p{n}", price=p) for n, p in enumerate(prices)]
    for inp, out in [(10, 5000), (50_000, 10), (1234, 567)]:
        ranked = S.cost_optimized(ts, make_combo(), {"input_tokens": inp, "max_tokens": out})
        costs = [cost_micro_usd(t.model.price, {"input_tokens": inp, "output_tokens": out}) for t in ranked]
        assert costs == sorted(costs)


def test_latency_optimized_learns_and_explores_unmeasured_targets() -> None:
    stats = S.RoutingStats(alpha=0.5)
    a, b, c = make_target("a"), make_target("b"), make_target("c")
    stats.observe("a/m", True, 300)
    stats.observe("b/m", True, 100)
    assert keys(S.latency_optimized([a, b, c], make_combo(), {"stats": stats})) == ["c/m", "b/m", "a/m"]
    stats.observe("c/m", True, 200)
    assert keys(S.latency_optimized([a, b, c], make_combo(), {"stats": stats})) == ["b/m", "c/m", "a/m"]
    stats.observe("b/m", False)  # a failure counts as very slow
    assert keys(S.latency_optimized([a, b, c], make_combo(), {"stats": stats}))[-1] == "b/m"
    assert stats.targets["b/m"].latency_ms == pytest.approx((100 + 10_000) / 2)


def test_context_optimized_picks_the_smallest_window_that_fits() -> None:
    ts = [make_target("huge", context=1_000_000), make_target("none"), make_target("small", context=8_000),
          make_target("mid", context=128_000), make_target("tiny", context=4_000)]
    out = S.context_optimized(ts, make_combo(), {"input_tokens": 6_000, "max_tokens": 1_000})
    assert keys(out) == ["small/m", "mid/m", "huge/m", "none/m", "tiny/m"]
    out = S.context_optimized(ts, make_combo(), {"input_tokens": 100_000, "max_tokens": 4_000})
    assert keys(out) == ["mid/m", "huge/m", "none/m", "small/m", "tiny/m"]


def test_filter_capable_skips_with_a_reason() -> None:
    tools_only = make_target("t", capabilities=frozenset({"tools"}))
    all_caps = make_target("v", capabilities=frozenset({"tools", "vision", "reasoning"}), context=10_000)
    unknown = Target(make_conn("u"), make_conn("u").model("whatever"), "u/whatever")  # not in any spec: passes
    kept, skipped = S.filter_capable([tools_only, all_caps, unknown], {"vision", "tools"}, 100, None)
    assert kept == [all_caps, unknown]
    assert skipped == [(tools_only, "model lacks vision")]
    kept, skipped = S.filter_capable([tools_only, all_caps], set(), 9_000, 2_000)
    assert kept == [tools_only]
    assert "context window of 10000 tokens is smaller than the 11000 needed" in skipped[0][1]
    assert S.filter_capable([tools_only], (), 0, None) == ([tools_only], [])
    assert S.describe_skips(skipped).startswith("v/m: context window")


def test_needs_of_maps_request_features() -> None:
    assert S.needs_of({"tools", "images", "reasoning", "stop", "thinking"}) == {"tools", "vision", "reasoning"}


def test_preview_does_not_advance_cursors_decks_or_rng() -> None:
    stats = S.RoutingStats(seed=11)
    ts = five()
    S.round_robin(ts, make_combo(), {"stats": stats})
    S.strict_random(ts, make_combo("s"), {"stats": stats})
    before = (dict(stats.cursors), {k: list(v) for k, v in stats.decks.items()}, stats.rng.getstate())
    p = stats.preview()
    for _ in range(3):
        S.round_robin(ts, make_combo(), {"stats": p})
        S.strict_random(ts, make_combo("s"), {"stats": p})
        S.random_order(ts, make_combo(), {"stats": p})
    assert (stats.cursors, stats.decks, stats.rng.getstate()) == before
    assert keys(S.round_robin(ts, make_combo(), {"stats": stats}))[0] == "p1/m"


def test_stats_snapshot_and_bad_alpha() -> None:
    stats = S.RoutingStats()
    stats.started("a/m")
    stats.observe("a/m", True, 12.3456)
    stats.ended("a/m")
    stats.ended("a/m")  # never below zero
    assert stats.snapshot(["a/m", "b/m"]) == {
        "a/m": {"requests": 1, "failures": 0, "in_flight": 0, "latency_ms": 12.346},
        "b/m": {"requests": 0, "failures": 0, "in_flight": 0, "latency_ms": None},
    }
    with pytest.raises(ValueError, match="alpha"):
        S.RoutingStats(alpha=0)


def test_orders_are_permutations_for_all_combinations_of_three() -> None:
    ts = [make_target(f"p{i}", context=c, price=p) for i, (c, p) in
          enumerate(itertools.product([None, 5000], [None, Price(input=1, output=2)]))]
    for name in NEW:
        assert sorted(keys(STRATEGIES[name](ts, make_combo(), {"input_tokens": 4000}))) == sorted(keys(ts))
