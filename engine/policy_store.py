"""What the management API changes about policies, kept in the data directory across restarts.

Two files, both small JSON written atomically (temp file + rename):
    policies.json           {"rules": [...]}  rules added through POST /api/policies, in order
    policy_settings.json    {"system_prompt": {...}, "thinking_budget": {...}, "ip_filter": {...}}

The settings are not a second mechanism: `settings_rules()` turns the global system prompt and
thinking budget into ordinary rules (named `settings:...`) that the compiler places after the
key shortcuts and before the config's rules, so a config rule can still override them for a key.
The IP filter is not a rule because it applies to every route, management included.

Every change is validated with the same schema and compiler as the config, persisted, then
announced to subscribers (the gateway recompiles its PolicySet). A file that cannot be read is
moved aside as `*.corrupt-<time>` and logged, never silently overwritten.

Public surface: PolicyStore, SettingsError, check_rule, DEFAULT_SETTINGS.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from .ip_filter import IPFilter
from .policy import compile_policies
from .source import dotted

log = logging.getLogger("omniroute.policy")

DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    "system_prompt": {"enabled": False, "mode": "prepend", "text": ""},
    "thinking_budget": {"mode": "passthrough"},
    "ip_filter": {"enabled": False, "allow": [], "block": [], "exempt_loopback": False},
}


class SettingsError(ValueError):
    """A value the caller must fix; `problems` lists each, as `path: what is wrong`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def check_rule(rule: Any, *, source: str = "api", strip: int = 0) -> list[str]:
    """Every problem of one rule (schema and compiler), as `path: message` relative to the rule,
    minus `strip` leading path parts. [] means the rule compiles."""
    found: list[str] = []
    if not isinstance(rule, Mapping):
        return ["a rule must be a JSON object with a name and at least one action"]

    def sink(path: tuple[str | int, ...], message: str) -> None:
        rel = path[2 + strip:]
        found.append(f"{dotted(rel)}: {message}" if rel else message)

    if source == "settings":
        compile_policies(None, {}, sink, settings_rules=[rule])
    else:
        compile_policies(None, {}, sink, api_rules=[rule])
    return found


