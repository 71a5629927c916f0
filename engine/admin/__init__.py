"""The management API (`/api/*`). Each module registers its routes; all of them sit behind the
admin check (an admin key, a login cookie, or loopback on an install with neither)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..http import Request, Response, Router

Guard = Callable[[Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]


class _Guarded:
    """A router view that wraps every handler it adds with the admin guard."""

    def __init__(self, router: Router, guard: Guard) -> None:
        self._router = router
        self._guard = guard

    def add(self, method: str, path: str, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self._router.add(method, path, self._guard(handler))

    def route(self, methods: str, *paths: str) -> Callable[[Any], Any]:
        def deco(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
            for path in paths:
                for m in methods.split(","):
                    self.add(m.strip(), path, handler)
            return handler

        return deco


def register_all(router: Router, gw: Any, guard: Guard) -> None:
    from . import cache_api, policy_api, routing_api, usage_api

    guarded = _Guarded(router, guard)
    for module in (usage_api, routing_api, policy_api, cache_api):
        module.register(guarded, gw)
