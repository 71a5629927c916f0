"""Management API for policies and the settings that are policies underneath.

Routes (admin authentication is applied by the router before these handlers run):
    GET    /api/policies                 every rule in evaluation order: key shortcuts, settings,
                                         config (all `readonly: true`), then API rules
    POST   /api/policies                 add a rule (a JSON rule as in config.yaml); 201, or 400
                                         with every located problem, or 409 when the name is taken
    DELETE /api/policies/{name}          remove an API rule (also ?name=); 409 for read-only rules
    GET/PUT /api/settings/system-prompt  {enabled, mode: prepend|append|replace, text}
    GET/PUT /api/settings/thinking-budget {mode: passthrough|off|tokens|effort, tokens?, effort?}
    GET/PUT /api/settings/ip-filter      {enabled, allow: [CIDR], block: [CIDR], exempt_loopback}

PUT bodies are partial: omitted keys keep their value. A PUT of an IP filter that would shut out
the caller's own address is refused with 409 unless `?force=true`: locking the admin out of the
management API is rarely what was meant.

Why the same compiler: a rule accepted here must load after a restart, so POST validates with the
schema and compiler that read config.yaml, against the keys and rules currently loaded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from engine.errors import ClientError
from engine.http import JSONResponse, Request, Response
from engine.ip_filter import IPFilter
from engine.policy import PolicySet, compile_policies
from engine.policy_store import PolicyStore, SettingsError, check_rule

Handler = Callable[[Request], Awaitable[Response]]
_SETTINGS = {"system-prompt": "system_prompt", "thinking-budget": "thinking_budget", "ip-filter": "ip_filter"}


def _error(message: str, status: int = 400, kind: str = "invalid_request_error", problems: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": message, "type": kind}
    if problems is not None:
        body["problems"] = problems
    return JSONResponse({"error": body}, status=status)


async def _json(req: Request) -> Any:
    raw = await req.body(limit=1 << 20)
    if not raw.strip():
        raise SettingsError(["the request body is empty; send a JSON object"])
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise SettingsError([f"the request body is not valid JSON ({e})"])


def current_set(gw: Any, *, extra: list[dict[str, Any]] | None = None) -> PolicySet:
    """The rules as the gateway compiles them (problems are the loader's to report, not ours)."""
    rt = gw.runtime
    store: PolicyStore = gw.policy_store
    return compile_policies(rt.raw_config.get("policies") or [], rt.keys, lambda p, m: None,
                            api_rules=[*store.rules(), *(extra or [])], settings_rules=store.settings_rules())


def register(router: Any, gw: Any) -> None:
    def handler(fn: Callable[[Request, PolicyStore], Awaitable[Response]]) -> Handler:
        async def handle(req: Request) -> Response:
            store = getattr(gw, "policy_store", None)
            if store is None:
                return _error("policies are not available: the gateway has no policy store", 503, "service_unavailable")
            try:
                return await fn(req, store)
            except SettingsError as e:
                return _error(f"invalid value: {e}", problems=e.problems)

        return handle

    async def list_policies(req: Request, store: PolicyStore) -> Response:
        return JSONResponse({"policies": current_set(gw).listing()})

    async def add_policy(req: Request, store: PolicyStore) -> Response:
        rule = await _json(req)
        problems = check_rule(rule)
        if problems:
            return _error(f"invalid rule: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                          problems=problems)
        name = rule["name"]
        taken = {r.name: r.source for r in current_set(gw).rules}
        if name in taken:
            where = "was added through the API" if taken[name] == "api" else f"comes from the {taken[name]} rules"
            return _error(f"a rule named '{name}' already exists (it {where}); choose another name or delete it first",
                          409, "conflict")
        if "route" in rule:
            target_problem = _check_route(gw, rule["route"])
            if target_problem:
                return _error(f"invalid rule: route: {target_problem}", problems=[f"route: {target_problem}"])
        store.add_rule(rule)
        return JSONResponse({"policy": {**rule, "source": "api", "readonly": False}}, status=201)

    async def delete_policy(req: Request, store: PolicyStore) -> Response:
        name = req.params.get("name") or req.query.get("name") or ""
        if not name:
            return _error("name the rule to delete: DELETE /api/policies/{name} or ?name=")
        if store.remove_rule(name):
            return JSONResponse({"deleted": name})
        source = next((r.source for r in current_set(gw).rules if r.name == name), None)
        if source is not None:
            fix = {"config": "edit the config file", "key": "edit the key in the config file",
                   "settings": "use the /api/settings endpoints"}.get(source, "")
            return _error(f"rule '{name}' is read-only (it comes from the {source} rules; {fix})", 409, "conflict")
        return _error(f"no rule named '{name}'", 404, "not_found")

    def setting(path: str, name: str) -> tuple[Handler, Handler]:
        async def get(req: Request, store: PolicyStore) -> Response:
            return JSONResponse(store.setting(name))

        async def put(req: Request, store: PolicyStore) -> Response:
            body = await _json(req)
            if not isinstance(body, dict):
                raise SettingsError(["the body must be a JSON object"])
            if name == "ip_filter" and req.query.get("force") != "true":
                lockout = _would_lock_out(store, body, req.client)
                if lockout:
                    return _error(lockout, 409, "conflict")
            return JSONResponse(store.update_setting(name, body))

        return handler(get), handler(put)

    router.add("GET", "/api/policies", handler(list_policies))
    router.add("POST", "/api/policies", handler(add_policy))
    router.add("DELETE", "/api/policies", handler(delete_policy))
    router.add("DELETE", "/api/policies/{name}", handler(delete_policy))
    for path, name in _SETTINGS.items():
        get, put = setting(path, name)
        router.add("GET", f"/api/settings/{path}", get)
        router.add("PUT", f"/api/settings/{path}", put)


def _check_route(gw: Any, target: str) -> str | None:
    """Why `target` does not resolve in the current runtime, or None when it does."""
    from engine.routing import resolve

    try:
        resolve(gw.runtime, target, order=False)
    except ClientError as e:
        return e.message
    return None


def _would_lock_out(store: PolicyStore, changes: dict[str, Any], client: str) -> str | None:
    value = {**store.setting("ip_filter"), **changes}
    if value.get("enabled") is not True:
        return None
    try:
        flt = IPFilter(value.get("allow") or [], value.get("block") or [], value.get("exempt_loopback") is True)
    except (ValueError, TypeError):
        return None  # update_setting reports the bad entries
    if flt.active and not flt.allows(client):
        return (f"this filter would refuse your own address {client or '(unknown)'}, and with it this API; "
                "add it to `allow` (or set exempt_loopback), or repeat with ?force=true")
    return None
