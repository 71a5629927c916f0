"""Policies: ordered rules that allow, deny, rewrite and limit requests, compiled once.

A rule is `{name, match?, <actions>}`. Evaluation walks the rules in order; each rule whose match
holds applies its actions; a `deny` stops the walk. There is one mechanism: a key's `models`,
`rpm`/`rpd` and `schedule` shortcuts compile into ordinary rules placed first, and the global
settings (system prompt, thinking budget) into rules placed next, so explain shows all of them.

Order of the compiled set: key shortcuts, settings rules, config rules, rules added through the API.

Two phases. Conditions on resolved_model, provider or combo cannot be known before the model is
resolved. `evaluate(facts)` with unresolved facts marks those rules deferred (and the Decision
`pending`); the caller resolves, then calls `evaluate(facts.with_target(...), prior=first)` per
target, which evaluates only the deferred rules and keeps rule order for everything it applies.
Because a route rewrite decides the resolution and rate limits are counted once per request,
`route`, `rate_limit` and `max_concurrent` are refused on rules whose match needs resolution.

Nothing here does I/O; evaluation is deterministic in (facts, now).

Public surface: Facts, Deny, Limit, Decision, PolicySet, PolicyDenied, compile_policies,
apply_to_request, EFFORT_TOKENS, effort_for_tokens, validate_rules.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import ClientError, GatewayError, Problem
from .policy_apply import EFFORT_TOKENS, Op, apply_to_request, effort_for_tokens
from .policy_keys import key_rules
from .policy_match import Facts, Path, Test, compile_condition
from .source import Doc, validate

__all__ = ["EFFORT_TOKENS", "Decision", "Deny", "Facts", "Limit", "PolicyDenied", "PolicySet", "apply_to_request",
           "compile_policies", "effort_for_tokens", "validate_rules"]

RESERVED_PREFIXES = ("key:", "settings:")
_ACTIONS = ("deny", "route", "set", "cap", "require", "system_prompt", "thinking_budget", "rate_limit",
            "max_concurrent", "tag")


class PolicyDenied(ClientError):
    """A deny rule matched. Status and message come from the rule; the client's format renders it."""

    def __init__(self, message: str, *, status: int, rule: str) -> None:
        super().__init__(message, status=status)
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Deny:
    status: int
    message: str
    rule: str

    def error(self) -> GatewayError:
        if self.status >= 500:
            return GatewayError(self.message, status=self.status)
        return PolicyDenied(self.message, status=self.status, rule=self.rule)


@dataclass(frozen=True, slots=True)
class Limit:
    """Rate limits and concurrency of one rule, counted per API key under the rule's name."""

    rule: str
    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    source: str  # key | settings | config | api
    raw: Mapping[str, Any]
    test: Test | None  # None: every request
    needs_resolution: bool
    deny: tuple[int, str, bool] | None  # status, message, message has placeholders
    route: str | None
    ops: tuple[Op, ...]
    capabilities: frozenset[str]
    context: int | None
    limit: Limit | None
    tags: tuple[str, ...]
    path: Path = ()  # where it was written, for load-time problems found later (route targets)

    def actions(self) -> dict[str, Any]:
        return {k: self.raw[k] for k in _ACTIONS if k in self.raw}


class Decision:
    """What the matching rules decided for one request (or one target, in phase two)."""

    __slots__ = ("_matched", "_set", "capabilities", "context", "deny", "limits", "ops", "pending", "route", "tags")

    def __init__(self, pset: PolicySet, matched: list[bool | None], deny: Deny | None, route: str | None,
                 ops: list[Op], capabilities: frozenset[str], context: int | None, limits: list[Limit],
                 tags: list[str], pending: bool) -> None:
        self._set = pset
        self._matched = matched
        self.deny = deny
        self.route = route
        self.ops = tuple(ops)
        self.capabilities = capabilities
        self.context = context
        self.limits = tuple(limits)
        self.tags = tuple(dict.fromkeys(tags))
        self.pending = pending

    @property
    def denied(self) -> bool:
        return self.deny is not None

    @property
    def modifies_request(self) -> bool:
        """True when apply_to_request would change the canonical request (no byte passthrough)."""
        return any(op[0] != "thinking" or op[1] != "passthrough" for op in self.ops)

    def error(self) -> GatewayError:
        if self.deny is None:
            raise ValueError("this decision does not deny")
        return self.deny.error()

    def unmet(self, capabilities: Collection[str], context: int | None) -> list[str]:
        """Why a target with these capabilities and context size fails `require` ([] = it fits).
        An unknown context size (None) is not held against the target."""
        out = [f"lacks capability '{c}'" for c in sorted(self.capabilities) if c not in capabilities]
        if self.context is not None and context is not None and context < self.context:
            out.append(f"context {context} < required {self.context}")
        return out

    @property
    def trace(self) -> list[dict[str, Any]]:
        """Rule by rule, as evaluated: matched true/false, or null when deferred to phase two."""
        out = []
        for rule, m in zip(self._set.rules, self._matched, strict=False):
            item: dict[str, Any] = {"rule": rule.name, "source": rule.source, "matched": m}
            if m is None:
                item["deferred"] = "needs resolved_model, provider or combo"
            elif m:
                item["actions"] = rule.actions()
            out.append(item)
        return out


