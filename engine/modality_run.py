"""The pipeline of the non-chat modalities (embeddings, images, transcriptions), below the routes
of engine/modalities.py: policies, resolution, the targets of the right model type, then
`run_attempts` (combos, fallback, accounts, breakers), the step runner for each attempt, one usage
record per attempt, budget reserve and settle.

Which format an upstream speaks for a modality: its endpoint's `format`, else the provider's own
format when it is one of this modality (deepgram, assemblyai), else the format that lists the
provider's chat format in `default_for` (openai-chat -> openai-embeddings, gemini ->
gemini-embeddings, ollama -> ollama-embeddings, ...).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from .attempts import run_attempts
from .errors import ClientError, GatewayError, RateLimited, UpstreamError
from .multipart import FormBody, Upload, file_chunks
from .pipeline import _upstream_error, error_class
from .pricing import cost_micro_usd
from .routing import Target, resolve
from .steps import SINGLE_STEP, Outgoing, Step, compile_steps, run_steps
from .upstream import AUTH_KINDS, transport_error

if TYPE_CHECKING:
    from .gateway import Gateway
    from .http import Request
    from .runtime import Account, ApiKey, Connection, Runtime
    from .translate import Format


@dataclass(frozen=True)
class Modality:
    name: str  # endpoint kind in provider specs and `modality` in format specs
    model_type: str  # Model.type it needs
    client_format: str
    record: str  # usage `modality`
    path: str


MODALITIES = {
    "embeddings": Modality("embeddings", "embedding", "openai-embeddings", "embedding", "/v1/embeddings"),
    "images": Modality("images", "image", "openai-images", "image", "/v1/images/generations"),
    "transcriptions": Modality("transcriptions", "audio", "openai-transcriptions", "audio", "/v1/audio/transcriptions"),
}


@dataclass
class Call:
    """One client request of a modality; per-attempt usage records are built from it."""

    gw: Gateway
    rt: Runtime
    m: Modality
    fmt: Format
    key: ApiKey | None
    req: Request
    bytes_in: int
    rid: str = ""
    model: str | None = None
    combo: str | None = None
    ts: float = field(default_factory=time.time)
    headers: dict[str, str] = field(default_factory=dict)
    pending: dict[str, Any] | None = None
    recorded_final: bool = False

    def record(self, **fields: Any) -> dict[str, Any]:
        rec = {"request_id": self.rid, "ts": self.ts, "key_name": self.key.name if self.key else None,
               "client_format": self.fmt.id, "route": self.req.path, "model_requested": self.model,
               "combo": self.combo, "stream": False, "bytes_in": self.bytes_in, "modality": self.m.record,
               "attempt": 0, "final": True}
        rec.update(fields)
        return rec

    def flush(self, final: bool) -> None:
        if self.pending is not None:
            self.pending["final"] = final
            self.gw.record(self.pending)
            self.pending = None
            self.recorded_final = self.recorded_final or final


async def serve(call: Call, req: dict[str, Any], upload: Upload | None) -> dict[str, Any]:
    """Policies, resolution, the attempt loop. Returns the canonical response."""
    gw, rt = call.gw, call.rt
    est = _estimate_tokens(req)
    pset = gw.policies()
    facts, first, admission = None, None, None
    if pset.rules:
        from .policy_match import Facts

        facts = Facts(key=call.key.name if call.key else None, model=req["model"], format=call.fmt.id,
                      route=call.req.path, input_tokens=est, headers=call.req.headers, ip=call.req.client)
        first = pset.evaluate(facts)
        if first.denied:
            raise first.error()
        admission = gw.policy_state.admit(facts.key, first, tokens=est)
    try:
        res = resolve(rt, (first.route if first else None) or req["model"], {"stats": gw.routing_stats, "input_tokens": est})
        call.combo = res.combo.name if res.combo else None
        targets = _fitting(call, res, facts, first)
        try:
            result: dict[str, Any] = await run_attempts(
                targets, res.combo.settings if res.combo else {}, gw.resilience,
                lambda target, account, n: _attempt(call, req, upload, target, account, n),
                fingerprint=rt.fingerprint, stats=gw.routing_stats, tokens=est,
                on_event=lambda kind, **f: gw.log.info(f"attempt {kind}", extra={"rid": call.rid, **f}) if kind != "success" else None,
            )
        except GatewayError:
            call.flush(final=True)
            raise
        return result
    finally:
        if admission is not None:
            gw.policy_state.release(admission, refund=call.pending is None and not call.recorded_final)


def _fitting(call: Call, res: Any, facts: Any, first: Any) -> list[Target]:
    """The targets that can serve this modality (type and endpoint) and that policies allow."""
    m = call.m
    kept: list[Target] = []
    why: list[str] = []
    denial = None
    for t in res.targets:
        conn, model = t.connection, t.model
        if m.name not in conn.spec.endpoints:
            why.append(f"provider '{conn.id}' has no {m.name} endpoint")
        elif model.known and model.type != m.model_type:
            same = [f"{conn.id}/{mid}" for mid, x in conn.models.items() if x.type == m.model_type][:5]
            hint = f" (for example: {', '.join(same)})" if same else ""
            why.append(f"model '{t.key}' is {_a(model.type)} model; {m.path} needs {_a(m.model_type)} model{hint}")
        elif first is not None and first.pending and (d := call.gw.policies().evaluate(
                facts.with_target(t.key, conn.id, call.combo), prior=first)).denied:
            denial = denial or d
            why.append(f"{t.key}: denied by policy")
        else:
            kept.append(t)
    if kept:
        return kept
    if denial is not None:
        raise denial.error()
    raise ClientError(why[0] if len(why) == 1 else f"no target of '{res.requested}' can serve {m.path}: {'; '.join(why)}", param="model")


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in ("a", "e", "i", "o", "u") else f"a {word}"


def _estimate_tokens(req: dict[str, Any]) -> int:
    text = " ".join(req.get("input") or ()) + (req.get("prompt") or "")
    return -(-len(text) // 4)


def _usage(m: Modality, out: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
    if m.name == "embeddings":
        return {"input_tokens": (out.get("usage") or {}).get("input_tokens") or _estimate_tokens(req)}
    if m.name == "images":
        return {"images": len(out.get("data") or ())}
    return {"audio_seconds": out.get("duration") or req.get("duration") or 0}


def _worst_case(m: Modality, target: Target, req: dict[str, Any]) -> int:
    """The most an attempt can cost, for the budget reservation (0 when it cannot be known)."""
    units = {"embeddings": {"input_tokens": _estimate_tokens(req)}, "images": {"images": req.get("n") or 1},
             "transcriptions": {"audio_seconds": req.get("duration") or 0}}[m.name]
    return cost_micro_usd(target.model.price, units) or 0


def _reserve(call: Call, amount: int) -> Any:
    gw, key = call.gw, call.key
    spec = gw.budgets.effective(key.name, key.budget) if key is not None and gw.budgets is not None else None
    if spec is None:
        return None
    from .budget import BudgetExceeded

    try:
        return gw.budgets.reserve(key.name, spec, amount)  # type: ignore[union-attr]
    except BudgetExceeded as e:
        err = RateLimited(e.message, retry_after=e.retry_after)
        err.record_class = "budget"
        raise err from None


def _settle(call: Call, reservation: Any, cost: int | None) -> None:
    gw = call.gw
    if gw.budgets is None or call.key is None:
        return
    if reservation is not None:
        gw.budgets.settle(reservation, cost)
    elif cost:
        gw.budgets.add_spend(call.key.name, cost)


async def _attempt(call: Call, req: dict[str, Any], upload: Upload | None, target: Target, account: Account, n: int) -> dict[str, Any]:
    conn, model = target.connection, target.model
    call.flush(final=False)
    t_start = time.perf_counter()
    rec = call.record(attempt=n, provider=conn.id, provider_spec=conn.spec.id, account=account.label,
                      upstream_model=model.upstream or model.id, ts=time.time())
    reservation = _reserve(call, _worst_case(call.m, target, req))
    call.headers.update({"x-omniroute-model": target.key, "x-omniroute-provider": conn.id,
                         "x-omniroute-attempts": str(n + 1), "x-omniroute-fallbacks": str(n)})
    try:
        fmt = upstream_format(call.rt, conn, call.m.name)
        meta = {"model": model.upstream or model.id}
        enc = fmt.encode_request(req, meta) if fmt.req_encode is not None else None
        exchange = _exchange(call, conn, account, target, n, fmt, upload, rec, t_start)
        path = conn.spec.endpoints[call.m.name]["path"]
        answer, vars_ = await run_steps(steps_of(fmt), req, enc, meta, exchange, endpoint_path=path)
        out = _decode(fmt, answer, req, meta, vars_, conn.id)
    except UpstreamError as e:
        _settle(call, reservation, None)
        rec.update(status=e.status, error_class=error_class(e), latency_ms=(time.perf_counter() - t_start) * 1000)
        call.pending = rec
        raise
    usage = _usage(call.m, out, req)
    cost = cost_micro_usd(model.price, usage)
    _settle(call, reservation, cost)
    rec.update(usage)
    rec.update(status=200, cost_micro_usd=cost, latency_ms=(time.perf_counter() - t_start) * 1000, final=True)
    call.recorded_final = True
    call.gw.record(rec)
    return out


def _decode(fmt: Format, answer: Any, req: dict[str, Any], meta: dict[str, Any], vars_: dict[str, Any], provider: str) -> dict[str, Any]:
    from .expr import ExprError

    if fmt.resp_decode is None:
        raise GatewayError(f"the {fmt.id} format has no response.decode")
    try:
        out = fmt.resp_decode({"src": answer, "req": req, "meta": meta, "vars": vars_})
    except ExprError as e:
        raise UpstreamError(f"{provider}: the {fmt.id} answer could not be read: {e}", status=502, provider=provider) from None
    if not isinstance(out, dict):
        raise UpstreamError(f"{provider} answered something that is not a {fmt.id} answer", status=502, provider=provider)
    return out


def _exchange(call: Call, conn: Connection, account: Account, target: Target, attempt: int, fmt: Format,
              upload: Upload | None, rec: dict[str, Any], t_start: float) -> Callable[[Outgoing], Awaitable[Any]]:
    """How a step's call goes out: auth, body, the shared client, errors mapped like chat's."""
    gw, model = call.gw, target.model
    err_fmt = fmt if fmt.err_decode is not None else conn.format

    async def exchange(out: Outgoing) -> Any:
        headers = dict(conn.headers)
        query: dict[str, str] = {}
        AUTH_KINDS[conn.spec.auth["kind"]](headers, query, dict(conn.spec.auth), account.api_key)
        query.update(out.query)
        headers["accept"] = "application/json"
        content: Any = None
        if out.send == "json":
            content = orjson.dumps(out.body)
            headers["content-type"] = "application/json"
        elif out.send in ("audio", "form"):
            if upload is None:
                raise GatewayError(f"format {fmt.id} step '{out.step}' sends audio, but this request has none")
            fields = {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in (out.body or {}).items() if v is not None}
            form = FormBody(fields, out.file_field, upload) if out.send == "form" else None
            content = form if form is not None else _aiter(upload)
            headers["content-type"] = form.content_type if form is not None else upload.content_type
            headers["content-length"] = str(len(form) if form is not None else upload.size)
        request = httpx.Request(out.method, conn.base_url + out.path, content=content, headers=headers, params=query or None)
        resp = await gw.upstream.send(request, conn, model, attempt)
        gw.resilience.learn(conn, account, resp.headers)
        rec.setdefault("ttfb_ms", (time.perf_counter() - t_start) * 1000)
        try:
            raw = await resp.aread()
        except httpx.HTTPError as e:
            raise transport_error(e, conn.id) from None
        finally:
            await resp.aclose()
        if resp.status_code >= 400:
            raise _upstream_error(err_fmt, resp, raw, conn.id, model.id)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{conn.id} answered step '{out.step}' with invalid JSON", status=502, provider=conn.id) from None

    return exchange


async def _aiter(upload: Upload) -> Any:
    for chunk in file_chunks(upload.file):
        yield chunk


# ---------------------------------------------------------------- formats per upstream

_DEFAULTS: dict[int, tuple[Any, dict[tuple[str, str], Format]]] = {}
_STEPS: dict[int, tuple[Format, tuple[Step, ...]]] = {}


def upstream_format(rt: Runtime, conn: Connection, modality: str) -> Format:
    """The format `conn` speaks for `modality` (see the module docstring for the order)."""
    fid = (conn.spec.endpoints.get(modality) or {}).get("format")
    if fid:
        fmt = rt.formats.get(fid)
        if fmt is None:
            raise GatewayError(f"provider '{conn.spec.id}' names format '{fid}' for {modality}, which is not installed")
        return fmt
    if conn.format.raw.get("modality") == modality:
        return conn.format
    hit = _DEFAULTS.get(id(rt.formats))
    if hit is None or hit[0] is not rt.formats:
        table = {(chat, f.raw["modality"]): f for f in rt.formats.values() if f.raw.get("modality")
                 for chat in f.raw.get("default_for") or ()}
        hit = (rt.formats, table)
        _DEFAULTS.clear()
        _DEFAULTS[id(rt.formats)] = hit
    fmt = hit[1].get((conn.format.id, modality))
    if fmt is None:
        raise UpstreamError(f"no {modality} format for providers of the {conn.format.id} format: set "
                            f"endpoints.{modality}.format in {conn.spec.file}", status=400, retryable=True, provider=conn.id)
    return fmt


def steps_of(fmt: Format) -> tuple[Step, ...]:
    """The compiled steps of a format (once per Format object; specs are validated at load)."""
    hit = _STEPS.get(id(fmt))
    if hit is not None and hit[0] is fmt:
        return hit[1]
    raw = fmt.raw.get("steps")
    from .expr import ExprError

    try:
        steps = compile_steps(raw, f"{fmt.id}.steps") if raw else SINGLE_STEP
    except ExprError as e:
        raise GatewayError(f"format spec {fmt.id}: {e}") from None
    if len(_STEPS) > 256:
        _STEPS.clear()
    _STEPS[id(fmt)] = (fmt, steps)
    return steps
