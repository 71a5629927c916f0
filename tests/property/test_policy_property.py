"""Policies, for any rule list and any request: compiling never raises; evaluation terminates and is
deterministic; a deny stops the walk at the first matching deny rule; splitting evaluation in two
phases decides what one pass over the resolved request decides; and a request denied by a rule
never reaches an upstream."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.policy import Facts, apply_to_request, compile_policies

TEXT = ["a", "b", "gpt-4.1", "claude-x", "team-a", "openai", "coding", ""]
FIELD_VALUES: dict[str, Any] = {
    "key": st.sampled_from(TEXT), "model": st.sampled_from(TEXT), "resolved_model": st.sampled_from(TEXT),
    "provider": st.sampled_from(TEXT), "combo": st.sampled_from(TEXT), "format": st.sampled_from(TEXT),
    "route": st.sampled_from(TEXT), "header.x-team": st.sampled_from(TEXT), "ip": st.sampled_from(["10.0.0.1", "::1", "10.0.0.0/8"]),
    "has_tools": st.booleans(), "has_images": st.booleans(), "stream": st.booleans(),
    "input_tokens": st.integers(0, 5000), "max_tokens": st.integers(0, 5000),
}
OPS = ["eq", "ne", "in", "glob", "regex", "gt", "gte", "lt", "lte"]


@st.composite
def leaf(draw: Any) -> dict[str, Any]:
    field = draw(st.sampled_from(sorted(FIELD_VALUES)))
    op = draw(st.sampled_from(OPS))
    value: Any = draw(FIELD_VALUES[field])
    if op == "in":
        value = [value, draw(FIELD_VALUES[field])]
    elif op in ("glob", "regex"):
        value = draw(st.sampled_from(["*", "gpt-*", "^c", "a|b", "[", "(("]))
    return {"field": field, op: value}


schedules = st.builds(lambda days, hours, tz: {"schedule": {"days": days, "hours": hours, "tz": tz}},
                      st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1, max_size=3, unique=True),
                      st.sampled_from(["09:00-18:00", "22:00-06:00", "00:00-24:00", "12:00-12:00"]),
                      st.sampled_from(["UTC", "Europe/Paris", "Asia/Tokyo", "Nowhere/Land"]))
conditions = st.recursive(
    st.one_of(leaf(), schedules),
    lambda inner: st.one_of(st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
                            st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
                            st.builds(lambda x: {"not": x}, inner)),
    max_leaves=4,
)
actions = st.fixed_dictionaries({}, optional={
    "deny": st.builds(lambda s: {"status": s, "message": "no {model}"}, st.sampled_from([403, 429, 503])),
    "route": st.sampled_from(["fast", "coding"]),
    "set": st.builds(lambda t: {"temperature": t}, st.sampled_from([0.0, 0.5, 1.5])),
    "cap": st.builds(lambda m: {"max_tokens": m}, st.integers(1, 4000)),
    "system_prompt": st.builds(lambda m, t: {"mode": m, "text": t}, st.sampled_from(["prepend", "append", "replace"]), st.sampled_from(["", "S"])),
    "thinking_budget": st.sampled_from([{"mode": "off"}, {"mode": "tokens", "tokens": 2000}, {"mode": "effort", "effort": "high"}]),
    "rate_limit": st.just({"rpm": 5}),
    "tag": st.lists(st.sampled_from(["x", "y"]), min_size=1, max_size=2),
})


@st.composite
def rule_lists(draw: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 6))):
        rule = {"name": f"r{i}", **draw(actions)}
        if draw(st.booleans()):
            rule["match"] = draw(conditions)
        out.append(rule)
    return out


facts = st.builds(
    Facts, key=st.one_of(st.none(), st.sampled_from(TEXT)), model=st.sampled_from(TEXT), format=st.sampled_from(TEXT),
    route=st.sampled_from(TEXT), has_tools=st.booleans(), has_images=st.booleans(), stream=st.booleans(),
    input_tokens=st.integers(0, 5000), max_tokens=st.one_of(st.none(), st.integers(0, 5000)),
    headers=st.dictionaries(st.just("x-team"), st.sampled_from(TEXT), max_size=1), ip=st.sampled_from(["10.0.0.1", "::1", "", "x"]),
)
targets = st.lists(st.tuples(st.sampled_from(TEXT), st.sampled_from(TEXT), st.one_of(st.none(), st.sampled_from(TEXT))),
                   min_size=1, max_size=3)
times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))


def same(a: Any, b: Any) -> bool:
    return (a.deny, a.route, a.ops, a.tags, a.limits, a.capabilities, a.context, a.trace) == \
        (b.deny, b.route, b.ops, b.tags, b.limits, b.capabilities, b.context, b.trace)


@settings(max_examples=200, deadline=None)
@given(rules=rule_lists(), f=facts, plan=targets, now=times)
def test_any_rules_any_request(rules: list[dict[str, Any]], f: Facts, plan: list[tuple[str, str, str | None]], now: datetime) -> None:
    ps = compile_policies(rules, (), lambda p, m: None)  # never raises; broken rules are left out
    first = ps.evaluate(f, now)
    assert same(first, ps.evaluate(f, now))  # deterministic

    # the deny, if any, is the first matching deny rule, and the walk stops there
    trace = first.trace
    if first.denied:
        assert first.deny is not None and trace[-1]["rule"] == first.deny.rule and trace[-1]["matched"] is True
        assert not first.pending
    assert all(not (t["matched"] and "deny" in t.get("actions", {})) for t in trace[:-1])

    upstream_calls = []
    for resolved_model, provider, combo in plan:
        rf = f.with_target(resolved_model, provider, combo)
        second = ps.evaluate(rf, now, prior=first)
        assert same(second, ps.evaluate(rf, now, prior=first))
        assert not second.pending
        one_pass = ps.evaluate(rf, now)
        assert second.denied == one_pass.denied  # two phases decide what one pass decides
        if not second.denied:
            assert same(second, one_pass)
        if first.denied:
            assert second.denied
        if not second.denied:  # the stand-in pipeline: only an allowed target is sent
            upstream_calls.append(apply_to_request({"model": f.model, "messages": []}, second))
    if first.denied:
        assert upstream_calls == []  # a request denied by a rule never reaches upstream