def _fields(cond: Any) -> Iterable[str]:
    if isinstance(cond, Mapping):
        if isinstance(cond.get("field"), str):
            yield cond["field"]
        if "schedule" in cond:
            yield "schedule"
        for k in ("all", "any"):
            for c in cond.get(k) or ():
                yield from _fields(c)
        yield from _fields(cond.get("not"))


def _always(f: Facts, now: datetime) -> bool:
    return True


def _deferred(f: Facts, now: datetime) -> None:
    """Phase one stands in for a rule whose match needs resolution facts: unknown yet."""
    return None


class PolicySet:
    """An immutable, compiled rule list. Share it across requests; build a new one on reload."""

    __slots__ = ("_phase1", "_tests", "fields", "rules")

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = tuple(rules)
        self._tests: tuple[Test, ...] = tuple(r.test or _always for r in self.rules)
        self._phase1: tuple[Callable[[Facts, datetime], bool | None], ...] = tuple(_deferred if r.needs_resolution else t for r, t in zip(self.rules, self._tests, strict=True))
        # the facts some rule reads ("schedule" for clocks): a caller can skip computing the others
        self.fields: frozenset[str] = frozenset(f for r in self.rules for f in _fields(r.raw.get("match")))

    def __len__(self) -> int:
        return len(self.rules)

    def route_targets(self) -> list[tuple[Path, str]]:
        """(path of the route action, model) of every route, for load-time reference checks."""
        return [((*r.path, "route"), r.route) for r in self.rules if r.route is not None]

    def evaluate(self, facts: Facts, now: datetime | None = None, *, prior: Decision | None = None) -> Decision:
        """Every rule's match, then the actions of the matching ones in order up to the first deny.

        With `prior` (phase one, same set) only the rules it deferred are tested. All tests run in
        one comprehension (they are pure, so testing past a deny changes nothing but the CPU spent;
        the trace stops at the deny); this is the fastest loop Python offers.
        """
        if now is None:
            now = datetime.now(UTC)
        elif now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        if prior is not None and prior._set is self:
            if prior.deny is not None:
                return prior
            matched: list[bool | None] = [t(facts, now) if k is None else k for k, t in zip(prior._matched, self._tests, strict=True)]
        else:
            tests: Sequence[Callable[[Facts, datetime], bool | None]] = self._tests if facts.resolved else self._phase1
            matched = [t(facts, now) for t in tests]
        if True not in matched:
            return Decision(self, matched, None, None, [], frozenset(), None, [], [], None in matched)
        deny: Deny | None = None
        route: str | None = None
        ops: list[Op] = []
        caps: frozenset[str] = frozenset()
        context: int | None = None
        limits: list[Limit] = []
        tags: list[str] = []
        rules = self.rules
        for i, m in enumerate(matched):
            if not m:
                continue
            rule = rules[i]
            if rule.deny is not None:
                status, message, templated = rule.deny
                if templated:
                    message = message.replace("{key}", facts.key or "").replace("{model}", facts.model)
                deny = Deny(status, message, rule.name)
                del matched[i + 1:]
                break
            if rule.route is not None:
                route = rule.route
            if rule.ops:
                ops.extend(rule.ops)
            if rule.capabilities:
                caps = caps | rule.capabilities
            if rule.context is not None and (context is None or rule.context > context):
                context = rule.context
            if rule.limit is not None:
                limits.append(rule.limit)
            if rule.tags:
                tags.extend(rule.tags)
        pending = deny is None and None in matched
        return Decision(self, matched, deny, route, ops, caps, context, limits, tags, pending)

    def listing(self) -> list[dict[str, Any]]:
        """Every rule as written, in evaluation order, with its source; only API rules are writable."""
        return [{**r.raw, "source": r.source, "readonly": r.source != "api"} for r in self.rules]


# -- compile ---------------------------------------------------------------------------------


class _PathDoc(Doc):
    """A Doc without marks that hands schema problems on with their key paths."""

    def __init__(self, data: Any, sink: Callable[[Path, str], None], prefix: Path) -> None:
        super().__init__("<policies>", data)
        self.sink = sink
        self.prefix = prefix

    def problem(self, path: Iterable[str | int], message: str) -> Problem:
        p = tuple(path)
        self.sink((*self.prefix, *p), message)
        return super().problem(p, message)


def validate_rules(rules: Any, prefix: Path, problem: Callable[[Path, str], None]) -> set[int]:
    """Check `rules` against policy.schema.json; report each problem; return the bad indexes."""
    bad: set[int] = set()

    def sink(path: Path, message: str) -> None:
        if len(path) > len(prefix) and isinstance(path[len(prefix)], int):
            bad.add(path[len(prefix)])  # type: ignore[arg-type]
        problem(path, message)

    if not isinstance(rules, list):
        problem(prefix, "policies must be a list of rules")
        return bad
    validate(_PathDoc(rules, sink, prefix), "policy")
    return bad


