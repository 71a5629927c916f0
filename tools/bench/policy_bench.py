"""Policy CPU per request: evaluating 50 rules (mixed operators, none denying) next to 0 rules,
the second phase per target, applying a decision, and admitting under rate limits. In-process,
process CPU time over many iterations. Run alone: `python -m tools.bench.policy_bench`."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from engine.ip_filter import IPFilter
from engine.policy import Facts, apply_to_request, compile_policies
from engine.policy_state import PolicyState


def cpu_us(fn: Callable[[], object], n: int) -> float:
    """Median of five runs of `n` calls, in CPU microseconds per call (the machine may be shared)."""
    fn()
    runs = []
    for _ in range(5):
        t = time.process_time()
        for _ in range(n):
            fn()
        runs.append((time.process_time() - t) / n * 1e6)
    return sorted(runs)[2]


def fifty_rules() -> list[dict[str, Any]]:
    """Ten rules of each of five shapes; a few match the request and act, none denies."""
    rules: list[dict[str, Any]] = []
    for i in range(10):
        rules += [
            {"name": f"key-{i}", "match": {"field": "key", "eq": f"team-{i}"}, "rate_limit": {"rpm": 60}},
            {"name": f"big-{i}", "match": {"all": [{"field": "model", "glob": ["claude-*", "gpt-5*"]},
                                                   {"field": "input_tokens", "gt": 100_000}]}, "route": "long-context"},
            {"name": f"team-{i}", "match": {"any": [{"field": "header.x-team", "in": ["red", "blue"]},
                                                    {"field": "ip", "in": ["192.168.0.0/16", "2001:db8::/32"]}]},
             "tag": [f"team{i}"]},
            {"name": f"fmt-{i}", "match": {"not": {"field": "format", "regex": "^(openai|anthropic)"}},
             "cap": {"max_tokens": 4096}},
            {"name": f"hours-{i}", "match": {"all": [{"schedule": {"days": ["mon", "tue", "wed", "thu", "fri"],
                                                                    "hours": "09:00-18:00", "tz": "Europe/Paris"}},
                                                     {"field": "stream", "eq": True}]},
             "system_prompt": {"text": "Office hours."}} if i < 5 else
            {"name": f"prov-{i}", "match": {"field": "provider", "in": ["anthropic", "gemini"]}, "set": {"temperature": 0.2}},
        ]
    return rules


def run() -> list[tuple[str, str, str]]:
    problems: list[Any] = []
    empty = compile_policies([], (), lambda p, m: problems.append(m))
    fifty = compile_policies(fifty_rules(), (), lambda p, m: problems.append(m))
    if problems or len(fifty) != 50:
        raise RuntimeError(f"the benchmark rules do not compile: {problems}")
    facts = Facts(key="team-3", model="gpt-4.1", format="openai-chat", route="/v1/chat/completions", stream=True,
                  input_tokens=1200, headers={"x-team": "red", "user-agent": "bench"}, ip="10.1.2.3")
    now = datetime(2026, 1, 6, 10, 0, tzinfo=UTC)  # a Tuesday, 11:00 in Paris: the schedule rules match
    first = fifty.evaluate(facts, now)
    if first.denied:
        raise RuntimeError("the benchmark request must not be denied")
    resolved = facts.with_target("openai/gpt-4.1", "openai", None)
    req = {"model": "gpt-4.1", "system": "Be terse.", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
           "max_tokens": 9000, "stream": True}
    state = PolicyState()
    flt = IPFilter(allow=["10.0.0.0/8", "2001:db8::/32"], block=["10.66.0.0/16"])
    clock = [1_767_700_000.0]

    def admit_release() -> None:
        clock[0] += 1.5  # 40 requests a minute: under the rule's 60, so every admit succeeds
        state.release(state.admit("team-3", first, clock[0], tokens=1200), 1500, now=clock[0])

    n = 20_000
    base = cpu_us(lambda: empty.evaluate(facts, now), n)
    full = cpu_us(lambda: fifty.evaluate(facts, now), n)
    phase2 = cpu_us(lambda: fifty.evaluate(resolved, now, prior=first), n)
    second = fifty.evaluate(resolved, now, prior=first)
    apply = cpu_us(lambda: apply_to_request(req, second), n)
    adm = cpu_us(admit_release, n)
    ip = cpu_us(lambda: flt.allows("10.1.2.3"), n)
    matched = sum(1 for t in first.trace if t["matched"])
    return [
        ("evaluate, 0 rules (µs CPU/request)", f"{base:.1f}", "-"),
        (f"evaluate, 50 rules, {matched} matching, phase one (µs CPU/request)", f"{full:.1f}", "-"),
        ("added by 50 rules (µs CPU/request)", f"{full - base:.1f}", "<= 50"),
        ("phase two per target, 5 deferred rules (µs CPU)", f"{phase2:.1f}", "-"),
        ("apply_to_request (µs CPU)", f"{apply:.1f}", "-"),
        (f"rate-limit admit + release, {len(first.limits)} limit(s) (µs CPU)", f"{adm:.1f}", "-"),
        ("IP filter check, cached (µs CPU)", f"{ip:.2f}", "-"),
    ]


def main() -> None:
    from tools.bench.__main__ import table

    table("Policies", [tuple(r) for r in run()], ("figure", "measured", "target"))


if __name__ == "__main__":
    main()
