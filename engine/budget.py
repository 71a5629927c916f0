"""Spending budgets per API key: reserve the worst case before a request, settle the real cost after.

Why reserve: checking "spent > limit" after the fact lets N concurrent requests all pass the check
and overshoot together. Here `reserve()` admits a request only if spent + reserved + its worst-case
cost stays within the limit, and holds that amount until `settle()` replaces it with the real cost
(or `release()` drops it). `reserve` and `settle` take a lock and never await, so one asyncio loop,
or several threads, can call them concurrently without overshooting.

Periods reset on UTC calendar boundaries: midnight (daily), Monday 00:00 (weekly), the 1st of the
month (monthly). Spend is kept for all three periods of every key seen, so a budget switched from
monthly to daily through the API is enforced against the right figure at once. After a restart,
`rebuild(store)` sums the recorded costs of the current periods.

Scope: one book per process. With several worker processes, each enforces against the spend it
rebuilt at start plus what it settled itself; a shared backend (Redis) is the planned drop-in.

Public surface: PERIODS, BudgetSpec, period_bounds, BudgetExceeded, Reservation, BudgetBook.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson

from engine.pricing import micro_to_usd, usd_to_micro

log = logging.getLogger("omniroute.budget")

PERIODS = ("daily", "weekly", "monthly")


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    period: str
    limit_micro_usd: int
    warn_at: float = 0.8

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            raise ValueError(f"budget period must be one of {', '.join(PERIODS)}, got {self.period!r}")
        if isinstance(self.limit_micro_usd, bool) or not isinstance(self.limit_micro_usd, int) or self.limit_micro_usd < 0:
            raise ValueError(f"budget limit must be a whole number of micro-USD >= 0, got {self.limit_micro_usd!r}")
        if isinstance(self.warn_at, bool) or not isinstance(self.warn_at, int | float) or not 0 <= self.warn_at <= 1:
            raise ValueError(f"budget warn_at must be a fraction between 0 and 1, got {self.warn_at!r}")

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> BudgetSpec:
        """`{period, limit_usd, warn_at?}` as written in config.yaml or budgets.json."""
        unknown = sorted(set(d) - {"period", "limit_usd", "warn_at"})
        if unknown:
            raise ValueError(f"unknown budget field(s) {unknown} (valid: period, limit_usd, warn_at)")
        if "period" not in d or "limit_usd" not in d:
            raise ValueError("a budget needs both `period` (daily, weekly, monthly) and `limit_usd`")
        return cls(d["period"], usd_to_micro(d["limit_usd"], "budget limit_usd"), float(d.get("warn_at", 0.8)))

    def to_config(self) -> dict[str, Any]:
        return {"period": self.period, "limit_usd": str(micro_to_usd(self.limit_micro_usd)), "warn_at": self.warn_at}


def _as_dt(now: datetime | float | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if isinstance(now, datetime):
        return now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    return datetime.fromtimestamp(now, UTC)


def period_bounds(period: str, now: datetime | float | None = None) -> tuple[datetime, datetime]:
    """[start, end) of the calendar period holding `now`, in UTC (naive input is taken as UTC)."""
    t = _as_dt(now)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day, day + timedelta(days=1)
    if period == "weekly":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "monthly":
        start = day.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, end
    raise ValueError(f"budget period must be one of {', '.join(PERIODS)}, got {period!r}")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _usd(micro: int) -> str:
    s = f"{micro_to_usd(micro):f}".rstrip("0")
    whole, _, frac = s.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


class BudgetExceeded(Exception):
    """A request that would take a key over its budget. `message` is meant for the client."""

    def __init__(self, key_name: str, spec: BudgetSpec, spent: int, reserved: int, amount: int,
                 resets_at: datetime, now: datetime) -> None:
        self.key_name, self.spec = key_name, spec
        self.spent, self.reserved, self.amount = spent, reserved, amount
        self.resets_at = resets_at
        self.retry_after = max(1, math.ceil((resets_at - now).total_seconds()))
        in_flight = f", {_usd(reserved)} held by requests in flight" if reserved else ""
        self.message = (
            f"API key '{key_name}' has reached its {spec.period} budget of {_usd(spec.limit_micro_usd)}: "
            f"{_usd(spent)} spent{in_flight}, and this request may cost up to {_usd(amount)}. "
            f"The budget resets at {_iso(resets_at)}.")
        super().__init__(self.message)


@dataclass(slots=True)
class Reservation:
    key_name: str
    period: str
    amount_micro: int
    period_start: datetime
    ts: float
    warning: bool = False  # the key has passed its warn_at threshold
    done: bool = False


@dataclass(slots=True)
class _Ledger:
    start: datetime
    end: datetime
    start_ts: float
    end_ts: float
    spent: int = 0
    reserved: int = 0


def _new_ledger(period: str, now: float) -> _Ledger:
    start, end = period_bounds(period, now)
    return _Ledger(start, end, start.timestamp(), end.timestamp())


class _Store(Protocol):
    def query(self, sql: str, params: Any = None) -> tuple[list[str], list[tuple[Any, ...]]]: ...


@dataclass
class BudgetBook:
    """Spend and reservations per key and period. `data_dir` holds API-set budgets (budgets.json)."""

    data_dir: Path | None = None
    reload_every: float = 1.0  # seconds between checks of budgets.json for another worker's change
    _ledgers: dict[str, dict[str, _Ledger]] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _overrides: dict[str, BudgetSpec] = field(default_factory=dict, init=False)
    _mtime: float = field(default=-1.0, init=False)
    _checked: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            self._load(strict=True)

    # -- enforcement --------------------------------------------------------------------------

    def _ledger(self, key_name: str, period: str, now: float) -> _Ledger:
        per_key = self._ledgers.get(key_name)
        if per_key is None:
            per_key = self._ledgers[key_name] = {p: _new_ledger(p, now) for p in PERIODS}
        led = per_key[period]
        if now >= led.end_ts:
            # A new period: spend starts over, and reservations of the old one no longer count
            # here (their settlement belongs to the period they started in). Never roll back: a
            # clock stepping back a little must not wipe the current period's spend.
            led = per_key[period] = _new_ledger(period, now)
        return led

    def reserve(self, key_name: str, spec: BudgetSpec, amount_micro: int,
                now: datetime | float | None = None) -> Reservation:
        """Hold `amount_micro` (the request's worst case; 0 when unpriced) or raise BudgetExceeded."""
        ts = time.time() if now is None else _as_dt(now).timestamp()
        amount = max(0, int(amount_micro))
        with self._lock:
            led = self._ledger(key_name, spec.period, ts)
            used = led.spent + led.reserved
            # A used-up budget admits nothing, not even a request whose cost is unknown (amount 0).
            if used + amount > spec.limit_micro_usd or used >= spec.limit_micro_usd:
                raise BudgetExceeded(key_name, spec, led.spent, led.reserved, amount, led.end, _as_dt(ts))
            led.reserved += amount
            warning = used + amount >= spec.warn_at * spec.limit_micro_usd
            return Reservation(key_name, spec.period, amount, led.start, ts, warning)

    def settle(self, reservation: Reservation, actual_micro: int | None,
               now: datetime | float | None = None) -> None:
        """Replace the hold by the real cost (None, an unpriced model, counts as 0). Idempotent."""
        ts = time.time() if now is None else _as_dt(now).timestamp()
        with self._lock:
            if reservation.done:
                return
            reservation.done = True
            led = self._ledger(reservation.key_name, reservation.period, ts)
            if led.start == reservation.period_start:
                led.reserved = max(0, led.reserved - reservation.amount_micro)
            if actual_micro:
                self._charge(reservation.key_name, max(0, int(actual_micro)), reservation.ts, ts)

    def release(self, reservation: Reservation, now: datetime | float | None = None) -> None:
        """Drop the hold without spending (the request never reached a provider)."""
        self.settle(reservation, None, now)

    def add_spend(self, key_name: str, amount_micro: int | None, now: datetime | float | None = None) -> None:
        """Count a cost that had no reservation (a key without a budget), so a budget set later
        through the API starts from the true figure."""
        if amount_micro:
            ts = time.time() if now is None else _as_dt(now).timestamp()
            with self._lock:
                self._charge(key_name, max(0, int(amount_micro)), ts, ts)

    def _charge(self, key_name: str, amount: int, started: float, now: float) -> None:
        for period in PERIODS:
            led = self._ledger(key_name, period, now)
            if led.start_ts <= started < led.end_ts:  # else it belongs to a period already closed
                led.spent += amount

    def status(self, key_name: str, spec: BudgetSpec, now: datetime | float | None = None) -> dict[str, Any]:
        ts = time.time() if now is None else _as_dt(now).timestamp()
        with self._lock:
            led = self._ledger(key_name, spec.period, ts)
            spent, reserved = led.spent, led.reserved
        limit = spec.limit_micro_usd
        return {
            "keyId": key_name, "period": spec.period,
            "limit": float(micro_to_usd(limit) or 0), "spent": float(micro_to_usd(spent) or 0),
            "reserved": float(micro_to_usd(reserved) or 0),
            "remaining": float(micro_to_usd(max(0, limit - spent - reserved)) or 0),
            "limit_micro_usd": limit, "spent_micro_usd": spent, "reserved_micro_usd": reserved,
            "warn_at": spec.warn_at, "warning": spent + reserved >= spec.warn_at * limit,
            "period_start": _iso(led.start), "resets_at": _iso(led.end),
        }

    def rebuild(self, store: _Store, now: datetime | float | None = None, key_name: str | None = None) -> int:
        """Set spend in the current periods from the usage records, for every key or just
        `key_name`; returns how many keys had spend. Records still buffered are not counted: call it
        at start, before traffic, or after `store.flush()`."""
        ts = time.time() if now is None else _as_dt(now).timestamp()
        starts = [period_bounds(p, ts)[0].replace(tzinfo=None) for p in PERIODS]  # ts columns: naive UTC
        sums = ", ".join(f"sum(cost_micro_usd) FILTER (WHERE ts >= ${i + 1})" for i in range(len(PERIODS)))
        sql = (f"SELECT key_name, {sums} FROM usage WHERE key_name IS NOT NULL AND cost_micro_usd IS NOT NULL "
               f"AND ts >= ${len(PERIODS) + 1}")
        params: list[Any] = [*starts, min(starts)]
        if key_name is not None:
            sql += f" AND key_name = ${len(params) + 1}"
            params.append(key_name)
        _, rows = store.query(sql + " GROUP BY key_name", params)
        found = {name: spent for name, *spent in rows}
        with self._lock:
            keys = set(found) | (set(self._ledgers) if key_name is None else {key_name})
            for name in keys:
                for period, amount in zip(PERIODS, found.get(name, [0] * len(PERIODS)), strict=True):
                    self._ledger(name, period, ts).spent = int(amount or 0)
        return len(found)

    def tracks(self, key_name: str) -> bool:
        """Whether this book has counted the key's spend (through a rebuild, a settle or add_spend)."""
        return key_name in self._ledgers

    # -- API-set budgets ----------------------------------------------------------------------

    def effective(self, key_name: str, configured: BudgetSpec | None) -> BudgetSpec | None:
        """The budget in force for a key: one set through the API wins over the config's."""
        self._maybe_reload()
        return self._overrides.get(key_name, configured)

    def overrides(self) -> dict[str, BudgetSpec]:
        self._maybe_reload()
        return dict(self._overrides)

    def set_override(self, key_name: str, spec: BudgetSpec | None) -> None:
        """Set (or with None, remove) a key's API budget and persist it in budgets.json."""
        with self._lock:
            if spec is None:
                self._overrides.pop(key_name, None)
            else:
                self._overrides[key_name] = spec
            if self.data_dir is not None:
                path = self.data_dir / "budgets.json"
                tmp = path.with_suffix(".json.tmp")
                body = {"budgets": {k: s.to_config() for k, s in sorted(self._overrides.items())}}
                tmp.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
                os.replace(tmp, path)
                self._mtime = path.stat().st_mtime

    def _maybe_reload(self) -> None:
        # Another worker may have changed budgets.json; a stat at most once per reload_every.
        if self.data_dir is None:
            return
        mono = time.monotonic()
        if mono - self._checked < self.reload_every:
            return
        self._checked = mono
        try:
            self._load(strict=False)
        except Exception:
            log.exception("budgets.json could not be read; keeping the budgets already loaded")

    def _load(self, strict: bool) -> None:
        if self.data_dir is None:
            return
        path = self.data_dir / "budgets.json"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        try:
            raw = orjson.loads(path.read_bytes())
            loaded = {str(k): BudgetSpec.from_config(v) for k, v in raw.get("budgets", {}).items()}
        except (ValueError, AttributeError, TypeError) as e:
            if strict:
                raise ValueError(f"{path}: {e} (fix or delete the file; it holds budgets set through the API)")
            raise
        with self._lock:
            self._overrides, self._mtime = loaded, mtime
