"""Management API for routing and resilience: what is usable now, why not, and the knobs.

Routes (admin authentication is applied by the router before these handlers run):
    GET  /api/resilience              profiles (config + API overrides), breakers, accounts
    PUT  /api/resilience              {"profiles": {name: {setting: value}}}: run-time overrides
    POST /api/resilience/reset        close every breaker
    GET  /api/rate-limits             per account: learned limits, remaining, cooling until, in flight
    GET  /api/rate-limit              the configured limits: per-connection options and profiles
    GET  /api/models/availability     every model and combo: usable now, or why not and until when
    POST /api/models/availability     {"model": name} or {"provider": id}: clear its cooldowns
    GET  /api/combos                  combos with per-target stats (requests, failures, latency)
    GET  /api/route/explain?model=    the ordered attempt plan, with the reason for each skip
                                      (optional: needs=tools,vision  input_tokens=N  max_tokens=N)
The gateway object provides `runtime`, `resilience` (Resilience) and `routing_stats` (RoutingStats).
Accounts appear by label only; keys never leave the process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from engine.attempts import explain, why_no_account
from engine.errors import GatewayError
from engine.http import JSONResponse, Request, Response
from engine.routing import resolve
from engine.strategies import RoutingStats

Handler = Callable[[Request], Awaitable[Response]]
CAPABILITY_NEEDS = ("tools", "vision", "reasoning")


class BadRequest(Exception):
    """A parameter the caller must fix; becomes a 400 with this message."""


def _error(message: str, status: int = 400, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status=status)


def _plain(v: Any) -> Any:
    """Config values (read-only mappings, tuples) as JSON-ready data."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [_plain(x) for x in v]
    return v


