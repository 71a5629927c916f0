"""Rate limits and concurrency per API key: the counters behind `rate_limit` and `max_concurrent`.

Long-lived: one PolicyState per process, outside the Runtime, so counters survive reloads. They
are keyed by (rule name, key name), so a reload that keeps a rule keeps its count, and a changed
limit applies at once to what was already counted.

Windows slide. Each is cut into 60 buckets (1 s for a minute, 24 min for a day); a bucket counts
while any part of it lies inside the window, so a limit is never exceeded over any true sliding
window, at the price of releasing capacity up to one bucket late.

`admit` checks every limit of the decision first and charges only if all pass, so a refused
request costs nothing. `admit` and `release` hold a lock and never await: concurrent asyncio tasks
(or threads) can never be admitted past a limit together.

Tokens: `admit` charges an estimate (the caller's `tokens`, e.g. the input estimate); `release`
replaces it with the actual count. A request whose estimate alone exceeds a token limit is refused
with a message saying so (waiting would not help).

Public surface: PolicyState, Admission.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from .errors import RateLimited
from .policy import Decision, Limit

_BUCKETS = 60
_SIZES = {"rpm": 60.0, "rpd": 86400.0, "tpm": 60.0, "tpd": 86400.0}
_WORDS = {"rpm": "requests per minute", "rpd": "requests per day", "tpm": "tokens per minute", "tpd": "tokens per day"}


class _Window:
    __slots__ = ("buckets", "size", "total", "width")

    def __init__(self, size: float) -> None:
        self.size = size
        self.width = size / _BUCKETS
        self.buckets: deque[list[int]] = deque()  # [bucket index, amount], oldest first
        self.total = 0

    def expire(self, now: float) -> None:
        start = now - self.size
        b = self.buckets
        while b and (b[0][0] + 1) * self.width <= start:
            self.total -= b.popleft()[1]

    def add(self, now: float, amount: int) -> int:
        idx = int(now // self.width)
        b = self.buckets
        if b and idx <= b[-1][0]:  # same bucket, or a clock that stepped back
            b[-1][1] += amount
            idx = b[-1][0]
        else:
            b.append([idx, amount])
        self.total += amount
        return idx

    def adjust(self, idx: int, delta: int, now: float) -> None:
        for bucket in reversed(self.buckets):
            if bucket[0] == idx:
                delta = max(delta, -bucket[1])
                bucket[1] += delta
                self.total += delta
                return
        if delta > 0:  # the charged bucket has left the window: count the rest now
            self.add(now, delta)

    def retry_after(self, now: float, excess: int) -> float:
        """Seconds until `excess` units have left the window."""
        freed = 0
        for idx, amount in self.buckets:
            freed += amount
            if freed >= excess:
                return max(0.0, (idx + 1) * self.width + self.size - now)
        return self.size


class Admission:
    """What one admitted request holds: window charges to settle and concurrency slots to free."""

    __slots__ = ("charges", "key", "released", "slots", "tokens")

    def __init__(self, key: str, tokens: int) -> None:
        self.key = key
        self.tokens = tokens
        self.charges: list[tuple[_Window, int, bool]] = []  # window, bucket index, counts tokens
        self.slots: list[tuple[str, str]] = []
        self.released = False



class PolicyState:
    """Per-key counters for every rule with limits. Safe under asyncio and threads."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._limits: dict[tuple[str, str, str], int] = {}  # last limit seen, for snapshots
        self._inflight: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._admits = 0

    def _now(self, now: float | datetime | None) -> float:
        if now is None:
            return float(self._clock())
        return now.timestamp() if isinstance(now, datetime) else float(now)

    def admit(self, key: str | None, decision: Decision | Iterable[Limit], now: float | datetime | None = None,
              tokens: int = 0) -> Admission:
        """Admit one request under every limit of `decision`, or raise RateLimited (with
        retry_after when waiting helps). Nothing is charged unless every limit passes."""
        limits = decision.limits if isinstance(decision, Decision) else tuple(decision)
        k = key or ""
        adm = Admission(k, max(0, int(tokens)))
        if not limits:
            return adm
        t = self._now(now)
        with self._lock:
            refusals: list[tuple[float | None, str]] = []
            plan: list[tuple[_Window, int, bool]] = []
            for lim in limits:
                for kind in ("rpm", "rpd", "tpm", "tpd"):
                    cap = getattr(lim, kind)
                    if cap is None:
                        continue
                    wkey = (lim.rule, k, kind)
                    w = self._windows.get(wkey)
                    if w is None:
                        w = self._windows[wkey] = _Window(_SIZES[kind])
                    self._limits[wkey] = cap
                    w.expire(t)
                    is_tokens = kind[0] == "t"
                    amount = adm.tokens if is_tokens else 1
                    if amount > cap:
                        refusals.append((None, f"this request needs about {amount} tokens, more than the "
                                               f"{cap} {_WORDS[kind]} that rule '{lim.rule}' allows key '{k}'"))
                    elif w.total + amount > cap:
                        wait = w.retry_after(t, w.total + amount - cap)
                        refusals.append((wait, f"rate limit of rule '{lim.rule}' reached: {cap} {_WORDS[kind]} "
                                               f"for key '{k}' (retry in {max(1, round(wait + 0.5))} s)"))
                    else:
                        plan.append((w, amount, is_tokens))
                if lim.max_concurrent is not None and self._inflight.get((lim.rule, k), 0) >= lim.max_concurrent:
                    refusals.append((1.0, f"rule '{lim.rule}' allows key '{k}' {lim.max_concurrent} request(s) "
                                          "at once; wait for one to finish"))
            if refusals:
                waits = [w for w, _ in refusals]
                retry = None if None in waits else max(w for w in waits if w is not None)
                raise RateLimited("; ".join(m for _, m in refusals), retry_after=retry)
            for w, amount, is_tokens in plan:
                adm.charges.append((w, w.add(t, amount), is_tokens))
            for lim in limits:
                if lim.max_concurrent is not None:
                    slot = (lim.rule, k)
                    self._inflight[slot] = self._inflight.get(slot, 0) + 1
                    adm.slots.append(slot)
            self._admits += 1
            if self._admits % 4096 == 0:
                self._sweep(t)
        return adm

    def release(self, admission: Admission, actual_tokens: int | None = None, *, refund: bool = False,
                now: float | datetime | None = None) -> None:
        """End a request: free its concurrency slots; settle token charges with `actual_tokens`
        (input + output); with `refund`, take back everything it was charged (it never reached
        an upstream). Calling it twice is harmless."""
        if admission.released:
            return
        t = self._now(now)
        with self._lock:
            admission.released = True
            for slot in admission.slots:
                n = self._inflight.get(slot, 0) - 1
                if n > 0:
                    self._inflight[slot] = n
                else:
                    self._inflight.pop(slot, None)
            for w, idx, is_tokens in admission.charges:
                w.expire(t)  # so a charge whose bucket has left the window is settled in the current one
                if refund:
                    w.adjust(idx, -(admission.tokens if is_tokens else 1), t)
                elif is_tokens and actual_tokens is not None:
                    w.adjust(idx, max(0, int(actual_tokens)) - admission.tokens, t)

    def inflight(self, rule: str, key: str | None) -> int:
        return self._inflight.get((rule, key or ""), 0)

    def snapshot(self, now: float | datetime | None = None) -> list[dict[str, Any]]:
        """Current use of every counter, for monitoring: rule, key, window, used, limit."""
        t = self._now(now)
        out: list[dict[str, Any]] = []
        with self._lock:
            for (rule, key, kind), w in sorted(self._windows.items()):
                w.expire(t)
                out.append({"rule": rule, "key": key, "window": kind, "used": w.total, "limit": self._limits.get((rule, key, kind))})
            for (rule, key), n in sorted(self._inflight.items()):
                out.append({"rule": rule, "key": key, "window": "concurrent", "used": n, "limit": None})
        return out

    def _sweep(self, now: float) -> None:
        """Forget windows that have emptied (keys gone quiet), so memory follows live keys."""
        idle = []
        for wkey, w in self._windows.items():
            w.expire(now)
            if not w.buckets:
                idle.append(wkey)
        for wkey in idle:
            del self._windows[wkey]
            self._limits.pop(wkey, None)
