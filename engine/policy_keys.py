"""A key's shortcuts (`models`, `rpm`, `rpd`, `tpm`, `tpd`, `max_concurrent`, `schedule` in
`keys:`) as ordinary policy rules, so there is one mechanism and explain shows them by name.

    key:NAME:schedule   deny outside the schedule
    key:NAME:models     deny unless the model asked for, its combo or the resolved target
                        matches one of the globs (a phase-two rule: decided per target)
    key:NAME:limits     rate_limit / max_concurrent for the key

Attributes are read with getattr, so any object with a `name` will do (ApiKey, a test stand-in).

Public surface: key_rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .policy_match import Path, compile_schedule


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def key_rules(key: Any, path: Path, problem: Callable[[Path, str], None]) -> list[dict[str, Any]]:
    """The rules a key's shortcuts stand for: schedule (deny outside it), models (deny others), limits."""
    name = getattr(key, "name", None)
    if not isinstance(name, str) or not name:
        problem((*path, "name"), "a key needs a name")
        return []
    is_key = {"field": "key", "eq": name}
    out: list[dict[str, Any]] = []
    schedule = getattr(key, "schedule", None)
    if schedule is not None and compile_schedule(schedule, (*path, "schedule"), problem) is not None:
        when = f"{','.join(schedule.get('days') or ['every day'])} {schedule.get('hours', '00:00-24:00')}"
        out.append({"name": f"key:{name}:schedule", "match": {"all": [is_key, {"not": {"schedule": dict(schedule)}}]},
                    "deny": {"status": 403, "message": f"key '{name}' may be used only {when} ({schedule.get('tz', 'UTC')})"}})
    models = tuple(getattr(key, "models", None) or ())
    if models:
        pats = list(models)
        allowed = {"any": [{"field": f, "glob": pats} for f in ("model", "combo", "resolved_model")]}
        out.append({"name": f"key:{name}:models", "match": {"all": [is_key, {"not": allowed}]},
                    "deny": {"status": 403, "message": f"key '{name}' may not use model '{{model}}' (allowed: {', '.join(pats)})"}})
    rl: dict[str, int] = {}
    for k in ("rpm", "rpd", "tpm", "tpd", "max_concurrent"):
        v = getattr(key, k, None)
        if v is None:
            continue
        if not _positive_int(v):
            problem((*path, k), f"{k} must be a whole number >= 1, got {v!r}")
            continue
        rl[k] = v
    if rl:
        conc = rl.pop("max_concurrent", None)
        rule: dict[str, Any] = {"name": f"key:{name}:limits", "match": is_key}
        if rl:
            rule["rate_limit"] = rl
        if conc is not None:
            rule["max_concurrent"] = conc
        out.append(rule)
    return out