async def _json_body(req: Request) -> Any:
    try:
        return orjson.loads(await req.body(limit=1 << 20) or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be JSON")


def _int_param(req: Request | Mapping[str, str], name: str) -> int | None:
    raw = (req if isinstance(req, Mapping) else req.query).get(name)
    if raw in (None, ""):
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of tokens, got {raw!r}")
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


def register(router: Any, gw: Any) -> None:
    def route(method: str, path: str, fn: Callable[[Request], Awaitable[Any]]) -> None:
        async def handle(req: Request) -> Response:
            gw.resilience.configure(gw.runtime)  # adopt a reloaded config's profiles before answering
            try:
                result = await fn(req)
            except BadRequest as e:
                return _error(str(e))
            except GatewayError as e:
                return _error(e.message, e.status, e.kind)
            return result if isinstance(result, Response) else JSONResponse(result)

        router.add(method, path, handle)

    def usable(conn: Any) -> tuple[bool, str | None, float | None]:
        blocked = gw.resilience.provider_block(conn)
        if blocked:
            return False, blocked[0], blocked[1]
        if any(gw.resilience.account_block(conn, a.label) is None for a in conn.accounts):
            return True, None, None
        why, until = why_no_account(gw.resilience, conn, set(), gw.runtime.fingerprint, 0)
        return False, why, until

    async def get_resilience(req: Request) -> Any:
        return gw.resilience.snapshot(gw.runtime.connections.values())

    async def put_resilience(req: Request) -> Any:
        body = await _json_body(req)
        try:
            gw.resilience.set_overrides(body)
        except ValueError as e:
            raise BadRequest(str(e))
        snap = gw.resilience.snapshot(gw.runtime.connections.values())
        return {"profiles": snap["profiles"], "overrides": snap["overrides"]}

    async def reset(req: Request) -> Any:
        return {"closed": gw.resilience.reset()}

    async def rate_limits(req: Request) -> Any:
        provider = req.query.get("provider")
        conns = [c for c in gw.runtime.connections.values() if provider in (None, "", c.id)]
        if provider and not conns:
            raise BadRequest(f"unknown provider '{provider}' (valid values: {', '.join(sorted(gw.runtime.connections))})")
        return {"accounts": [gw.resilience.account_view(c, a) for c in conns for a in c.accounts]}

    async def rate_limit(req: Request) -> Any:
        snap = gw.resilience.snapshot(gw.runtime.connections.values())
        connections = {cid: {k: v for k, v in c.items() if k != "breaker"} for cid, c in snap["connections"].items()}
        return {"connections": connections, "profiles": snap["profiles"], "window_s": 60}

    async def availability(req: Request) -> Any:
        rt = gw.runtime
        models, by_key = [], {}
        for conn in rt.connections.values():
            ok, why, until = usable(conn)
            for mid, m in conn.models.items():
                entry = {"model": f"{conn.id}/{mid}", "type": m.type, "available": ok, "reason": why, "retry_at": until}
                by_key[entry["model"]] = entry
                models.append(entry)
        combos = []
        for name in rt.combos:
            targets = resolve(rt, name, order=False).targets
            down = []
            for t in targets:
                ok, why, until = usable(t.connection)
                if not ok:
                    down.append({"target": t.key, "reason": why, "retry_at": until})
            combos.append({"combo": name, "available": len(down) < len(targets), "unavailable_targets": down})
        return {"models": models, "combos": combos}

    async def clear(req: Request) -> Any:
        body = await _json_body(req)
        if not isinstance(body, dict) or not (body.get("model") or body.get("provider")):
            raise BadRequest('send {"model": "<provider/model, alias or combo>"} or {"provider": "<connection id>"}')
        rt = gw.runtime
        if body.get("provider"):
            if body["provider"] not in rt.connections:
                raise BadRequest(f"unknown provider '{body['provider']}' (valid values: {', '.join(sorted(rt.connections))})")
            ids = [body["provider"]]
        else:
            ids = list(dict.fromkeys(t.connection.id for t in resolve(rt, str(body["model"]), order=False).targets))
        return {"cleared_accounts": gw.resilience.clear(ids), "connections": ids}

    async def combos(req: Request) -> Any:
        rt, stats = gw.runtime, gw.routing_stats
        out = []
        for name, combo in rt.combos.items():
            targets = []
            for ct in combo.targets:
                keys = [t.key for t in resolve(rt, ct.ref, order=False).targets]
                targets.append({"ref": ct.ref, "weight": ct.weight, "stats": stats.snapshot(keys)})
            out.append({"name": name, "strategy": combo.strategy, "settings": _plain(combo.settings), "targets": targets})
        return {"combos": out}

    async def route_explain(req: Request) -> Any:
        try:
            policies = gw.policies() if hasattr(gw, "policies") else None
            return explain_route(gw.runtime, gw.resilience, gw.routing_stats.preview(), policies, dict(req.query))
        except ValueError as e:
            raise BadRequest(str(e)) from None

    route("GET", "/api/resilience", get_resilience)
    route("PUT", "/api/resilience", put_resilience)
    route("POST", "/api/resilience/reset", reset)
    route("GET", "/api/rate-limits", rate_limits)
    route("GET", "/api/rate-limit", rate_limit)
    route("GET", "/api/models/availability", availability)
    route("POST", "/api/models/availability", clear)
    route("GET", "/api/combos", combos)
    route("GET", "/api/route/explain", route_explain)


def explain_route(rt: Any, resilience: Any, stats: RoutingStats, policies: Any, query: Mapping[str, str]) -> dict[str, Any]:
    """The route plan for a model as data: policy rules that matched and what they did, then the
    ordered attempts with the reason for each skip. Shared by the API and `omniroute explain`."""
    model = query.get("model")
    if not model:
        raise ValueError("give the model to explain: /api/route/explain?model=<name>")
    needs = {n.strip() for n in (query.get("needs") or "").split(",") if n.strip()}
    bad = sorted(needs - set(CAPABILITY_NEEDS))
    if bad:
        raise ValueError(f"unknown need '{bad[0]}' (valid values: {', '.join(CAPABILITY_NEEDS)})")
    input_tokens = _int_param(query, "input_tokens") or 0
    max_tokens = _int_param(query, "max_tokens")
    rules: list[dict[str, Any]] = []
    routed = model
    denied = None
    if policies is not None and policies.rules:
        from engine.policy_match import facts_from_mapping

        facts = facts_from_mapping({k: v for k, v in query.items() if k not in ("needs", "json")})
        first = policies.evaluate(facts)
        rules = first.trace
        routed = first.route or model
        denied = first.deny.message if first.denied and first.deny else None
    info = {"stats": stats, "input_tokens": input_tokens, "max_tokens": max_tokens, "needs": needs}
    res = resolve(rt, routed, info, order=True)
    settings = _plain(res.combo.settings) if res.combo else {}
    return {
        "model": model, "routed_to": routed if routed != model else None, "denied": denied, "policies": rules,
        "combo": res.combo.name if res.combo else None, "strategy": res.combo.strategy if res.combo else None,
        "chain": res.chain, "settings": settings,
        "attempts": explain(res.targets, settings, resilience, needs, input_tokens, max_tokens),
    }
