"""The attempt loop: walk a request's ordered targets until one answers, by the combo's rules.

A pure async function over four inputs, so it is tested without HTTP: the ordered targets, the
combo's settings, the Resilience state, and `send(target, account, attempt) -> result`, which
raises UpstreamError on failure. For each target it skips open breakers and accounts that cool
down (saying why), calls `send`, records the outcome, and decides by the failure's class:

    client (400, 404, 422...)     stop at once and return the error: no target does better
    unsupported (retryable 4xx)   this target cannot serve the request: next target
    auth, quota, 429              that account's problem: another account of the same connection,
                                  then (429 only) a retry after Retry-After, then the next target
    5xx, timeout, network, 408    retry the same account (`retries`, backoff doubling from
                                  `retry_backoff_ms`, at least Retry-After), then the next target
A class missing from the combo's `fallback_on` stops at once too. `max_attempts` caps the calls,
`deadline_s` the time (waits never run past it, and a call still running at the deadline is cut).
The same (target, account) pair is called again only by a retry.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import Unavailable, UpstreamError
from .resilience import CLOSED
from .strategies import filter_capable

if TYPE_CHECKING:
    from .resilience import Resilience
    from .routing import Target
    from .runtime import Account
    from .strategies import RoutingStats

T = TypeVar("T")
FALLBACK_CLASSES = frozenset(("408", "429", "5xx", "timeout", "network", "auth", "quota"))
_ACCOUNT_CLASSES = frozenset(("auth", "quota", "429"))
_QUOTA_WORDS = ("quota", "billing", "credit", "exceeded your current")
MAX_RETRY_WAIT_S = 60.0  # without a deadline, a longer Retry-After moves on instead of waiting
Send = Callable[["Target", "Account", int], Awaitable[T]]
Event = Callable[..., None]


def classify(err: UpstreamError) -> str:
    """The fallback class of a failure: one of FALLBACK_CLASSES, 'client' (the request is wrong),
    or 'unsupported' (a 4xx the sender marked retryable: this target cannot serve it)."""
    status, kind = err.status, err.kind
    if status == 408:
        return "408"
    if kind == "timeout":
        return "timeout"
    if kind == "bad_gateway":
        return "network"
    if status in (401, 403):
        return "auth"
    if status == 402:
        return "quota"
    if status == 429:
        text = f"{err.message} {err.body[:2000].decode('utf-8', 'replace')}".lower()
        return "quota" if any(w in text for w in _QUOTA_WORDS) else "429"
    if status >= 500:
        return "5xx"
    return "unsupported" if err.retryable else "client"


class _Plan:
    """Per-request bookkeeping: attempts made, the last meaningful error, why targets were skipped."""

    __slots__ = ("attempts", "last", "last_unsupported", "skips")

    def __init__(self) -> None:
        self.attempts = 0
        self.last: UpstreamError | None = None
        self.last_unsupported: UpstreamError | None = None
        self.skips: list[tuple[str, str, float | None]] = []

    def error(self, now: float) -> Exception:
        if self.last is not None:
            return self.last
        if self.last_unsupported is not None:
            return self.last_unsupported
        waits = [u for _, _, u in self.skips if u is not None]
        why = "; ".join(f"{k}: {r}" for k, r, _ in self.skips) or "no target to try"
        headers = {"retry-after": str(max(1, math.ceil(min(waits) - now)))} if waits else None
        return Unavailable(f"no target can take the request now ({why})", headers=headers)


async def run_attempts(
    targets: list[Target],
    settings: Mapping[str, Any],
    state: Resilience,
    send: Send[T],
    *,
    fingerprint: str,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    on_event: Event | None = None,
    stats: RoutingStats | None = None,
    tokens: int = 0,
    hold: Callable[[T, Callable[[], None]], bool] | None = None,
) -> T:
    """Try `targets` in order; return the first result of `send`, else raise (see the module doc).

    `tokens` charges client-side tpm limits. `hold(result, release)`, when given, may return True
    to keep the account's in-flight count and concurrency slot until it calls `release()` (a
    stream, when its body ends). Events: on_event('skip'|'failure'|'retry'|'success', **fields)."""
    now = clock or state.clock
    max_attempts = settings.get("max_attempts")
    deadline_s = float(settings.get("deadline_s") or 0)
    deadline = now() + deadline_s if deadline_s > 0 else None
    plan = _Plan()
    seen: set[str] = set()
    for target in targets:
        key, conn = target.key, target.connection
        if key in seen:
            continue  # a target listed twice (nested combos) is tried once
        seen.add(key)
        blocked = state.provider_block(conn)
        account = None if blocked else state.pick(conn, fingerprint=fingerprint, tokens=tokens, model=target.model.id)
        if account is None:
            why, until = blocked or why_no_account(state, conn, set(), fingerprint, tokens, target.model.id)
            plan.skips.append((key, why, until))
            if on_event:
                on_event("skip", target=key, reason=why, retry_at=until)
            continue
        tried: set[str] = set()
        retry_n = 0
        while account is not None:
            if (max_attempts and plan.attempts >= max_attempts) or (deadline is not None and now() >= deadline):
                raise plan.error(now())
            if conn.id in state.capped and not await state.acquire_slot(conn):
                why = f"{conn.id} is at its max_concurrent limit and no slot freed within queue_timeout_s"
                plan.skips.append((key, why, None))
                if on_event:
                    on_event("skip", target=key, reason=why, retry_at=None)
                break
            attempt = plan.attempts
            plan.attempts += 1
            state.begin(conn, account, tokens)
            if stats is not None:
                stats.started(key)
            t0 = time.perf_counter()
            try:
                if deadline is None:
                    result = await send(target, account, attempt)
                else:
                    result = await _within(send(target, account, attempt), deadline - now(), deadline_s, target, attempt)
            except UpstreamError as e:
                _release(state, stats, target, account)
                error = e
            except BaseException:
                _release(state, stats, target, account)
                raise
            else:
                state.success(conn, account)
                if stats is not None:
                    stats.observe(key, True, (time.perf_counter() - t0) * 1000)
                if on_event:
                    on_event("success", target=key, account=account.label, attempt=attempt)
                if hold is None or not hold(result, _releaser(state, stats, target, account)):
                    _release(state, stats, target, account)
                return result
            # ---- the attempt failed: record it, then decide
            cls = classify(error)
            until = state.failure(conn, account, error, cls, fingerprint)
            if stats is not None:
                stats.observe(key, False, (time.perf_counter() - t0) * 1000)
            if cls == "unsupported":
                plan.last_unsupported = error
            else:
                plan.last = error
            fallback_on = settings.get("fallback_on")
            allowed = FALLBACK_CLASSES if fallback_on is None else fallback_on
            if cls == "client" or (cls != "unsupported" and (cls not in allowed or not error.retryable)):
                _event(on_event, "failure", target, account, attempt, error, cls, "stop")
                raise error
            nxt: Account | None = None
            if cls in _ACCOUNT_CLASSES:
                tried.add(account.label)
                nxt = state.pick(conn, exclude=tried, fingerprint=fingerprint, tokens=tokens, model=target.model.id)
                if nxt is not None:
                    _event(on_event, "failure", target, account, attempt, error, cls, "next_account")
                    account = nxt
                    continue
            if cls not in ("auth", "quota", "unsupported") and retry_n < int(settings.get("retries") or 0):
                backoff = float(settings.get("retry_backoff_ms", 200)) / 1000
                delay = max(backoff * (2**retry_n), error.retry_after or 0.0, (until or 0.0) - now() if cls == "429" else 0.0)
                fits = delay <= MAX_RETRY_WAIT_S if deadline is None else now() + delay < deadline
                if fits and state.provider_block(conn) is None:  # a breaker this failure opened ends the retries
                    _event(on_event, "failure", target, account, attempt, error, cls, "retry")
                    if on_event:
                        on_event("retry", target=key, account=account.label, delay_s=delay)
                    retry_n += 1
                    if delay > 0:
                        await sleep(delay)
                    continue
            _event(on_event, "failure", target, account, attempt, error, cls, "next_target")
            account = None
    raise plan.error(now())


def _event(on_event: Event | None, kind: str, target: Target, account: Account, attempt: int, e: UpstreamError, cls: str, action: str) -> None:
    if on_event:
        on_event(kind, target=target.key, account=account.label, attempt=attempt, status=e.status, error_class=cls, action=action)


def _release(state: Resilience, stats: RoutingStats | None, target: Target, account: Account) -> None:
    """Give back what an attempt holds: in-flight counts and the concurrency slot."""
    conn = target.connection
    state.end(conn, account)
    if conn.id in state.capped:
        state.release_slot(conn)
    if stats is not None:
        stats.ended(target.key)


def _releaser(state: Resilience, stats: RoutingStats | None, target: Target, account: Account) -> Callable[[], None]:
    """`_release` once, however often it is called: what `hold` gets for a stream."""
    done = False

    def release() -> None:
        nonlocal done
        if not done:
            done = True
            _release(state, stats, target, account)

    return release


async def _within(call: Awaitable[T], remaining: float, deadline_s: float, target: Target, attempt: int) -> T:
    """Await `call`, cut at the deadline. One timer handle: asyncio.timeout costs ~4x more CPU,
    and this runs on every attempt of a combo with deadline_s."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    fired = False

    def fire() -> None:
        nonlocal fired
        fired = True
        if task is not None:
            task.cancel()

    handle = loop.call_at(loop.time() + max(0.0, remaining), fire)
    try:
        return await call
    except asyncio.CancelledError:
        if not fired or task is None or task.uncancel() > 0:
            raise  # cancelled from outside
        raise UpstreamError(f"{target.key}: the combo's deadline of {deadline_s:g}s passed", status=504, kind="timeout",
                            provider=target.connection.id, model=target.model.id, attempt=attempt) from None
    finally:
        handle.cancel()


