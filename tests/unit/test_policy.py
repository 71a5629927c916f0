"""Policies: every operator and action, rule order, deny short-circuit, schedules on a frozen clock,
key shortcuts, two-phase evaluation, apply_to_request, and located compile errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from types import SimpleNamespace as NS
from typing import Any

import pytest

from engine.errors import ClientError, GatewayError
from engine.policy import (
    EFFORT_TOKENS,
    Facts,
    Limit,
    PolicyDenied,
    apply_to_request,
    compile_policies,
    effort_for_tokens,
)
from engine.policy_match import facts_from_mapping
from engine.source import load_yaml

MON_NOON = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # a Monday


def compile_ok(rules: list[dict[str, Any]], keys: Any = ()) -> Any:
    found: list[tuple[Any, str]] = []
    ps = compile_policies(rules, keys, lambda p, m: found.append((p, m)))
    assert found == []
    return ps


def problems(rules: Any, keys: Any = ()) -> list[tuple[tuple[Any, ...], str]]:
    found: list[tuple[tuple[Any, ...], str]] = []
    compile_policies(rules, keys, lambda p, m: found.append((p, m)))
    return found


def matches(cond: dict[str, Any], facts: Facts, now: datetime = MON_NOON) -> bool:
    ps = compile_ok([{"name": "r", "match": cond, "tag": ["hit"]}])
    return ps.evaluate(facts, now).tags == ("hit",)


F = Facts(key="team-a", model="gpt-4.1", format="openai-chat", route="/v1/chat/completions", has_tools=True,
          has_images=False, stream=True, input_tokens=1200, max_tokens=None,
          headers={"x-team": "red", "user-agent": "claude-cli/1.0"}, ip="10.1.2.3")


# -- operators -------------------------------------------------------------------------------

@pytest.mark.parametrize(("cond", "expected"), [
    ({"field": "key", "eq": "team-a"}, True),
    ({"field": "key", "eq": "team-b"}, False),
    ({"field": "key", "ne": "team-b"}, True),
    ({"field": "key", "ne": "team-a"}, False),
    ({"field": "model", "in": ["gpt-4.1", "o3"]}, True),
    ({"field": "model", "in": ["o3"]}, False),
    ({"field": "model", "glob": "gpt-*"}, True),
    ({"field": "model", "glob": "GPT-*"}, False),  # case-sensitive, like model ids
    ({"field": "model", "glob": ["claude-*", "gpt-4.?"]}, True),
    ({"field": "model", "glob": "gpt-4"}, False),  # a glob matches the whole value
    ({"field": "model", "regex": "4\\.1$"}, True),  # a regex searches anywhere
    ({"field": "model", "regex": ["^claude", "^o\\d"]}, False),
    ({"field": "format", "eq": "openai-chat"}, True),
    ({"field": "route", "glob": "/v1/*"}, True),
    ({"field": "input_tokens", "gt": 1000}, True),
    ({"field": "input_tokens", "gt": 1200}, False),
    ({"field": "input_tokens", "gte": 1200}, True),
    ({"field": "input_tokens", "lt": 1200}, False),
    ({"field": "input_tokens", "lte": 1200}, True),
    ({"field": "input_tokens", "eq": 1200}, True),
    ({"field": "input_tokens", "in": [1, 1200]}, True),
    ({"field": "max_tokens", "lt": 100}, False),  # absent: no comparison holds
    ({"field": "max_tokens", "gte": 0}, False),
    ({"field": "max_tokens", "ne": 100}, True),  # ... but it differs from any value
    ({"field": "has_tools", "eq": True}, True),
    ({"field": "has_images", "eq": True}, False),
    ({"field": "has_images", "ne": True}, True),
    ({"field": "stream", "in": [True]}, True),
    ({"field": "header.x-team", "eq": "red"}, True),
    ({"field": "header.X-Team", "eq": "red"}, True),  # header names are case-insensitive
    ({"field": "header.user-agent", "regex": "^claude-cli/"}, True),
    ({"field": "header.x-missing", "eq": "red"}, False),
    ({"field": "header.x-missing", "ne": "red"}, True),
    ({"field": "header.x-missing", "glob": "*"}, False),
    ({"field": "ip", "eq": "10.1.2.3"}, True),
    ({"field": "ip", "in": ["10.0.0.0/8"]}, True),
    ({"field": "ip", "in": ["192.168.0.0/16", "2001:db8::/32"]}, False),
    ({"field": "ip", "glob": "10.1.*"}, True),
    ({"field": "resolved_model", "eq": "openai/gpt-4.1"}, True),
    ({"field": "provider", "eq": "openai"}, True),
    ({"field": "combo", "eq": "coding"}, False),
    ({"field": "combo", "ne": "coding"}, True),  # no combo
])
def test_operator(cond: dict[str, Any], expected: bool) -> None:
    assert matches(cond, F.with_target("openai/gpt-4.1", "openai", None)) is expected


def test_ip_conditions_fold_ipv6_forms() -> None:
    six = Facts(ip="2001:db8::1")
    assert matches({"field": "ip", "eq": "2001:0db8:0000::0001"}, six)
    assert matches({"field": "ip", "in": ["2001:db8::/32"]}, six)
    assert not matches({"field": "ip", "in": ["10.0.0.0/8"]}, six)
    mapped = Facts(ip="::ffff:10.9.8.7")
    assert matches({"field": "ip", "in": ["10.0.0.0/8"]}, mapped)
    assert not matches({"field": "ip", "eq": "10.0.0.1"}, Facts(ip="not-an-ip"))


def test_missing_key_matches_only_negations() -> None:
    anon = Facts(key=None, model="m")
    assert not matches({"field": "key", "eq": "team-a"}, anon)
    assert not matches({"field": "key", "glob": "*"}, anon)
    assert matches({"field": "key", "ne": "team-a"}, anon)


def test_all_any_not_nest() -> None:
    cond = {"all": [{"field": "key", "glob": "team-*"},
                    {"any": [{"field": "model", "eq": "o3"}, {"not": {"field": "stream", "eq": False}}]},
                    {"not": {"any": [{"field": "header.x-team", "eq": "blue"}, {"field": "input_tokens", "gt": 5000}]}}]}
    assert matches(cond, F)
    assert not matches(cond, Facts(key="team-a", model="gpt-4.1", stream=False))
    assert not matches(cond, Facts(key="team-a", model="o3", headers={"x-team": "blue"}))
    assert matches({"all": [{"field": "model", "glob": "*"}]}, F)
    assert matches({"any": [{"field": "model", "eq": "x"}, {"field": "model", "eq": "y"}, {"field": "key", "eq": "team-a"}]}, F)
    assert not matches({"all": [{"field": "model", "eq": "gpt-4.1"}, {"field": "key", "eq": "x"}, {"field": "stream", "eq": True}]}, F)


# -- schedules on a frozen clock -------------------------------------------------------------

WORK_PARIS = {"schedule": {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": "09:00-18:00", "tz": "Europe/Paris"}}


@pytest.mark.parametrize(("when", "expected"), [
    (datetime(2026, 1, 5, 8, 0, tzinfo=UTC), True),  # Monday 09:00 in Paris (UTC+1): start included
    (datetime(2026, 1, 5, 7, 59, tzinfo=UTC), False),  # 08:59 Paris
    (datetime(2026, 1, 5, 16, 59, tzinfo=UTC), True),  # 17:59 Paris
    (datetime(2026, 1, 5, 17, 0, tzinfo=UTC), False),  # 18:00 Paris: end excluded
    (datetime(2026, 1, 10, 12, 0, tzinfo=UTC), False),  # Saturday
    (datetime(2026, 7, 6, 7, 30, tzinfo=UTC), True),  # summer time (UTC+2): 09:30 Paris
    (datetime(2026, 7, 6, 16, 30, tzinfo=UTC), False),  # 18:30 Paris in summer
    (datetime(2026, 1, 4, 23, 30, tzinfo=UTC), False),  # Sunday 23:30 UTC is Monday 00:30 Paris
    (datetime(2026, 1, 5, 12, 0), True),  # a naive time is taken as UTC
])
def test_schedule_in_paris(when: datetime, expected: bool) -> None:
    assert matches(WORK_PARIS, F, when) is expected


def test_schedule_across_time_zones() -> None:
    ny = {"schedule": {"days": ["mon"], "hours": "09:00-17:00", "tz": "America/New_York"}}
    tokyo = {"schedule": {"days": ["tue"], "hours": "00:00-03:00", "tz": "Asia/Tokyo"}}
    t = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)  # Monday 10:00 in New York, Tuesday 00:00 in Tokyo
    assert matches(ny, F, t) and matches(tokyo, F, t)
    assert not matches(ny, F, datetime(2026, 1, 5, 13, 59, tzinfo=UTC))  # 08:59 New York
    assert matches({"schedule": {"hours": "12:00-12:01"}}, F, MON_NOON)  # UTC by default, every day


def test_overnight_schedule_belongs_to_the_day_it_starts() -> None:
    night = {"schedule": {"days": ["fri"], "hours": "22:00-06:00", "tz": "UTC"}}
    assert matches(night, F, datetime(2026, 1, 9, 23, 0, tzinfo=UTC))  # Friday 23:00
    assert matches(night, F, datetime(2026, 1, 10, 5, 59, tzinfo=UTC))  # Saturday 05:59: Friday's night
    assert not matches(night, F, datetime(2026, 1, 10, 6, 0, tzinfo=UTC))
    assert not matches(night, F, datetime(2026, 1, 9, 3, 0, tzinfo=UTC))  # Friday 03:00 is Thursday's night
    assert not matches(night, F, datetime(2026, 1, 10, 23, 0, tzinfo=UTC))  # Saturday evening


def test_schedule_hour_lists_and_whole_day() -> None:
    split = {"schedule": {"hours": ["08:00-10:00", "14:00-24:00"]}}
    assert matches(split, F, datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    assert not matches(split, F, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    assert matches(split, F, datetime(2026, 1, 5, 23, 59, tzinfo=UTC))
    assert matches({"schedule": {"days": ["mon"]}}, F, datetime(2026, 1, 5, 0, 0, tzinfo=UTC))


# -- actions ---------------------------------------------------------------------------------

def test_deny_defaults_placeholders_and_error() -> None:
    ps = compile_ok([{"name": "block", "match": {"field": "model", "glob": "gpt-*"}, "deny": {}},
                     {"name": "custom", "deny": {"status": 429, "message": "no {model} for {key} today"}}])
    d = ps.evaluate(F, MON_NOON)
    assert d.denied and d.deny is not None
    assert (d.deny.status, d.deny.message, d.deny.rule) == (403, "request denied by policy 'block'", "block")
    err = d.error()
    assert isinstance(err, PolicyDenied) and isinstance(err, ClientError)
    assert (err.status, err.kind, err.rule) == (403, "permission", "block")
    d2 = ps.evaluate(Facts(key="team-b", model="o3"), MON_NOON)
    assert d2.deny is not None and d2.deny.message == "no o3 for team-b today"
    assert d2.error().status == 429 and d2.error().kind == "rate_limit"
    d3 = compile_ok([{"name": "down", "deny": {"status": 503, "message": "maintenance"}}]).evaluate(F, MON_NOON)
    e3 = d3.error()
    assert isinstance(e3, GatewayError) and not isinstance(e3, ClientError) and e3.status == 503
    with pytest.raises(ValueError, match="does not deny"):
        compile_ok([]).evaluate(F).error()


def test_route_set_cap_require_tags_limits() -> None:
    ps = compile_ok([
        {"name": "r1", "route": "fast", "tag": ["a", "b"]},
        {"name": "r2", "match": {"field": "input_tokens", "gt": 1000}, "route": "long-context", "tag": ["b", "c"],
         "require": {"capabilities": ["tools"], "context": 100000}},
        {"name": "r3", "require": {"capabilities": ["vision"], "context": 32000}, "set": {"temperature": 0.3, "top_p": 0.9},
         "cap": {"max_tokens": 1000}},
        {"name": "r4", "rate_limit": {"rpm": 10, "tpd": 5000}, "max_concurrent": 2},
        {"name": "r5", "max_concurrent": 1},
    ])
    d = ps.evaluate(F, MON_NOON)
    assert d.route == "long-context"  # a later route wins
    assert d.tags == ("a", "b", "c")
    assert d.capabilities == {"tools", "vision"} and d.context == 100000
    assert d.limits == (Limit("r4", rpm=10, tpd=5000, max_concurrent=2), Limit("r5", max_concurrent=1))
    assert d.ops == (("set", "temperature", 0.3), ("set", "top_p", 0.9), ("cap", "max_tokens", 1000))
    assert d.unmet({"tools", "vision"}, 200000) == []
    assert d.unmet({"tools"}, 50000) == ["lacks capability 'vision'", "context 50000 < required 100000"]
    assert d.unmet({"tools", "vision"}, None) == []  # an unknown context size is not held against a target
    assert d.modifies_request and not d.pending


def test_rule_order_decides_set_versus_cap() -> None:
    set_then_cap = compile_ok([{"name": "s", "set": {"temperature": 1.5}}, {"name": "c", "cap": {"temperature": 1.0}}])
    cap_then_set = compile_ok([{"name": "c", "cap": {"temperature": 1.0}}, {"name": "s", "set": {"temperature": 1.5}}])
    req = {"temperature": 0.7, "messages": []}
    assert apply_to_request(req, set_then_cap.evaluate(F))["temperature"] == 1.0
    assert apply_to_request(req, cap_then_set.evaluate(F))["temperature"] == 1.5


def test_deny_stops_evaluation() -> None:
    ps = compile_ok([
        {"name": "tag-first", "tag": ["seen"], "set": {"max_tokens": 10}},
        {"name": "stop", "match": {"field": "key", "eq": "team-a"}, "deny": {"message": "no"}, "tag": ["denied"]},
        {"name": "after", "route": "elsewhere", "tag": ["after"], "rate_limit": {"rpm": 1}},
    ])
    d = ps.evaluate(F, MON_NOON)
    assert d.denied and d.route is None and d.limits == () and d.tags == ("seen",)
    assert [t["rule"] for t in d.trace] == ["tag-first", "stop"]
    ok = ps.evaluate(Facts(key="team-b"), MON_NOON)
    assert not ok.denied and ok.route == "elsewhere" and ok.tags == ("seen", "after")


def test_trace_for_explain() -> None:
    ps = compile_ok([{"name": "a", "match": {"field": "key", "eq": "nobody"}, "tag": ["x"]},
                     {"name": "b", "description": "people read this", "route": "fast"},
                     {"name": "c", "match": {"field": "provider", "eq": "openai"}, "set": {"top_p": 0.5}}])
    assert ps.evaluate(F, MON_NOON).trace == [
        {"rule": "a", "source": "config", "matched": False},
        {"rule": "b", "source": "config", "matched": True, "actions": {"route": "fast"}},
        {"rule": "c", "source": "config", "matched": None, "deferred": "needs resolved_model, provider or combo"},
    ]
    assert ps.route_targets() == [(("policies", 1, "route"), "fast")]
    assert ps.fields == {"key", "provider"}
    assert compile_ok([{"name": "s", "match": {"not": {"any": [WORK_PARIS, {"field": "header.x-a", "eq": "1"}]}}, "tag": ["t"]}]).fields \
        == {"schedule", "header.x-a"}
    assert ps.listing()[1] == {"name": "b", "description": "people read this", "route": "fast", "source": "config", "readonly": True}


def test_evaluation_is_deterministic_and_has_no_side_effects() -> None:
    ps = compile_ok([{"name": "a", "match": WORK_PARIS, "tag": ["work"]}, {"name": "b", "cap": {"max_tokens": 5}}])
    first = ps.evaluate(F, MON_NOON)
    for _ in range(3):
        again = ps.evaluate(F, MON_NOON)
        assert (again.tags, again.ops, again.trace) == (first.tags, first.ops, first.trace)


# -- two phases ------------------------------------------------------------------------------

def test_two_phase_evaluation_keeps_rule_order() -> None:
    ps = compile_ok([
        {"name": "p1", "system_prompt": {"text": "one"}},
        {"name": "anthropic-only", "match": {"field": "provider", "eq": "anthropic"}, "system_prompt": {"mode": "append", "text": "two"}},
        {"name": "p3", "match": WORK_PARIS, "system_prompt": {"mode": "append", "text": "three"}},
    ])
    first = ps.evaluate(F, MON_NOON)
    assert first.pending and [t["matched"] for t in first.trace] == [True, None, True]
    # phase two reuses phase one's matches: a later clock does not change the schedule's answer
    late = datetime(2026, 1, 5, 22, 0, tzinfo=UTC)
    anth = ps.evaluate(F.with_target("anthropic/claude-sonnet-4-5", "anthropic", "coding"), late, prior=first)
    oai = ps.evaluate(F.with_target("openai/gpt-4.1", "openai", "coding"), late, prior=first)
    assert not anth.pending and not oai.pending
    assert apply_to_request({"system": None}, anth)["system"] == "one\n\ntwo\n\nthree"
    assert apply_to_request({"system": None}, oai)["system"] == "one\n\nthree"


def test_phase_two_deny_is_per_target_and_phase_one_deny_is_final() -> None:
    ps = compile_ok([{"name": "no-anthropic", "match": {"field": "provider", "eq": "anthropic"}, "deny": {}},
                     {"name": "no-o3", "match": {"field": "model", "eq": "o3"}, "deny": {}}])
    first = ps.evaluate(Facts(model="coding"), MON_NOON)
    assert not first.denied and first.pending
    assert ps.evaluate(Facts(model="coding").with_target("anthropic/x", "anthropic", "coding"), prior=first).denied
    assert not ps.evaluate(Facts(model="coding").with_target("openai/x", "openai", "coding"), prior=first).denied
    o3 = ps.evaluate(Facts(model="o3"), MON_NOON)
    assert o3.denied and not o3.pending
    assert ps.evaluate(Facts(model="o3").with_target("openai/o3", "openai", None), prior=o3) is o3


def test_prior_from_another_set_is_ignored() -> None:
    old = compile_ok([{"name": "x", "tag": ["old"]}])
    new = compile_ok([{"name": "y", "match": {"field": "provider", "eq": "p"}, "tag": ["new"]}])
    d = new.evaluate(F.with_target("p/m", "p", None), prior=old.evaluate(F))
    assert d.tags == ("new",)


# -- key shortcuts ---------------------------------------------------------------------------

def key(name: str, **kw: Any) -> NS:
    return NS(name=name, models=kw.get("models", ()), rpm=kw.get("rpm"), rpd=kw.get("rpd"), schedule=kw.get("schedule"))


def test_key_models_allow_list() -> None:
    ps = compile_ok([{"name": "config-rule", "tag": ["cfg"]}], {"team-a": key("team-a", models=("coding", "openai/*"))})
    assert [r.name for r in ps.rules] == ["key:team-a:models", "config-rule"]
    asked_combo = Facts(key="team-a", model="coding")
    d1 = ps.evaluate(asked_combo)
    assert d1.pending and not d1.denied
    assert not ps.evaluate(asked_combo.with_target("anthropic/claude", "anthropic", "coding"), prior=d1).denied
    alias = Facts(key="team-a", model="fast")  # an alias of openai/gpt-4.1-mini: allowed by its target
    assert not ps.evaluate(alias.with_target("openai/gpt-4.1-mini", "openai", None), prior=ps.evaluate(alias)).denied
    other = Facts(key="team-a", model="anthropic/claude")
    d = ps.evaluate(other.with_target("anthropic/claude", "anthropic", None), prior=ps.evaluate(other))
    assert d.deny is not None and d.deny.status == 403
    assert d.deny.message == "key 'team-a' may not use model 'anthropic/claude' (allowed: coding, openai/*)"
    assert not ps.evaluate(Facts(key="team-b", model="x").with_target("anthropic/x", "anthropic", None)).denied


def test_key_limits_and_schedule() -> None:
    keys = [key("night", rpm=5, rpd=100, schedule={"days": ["sat", "sun"], "tz": "Europe/Paris"}), key("plain")]
    ps = compile_ok([], keys)
    assert [r.name for r in ps.rules] == ["key:night:schedule", "key:night:limits"]
    weekday = ps.evaluate(Facts(key="night"), MON_NOON)
    assert weekday.deny is not None
    assert weekday.deny.message == "key 'night' may be used only sat,sun 00:00-24:00 (Europe/Paris)"
    weekend = ps.evaluate(Facts(key="night"), datetime(2026, 1, 10, 12, tzinfo=UTC))
    assert not weekend.denied and weekend.limits == (Limit("key:night:limits", rpm=5, rpd=100),)
    assert ps.evaluate(Facts(key="plain"), MON_NOON).limits == ()


def test_key_shortcut_problems_are_located_in_keys() -> None:
    found = problems([], [key("a", rpm=0), key("b", schedule={"tz": "Mars/Olympus"})])
    assert found == [(("keys", 0, "rpm"), "rpm must be a whole number >= 1, got 0"),
                     (("keys", 1, "schedule", "tz"), "unknown time zone 'Mars/Olympus' (use an IANA name such as Europe/Paris or UTC)")]


# -- apply_to_request ------------------------------------------------------------------------

def applied(rules: list[dict[str, Any]], req: dict[str, Any]) -> dict[str, Any]:
    before = json.dumps(req, sort_keys=True)
    out = apply_to_request(req, compile_ok(rules).evaluate(F, MON_NOON))
    assert json.dumps(req, sort_keys=True) == before  # the input is never changed
    return out


def test_apply_set_and_cap() -> None:
    assert applied([{"name": "s", "set": {"max_tokens": 50, "temperature": 0.1, "top_p": 0.5}}], {"max_tokens": 900}) == \
        {"max_tokens": 50, "temperature": 0.1, "top_p": 0.5}
    assert applied([{"name": "c", "cap": {"max_tokens": 100, "temperature": 0.5}}], {"max_tokens": 900, "temperature": 0.9}) == \
        {"max_tokens": 100, "temperature": 0.5}
    assert applied([{"name": "c", "cap": {"max_tokens": 100, "temperature": 0.5}}], {"max_tokens": 10, "temperature": 0.2}) == \
        {"max_tokens": 10, "temperature": 0.2}
    # an absent max_tokens is capped (the upstream default may be huge); an absent temperature stays absent
    assert applied([{"name": "c", "cap": {"max_tokens": 100, "temperature": 0.5}}], {}) == {"max_tokens": 100}


def test_apply_system_prompt_modes() -> None:
    def sp(mode: str, text: str, system: str | None) -> Any:
        return applied([{"name": "p", "system_prompt": {"mode": mode, "text": text}}], {"system": system})["system"]

    assert sp("prepend", "Rules.", "Be kind.") == "Rules.\n\nBe kind."
    assert sp("append", "Rules.", "Be kind.") == "Be kind.\n\nRules."
    assert sp("replace", "Rules.", "Be kind.") == "Rules."
    assert sp("prepend", "Rules.", None) == "Rules." and sp("append", "Rules.", "") == "Rules."
    assert sp("replace", "", "Be kind.") is None
    assert sp("prepend", "", "Be kind.") == "Be kind."
    assert applied([{"name": "p", "system_prompt": {"text": "A"}}], {})["system"] == "A"  # prepend by default


@pytest.mark.parametrize(("budget", "reasoning"), [
    ({"mode": "off"}, {"effort": "none", "budget_tokens": 0}),
    ({"mode": "tokens", "tokens": 2048}, {"effort": "low", "budget_tokens": 2048}),
    ({"mode": "tokens", "tokens": 8000}, {"effort": "medium", "budget_tokens": 8000}),
    ({"mode": "tokens", "tokens": 20000}, {"effort": "high", "budget_tokens": 20000}),
    ({"mode": "effort", "effort": "low"}, {"effort": "low", "budget_tokens": 1024}),
    ({"mode": "effort", "effort": "high"}, {"effort": "high", "budget_tokens": 16384}),
    ({"mode": "passthrough"}, {"effort": "medium", "budget_tokens": 3000}),
])
def test_apply_thinking_budget(budget: dict[str, Any], reasoning: dict[str, Any]) -> None:
    req = {"reasoning": {"effort": "medium", "budget_tokens": 3000}}
    assert applied([{"name": "t", "thinking_budget": budget}], req)["reasoning"] == reasoning


def test_effort_tables_agree() -> None:
    assert all(effort_for_tokens(n) == e for e, n in EFFORT_TOKENS.items())
    assert applied([{"name": "s", "set": {"reasoning_effort": "medium"}}], {})["reasoning"] == {"effort": "medium", "budget_tokens": 4096}
    d = compile_ok([{"name": "t", "thinking_budget": {"mode": "passthrough"}}, {"name": "g", "tag": ["x"]}]).evaluate(F)
    assert not d.modifies_request and apply_to_request({"a": 1}, compile_ok([]).evaluate(F)) == {"a": 1}


# -- located compile errors ------------------------------------------------------------------

@pytest.mark.parametrize(("rule", "path", "message"), [
    ({"name": "r", "match": {"field": "model", "regex": "(("}, "deny": {}}, ("policies", 0, "match", "regex"),
     "invalid regular expression '((': missing ), unterminated subpattern at position 1"),
    ({"name": "r", "match": {"field": "model", "regex": ["ok", "[z-a]"]}, "deny": {}}, ("policies", 0, "match", "regex", 1),
     "invalid regular expression '[z-a]': bad character range z-a at position 1"),
    ({"name": "r", "match": {"schedule": {"tz": "Europe/Pariss"}}, "deny": {}}, ("policies", 0, "match", "schedule", "tz"),
     "unknown time zone 'Europe/Pariss' (use an IANA name such as Europe/Paris or UTC)"),
    ({"name": "r", "match": {"schedule": {"hours": "09:00-25:00"}}, "deny": {}}, ("policies", 0, "match", "schedule", "hours"),
     "invalid hours '09:00-25:00': write HH:MM-HH:MM with 00:00 to 23:59 (24:00 allowed as an end)"),
    ({"name": "r", "match": {"schedule": {"hours": ["08:00-09:00", "10:00-10:00"]}}, "deny": {}},
     ("policies", 0, "match", "schedule", "hours", 1), "hours '10:00-10:00' is an empty range (use 00:00-24:00 for the whole day)"),
    ({"name": "r", "match": {"field": "ip", "in": ["10.0.0.0/8", "10.0.0.1/8"]}, "deny": {}}, ("policies", 0, "match", "in", 1),
     "'10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"),
    ({"name": "r", "match": {"field": "ip", "in": ["10.0.0.300/8"]}, "deny": {}}, ("policies", 0, "match", "in", 0),
     "'10.0.0.300/8' is not an IPv4 or IPv6 network (write 10.0.0.0/8, 192.168.1.7 or 2001:db8::/32)"),
    ({"name": "r", "match": {"field": "ip", "eq": "10.0.0.0/8"}, "deny": {}}, ("policies", 0, "match", "eq"),
     "expected an IPv4 or IPv6 address, got '10.0.0.0/8' (use 'in' with CIDRs for networks)"),
    ({"name": "r", "match": {"field": "model", "gt": 3}, "deny": {}}, ("policies", 0, "match", "gt"),
     "operator 'gt' does not apply to text field 'model' (use one of: eq, ne, in, glob, regex)"),
    ({"name": "r", "match": {"field": "input_tokens", "glob": "1*"}, "deny": {}}, ("policies", 0, "match", "glob"),
     "operator 'glob' does not apply to number field 'input_tokens' (use one of: eq, ne, in, gt, gte, lt, lte)"),
    ({"name": "r", "match": {"field": "stream", "eq": "yes"}, "deny": {}}, ("policies", 0, "match", "eq"),
     "'eq' on a bool field expects true or false, got 'yes'"),
    ({"name": "r", "match": {"field": "max_tokens", "in": [1, "two"]}, "deny": {}}, ("policies", 0, "match", "in", 1),
     "expected a number, got 'two'"),
    ({"name": "r", "match": {"field": "model", "eq": "a", "glob": "b*"}, "deny": {}}, ("policies", 0, "match"),
     "a condition on 'model' needs exactly one operator (one of: eq, ne, in, glob, regex, gt, gte, lt, lte), found eq, glob; "
     "combine several with all: [..]"),
    ({"name": "r", "match": {"field": "model"}, "deny": {}}, ("policies", 0, "match"),
     "a condition on 'model' needs exactly one operator (one of: eq, ne, in, glob, regex, gt, gte, lt, lte), found none; "
     "combine several with all: [..]"),
    ({"name": "r", "match": {"all": [{"field": "key", "eq": "a"}], "any": [{"field": "key", "eq": "b"}]}, "deny": {}},
     ("policies", 0, "match", "any"), "'all' must be alone in its condition, found 'any' beside it (wrap several conditions in all: [..] or any: [..])"),
    ({"name": "r", "tag": ["x"]}, None, None),
    ({"name": "r"}, ("policies", 0), "rule 'r' has no action (add one of: deny, route, set, cap, require, system_prompt, "
     "thinking_budget, rate_limit, max_concurrent, tag)"),
    ({"name": "key:mine", "tag": ["x"]}, ("policies", 0, "name"),
     "rule names starting with key: or settings: are reserved for rules made from keys and settings; rename the rule"),
    ({"name": "r", "match": {"field": "combo", "eq": "coding"}, "route": "fast"}, ("policies", 0, "route"),
     "'route' applies before the model is resolved, so its rule cannot match on resolved_model, provider or combo "
     "(match on model instead, or split the rule)"),
    ({"name": "r", "match": {"any": [{"field": "provider", "eq": "x"}]}, "rate_limit": {"rpm": 1}}, ("policies", 0, "rate_limit"),
     "'rate_limit' applies before the model is resolved, so its rule cannot match on resolved_model, provider or combo "
     "(match on model instead, or split the rule)"),
    ({"name": "r", "thinking_budget": {"mode": "off", "tokens": 5}}, ("policies", 0, "thinking_budget", "tokens"),
     "'tokens' does not go with mode 'off' (tokens goes with mode tokens, effort with mode effort)"),
    # shapes the JSON Schema catches, reported through the same callback
    ({"name": "r", "match": {"field": "modle", "eq": "x"}, "deny": {}}, ("policies", 0, "match", "field"),
     "'modle' is not valid (valid values: key, model, resolved_model, provider, combo, format, route, has_tools, has_images, "
     "stream, input_tokens, max_tokens, ip, header.NAME)"),
    ({"name": "r", "match": {"field": "model", "globb": "x"}, "deny": {}}, ("policies", 0, "match", "globb"),
     "unknown key 'globb' (valid keys: all, any, eq, field, glob, gt, gte, in, lt, lte, ne, not, regex, schedule)"),
    ({"name": "r", "match": {"eq": "x"}, "deny": {}}, ("policies", 0, "match"), "missing required key 'field'"),
    ({"name": "r", "thinking_budget": {"mode": "tokens"}}, ("policies", 0, "thinking_budget"), "missing required key 'tokens'"),
    ({"name": "r", "cap": {"max_tokens": 0}}, ("policies", 0, "cap", "max_tokens"), "must be >= 1"),
    ({"name": "r", "require": {"capabilities": ["telepathy"]}}, ("policies", 0, "require", "capabilities", 0),
     "'telepathy' is not valid (valid values: tools, vision, reasoning, json, audio)"),
])
def test_located_compile_errors(rule: dict[str, Any], path: tuple[Any, ...] | None, message: str | None) -> None:
    found = problems([rule])
    assert found == ([] if path is None else [(path, message)])


def test_duplicate_names_and_bad_shapes() -> None:
    assert problems([{"name": "a", "tag": ["x"]}, {"name": "a", "tag": ["y"]}]) == [
        (("policies", 1, "name"), "duplicate rule name 'a' (first used at policies.0.name); names must be unique")]
    assert problems({"name": "a"}) == [(("policies",), "policies must be a list of rules")]
    found = compile_policies([{"name": "ok", "tag": ["x"]}, {"name": "bad", "match": {"field": "model", "regex": "("}, "deny": {}}],
                             (), lambda p, m: None)
    assert [r.name for r in found.rules] == ["ok"]  # a broken rule is left out, the rest still compiles


def test_api_and_settings_rules_order_and_paths() -> None:
    found: list[Any] = []
    ps = compile_policies([{"name": "cfg", "tag": ["c"]}], [key("k", rpm=1)], lambda p, m: found.append((p, m)),
                          api_rules=[{"name": "api", "tag": ["a"]}, {"name": "api2", "match": {"field": "x", "eq": 1}, "tag": ["b"]}],
                          settings_rules=[{"name": "settings:system-prompt", "system_prompt": {"text": "G"}}])
    assert [(r.name, r.source) for r in ps.rules] == [("key:k:limits", "key"), ("settings:system-prompt", "settings"),
                                                      ("cfg", "config"), ("api", "api")]
    assert [p for p, _ in found] == [("api_policies", 1, "match", "field")]
    assert [r["readonly"] for r in ps.listing()] == [True, True, True, False]


def test_errors_are_located_in_the_yaml_file() -> None:
    text = "policies:\n  - name: ok\n    tag: [x]\n  - name: bad\n    match:\n      all:\n        - {field: model, regex: '(('}\n    deny: {}\n"
    doc, _ = load_yaml(text, "config.yaml")
    out: list[str] = []
    compile_policies(doc.data["policies"], {}, lambda p, m: out.append(str(doc.problem(p, m))))
    assert out == ["config.yaml:7:26: policies[1].match.all[0].regex: invalid regular expression '((': "
                   "missing ), unterminated subpattern at position 1"]


def test_schema_is_closed_everywhere() -> None:
    raw = json.loads(resources.files("engine").joinpath("schemas", "policy.schema.json").read_text())
    assert raw["$id"] == "policy.schema.json" and raw["type"] == "array"

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, where
            for k, v in node.items():
                if k != "if":  # a predicate, not an object's definition
                    walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    walk(raw, "")


def test_facts_from_loose_input() -> None:
    f = facts_from_mapping({"key": "team-a", "model": "coding", "stream": "true", "input_tokens": "1200",
                            "header.X-Team": "red", "provider": "openai"})
    assert (f.key, f.model, f.stream, f.input_tokens, f.headers, f.provider, f.resolved) == \
        ("team-a", "coding", True, 1200, {"x-team": "red"}, "openai", True)
    assert not facts_from_mapping({"model": "m"}).resolved
    for bad, message in (({"modle": "x"}, "unknown fact 'modle'"), ({"stream": "maybe"}, "stream must be true or false"),
                         ({"max_tokens": "lots"}, "max_tokens must be a whole number")):
        with pytest.raises(ValueError, match=message):
            facts_from_mapping(bad)
