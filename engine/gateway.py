"""The Gateway: the current Runtime plus the state that outlives any one config.

The Runtime is swapped whole on reload; everything here (upstream connection pool, usage writer,
budgets, breakers) is keyed by identity and survives the swap.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from .errors import GatewayError, OmniError
from .policy_state import PolicyState
from .policy_store import PolicyStore
from .resilience import Resilience
from .strategies import RoutingStats
from .upstream import Upstream

if TYPE_CHECKING:
    from .http import Request
    from .runtime import ApiKey, Runtime

_LOOPBACK = ("127.0.0.1", "::1", "localhost", "")


class _Log(logging.LoggerAdapter):  # type: ignore[type-arg,unused-ignore]
    """One sentence per line with key=value fields; fields never carry secrets."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = kwargs.pop("extra", None)
        if extra:
            msg = f"{msg} " + " ".join(f"{k}={v}" for k, v in extra.items())
        return msg, kwargs


class Gateway:
    def __init__(self, runtime: Runtime, *, upstream: Upstream | None = None) -> None:
        self.runtime = runtime
        self.started = time.time()
        self.upstream = upstream or Upstream()
        self.last_reload_error: str | None = None
        self.last_reload_at: float | None = None
        self.log = _Log(logging.getLogger("omniroute"), {})
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self.usage: Any = None
        self.budgets: Any = None
        self.reloader: Any = None
        self.resilience = Resilience()
        self.resilience.configure(runtime)
        self.routing_stats = RoutingStats()
        self.policy_state = PolicyState()
        self.policy_store = PolicyStore(runtime.data_dir)
        self.policy_store.subscribe(self._policies_changed)
        self._pset: Any = None
        self._pset_fp = ""
        from .cache import CacheRules
        from .idempotency import IdempotencyRegistry

        self.cache_rules = CacheRules.from_config(runtime.raw_config.get("cache"))
        self.cache: Any = None  # the ResponseCache: opened in start(), one writer thread per worker
        self.idempotency = IdempotencyRegistry(self.cache_rules.idempotency_window_s)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        from .cache_store import ResponseCache
        from .usage import UsageStore

        self.cache = ResponseCache(_data_path(self.runtime), self.cache_rules)
        try:
            self.usage = UsageStore(_data_path(self.runtime))
            self.usage.start()
        except (OSError, OmniError) as e:
            self.log.error("usage analytics disabled: data directory is not usable", extra={"error": e.__class__.__name__})
            self.usage = None
        from .budget import BudgetBook

        self.budgets = BudgetBook(_data_path(self.runtime))
        if self.usage is not None and (any(k.budget for k in self.runtime.keys.values()) or self.budgets.overrides()):
            try:
                self.budgets.rebuild(self.usage)
            except Exception as e:
                self.log.error("budget spend could not be rebuilt", extra={"error": e.__class__.__name__})

    async def close(self) -> None:
        if self.reloader is not None:
            await self.reloader.stop()
        await self.upstream.aclose()
        if self.cache is not None:
            self.cache.close()
        if self.usage is not None:
            self.usage.close()

    def swap(self, runtime: Runtime) -> None:
        from .cache import CacheRules

        self.runtime = runtime
        self.upstream.forget()
        self.resilience.configure(runtime)
        self.cache_rules = CacheRules.from_config(runtime.raw_config.get("cache"))
        self.idempotency.window_s = self.cache_rules.idempotency_window_s
        if self.cache is not None:
            self.cache.configure(self.cache_rules)
        self.last_reload_error = None
        self.last_reload_at = time.time()

    def _policies_changed(self) -> None:
        self._pset = None

    def policies(self) -> Any:
        """The compiled policy set of the current runtime plus the API-added rules and settings."""
        rt = self.runtime
        if self._pset is None or self._pset_fp != rt.fingerprint:
            from .policy import compile_policies

            def problem(path: Any, message: str) -> None:
                self.log.error(f"policy rule left out: {message}", extra={"path": path})

            self._pset = compile_policies(
                rt.raw_config.get("policies"), rt.keys, problem, api_rules=self.policy_store.rules(),
                settings_rules=self.policy_store.settings_rules(), config_validated=True,
            )
            self._pset_fp = rt.fingerprint
        return self._pset

    def request_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):08x}"

    def record(self, rec: dict[str, Any]) -> None:
        if self.usage is not None:
            self.usage.record(rec)

    # ------------------------------------------------------------ auth

    def authenticate(self, req: Request, rt: Runtime) -> ApiKey | None:
        """The caller's key, None for anonymous. An invalid key is always 401."""
        presented = client_key(req)
        if presented is None:
            if rt.server.require_api_key:
                raise GatewayError("missing API key: send 'Authorization: Bearer <key>'", status=401, kind="authentication")
            return None
        if not rt.keys and not rt.server.require_api_key:
            return None  # nothing to check against: SDKs insist on sending some key
        key = rt.keys_by_hash.get(hashlib.sha256(presented.encode()).hexdigest())
        if key is None:
            raise GatewayError("invalid API key", status=401, kind="authentication")
        return key

    def authorize_admin(self, req: Request) -> None:
        rt = self.runtime
        presented = client_key(req)
        if presented is not None:
            key = rt.keys_by_hash.get(hashlib.sha256(presented.encode()).hexdigest())
            if key is not None and key.admin:
                return
        password_hash = rt.server.admin_password_hash or _initial_password_hash()
        cookie = _cookie(req.headers.get("cookie", ""), "auth_token")
        if cookie and password_hash and hmac.compare_digest(hashlib.sha256(cookie.encode()).hexdigest(), password_hash):
            return
        has_admin = any(k.admin for k in rt.keys.values()) or password_hash
        if not has_admin and req.client in _LOOPBACK:
            return  # a fresh local install: the machine's own user manages it
        raise GatewayError("management API needs an admin key or a login", status=401, kind="authentication")


def _data_path(rt: Runtime) -> Any:
    from pathlib import Path

    return Path(rt.data_dir)


def _initial_password_hash() -> str | None:
    pw = os.environ.get("INITIAL_PASSWORD")
    return hashlib.sha256(pw.encode()).hexdigest() if pw else None


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


def client_key(req: Request) -> str | None:
    h = req.headers
    auth = h.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for name in ("x-api-key", "x-goog-api-key"):
        v = h.get(name)
        if v:
            return v.strip()
    q = req.query.get("key") if req.query_string else None
    return q or None
