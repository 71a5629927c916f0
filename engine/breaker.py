"""Circuit breakers and the profiles that tune them (and the account cooldowns of resilience.py).

A breaker counts *real* failures (the caller decides which: 5xx, timeouts, network errors, 408, and
429 for an account's breaker). A success does not wipe the count, unlike OmniRoute's breaker, which
resets on every returned call and so rarely opens; failures simply age out of `window_s`.

    closed --N failures within window_s--> open --reset_s--> half-open (admits one probe)
    half-open --probe succeeds--> closed;  half-open --probe fails--> open again

A breaker holds timestamps only; the caller passes `now` and the Profile, so the same breaker
follows a profile changed by a reload or by PUT /api/resilience.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass(frozen=True)
class Profile:
    """Breaker and cooldown tuning, named in config (`resilience.profiles`) and picked per
    connection (`resilience_profile`)."""

    failure_threshold: int = 5  # real failures within window_s that open a breaker
    window_s: float = 60.0
    reset_s: float = 30.0  # open -> half-open after this long
    cooldown_base_s: float = 1.0  # first backoff of an account after a 5xx or timeout
    cooldown_max_s: float = 300.0
    quota_cooldown_s: float = 3600.0  # quota exhausted and the upstream said nothing about when
    sticky_requests: int = 1  # round-robin keeps an account for this many requests in a row

    @classmethod
    def build(cls, raw: Mapping[str, Any], where: str, base: Profile | None = None) -> Profile:
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: must be a mapping of settings (valid keys: {', '.join(PROFILE_KEYS)})")
        values = asdict(base or cls())
        for k, v in raw.items():
            if k not in values:
                raise ValueError(f"{where}.{k}: unknown key (valid keys: {', '.join(PROFILE_KEYS)})")
            integral = k in ("failure_threshold", "sticky_requests")
            if isinstance(v, bool) or not isinstance(v, int if integral else int | float) or v < (1 if integral else 0):
                kind = "an integer >= 1" if integral else "a number of seconds >= 0"
                raise ValueError(f"{where}.{k}: must be {kind}, got {v!r}")
            if k == "window_s" and v == 0:
                raise ValueError(f"{where}.{k}: must be a number of seconds > 0, got {v!r}")
            values[k] = v
        p = cls(**values)
        if p.cooldown_max_s < p.cooldown_base_s:
            raise ValueError(f"{where}: cooldown_max_s ({p.cooldown_max_s}) is below cooldown_base_s ({p.cooldown_base_s})")
        return p


PROFILE_KEYS = tuple(f.name for f in fields(Profile))


def profiles_from_config(raw: Mapping[str, Any] | None) -> dict[str, Profile]:
    """The config's `resilience:` section -> profiles by name. 'default' is always present; with
    `default_profile: X` it is profile X. Raises ValueError naming the key to fix."""
    raw = raw or {}
    bad = sorted(set(raw) - {"profiles", "default_profile"})
    if bad:
        raise ValueError(f"resilience.{bad[0]}: unknown key (valid keys: default_profile, profiles)")
    profiles = {"default": Profile()}
    for name, p in (raw.get("profiles") or {}).items():
        profiles[name] = Profile.build(p, f"resilience.profiles.{name}")
    dp = raw.get("default_profile")
    if dp is not None:
        if dp not in profiles:
            raise ValueError(f"resilience.default_profile: unknown profile '{dp}' (valid values: {', '.join(profiles)})")
        profiles["default"] = profiles[dp]
    return profiles


def check_config(config: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """Load-time checks for compile: (key path, message) for each problem in `resilience` and the
    connections' `resilience_profile` references."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    try:
        profiles = profiles_from_config(config.get("resilience"))
    except ValueError as e:
        path, _, msg = str(e).partition(": ")
        return [(tuple(path.split(".")), msg)]
    for cid, raw in (config.get("providers") or {}).items():
        name = (raw or {}).get("resilience_profile")
        if name is not None and name not in profiles:
            problems.append((("providers", cid, "resilience_profile"), f"unknown profile '{name}' (valid values: {', '.join(profiles)})"))
    return problems


class Breaker:
    """closed -> open (N failures in the window) -> half-open (after reset_s, one probe) -> closed."""

    __slots__ = ("failures", "opened_at", "probing_since", "state", "trips")

    def __init__(self) -> None:
        self.failures: deque[float] = deque()
        self.state = CLOSED
        self.opened_at = 0.0
        self.probing_since: float | None = None
        self.trips = 0

    def current(self, now: float, p: Profile) -> str:
        if self.state == OPEN and now >= self.opened_at + p.reset_s:
            return HALF_OPEN
        return self.state

    def blocked_until(self, now: float, p: Profile) -> float | None:
        """None when a call may go now; else when to look again. A probe that never reports
        (its request was cancelled) frees the half-open slot after reset_s."""
        if self.state == CLOSED:
            return None
        if now < self.opened_at + p.reset_s:
            return self.opened_at + p.reset_s
        if self.probing_since is not None and now < self.probing_since + p.reset_s:
            return self.probing_since + p.reset_s
        return None

    def admit(self, now: float) -> None:
        if self.state != CLOSED:
            self.probing_since = now

    def success(self) -> None:
        if self.state != CLOSED:
            self.state, self.probing_since = CLOSED, None
            self.failures.clear()

    def failure(self, now: float, p: Profile) -> None:
        f = self.failures
        f.append(now)
        while f and f[0] <= now - p.window_s:
            f.popleft()
        if self.state != CLOSED or len(f) >= p.failure_threshold:
            self.state, self.opened_at, self.probing_since = OPEN, now, None
            self.trips += 1
            f.clear()

    def close(self) -> None:
        self.state, self.probing_since = CLOSED, None
        self.failures.clear()

    def view(self, now: float, p: Profile) -> dict[str, Any]:
        until = self.blocked_until(now, p)
        return {"state": self.current(now, p), "failures_in_window": sum(1 for t in self.failures if t > now - p.window_s),
                "trips": self.trips, "retry_in_s": None if until is None else round(until - now, 3)}