def compile_policies(
    rules: Sequence[Mapping[str, Any]] | None,
    keys: Mapping[str, Any] | Iterable[Any],
    problem: Callable[[Path, str], None],
    *,
    api_rules: Sequence[Mapping[str, Any]] = (),
    settings_rules: Sequence[Mapping[str, Any]] = (),
    config_validated: bool = False,
) -> PolicySet:
    """Compile key shortcuts, settings rules, config rules and API rules, in that order.

    Problems are reported with paths in the config document: ("policies", i, ...) and
    ("keys", i, ...); API rules as ("api_policies", i, ...), settings as ("settings", i, ...).
    A rule with a problem is left out, so the caller may choose to serve the rest.
    Every group is checked against policy.schema.json first (a compiler must not trust its
    input); `config_validated=True` skips that for `rules` when the whole config already passed.
    """
    out: list[Rule] = []
    names: dict[str, Path] = {}
    key_list = list(keys.values()) if isinstance(keys, Mapping) else list(keys)
    for i, key in enumerate(key_list):
        for raw in key_rules(key, ("keys", i), problem):
            _add(out, names, _compile_rule(raw, ("keys", i), "key", problem), ("keys", i), problem)
    for source, prefix, group in (("settings", ("settings",), settings_rules), ("config", ("policies",), rules or []),
                                  ("api", ("api_policies",), api_rules)):
        if isinstance(group, tuple):
            group = list(group)
        if isinstance(group, list) and not group:
            continue
        bad = set() if source == "config" and config_validated else validate_rules(group, prefix, problem)
        if not isinstance(group, list):
            continue
        for i, raw in enumerate(group):
            if i in bad:
                continue
            here = (*prefix, i)
            name = raw.get("name", "")
            if source != "settings" and name.startswith(RESERVED_PREFIXES):
                problem((*here, "name"), f"rule names starting with {' or '.join(RESERVED_PREFIXES)} are reserved "
                                         "for rules made from keys and settings; rename the rule")
                continue
            _add(out, names, _compile_rule(raw, here, source, problem), (*here, "name"), problem)
    return PolicySet(out)


def _add(out: list[Rule], names: dict[str, Path], rule: Rule | None, where: Path, problem: Callable[[Path, str], None]) -> None:
    if rule is None:
        return
    if rule.name in names:
        first = names[rule.name]
        problem(where, f"duplicate rule name '{rule.name}' (first used at {'.'.join(map(str, first))}); names must be unique")
        return
    names[rule.name] = where
    out.append(rule)


def _compile_rule(raw: Mapping[str, Any], path: Path, source: str, problem: Callable[[Path, str], None]) -> Rule | None:
    name = raw["name"]
    if not any(k in raw for k in _ACTIONS):
        problem(path, f"rule '{name}' has no action (add one of: {', '.join(_ACTIONS)})")
        return None
    test: Test | None = None
    needs = False
    if "match" in raw:
        compiled = compile_condition(raw["match"], (*path, "match"), problem)
        if compiled is None:
            return None
        test, needs = compiled
    if needs:
        for k in ("route", "rate_limit", "max_concurrent"):
            if k in raw:
                problem((*path, k), f"'{k}' applies before the model is resolved, so its rule cannot match on "
                                    "resolved_model, provider or combo (match on model instead, or split the rule)")
                return None
    ops: list[Op] = []
    for k, v in (raw.get("set") or {}).items():
        ops.append(("set", k, v))
    for k, v in (raw.get("cap") or {}).items():
        ops.append(("cap", k, v))
    sp = raw.get("system_prompt")
    if sp is not None:
        ops.append(("system", sp.get("mode", "prepend"), sp["text"]))
    tb = raw.get("thinking_budget")
    if tb is not None:
        mode = tb["mode"]
        extra = [k for k in ("tokens", "effort") if k in tb and k != mode]
        if extra:
            problem((*path, "thinking_budget", extra[0]), f"'{extra[0]}' does not go with mode '{mode}' "
                                                          f"(tokens goes with mode tokens, effort with mode effort)")
            return None
        ops.append(("thinking", mode, tb.get(mode)))
    deny = raw.get("deny")
    deny_t = None
    if deny is not None:
        msg = deny.get("message") or f"request denied by policy '{name}'"
        deny_t = (int(deny.get("status", 403)), msg, "{key}" in msg or "{model}" in msg)
    rl = raw.get("rate_limit") or {}
    limit = None
    if rl or "max_concurrent" in raw:
        limit = Limit(name, rl.get("rpm"), rl.get("rpd"), rl.get("tpm"), rl.get("tpd"), raw.get("max_concurrent"))
    req = raw.get("require") or {}
    return Rule(name=name, source=source, raw=dict(raw), test=test, needs_resolution=needs, deny=deny_t,
                route=raw.get("route"), ops=tuple(ops), capabilities=frozenset(req.get("capabilities") or ()),
                context=req.get("context"), limit=limit, tags=tuple(raw.get("tag") or ()), path=path)
