"""Routing state that outlives a config: breakers, cooldowns, account choice, rate limits, caps.

Keyed by connection id and account label (never by key material), held by the Gateway and left
untouched by reloads. The clock is injected (`Resilience(clock=...)`, wall-clock seconds by
default because upstream reset headers are dates), so tests freeze and advance time.

What a failure does (its class comes from attempts.classify):
    5xx, timeout, network, 408   count on the connection's and the account's breaker (breaker.py);
                                 the account backs off, cooldown_base_s doubling to cooldown_max_s
    429                          counts on the account's breaker; the account cools until
                                 Retry-After, else the learned reset, else the backoff
    quota (402, 429 + 'quota')   the account cools until the reset, else quota_cooldown_s
    auth (401, 403)              the account is disabled until the config fingerprint changes
    client, unsupported          the upstream answered, so it is alive: a success for the breakers
Nothing here awaits except `acquire_slot`, the per-connection concurrency queue.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .account_limits import AccountLimits, Slots, parse_delay
from .breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    PROFILE_KEYS,
    Breaker,
    Profile,
    check_config,
    profiles_from_config,
)

if TYPE_CHECKING:
    from .errors import UpstreamError
    from .runtime import Account, Connection

Clock = Callable[[], float]
ACCOUNT_STRATEGIES = ("fill-first", "round-robin", "least-used", "random")
_PROVIDER_FAILURES = frozenset(("408", "5xx", "timeout", "network"))
_ACCOUNT_FAILURES = _PROVIDER_FAILURES | {"429"}
Block = tuple[str, float | None]  # (why, retry at; None = not before the config changes)


@dataclass(frozen=True)
class ConnOptions:
    """Per-connection routing options from the config (`providers.<id>`)."""

    account_strategy: str = "fill-first"
    max_concurrent: int | None = None
    queue_timeout_s: float = 5.0
    rpm: int | None = None
    tpm: int | None = None
    profile: str = "default"

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> ConnOptions:
        return cls(raw.get("account_strategy", "fill-first"), raw.get("max_concurrent"), float(raw.get("queue_timeout_s", 5.0)),
                   raw.get("rpm"), raw.get("tpm"), raw.get("resilience_profile", "default"))


class AccountState:
    """Everything known about one account of one connection."""

    __slots__ = ("breaker", "cool_kind", "cool_reason", "cool_until", "disabled_fp", "disabled_reason", "failures",
                 "in_flight", "level", "limits", "model_cool", "requests")

    def __init__(self) -> None:
        self.breaker = Breaker()
        self.limits = AccountLimits()
        self.cool_until, self.cool_kind, self.cool_reason = 0.0, "", ""
        self.disabled_fp: str | None = None
        self.disabled_reason = ""
        self.level = self.in_flight = self.requests = self.failures = 0  # level: consecutive backoffs
        # 5xx and timeouts back off per model: one overloaded model must not block its siblings
        self.model_cool: dict[str, tuple[float, str]] = {}

    def cool(self, until: float, kind: str, reason: str) -> None:
        if until > self.cool_until:
            self.cool_until, self.cool_kind, self.cool_reason = until, kind, reason


class Resilience:
    """The long-lived routing state of one gateway process. See the module docstring."""

    def __init__(self, clock: Clock = time.time, rng: random.Random | None = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.fingerprint = ""
        self.config_profiles: dict[str, Profile] = {"default": Profile()}
        self._raw_overrides: dict[str, dict[str, Any]] = {}  # PUT /api/resilience; kept across reloads
        self.profiles: dict[str, Profile] = dict(self.config_profiles)
        self.options: dict[str, ConnOptions] = {}
        self.capped: frozenset[str] = frozenset()  # connections with max_concurrent
        self.providers: dict[str, Breaker] = {}
        self.accounts: dict[tuple[str, str], AccountState] = {}
        self._slots: dict[str, Slots] = {}
        self._sticky: dict[str, tuple[str, int]] = {}  # connection -> (account label, requests served)

    # ------------------------------------------------------------ configuration

    def configure(self, rt: Any) -> None:
        """Adopt a Runtime's profiles and connection options. A no-op for the fingerprint already
        adopted, so calling it on every request is cheap; breakers and cooldowns are kept."""
        if rt.fingerprint == self.fingerprint:
            return
        raw = rt.raw_config  # validated at load (schema + check_config)
        self.config_profiles = profiles_from_config(raw.get("resilience"))
        self.options = {cid: ConnOptions.from_config(c or {}) for cid, c in (raw.get("providers") or {}).items()}
        self.capped = frozenset(cid for cid, o in self.options.items() if o.max_concurrent)
        self.profiles = {**self.config_profiles, **self._apply(self._raw_overrides)}
        self.fingerprint = rt.fingerprint

    def set_overrides(self, raw: Any) -> dict[str, Profile]:
        """Replace the API overrides, `{"profiles": {name: {setting: value}}}`. Each applies over the
        config's profile of that name, now and after every reload. Raises ValueError naming what to fix."""
        if not isinstance(raw, Mapping) or set(raw) - {"profiles"}:
            raise ValueError('body must be {"profiles": {name: {setting: value}}} (valid settings: ' + ", ".join(PROFILE_KEYS) + ")")
        profiles = raw.get("profiles", {})
        if not isinstance(profiles, Mapping):
            raise ValueError("profiles: must be a mapping of profile name to settings")
        built = self._apply(profiles, strict=True)
        self._raw_overrides = {name: dict(p) for name, p in profiles.items()}
        self.profiles = {**self.config_profiles, **built}
        return built

    @property
    def overrides(self) -> dict[str, Profile]:
        return {name: self.profiles[name] for name in self._raw_overrides}

    def _apply(self, raw: Mapping[str, Any], strict: bool = False) -> dict[str, Profile]:
        out = {}
        for name, p in raw.items():
            try:
                out[name] = Profile.build(p, f"profiles.{name}", self.config_profiles.get(name))
            except ValueError:
                if strict:
                    raise
                out[name] = Profile.build(p, f"profiles.{name}")  # clashes with a reloaded config: the API's values win
        return out

    def profile(self, conn_id: str) -> Profile:
        opt = self.options.get(conn_id)
        return self.profiles.get(opt.profile if opt else "default") or self.profiles["default"]

    def account(self, conn_id: str, label: str) -> AccountState:
        st = self.accounts.get((conn_id, label))
        if st is None:
            st = self.accounts[(conn_id, label)] = AccountState()
        return st

    def breaker(self, conn_id: str) -> Breaker:
        b = self.providers.get(conn_id)
        if b is None:
            b = self.providers[conn_id] = Breaker()
        return b

    # ------------------------------------------------------------ availability

    def provider_block(self, conn: Connection) -> tuple[str, float] | None:
        """(why, retry at) when the connection's breaker refuses calls now, else None."""
        b = self.providers.get(conn.id)
        if b is None or b.state == CLOSED:
            return None
        until = b.blocked_until(self.clock(), self.profile(conn.id))
        return None if until is None else (f"circuit breaker of {conn.id} is open", until)

    def account_block(
        self, conn: Connection, label: str, fingerprint: str | None = None, tokens: int = 0, model: str | None = None
    ) -> Block | None:
        """Why the account cannot be used now (and until when), or None when it can."""
        st = self.accounts.get((conn.id, label))
        opt = self.options.get(conn.id)
        if st is None and (opt is None or not (opt.rpm or opt.tpm)):
            return None
        if st is None:
            st = self.account(conn.id, label)
        now = self.clock()
        if st.disabled_fp is not None and st.disabled_fp == (fingerprint or self.fingerprint):
            return st.disabled_reason, None
        if st.cool_until > now:
            return st.cool_reason, st.cool_until
        if model is not None and st.model_cool:
            cool_until, reason = st.model_cool.get(model, (0.0, ""))
            if cool_until > now:
                return reason, cool_until
        if st.breaker.state != CLOSED:
            until = st.breaker.blocked_until(now, self.profile(conn.id))
            if until is not None:
                return f"circuit breaker of account {label} is open", until
        if st.limits.learned:
            hit = st.limits.exhausted(now, tokens)
            if hit:
                return hit
        if opt is not None and (opt.rpm or opt.tpm):
            return st.limits.over(opt.rpm, opt.tpm, now, tokens)
        return None

    def pick(self, conn: Connection, strategy: str | None = None, exclude: Iterable[str] = (), *,
             fingerprint: str | None = None, tokens: int = 0, model: str | None = None) -> Account | None:
        """An available account of `conn` chosen by `strategy` (default: the connection's
        account_strategy), leaving out the labels in `exclude`; None when none is available."""
        accounts = conn.accounts
        if len(accounts) == 1 and not exclude:  # the common case, kept cheap
            a = accounts[0]
            return a if self.account_block(conn, a.label, fingerprint, tokens, model) is None else None
        if strategy is None:
            opt = self.options.get(conn.id)
            strategy = opt.account_strategy if opt else "fill-first"

        def usable(a: Account) -> bool:
            return a.label not in exclude and self.account_block(conn, a.label, fingerprint, tokens, model) is None

        if strategy == "fill-first":
            return next((a for a in accounts if usable(a)), None)
        if strategy == "round-robin":
            return self._round_robin(conn, usable)
        if strategy not in ACCOUNT_STRATEGIES:
            raise ValueError(f"unknown account strategy '{strategy}' (valid values: {', '.join(ACCOUNT_STRATEGIES)})")
        ok = [a for a in accounts if usable(a)]
        if not ok:
            return None
        if strategy == "least-used":
            return min(ok, key=lambda a: (self.account(conn.id, a.label).in_flight, self.account(conn.id, a.label).requests))
        weights = [a.weight for a in ok]
        return self.rng.choices(ok, weights)[0] if sum(weights) > 0 else self.rng.choice(ok)

    def _round_robin(self, conn: Connection, usable: Callable[[Account], bool]) -> Account | None:
        """The next usable account in config order, kept for `sticky_requests` requests in a row."""
        accounts = conn.accounts
        label, served = self._sticky.get(conn.id, ("", 0))
        start = 0
        for i, a in enumerate(accounts):
            if a.label == label:
                if served < self.profile(conn.id).sticky_requests and usable(a):
                    self._sticky[conn.id] = (label, served + 1)
                    return a
                start = i + 1
                break
        n = len(accounts)
        for k in range(n):
            a = accounts[(start + k) % n]
            if usable(a):
                self._sticky[conn.id] = (a.label, 1)
                return a
        return None

    # ------------------------------------------------------------ outcomes

    def begin(self, conn: Connection, account: Account, tokens: int = 0) -> None:
        """An attempt starts: count it in flight, claim a half-open probe, charge rpm/tpm."""
        st = self.account(conn.id, account.label)
        st.in_flight += 1
        st.requests += 1
        now, b = self.clock(), self.providers.get(conn.id)
        if st.breaker.state != CLOSED:
            st.breaker.admit(now)
        if b is not None and b.state != CLOSED:
            b.admit(now)
        opt = self.options.get(conn.id)
        if opt is not None and (opt.rpm or opt.tpm):
            st.limits.charge(now, tokens)

    def end(self, conn: Connection, account: Account) -> None:
        st = self.accounts.get((conn.id, account.label))
        if st is not None:
            st.in_flight = max(0, st.in_flight - 1)

    def add_tokens(self, conn_id: str, label: str, tokens: int) -> None:
        """Charge more tokens to the client-side tpm window (the output, once known)."""
        self.account(conn_id, label).limits.charge(self.clock(), tokens, request=False)

    def learn(self, conn: Connection, account: Account, headers: Mapping[str, str] | None) -> None:
        """Read the rate-limit headers the provider spec declares, for this account. Cheap when
        the spec declares none; call it with every upstream response, error or not."""
        names = conn.spec.rate_limit_headers
        if names and headers:
            raw = getattr(headers, "raw", None)  # httpx.Headers: one pass, not a scan per name
            if raw is not None:
                wanted = _wanted(tuple(names.values()))
                headers = {k.lower().decode("latin-1"): v.decode("latin-1") for k, v in raw if k.lower() in wanted}
            self.account(conn.id, account.label).limits.learn(names, headers, self.clock())

    def success(self, conn: Connection, account: Account) -> None:
        st = self.account(conn.id, account.label)
        st.level = 0
        if st.breaker.state != CLOSED:
            st.breaker.success()
        if st.cool_kind == "backoff":
            st.cool_until, st.cool_kind = 0.0, ""
        b = self.providers.get(conn.id)
        if b is not None and b.state != CLOSED:
            b.success()

    def failure(self, conn: Connection, account: Account, err: UpstreamError, cls: str, fingerprint: str | None = None) -> float | None:
        """Record a failed attempt of class `cls`. Returns when the account is usable again
        (None: it was not cooled, or it is disabled until the config changes)."""
        if cls in ("client", "unsupported"):
            self.success(conn, account)
            return None
        st = self.account(conn.id, account.label)
        st.failures += 1
        now, p = self.clock(), self.profile(conn.id)
        if cls in _PROVIDER_FAILURES:
            self.breaker(conn.id).failure(now, p)
        if cls in _ACCOUNT_FAILURES:
            st.breaker.failure(now, p)
        if cls == "auth":
            st.disabled_fp = fingerprint or self.fingerprint
            st.disabled_reason = f"the upstream refused this account's credentials ({err.status}); fix them in the config"
            return None
        if cls in ("429", "quota"):
            at = self._reset_at(st, err, now)
            if at is None:
                at = now + (p.quota_cooldown_s if cls == "quota" else self._backoff(st, p))
            st.cool(at, cls, "quota exhausted" if cls == "quota" else "rate limited by the upstream (429)")
        else:
            # One 5xx is often the request's own bad luck: back off from the second in a row on.
            until = now + self._backoff(st, p, grace=1)
            if until > now:
                st.model_cool[err.model or ""] = (until, f"backing off {err.model or 'this model'} after {st.level} {cls} failures in a row")
            return until
        return st.cool_until

    @staticmethod
    def _backoff(st: AccountState, p: Profile, grace: int = 0) -> float:
        """Exponential: base, 2x base, ... up to the cap; the first `grace` failures wait nothing."""
        st.level += 1
        n = st.level - grace
        if n < 1:
            return 0.0
        return min(p.cooldown_max_s, p.cooldown_base_s * (2 ** min(n - 1, 30)))

    @staticmethod
    def _reset_at(st: AccountState, err: UpstreamError, now: float) -> float | None:
        if err.retry_after is not None:
            return now + max(0.0, err.retry_after)
        at = parse_delay(err.headers.get("retry-after"), now)
        return at if at is not None else st.limits.reset_at(now)

    # ------------------------------------------------------------ concurrency

    async def acquire_slot(self, conn: Connection) -> bool:
        """Take one of the connection's `max_concurrent` slots, waiting in FIFO order at most
        `queue_timeout_s`; False when that runs out (the caller fails over). True without a cap."""
        opt = self.options.get(conn.id)
        if opt is None or not opt.max_concurrent:
            return True
        s = self._slots.get(conn.id)
        if s is None:
            s = self._slots[conn.id] = Slots()
        return await s.acquire(opt.max_concurrent, opt.queue_timeout_s)

    def release_slot(self, conn: Connection) -> None:
        opt = self.options.get(conn.id)
        s = self._slots.get(conn.id)
        if s is not None:
            s.release(opt.max_concurrent if opt and opt.max_concurrent else 1 << 30)

    # ------------------------------------------------------------ management

    def reset(self) -> int:
        """Close every breaker (POST /api/resilience/reset). Returns how many were not closed."""
        breakers = [*self.providers.values(), *(a.breaker for a in self.accounts.values())]
        n = sum(1 for b in breakers if b.state != CLOSED)
        for b in breakers:
            b.close()
        return n

    def clear(self, connections: Iterable[str] | None = None) -> int:
        """Forget cooldowns, disabled flags, exhausted limits and breakers of these connections (all
        when None): a model made available again by hand. Returns how many accounts were cleared."""
        wanted = None if connections is None else set(connections)
        n = 0
        for (cid, _), st in self.accounts.items():
            if wanted is None or cid in wanted:
                st.cool_until, st.cool_kind, st.level, st.disabled_fp = 0.0, "", 0, None
                st.model_cool.clear()
                st.limits.learned.clear()
                st.breaker.close()
                n += 1
        for cid, b in self.providers.items():
            if wanted is None or cid in wanted:
                b.close()
        return n

    def account_view(self, conn: Connection, account: Account) -> dict[str, Any]:
        """One account for /api/rate-limits: learned limits, cooldown, breaker. Never the key."""
        st = self.accounts.get((conn.id, account.label)) or AccountState()
        now = self.clock()
        block = self.account_block(conn, account.label)
        return {
            "connection": conn.id, "account": account.label, "available": block is None,
            "reason": block[0] if block else None, "retry_at": block[1] if block else None,
            "cooling_until": st.cool_until if st.cool_until > now else None, "disabled": st.disabled_fp == self.fingerprint,
            "in_flight": st.in_flight, "requests": st.requests, "failures": st.failures,
            "learned": st.limits.view(now), "breaker": st.breaker.view(now, self.profile(conn.id)),
            "client_window": {"requests": len(st.limits.recent), "tokens": st.limits.tokens_sum},
        }

    def breaker_view(self, conn_id: str) -> dict[str, Any]:
        b = self.providers.get(conn_id) or Breaker()
        return b.view(self.clock(), self.profile(conn_id))

    def snapshot(self, connections: Iterable[Connection] = ()) -> dict[str, Any]:
        """Data for the management endpoints: profiles, per-connection options and breaker, accounts."""
        conns = list(connections)
        return {
            "profiles": {k: asdict(v) for k, v in self.profiles.items()},
            "overrides": {k: asdict(v) for k, v in self.overrides.items()},
            "connections": {c.id: {**asdict(self.options.get(c.id) or ConnOptions()), "breaker": self.breaker_view(c.id)} for c in conns},
            "accounts": [self.account_view(c, a) for c in conns for a in c.accounts],
        }


@functools.lru_cache(maxsize=256)
def _wanted(header_names: tuple[str, ...]) -> frozenset[bytes]:
    """The declared rate-limit header names, as lowercase bytes to match raw headers against."""
    return frozenset(h.lower().encode("latin-1") for h in header_names)


__all__ = ["ACCOUNT_STRATEGIES", "CLOSED", "HALF_OPEN", "OPEN", "AccountState", "Breaker", "ConnOptions", "Profile",
           "Resilience", "check_config", "parse_delay", "profiles_from_config"]