class PolicyStore:
    """API-added rules and the policy settings. `data_dir=None` keeps them in memory only."""

    def __init__(self, data_dir: str | Path | None) -> None:
        self.dir = Path(data_dir) if data_dir is not None else None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self.version = 0
        rules = self._load("policies.json", {"rules": []}).get("rules")
        self._rules: list[dict[str, Any]] = [r for r in rules if isinstance(r, dict)] if isinstance(rules, list) else []
        saved = self._load("policy_settings.json", {})
        self._settings = copy.deepcopy(DEFAULT_SETTINGS)
        for name, default in DEFAULT_SETTINGS.items():
            value = saved.get(name)
            if isinstance(value, dict):
                self._settings[name] = {**default, **{k: v for k, v in value.items() if k in default or k in ("tokens", "effort")}}
        self._ip_filter = self._build_filter(self._settings["ip_filter"], strict=False)

    # -- files -------------------------------------------------------------------------------

    def _load(self, name: str, default: dict[str, Any]) -> dict[str, Any]:
        if self.dir is None:
            return default
        path = self.dir / name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return default
        except OSError as e:
            log.warning("cannot read the policy file; starting without it", extra={"file": str(path), "error": e.__class__.__name__})
            return default
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return data
        except ValueError as e:
            aside = path.with_name(f"{name}.corrupt-{int(time.time())}")
            try:
                path.rename(aside)
            except OSError:
                aside = path
            log.warning("the policy file is not valid JSON; moved aside, starting without it",
                        extra={"file": str(aside), "error": str(e)[:200]})
            return default

    def _save(self, name: str, data: Any) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change (the gateway recompiles its policies there)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        self.version += 1
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:
                log.exception("a policy change listener failed")

    # -- rules -------------------------------------------------------------------------------

    def rules(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self._rules)

    def names(self) -> set[str]:
        return {r.get("name", "") for r in self._rules}

    def add_rule(self, rule: Mapping[str, Any]) -> None:
        """Append a rule. Raises SettingsError when it does not compile or its name is taken."""
        problems = check_rule(rule)
        if problems:
            raise SettingsError(problems)
        with self._lock:
            if rule["name"] in self.names():
                raise SettingsError([f"name: a rule named '{rule['name']}' already exists"])
            self._rules.append(copy.deepcopy(dict(rule)))
            self._save("policies.json", {"rules": self._rules})
        self._changed()

    def remove_rule(self, name: str) -> bool:
        with self._lock:
            kept = [r for r in self._rules if r.get("name") != name]
            if len(kept) == len(self._rules):
                return False
            self._rules = kept
            self._save("policies.json", {"rules": self._rules})
        self._changed()
        return True

    # -- settings ----------------------------------------------------------------------------

    def setting(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._settings[name])

    def update_setting(self, name: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Merge `changes` into setting `name`, validate, persist, announce; return the new value."""
        if name not in DEFAULT_SETTINGS:
            raise KeyError(name)
        if not isinstance(changes, Mapping):
            raise SettingsError(["the body must be a JSON object"])
        allowed = set(DEFAULT_SETTINGS[name]) | ({"tokens", "effort"} if name == "thinking_budget" else set())
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise SettingsError([f"{unknown[0]}: unknown key (valid keys: {', '.join(sorted(allowed))})"])
        value = {**self._settings[name], **changes}
        if name == "thinking_budget":  # a new mode drops the other mode's parameter
            value = {k: v for k, v in value.items() if k == "mode" or k == value.get("mode")}
        self._validate(name, value)
        with self._lock:
            self._settings[name] = value
            if name == "ip_filter":
                self._ip_filter = self._build_filter(value, strict=True)
            self._save("policy_settings.json", self._settings)
        self._changed()
        return copy.deepcopy(value)

    def _validate(self, name: str, value: dict[str, Any]) -> None:
        if name == "ip_filter":
            self._build_filter(value, strict=True)
            return
        if name == "system_prompt":
            problems = [f"{k}: expected {t}" for k, t in (("enabled", "true or false"), ("text", "a string"))
                        if not isinstance(value.get(k), bool if k == "enabled" else str)]
            if problems:
                raise SettingsError(problems)
            rule = {"name": "settings:system-prompt", "system_prompt": {"mode": value["mode"], "text": value["text"]}}
        else:
            rule = {"name": "settings:thinking-budget", "thinking_budget": value}
        problems = check_rule(rule, source="settings", strip=1)
        if problems:
            raise SettingsError(problems)

    def _build_filter(self, value: Mapping[str, Any], *, strict: bool) -> IPFilter | None:
        problems: list[str] = []
        for k in ("enabled", "exempt_loopback"):
            if not isinstance(value.get(k), bool):
                problems.append(f"{k}: expected true or false")
        lists: dict[str, list[str]] = {}
        for k in ("allow", "block"):
            items = value.get(k)
            if not isinstance(items, list):
                problems.append(f"{k}: expected a list of CIDRs such as 10.0.0.0/8 or 2001:db8::/32")
                continue
            lists[k] = []
            for i, item in enumerate(items):
                try:
                    IPFilter([item])
                except ValueError as e:
                    problems.append(f"{k}[{i}]: {e}")
                else:
                    lists[k].append(item)
        if problems:
            if strict:
                raise SettingsError(problems)
            log.warning("ignoring invalid saved IP filter entries", extra={"problems": problems})
        if value.get("enabled") is not True:
            return None
        flt = IPFilter(lists.get("allow", []), lists.get("block", []), value.get("exempt_loopback") is True)
        return flt if flt.active else None

    def ip_filter(self) -> IPFilter | None:
        """The filter to apply to every request, or None when it is off or empty."""
        return self._ip_filter

    def settings_rules(self) -> list[dict[str, Any]]:
        """The global system prompt and thinking budget as rules, for compile_policies(settings_rules=...)."""
        out: list[dict[str, Any]] = []
        sp = self._settings["system_prompt"]
        if sp.get("enabled") and (sp.get("text") or sp.get("mode") == "replace"):
            out.append({"name": "settings:system-prompt", "description": "global system prompt (/api/settings/system-prompt)",
                        "system_prompt": {"mode": sp.get("mode", "prepend"), "text": sp.get("text", "")}})
        tb = self._settings["thinking_budget"]
        if tb.get("mode", "passthrough") != "passthrough":
            out.append({"name": "settings:thinking-budget", "description": "global thinking budget (/api/settings/thinking-budget)",
                        "thinking_budget": dict(tb)})
        return out