def why_no_account(
    state: Resilience, conn: Any, tried: set[str], fingerprint: str, tokens: int, model: str | None = None
) -> tuple[str, float | None]:
    """Why no account of `conn` is usable, and the soonest time one may be (None: a config change)."""
    parts, waits = [], []
    for a in conn.accounts:
        if a.label in tried:
            continue
        block = state.account_block(conn, a.label, fingerprint, tokens, model)
        if block is not None:
            parts.append(f"{a.label}: {block[0]}")
            if block[1] is not None:
                waits.append(block[1])
    return "no account available (" + "; ".join(parts) + ")", min(waits) if waits else None


def explain(targets: list[Target], settings: Mapping[str, Any], state: Resilience, needs: Any = (),
            input_tokens: int = 0, max_tokens: int | None = None) -> list[dict[str, Any]]:
    """The attempt plan as data, for `omniroute explain` and /api/route/explain: each target in
    order with its accounts (usable or why not), breaker state, and why it would be skipped."""
    _, skipped = filter_capable(targets, needs, input_tokens, max_tokens)
    incapable = {id(t): why for t, why in skipped}
    now = state.clock()
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, t in enumerate(targets, 1):
        conn, m = t.connection, t.model
        accounts = []
        for a in conn.accounts:
            block = state.account_block(conn, a.label, tokens=input_tokens, model=m.id)
            accounts.append({"label": a.label, "usable": block is None, "why": block[0] if block else None,
                             "retry_in_s": round(block[1] - now, 3) if block and block[1] is not None else None})
        blocked = state.provider_block(conn)
        skip = ("listed earlier in the plan" if t.key in seen else incapable.get(id(t))
                or (blocked[0] if blocked else None)
                or (None if any(a["usable"] for a in accounts) else "no account available"))
        seen.add(t.key)
        breaker = state.providers.get(conn.id)
        out.append({
            "position": i, "key": t.key, "ref": t.ref, "provider": conn.id, "model": m.id, "weight": t.weight,
            "format": getattr(conn.format, "id", None), "known_model": m.known, "context": m.context,
            "capabilities": sorted(m.capabilities), "price": m.price.to_dict() if m.price else None,
            "breaker": breaker.current(now, state.profile(conn.id)) if breaker else CLOSED,
            "accounts": accounts, "skipped": skip,
        })
    return out
