"""Rate limits of one account: learned from the upstream's headers, and enforced on our side.

Learned: each provider spec declares which response headers carry its limits
(`rate_limit_headers`: limit_*, remaining_*, reset_*, retry_after). Their values come in many
shapes: OpenAI and Groq write durations ('1s', '6m0s', '20ms'), Anthropic RFC 3339 dates, Cerebras
seconds ('33011.38'), others epoch timestamps, and Retry-After seconds or an HTTP date.
`parse_delay` reads them all into one absolute time, so an account whose remaining count reached 0
is skipped until the reset instead of being called into a certain 429.

Enforced: optional client-side `rpm`/`tpm` per account over a sliding minute, and
`max_concurrent` per connection with a FIFO queue bounded by `queue_timeout_s` (Slots).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

_DURATION = re.compile(r"^(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m(?!s))?(?:(\d+(?:\.\d*)?)s)?(?:(\d+(?:\.\d*)?)ms)?$")
_TIMES = ("reset_", "retry_after")
WINDOW_S = 60.0


def parse_delay(value: str | None, now: float) -> float | None:
    """A rate-limit header value -> the absolute time it points to; None when unreadable.
    Plain numbers are seconds from now, except epoch seconds (> 1e9) and epoch milliseconds (> 1e12)."""
    if not value:
        return None
    hit = _DELAYS.get(value)  # providers repeat the same few values on every response
    if hit is None:
        if len(_DELAYS) > 1024:
            _DELAYS.clear()
        hit = _DELAYS[value] = _parse(value)
    relative, n = hit
    return None if n is None else now + n if relative else n


_DELAYS: dict[str, tuple[bool, float | None]] = {}


def _parse(value: str) -> tuple[bool, float | None]:
    """(relative, seconds): seconds from now when relative, else an absolute time."""
    v = value.strip()
    try:
        n = float(v)
    except ValueError:
        pass
    else:
        if n != n or n < 0 or n == float("inf"):
            return (False, None)
        return (False, n / 1000) if n > 1e12 else (False, n) if n > 1e9 else (True, n)
    m = _DURATION.match(v)
    if m and any(m.groups()):
        h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
        return True, h * 3600 + mi * 60 + s + ms / 1000
    try:
        return False, datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
    except ValueError:
        pass
    try:
        return False, parsedate_to_datetime(v).timestamp()
    except (TypeError, ValueError, IndexError):
        return False, None


class AccountLimits:
    """What one account's headers said, and its client-side request/token window."""

    __slots__ = ("learned", "recent", "tokens", "tokens_sum")

    def __init__(self) -> None:
        self.learned: dict[str, float] = {}  # limit_*/remaining_* counts; reset_*/retry_after absolute times
        self.recent: deque[float] = deque()  # request times within the last minute
        self.tokens: deque[tuple[float, int]] = deque()  # (time, tokens) within the last minute
        self.tokens_sum = 0

    def learn(self, names: Mapping[str, str], headers: Mapping[str, str], now: float) -> None:
        for field, header in names.items():
            value = headers.get(header)
            if value is None:
                continue
            if field.startswith(_TIMES):
                at = parse_delay(value, now)
                if at is not None:
                    self.learned[field] = at
            else:
                try:
                    self.learned[field] = float(value)
                except ValueError:
                    pass

    def exhausted(self, now: float, tokens: int) -> tuple[str, float] | None:
        """(reason, reset time) when the upstream said this account has nothing left until a reset."""
        lr = self.learned
        if lr.get("remaining_requests", 1.0) <= 0 and lr.get("reset_requests", 0.0) > now:
            return "upstream request limit reached", lr["reset_requests"]
        if lr.get("remaining_tokens", float("inf")) < max(1, tokens) and lr.get("reset_tokens", 0.0) > now:
            return "upstream token limit reached", lr["reset_tokens"]
        return None

    def reset_at(self, now: float) -> float | None:
        """When a 429 without Retry-After ends, by the learned headers: the latest reset of an
        exhausted limit, else the soonest future reset; None when the headers said nothing."""
        lr = self.learned
        done = [lr[f"reset_{w}"] for w in ("requests", "tokens") if lr.get(f"remaining_{w}", 1.0) <= 0 and lr.get(f"reset_{w}", 0.0) > now]
        if done:
            return max(done)
        future = [v for k, v in lr.items() if k.startswith(_TIMES) and v > now]
        return min(future) if future else None

    def charge(self, now: float, tokens: int, request: bool = True) -> None:
        if request:
            self.recent.append(now)
        if tokens > 0:
            self.tokens.append((now, tokens))
            self.tokens_sum += tokens

    def over(self, rpm: int | None, tpm: int | None, now: float, tokens: int) -> tuple[str, float] | None:
        """(reason, when a slot frees) when one more request of `tokens` would break rpm or tpm.
        A request bigger than tpm alone still goes when the window is empty (it could never go)."""
        cutoff = now - WINDOW_S
        while self.recent and self.recent[0] <= cutoff:
            self.recent.popleft()
        while self.tokens and self.tokens[0][0] <= cutoff:
            self.tokens_sum -= self.tokens.popleft()[1]
        if rpm and len(self.recent) >= rpm:
            return f"client-side limit of {rpm} requests per minute reached", self.recent[0] + WINDOW_S
        if tpm and self.tokens and self.tokens_sum + tokens > tpm:
            return f"client-side limit of {tpm} tokens per minute reached", self.tokens[0][0] + WINDOW_S
        return None

    def view(self, now: float) -> dict[str, float]:
        """Learned values for the API, times as seconds from now."""
        return {k: round(v - now, 3) if k.startswith(_TIMES) else v for k, v in sorted(self.learned.items())}


class Slots:
    """A connection's concurrency cap: at most `limit` holders, the rest wait in FIFO order."""

    __slots__ = ("active", "waiters")

    def __init__(self) -> None:
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, limit: int, timeout: float) -> bool:
        """True with a slot held; False when none freed within `timeout` seconds."""
        if self.active < limit and not self.waiters:
            self.active += 1
            return True
        if timeout <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return fut.done() and not fut.cancelled()  # handed a slot just as the time ran out
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(limit)  # handed a slot, but the request is gone: pass it on
            raise
        finally:
            if fut in self.waiters:
                self.waiters.remove(fut)

    def release(self, limit: int) -> None:
        """Free a slot; it goes straight to the longest waiter, if any."""
        self.active = max(0, self.active - 1)
        while self.waiters and self.active < limit:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(None)
                self.active += 1
