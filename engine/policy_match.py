"""Policy conditions: a condition tree written as data, compiled once into closures.

Why closures: a gateway evaluates every rule on every request, so nothing may be parsed there.
Globs become compiled regexes, regexes are compiled, time zones are looked up, hours parsed and
CIDRs built when the config loads; what remains per request is attribute reads and comparisons.

A compiled test is `test(facts, now) -> bool`. `needs_resolution` tells whether it reads a fact
known only after model resolution (resolved_model, provider, combo), so the rule set can evaluate
in two phases: before resolve (deny early, rewrite the model, count rate limits) and per target.

Problems are reported through `problem(path, message)` with paths relative to where the
condition sits; the JSON Schema catches shapes, this module what a schema cannot (one operator
per leaf, operator versus field type, bad regex, unknown time zone, bad CIDR).

Public surface: Facts, facts_from_mapping, Test, FIELDS, OPERATORS, RESOLUTION_FIELDS,
compile_condition, compile_schedule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from fnmatch import translate
from operator import attrgetter
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .ip_filter import ip_in, parse_ip, parse_network

Path = tuple[str | int, ...]
Problem = Callable[[Path, str], None]


@dataclass(frozen=True, slots=True)
class Facts:
    """What rules can test about one request. Resolution facts are filled by `with_target`."""

    key: str | None = None  # API key name; None when the request carries no key
    model: str = ""  # the model the client asked for
    format: str = ""  # client wire format id (openai-chat, anthropic-messages, ...)
    route: str = ""  # request path
    has_tools: bool = False
    has_images: bool = False
    stream: bool = False
    input_tokens: int = 0  # estimated
    max_tokens: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)  # lower-case names
    ip: str = ""
    resolved: bool = False
    resolved_model: str | None = None  # "connection/model" of the target
    provider: str | None = None  # connection id of the target
    combo: str | None = None  # the combo the target came from, if any

    def with_target(self, resolved_model: str, provider: str, combo: str | None) -> Facts:
        return replace(self, resolved=True, resolved_model=resolved_model, provider=provider, combo=combo)


Test = Callable[[Facts, datetime], bool]


def facts_from_mapping(d: Mapping[str, Any]) -> Facts:
    """Facts from loose input (explain's query string or JSON): strings for text fields, numbers
    or digit strings, booleans or true/false/1/0. Raises ValueError naming the field to fix."""
    kw: dict[str, Any] = {}
    headers: dict[str, str] = {}
    for name, value in d.items():
        if name.startswith("header."):
            headers[name[7:].lower()] = str(value)
            continue
        kind = FIELDS.get(name)
        if kind is None:
            raise ValueError(f"unknown fact {name!r} (valid: {', '.join(FIELDS)}, header.NAME)")
        if kind == "bool":
            if isinstance(value, bool) or str(value).lower() in ("true", "false", "1", "0"):
                kw[name] = value if isinstance(value, bool) else str(value).lower() in ("true", "1")
            else:
                raise ValueError(f"{name} must be true or false, got {value!r}")
        elif kind == "number":
            try:
                kw[name] = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
        else:
            kw[name] = str(value)
    if any(k in kw for k in RESOLUTION_FIELDS):
        kw["resolved"] = True
    return Facts(**kw, headers=headers)

# field -> kind; the kind decides which operators and values are valid
FIELDS: dict[str, str] = {
    "key": "text", "model": "text", "resolved_model": "text", "provider": "text", "combo": "text",
    "format": "text", "route": "text", "ip": "ip", "has_tools": "bool", "has_images": "bool", "stream": "bool",
    "input_tokens": "number", "max_tokens": "number",
}
RESOLUTION_FIELDS = frozenset({"resolved_model", "provider", "combo"})
OPERATORS = ("eq", "ne", "in", "glob", "regex", "gt", "gte", "lt", "lte")
_OPS_BY_KIND = {
    "text": ("eq", "ne", "in", "glob", "regex"),
    "ip": ("eq", "ne", "in", "glob", "regex"),
    "number": ("eq", "ne", "in", "gt", "gte", "lt", "lte"),
    "bool": ("eq", "ne", "in"),
}
_COMBINERS = ("all", "any", "not", "schedule")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


def compile_condition(raw: Any, path: Path, problem: Problem) -> tuple[Test, bool] | None:
    """(test, needs_resolution), or None after reporting every problem found under `path`."""
    if not isinstance(raw, Mapping) or not raw:
        problem(path, "a condition must be a mapping: {all: [..]}, {any: [..]}, {not: ..}, {schedule: ..} "
                      "or {field: NAME, OPERATOR: value}")
        return None
    combiners = [k for k in _COMBINERS if k in raw]
    if combiners:
        if len(raw) > 1:
            extra = next(k for k in raw if k != combiners[0])
            problem((*path, extra), f"'{combiners[0]}' must be alone in its condition, found '{extra}' beside it "
                                    "(wrap several conditions in all: [..] or any: [..])")
            return None
        kind = combiners[0]
        if kind == "schedule":
            sched = compile_schedule(raw["schedule"], (*path, "schedule"), problem)
            return None if sched is None else (sched, False)
        if kind == "not":
            inner = compile_condition(raw["not"], (*path, "not"), problem)
            if inner is None:
                return None
            test, needs = inner
            return (lambda f, now: not test(f, now)), needs
        items = raw[kind]
        if not isinstance(items, Sequence) or isinstance(items, str) or not items:
            problem((*path, kind), f"'{kind}' takes a non-empty list of conditions")
            return None
        parts = [compile_condition(c, (*path, kind, i), problem) for i, c in enumerate(items)]
        if any(p is None for p in parts):
            return None
        tests = [p[0] for p in parts if p is not None]
        needs = any(p[1] for p in parts if p is not None)
        return (_all(tests) if kind == "all" else _any(tests)), needs
    return _leaf(raw, path, problem)


def _all(tests: list[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda f, now: a(f, now) and b(f, now)
    return lambda f, now: all(t(f, now) for t in tests)


def _any(tests: list[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda f, now: a(f, now) or b(f, now)
    return lambda f, now: any(t(f, now) for t in tests)


def _leaf(raw: Mapping[str, Any], path: Path, problem: Problem) -> tuple[Test, bool] | None:
    valid_keys = f"field, {', '.join(OPERATORS)}, or one of {', '.join(_COMBINERS)} alone"
    unknown = [k for k in raw if k != "field" and k not in OPERATORS]
    if unknown:
        problem((*path, unknown[0]), f"unknown key '{unknown[0]}' in a condition (valid keys: {valid_keys})")
        return None
    name = raw.get("field")
    ops = [k for k in raw if k in OPERATORS]
    if name is None:
        problem(path, f"this condition has '{ops[0]}' but no 'field' to apply it to (add field: NAME)")
        return None
    kind = _kind(name)
    if kind is None:
        problem((*path, "field"), f"unknown field {name!r} (valid fields: {', '.join(FIELDS)}, header.NAME)")
        return None
    if len(ops) != 1:
        what = "none" if not ops else ", ".join(ops)
        problem(path, f"a condition on '{name}' needs exactly one operator (one of: {', '.join(OPERATORS)}), "
                      f"found {what}; combine several with all: [..]")
        return None
    op = ops[0]
    if op not in _OPS_BY_KIND[kind]:
        problem((*path, op), f"operator '{op}' does not apply to {kind} field '{name}' "
                             f"(use one of: {', '.join(_OPS_BY_KIND[kind])})")
        return None
    if name.startswith("header."):
        header = name[7:].lower()
        get: Callable[[Facts], Any] = lambda f: f.headers.get(header)  # noqa: E731
    else:
        get = attrgetter(name)
    test = _operator(op, kind, raw[op], get, (*path, op), problem)
    return None if test is None else (test, name in RESOLUTION_FIELDS)


def _kind(name: Any) -> str | None:
    if not isinstance(name, str):
        return None
    if name.startswith("header.") and len(name) > 7:
        return "text"
    return FIELDS.get(name)


def _is_value(v: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "number":
        return isinstance(v, int | float) and not isinstance(v, bool)
    return isinstance(v, str)


_WANT = {"bool": "true or false", "number": "a number", "text": "a string", "ip": "an IP address"}


def _operator(op: str, kind: str, v: Any, get: Callable[[Facts], Any], path: Path, problem: Problem) -> Test | None:
    """The test for one operator on the value `get` reads, or None after reporting why `v` does not fit.
    Each operator gets its own closure with the read inlined: one Python call per leaf."""
    if op in ("glob", "regex"):
        pats = [v] if isinstance(v, str) else v
        if not isinstance(pats, list) or not pats or not all(isinstance(p, str) and p for p in pats):
            problem(path, f"'{op}' takes a pattern or a non-empty list of patterns")
            return None
        if op == "glob":
            match = re.compile("|".join(f"(?:{translate(p)})" for p in pats)).match
            return lambda f, now: (x := get(f)) is not None and match(x) is not None
        compiled = []
        for i, p in enumerate(pats):
            try:
                compiled.append(re.compile(p))
            except re.error as e:
                problem(path if isinstance(v, str) else (*path, i), f"invalid regular expression {p!r}: {e}")
                return None
        if len(compiled) == 1:
            search = compiled[0].search
            return lambda f, now: (x := get(f)) is not None and search(x) is not None
        return lambda f, now: (x := get(f)) is not None and any(r.search(x) for r in compiled)
    if op == "in":
        if not isinstance(v, list) or not v:
            problem(path, "'in' takes a non-empty list of values")
            return None
        if kind == "ip":
            nets = []
            for i, item in enumerate(v):
                try:
                    nets.append(parse_network(item))
                except ValueError as e:
                    problem((*path, i), str(e))
                    return None
            return lambda f, now: ip_in(get(f), nets)
        for i, item in enumerate(v):
            if not _is_value(item, kind):
                problem((*path, i), f"expected {_WANT[kind]}, got {item!r}")
                return None
        values = frozenset(v)
        return lambda f, now: get(f) in values
    if kind == "ip" and op in ("eq", "ne"):
        addr = parse_ip(v) if isinstance(v, str) else None
        if addr is None:
            problem(path, f"expected an IPv4 or IPv6 address, got {v!r} (use 'in' with CIDRs for networks)")
            return None
        if op == "eq":
            return lambda f, now: parse_ip(get(f)) == addr
        return lambda f, now: parse_ip(get(f)) != addr
    if not _is_value(v, kind):
        problem(path, f"'{op}' on a {kind} field expects {_WANT[kind]}, got {v!r}")
        return None
    if op == "eq":
        return lambda f, now: get(f) == v
    if op == "ne":
        return lambda f, now: get(f) != v
    if op == "gt":
        return lambda f, now: (x := get(f)) is not None and x > v
    if op == "gte":
        return lambda f, now: (x := get(f)) is not None and x >= v
    if op == "lt":
        return lambda f, now: (x := get(f)) is not None and x < v
    return lambda f, now: (x := get(f)) is not None and x <= v


# -- schedules -------------------------------------------------------------------------------


def compile_schedule(raw: Any, path: Path, problem: Problem) -> Test | None:
    """`{days, hours, tz}` -> test. An overnight range (22:00-06:00) belongs to the day it starts on."""
    if not isinstance(raw, Mapping) or not raw:
        problem(path, "a schedule is a mapping with days, hours and/or tz")
        return None
    ok = True
    for k in raw:
        if k not in ("days", "hours", "tz"):
            problem((*path, k), f"unknown key '{k}' in a schedule (valid keys: days, hours, tz)")
            ok = False
    tz_name = raw.get("tz", "UTC")
    tz: ZoneInfo | None = None
    try:
        tz = ZoneInfo(tz_name) if isinstance(tz_name, str) and tz_name else None
    except (ZoneInfoNotFoundError, ValueError):
        tz = None
    if tz is None:
        problem((*path, "tz"), f"unknown time zone {tz_name!r} (use an IANA name such as Europe/Paris or UTC)")
        ok = False
    days_raw = raw.get("days", list(DAYS))
    if not isinstance(days_raw, list) or not days_raw or not all(d in DAYS for d in days_raw):
        problem((*path, "days"), f"days must be a non-empty list of: {', '.join(DAYS)}")
        ok = False
        days_raw = []
    days = frozenset(DAYS.index(d) for d in days_raw)
    hours = raw.get("hours", "00:00-24:00")
    items = [hours] if isinstance(hours, str) else hours
    ranges: list[tuple[int, int]] = []
    if not isinstance(items, list) or not items:
        problem((*path, "hours"), "hours must be HH:MM-HH:MM or a non-empty list of such ranges")
        ok = False
        items = []
    for i, h in enumerate(items):
        where = (*path, "hours") if isinstance(hours, str) else (*path, "hours", i)
        m = _HOURS.match(h) if isinstance(h, str) else None
        start = int(m.group(1)) * 60 + int(m.group(2)) if m else -1
        end = int(m.group(3)) * 60 + int(m.group(4)) if m else -1
        if not m or int(m.group(2)) > 59 or int(m.group(4)) > 59 or not 0 <= start < 1440 or not 0 < end <= 1440:
            problem(where, f"invalid hours {h!r}: write HH:MM-HH:MM with 00:00 to 23:59 (24:00 allowed as an end)")
            ok = False
        elif start == end:
            problem(where, f"hours {h!r} is an empty range (use 00:00-24:00 for the whole day)")
            ok = False
        else:
            ranges.append((start, end))
    if not ok or tz is None:
        return None
    clock = _clock(tz)

    def test(f: Facts, now: datetime) -> bool:
        wd, minute = clock(now)
        for start, end in ranges:
            if start < end:
                if start <= minute < end and wd in days:
                    return True
            elif (minute >= start and wd in days) or (minute < end and (wd - 1) % 7 in days):
                return True
        return False

    return test


def _clock(tz: ZoneInfo) -> Callable[[datetime], tuple[int, int]]:
    """(weekday, minute of day) of `now` in `tz`, remembered for the last `now` seen: the schedule
    leaves of one evaluation share the conversion (the tuple swap is atomic, so threads are safe)."""
    got = _CLOCKS.get(tz)
    if got is not None:
        return got
    last: list[Any] = [(None, 0, 0)]

    def clock(now: datetime) -> tuple[int, int]:
        seen, wd, minute = last[0]
        if seen is not now:
            local = now.astimezone(tz)
            wd, minute = local.weekday(), local.hour * 60 + local.minute
            last[0] = (now, wd, minute)
        return wd, minute

    _CLOCKS[tz] = clock
    return clock


_CLOCKS: dict[ZoneInfo, Callable[[datetime], tuple[int, int]]] = {}
