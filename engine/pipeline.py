"""The chat pipeline: parse -> resolve -> for each attempt: build, send, translate back -> record.

Hub and spoke: the client body decodes to the canonical request once; each attempt encodes it for
its upstream's format. When the client and upstream formats are the same the original body goes
through with only the model rewritten, and a stream's events are relayed byte for byte (the fast
path). Fallback to the next attempt happens only before the first byte reached the client.
Every attempt leaves one usage record; the one whose outcome the client got is marked final.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from .attempts import run_attempts
from .cache import (
    ResponseAssembler,
    cache_key,
    cacheable,
    deterministic,
    events_from_response,
    from_entry,
    last_user_text,
    semantic_scope,
    storable,
    storable_probe,
    wire_entry,
)
from .canonical import clean_usage, estimate_tokens, features_used, merge_usage
from .errors import ERROR_KINDS, ClientError, GatewayError, RateLimited, UpstreamError
from .http import JSONResponse, Response, StreamingResponse
from .pricing import cost_micro_usd, worst_case_micro_usd
from .routing import Target, resolve
from .strategies import describe_skips, filter_capable, needs_of
from .stream import SSEParser
from .transport import body_chunks, read_body
from .upstream import transport_error

if TYPE_CHECKING:
    from .gateway import Gateway
    from .runtime import Account, ApiKey, Runtime
    from .translate import Format

_ERROR_CLASS = {
    "rate_limit": "rate_limit", "timeout": "timeout", "bad_gateway": "network", "authentication": "auth",
    "permission": "auth", "invalid_request": "client", "not_found": "client", "conflict": "client",
    "too_large": "client", "server": "server", "unavailable": "server", "overloaded": "server",
}


def error_class(err: GatewayError) -> str:
    return err.record_class or _ERROR_CLASS.get(err.kind, err.kind)


@dataclass
class Call:
    """One client request on its way through. Everything per-request lives here."""

    rid: str
    rt: Runtime
    fmt: Format
    route: str
    key: ApiKey | None
    body: dict[str, Any]
    meta: dict[str, Any]  # what the client format's decoders/encoders see (model, stream, framing)
    bytes_in: int = 0
    t0: float = field(default_factory=time.perf_counter)
    ts: float = field(default_factory=time.time)
    timing: dict[str, float] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    req: dict[str, Any] | None = None
    combo: str | None = None
    pending: dict[str, Any] | None = None  # the failed attempt not yet known to be final
    recorded_final: bool = False
    headers_in: dict[str, str] = field(default_factory=dict)
    ip: str = ""
    rewrites: dict[str, Any] = field(default_factory=dict)  # target key -> policy decision that rewrites
    progress: float = 0.0  # seconds between progress events; 0 = off
    cache_key: str | None = None  # set on a cache miss: a good answer is stored under it
    semantic: tuple[str, list[float]] | None = None  # (scope, vector) to index the stored answer by
    reached_upstream: bool = False
    head: dict[str, Any] = field(default_factory=dict)  # the format's peek: model, stream, temperature...

    def canonical(self) -> dict[str, Any]:
        """The canonical request, decoded on first use (the fast path never needs it)."""
        if self.req is None:
            self.req = self.fmt.decode_request(self.body, self.meta, validated=True)
        return self.req

    def mark(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timing[name] = self.timing.get(name, 0.0) + (now - since) * 1000
        return now

    def server_timing(self) -> str:
        return ", ".join(f"{k};dur={v:.3f}" for k, v in self.timing.items())

    def record(self, gw: Gateway, **fields: Any) -> dict[str, Any]:
        rec = {
            "request_id": self.rid, "ts": self.ts, "key_name": self.key.name if self.key else None,
            "client_format": self.fmt.id, "route": self.route, "model_requested": self.meta.get("model"),
            "combo": self.combo, "stream": bool(self.meta.get("stream")), "bytes_in": self.bytes_in,
            "modality": "chat", "attempt": 0, "final": True,
        }
        rec.update(fields)
        return rec

    def flush_pending(self, gw: Gateway, final: bool) -> None:
        if self.pending is not None:
            self.pending["final"] = final
            gw.record(self.pending)
            self.pending = None
            self.recorded_final = self.recorded_final or final


async def run_chat(gw: Gateway, call: Call) -> Response:
    t = time.perf_counter()
    head = call.head = call.fmt.peek(call.body, call.meta)
    if call.fmt.req_peek is None:  # no peek in the spec: peek was the whole decode, keep it
        call.req = head
    t = call.mark("parse", t)
    stream = bool(head.get("stream"))
    meta = call.meta
    meta["stream"] = stream
    meta["id"] = call.rid
    meta["created"] = int(time.time())
    meta.setdefault("model", head["model"])
    meta["include_usage"] = bool(head.get("include_usage"))
    rt = call.rt
    if stream and call.headers_in.get("x-omniroute-progress", "").lower() == "true":
        call.progress = float(rt.settings.get("progress_interval_s", 2.0))
        call.headers["x-omniroute-progress"] = "enabled"
    pset = gw.policies()
    facts, first, admission = None, None, None
    if pset.rules:
        facts = _facts(call, head, pset.fields)
        first = pset.evaluate(facts)
        if first.denied:
            raise first.error()
        admission = gw.policy_state.admit(facts.key, first, tokens=facts.input_tokens)
    kept = False  # a stream keeps its admission until its last byte

    def hold(resp: Response, release: Any) -> bool:
        nonlocal kept
        if isinstance(resp, StreamingResponse):
            kept = True
            resp.chunks = _finally(resp.chunks, release, lambda: _release_admission(gw, admission))
            return True
        return False

    try:
        name = (first.route if first else None) or head["model"]
        if name in rt.combos or name in rt.aliases:  # strategies price and size the real request
            call.canonical()
        est = call.bytes_in // 4 if call.req is None else estimate_tokens(call.req)
        max_tokens = call.req.get("max_tokens") if call.req is not None else None
        info: dict[str, Any] = {"stats": gw.routing_stats, "input_tokens": est, "max_tokens": max_tokens, "needs": set()}
        res = resolve(rt, name, info)
        call.combo = res.combo.name if res.combo else None
        targets = _admissible(gw, call, res, facts, first, est)
        call.mark("route", t)
        cached = await _cache_lookup(gw, call, res, targets)
        if cached is not None:
            return cached
        return await run_attempts(
            targets, res.combo.settings if res.combo else {}, gw.resilience,
            lambda target, account, n: _attempt(gw, call, target, account, n),
            fingerprint=rt.fingerprint, stats=gw.routing_stats, tokens=est, hold=hold,
            on_event=lambda kind, **f: _on_event(gw, call, kind, f),
        )
    except GatewayError:
        call.flush_pending(gw, final=True)
        raise
    finally:
        if admission is not None and not kept:
            gw.policy_state.release(admission, refund=not call.reached_upstream)


async def _cache_lookup(gw: Gateway, call: Call, res: Any, targets: list[Target]) -> Response | None:
    """A fresh cached answer to this canonical request, in the client's own format (a replayed
    stream for a streaming request); None on a miss, after noting the key for the put. With the
    semantic tier on, a miss embeds the last user turn (through the gateway's own embeddings
    route) and takes a stored answer to a question similar enough, in the same scope."""
    rules = gw.cache_rules
    if gw.cache is None or not rules.enabled or call.headers_in.get("x-omniroute-no-cache", "").lower() == "true":
        return None
    if call.req is None and not deterministic(call.head, rules):
        return None  # the fast path's answer to a hot request: no decode just to learn that
    req = call.canonical()
    if not cacheable(req, rules):
        return None
    model = f"combo:{res.combo.name}" if res.combo else targets[0].key
    scope = call.key.name if call.key else None
    key = cache_key(req, model, scope)
    hit = _cached(gw, call, key)
    how = "HIT"
    if hit is None and rules.semantic_enabled and rules.semantic_model and gw.cache.semantic is not None:
        text = last_user_text(req)
        if text:
            vector = await _embed(gw, call, rules.semantic_model, text)
            sscope = semantic_scope(req, model, scope)
            similar = gw.cache.semantic.find(sscope, vector, rules.semantic_threshold) if vector else None
            hit = _cached(gw, call, similar) if similar else None
            how = "HIT; semantic"
            if hit is None and vector:
                call.semantic = (sscope, vector)
    if hit is None:
        call.cache_key = key
        call.headers["x-omniroute-cache"] = "MISS"
        return None
    call.headers["x-omniroute-cache"] = how
    served_by = hit.get("served_by") or ""
    if served_by:  # what produced the answer, as on a miss
        call.headers["x-omniroute-model"] = served_by
        call.headers["x-omniroute-provider"] = served_by.partition("/")[0]
    usage = clean_usage(hit.get("usage"))
    rec = call.record(gw, cache="HIT", status=200, cost_micro_usd=0, upstream_model=hit.get("model"), **usage)
    rec["latency_ms"] = (time.perf_counter() - call.t0) * 1000
    headers = {**call.headers, "server-timing": call.server_timing()}
    if not call.meta.get("stream"):
        out = orjson.dumps(call.fmt.encode_response(hit, call.meta))
        rec["bytes_out"] = len(out)
        gw.record(rec)
        call.recorded_final = True
        return Response(out, 200, headers, media_type="application/json")
    enc = call.fmt.encoder(call.meta)
    body = b"".join(enc.push(ev) for ev in events_from_response(hit)) + enc.end()
    rec["bytes_out"] = len(body)
    gw.record(rec)
    call.recorded_final = True
    return StreamingResponse(_once(body), 200, headers, media_type=_media_type(call))


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _cached(gw: Gateway, call: Call, key: str) -> dict[str, Any] | None:
    """The canonical answer stored under `key`; a wire entry (stored by the fast path) is decoded
    here, and checked as a canonical answer would have been when it was stored."""
    entry = gw.cache.get(key)
    if entry is None or "wire" not in entry:
        return entry
    resp = from_entry(entry, lambda fid, body: _decode_wire(call.rt, fid, body))
    return resp if resp is not None and storable(resp, gw.cache_rules) else None


def _decode_wire(rt: Any, fmt_id: str, body: Any) -> dict[str, Any] | None:
    fmt = rt.formats.get(fmt_id)
    if fmt is None:
        return None
    try:
        return fmt.decode_response(body)
    except UpstreamError:
        return None


def _cache_put(gw: Gateway, call: Call, target: Target, response: dict[str, Any] | None) -> None:
    if call.cache_key is not None and response is not None and gw.cache is not None:
        stored = gw.cache.put(call.cache_key, {**response, "served_by": target.key}, target.key)
        if stored:
            _semantic_add(gw, call, target)


def _cache_put_wire(gw: Gateway, call: Call, target: Target, fmt: Any, raw: bytes, parsed: Any) -> bool:
    """Store a fast-path answer as it came when its format has a probe; False when the caller
    must decode it (no probe). Decoding waits for a hit, which most stored answers never get."""
    probe = fmt.response_probe(parsed)
    if probe is None or call.cache_key is None or gw.cache is None:
        return False
    if storable_probe(probe, gw.cache_rules):
        gw.cache.put_bytes(call.cache_key, wire_entry(raw, fmt.id, target.key), target.key)
        _semantic_add(gw, call, target)
    return True


def _semantic_add(gw: Gateway, call: Call, target: Target) -> None:
    if call.semantic is not None and gw.cache.semantic is not None and call.cache_key is not None:
        gw.cache.semantic.add(call.semantic[0], call.semantic[1], call.cache_key, model=target.key)


async def _embed(gw: Gateway, call: Call, model: str, text: str) -> list[float] | None:
    """The semantic tier's embedding, routed through the gateway itself (policies, fallback,
    usage records and all); a failure only means no semantic lookup."""
    from types import SimpleNamespace

    from . import modality_run as mr

    rt = call.rt
    m = mr.MODALITIES["embeddings"]
    req = SimpleNamespace(path=m.path, headers=call.headers_in, client=call.ip)
    ecall = mr.Call(gw, rt, m, rt.formats[m.client_format], call.key, req, len(text), gw.request_id())  # type: ignore[arg-type]
    ecall.model = model
    try:
        out = await mr.serve(ecall, {"model": model, "input": [text]}, None)
    except GatewayError as e:
        gw.log.info("semantic cache lookup skipped: the embedding failed", extra={"rid": call.rid, "status": e.status})
        return None
    data = out.get("data") or []
    return data[0] if data and isinstance(data[0], list) else None


def _release_admission(gw: Gateway, admission: Any) -> None:
    if admission is not None:
        gw.policy_state.release(admission)


async def _finally(chunks: AsyncIterator[bytes], *callbacks: Any) -> AsyncIterator[bytes]:
    try:
        async for c in chunks:
            yield c
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        for cb in callbacks:
            cb()


def _on_event(gw: Gateway, call: Call, kind: str, fields: dict[str, Any]) -> None:
    if kind in ("skip", "failure", "retry"):
        gw.log.info(f"attempt {kind}", extra={"rid": call.rid, **{k: v for k, v in fields.items() if v is not None}})


def _facts(call: Call, head: dict[str, Any], fields: Any) -> Any:
    """What the policy rules can test. The decode is paid only when a rule reads its results."""
    from .policy_match import Facts

    req = call.canonical() if fields & {"has_tools", "has_images", "input_tokens", "max_tokens"} else None
    used = features_used(req) if req is not None else set()
    return Facts(
        key=call.key.name if call.key else None, model=head["model"], format=call.fmt.id, route=call.route,
        has_tools="tools" in used, has_images="images" in used, stream=bool(head.get("stream")),
        input_tokens=estimate_tokens(req) if req is not None else call.bytes_in // 4,
        max_tokens=req.get("max_tokens") if req is not None else None, headers=call.headers_in, ip=call.ip,
    )


def _admissible(gw: Gateway, call: Call, res: Any, facts: Any, first: Any, est: int) -> list[Target]:
    """Targets that may serve this request: capable of what it needs, allowed by every policy rule
    that looks at the resolved target. Each kept target's request rewrite is noted on the call."""
    targets: list[Target] = res.targets
    skipped: list[tuple[Target, str]] = []
    if len(targets) > 1 or (first is not None and (first.capabilities or first.context)):
        req = call.canonical()
        needs = needs_of(features_used(req)) | set(first.capabilities if first is not None else ())
        targets, skipped = filter_capable(targets, needs, estimate_tokens(req), req.get("max_tokens"))
    denial = None
    if first is not None:
        kept = []
        for target in targets:
            d = first if not first.pending else gw.policies().evaluate(
                facts.with_target(target.key, target.connection.id, call.combo), prior=first
            )
            unmet = d.unmet(target.model.capabilities, target.model.context) if target.model.known else []
            if d.denied:
                denial = denial or d
                skipped.append((target, f"denied by policy '{d.deny.rule}'" if d.deny else "denied by policy"))
            elif unmet:
                skipped.append((target, "; ".join(unmet)))
            else:
                kept.append(target)
                if d.modifies_request or d.tags:
                    call.rewrites[target.key] = d
        targets = kept
    if not targets:
        if denial is not None:
            raise denial.error()
        raise ClientError(describe_skips(skipped) if skipped else f"no target can serve '{res.requested}'")
    return targets


def _reserve(gw: Gateway, call: Call, target: Target) -> Any:
    """Hold the worst case of this attempt against the key's budget (raises 429 when over)."""
    key = call.key
    if key is None or gw.budgets is None:
        return None
    spec = gw.budgets.effective(key.name, key.budget)
    if spec is None:
        return None
    from .budget import BudgetExceeded

    req = call.canonical()
    max_out = req.get("max_tokens") or target.model.max_output or 4096
    amount = worst_case_micro_usd(target.model.price, estimate_tokens(req), max_out) or 0
    try:
        return gw.budgets.reserve(key.name, spec, amount)
    except BudgetExceeded as e:
        err = RateLimited(e.message, retry_after=e.retry_after)
        err.record_class = "budget"
        raise err from None


def _settle(gw: Gateway, call: Call, reservation: Any, cost: int | None) -> None:
    if gw.budgets is None or call.key is None:
        return
    if reservation is not None:
        gw.budgets.settle(reservation, cost)
    elif cost:
        gw.budgets.add_spend(call.key.name, cost)


async def _attempt(gw: Gateway, call: Call, target: Target, account: Account, attempt: int) -> Response:
    conn, model = target.connection, target.model
    call.flush_pending(gw, final=False)
    t_start = time.perf_counter()
    rec = call.record(
        gw, attempt=attempt, provider=conn.id, provider_spec=conn.spec.id, account=account.label,
        upstream_model=model.upstream or model.id, ts=time.time(),
    )
    reservation = _reserve(gw, call, target)
    try:
        return await _send(gw, call, target, account, attempt, rec, reservation, t_start)
    except UpstreamError as e:
        _settle(gw, call, reservation, None)
        rec.update(status=e.status, error_class=error_class(e), latency_ms=(time.perf_counter() - t_start) * 1000)
        call.pending = rec
        raise


async def _send(
    gw: Gateway, call: Call, target: Target, account: Account, attempt: int, rec: dict[str, Any], reservation: Any, t_start: float
) -> Response:
    conn, model = target.connection, target.model
    up_fmt = conn.format
    stream = bool(call.meta["stream"])
    t = time.perf_counter()
    decision = call.rewrites.get(target.key)
    system_message = call.rt.combos[call.combo].settings.get("system_message") if call.combo else None
    passthrough = (
        up_fmt is call.fmt and call.meta.get("framing") in (None, up_fmt.framing) and not call.progress
        and not system_message and not (decision is not None and decision.modifies_request)
    )
    if decision is not None and decision.tags:
        rec["tags"] = list(decision.tags)
    if passthrough:
        body = dict(call.body)
        if "model" in body:  # Gemini carries the model in the URL, not the body
            body["model"] = model.upstream or model.id
        if stream and up_fmt.stream_defaults:
            for k, v in up_fmt.stream_defaults.items():
                body[k] = {**body[k], **v} if isinstance(v, dict) and isinstance(body.get(k), dict) else v
        payload = orjson.dumps(body)
    else:
        req = call.canonical()
        if decision is not None and decision.modifies_request:
            from .policy_apply import apply_to_request

            req = apply_to_request(req, decision)
        if system_message:
            req = {**req, "system": system_message}
        dropped = []
        if req.get("reasoning") and model.known and "reasoning" not in model.capabilities:
            # Reasoning knobs on a model that cannot reason are a 400 upstream: drop and report.
            req = {k: v for k, v in req.items() if k != "reasoning"}
            dropped.append("reasoning")
        lossy = sorted({*up_fmt.lossy(features_used(req)), *dropped})
        if lossy:
            if call.rt.strict:
                raise ClientError(f"{conn.id}/{model.id} ({up_fmt.id}) cannot carry: {', '.join(lossy)} (strict_translation is on)")
            call.headers["x-omniroute-lossy"] = rec["lossy"] = ",".join(lossy)
        payload = orjson.dumps(up_fmt.encode_request(req, {"model": model.upstream or model.id, "stream": stream}))
    request = gw.upstream.build(conn, account, "chat", model, stream=stream, body=payload)
    t = call.mark("translate", t)
    resp = await gw.upstream.send(request, conn, model, attempt)
    call.reached_upstream = True
    gw.resilience.learn(conn, account, resp.headers)
    t = call.mark("upstream", t)
    rec["ttfb_ms"] = (time.perf_counter() - t_start) * 1000
    call.headers["x-omniroute-model"] = f"{conn.id}/{model.id}"
    call.headers["x-omniroute-provider"] = conn.id
    call.headers["x-omniroute-attempts"] = str(attempt + 1)
    call.headers["x-omniroute-fallbacks"] = str(attempt)
    if resp.status_code >= 400:
        raw = await resp.aread()
        await resp.aclose()
        raise _upstream_error(up_fmt, resp, raw, conn.id, model.id)
    if not stream:
        try:
            raw = await read_body(resp)
        except httpx.HTTPError as e:
            raise transport_error(e, conn.id) from None
        finally:
            await resp.aclose()
        t = call.mark("upstream", t)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{conn.id} answered with invalid JSON", status=502, provider=conn.id) from None
        if passthrough and (call.cache_key is None or _cache_put_wire(gw, call, target, up_fmt, raw, parsed)):
            out, usage = raw, up_fmt.response_usage(parsed)
        else:
            canonical = up_fmt.decode_response(parsed)
            usage = canonical["usage"]
            out = raw if passthrough else orjson.dumps(call.fmt.encode_response(canonical, call.meta))
            _cache_put(gw, call, target, canonical)
        call.mark("translate", t)
        _finish(gw, call, rec, reservation, model, usage, 200, None, t_start, len(out))
        headers = {**call.headers, "server-timing": call.server_timing()}
        return Response(out, 200, headers, media_type="application/json")
    watch = _Watch(gw, call, rec, reservation, target, t_start)
    chunks = _passthrough_stream(resp, call, up_fmt, conn.id, watch) if passthrough else _translated_stream(resp, call, up_fmt, conn.id, watch)
    # Read until the client would get its first bytes: a failure before that can still fall back.
    first = await _first_output(chunks)
    call.mark("upstream", t)
    headers = {**call.headers, "server-timing": call.server_timing()}
    return StreamingResponse(_prepend(first, chunks), 200, headers, media_type=_media_type(call))


def _finish(
    gw: Gateway, call: Call, rec: dict[str, Any], reservation: Any, model: Any, usage: dict[str, Any], status: int,
    err_class: str | None, t_start: float, bytes_out: int,
) -> None:
    usage = clean_usage(usage)
    cost = cost_micro_usd(model.price, usage)
    _settle(gw, call, reservation, cost)
    rec.update(usage)
    rec.update(status=status, error_class=err_class, cost_micro_usd=cost, latency_ms=(time.perf_counter() - t_start) * 1000, bytes_out=bytes_out, final=True)
    call.recorded_final = True
    gw.record(rec)


class _Watch:
    """What a stream saw, recorded once when it ends however it ends (done, failed, cancelled);
    a stream that ended well is also offered to the response cache."""

    def __init__(self, gw: Gateway, call: Call, rec: dict[str, Any], reservation: Any, target: Target, t_start: float) -> None:
        self.gw, self.call, self.rec, self.reservation, self.target, self.t_start = gw, call, rec, reservation, target, t_start
        self.usage: dict[str, int] = clean_usage(None)
        self.bytes_out = 0
        self.text_chars = 0
        self.done = False
        self.response: dict[str, Any] | None = None  # the canonical answer, when the cache wants it

    def close(self, err: GatewayError | None, cancelled: bool = False) -> None:
        if self.done:
            return
        self.done = True
        if not self.usage["output_tokens"] and self.text_chars:
            self.usage["output_tokens"] = max(1, self.text_chars // 4)  # cut before upstream's count
        status = err.status if err else 200
        cls = "cancelled" if cancelled else (error_class(err) if err else None)
        _finish(self.gw, self.call, self.rec, self.reservation, self.target.model, self.usage, status, cls, self.t_start, self.bytes_out)
        if err is None and not cancelled:
            _cache_put(self.gw, self.call, self.target, self.response)


def _media_type(call: Call) -> str:
    framing = call.meta.get("framing") or call.fmt.framing
    return {"ndjson": "application/x-ndjson", "json-array": "application/json"}.get(framing, "text/event-stream")


def _upstream_error(fmt: Format, resp: httpx.Response, raw: bytes, provider: str, model: str) -> UpstreamError:
    message = fmt.decode_error(resp.status_code, raw)
    retry_after = None
    ra = resp.headers.get("retry-after")
    headers = {}
    if ra:
        try:
            retry_after = float(ra)
            headers["retry-after"] = ra
        except ValueError:
            pass
    return UpstreamError(
        f"{provider}/{model}: {message}", status=resp.status_code, provider=provider, model=model, retry_after=retry_after, headers=headers, body=raw
    )


async def _first_output(chunks: AsyncIterator[bytes]) -> bytes:
    async for chunk in chunks:
        if chunk:
            return chunk
    return b""


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()


async def _passthrough_stream(resp: httpx.Response, call: Call, fmt: Format, conn_id: str, watch: _Watch) -> AsyncIterator[bytes]:
    """Relay each event's bytes as they arrive. The only rewrite: the usage-only chunk we asked
    upstream for is dropped when the client did not ask for it. Events that carry usage (the
    format spec's `usage_hint`) are decoded on the side for the usage record."""
    parser = SSEParser() if fmt.framing == "sse" else None
    decoder = fmt.decoder()
    hint = fmt.usage_hint
    assembler = None
    if call.cache_key is not None:
        assembler = ResponseAssembler()  # the cache needs the whole answer: decode every event
    want_usage = call.meta.get("include_usage")
    started = False
    err: GatewayError | None = None
    cancelled = True
    # Relayed but not yet decoded on the side: the client's bytes go out first, the decode follows
    # (and still happens in `finally` when the client leaves right after the last chunk).
    later: list[Any] = []

    def decode_later() -> None:
        for item in later:
            for ev in decoder.feed(item) if parser is None else decoder.decode_data(*item):
                _observe(watch, ev)
                if assembler is not None:
                    assembler.push(ev)
        later.clear()

    try:
        async for chunk in body_chunks(resp):
            if parser is None:  # ndjson / json-array: relay as is, decode everything on the side
                watch.bytes_out += len(chunk)
                started = True
                later.append(chunk)
                yield chunk
                decode_later()
                continue
            out = []
            for event, data in parser.feed(chunk):
                if assembler is not None:
                    if data != fmt.done:
                        later.append((event, data))
                    if not want_usage and hint in data and '"choices":[]' in data:
                        continue
                elif hint and hint in data:
                    later.append((event, data))
                    if not want_usage and '"choices":[]' in data:
                        continue
                elif '"content"' in data:
                    watch.text_chars += len(data) // 3  # rough: only used when upstream sends no usage
                out.append(f"event: {event}\ndata: {data}\n\n" if event else f"data: {data}\n\n")
            if out:
                started = True
                b = "".join(out).encode()
                watch.bytes_out += len(b)
                yield b
            decode_later()
        cancelled = False
        if assembler is not None:
            watch.response = assembler.response()
    except httpx.HTTPError as e:
        cancelled = False
        err = transport_error(e, conn_id)
        if not started:
            raise err from None
        yield call.fmt.encoder(call.meta).error(err)
    finally:
        await resp.aclose()
        if later:
            with contextlib.suppress(GatewayError):
                decode_later()
        if started or not err:
            watch.close(err, cancelled=cancelled)


def _observe(watch: _Watch, ev: dict[str, Any]) -> None:
    t = ev.get("type")
    if t == "usage":
        merge_usage(watch.usage, ev)
    elif t == "text":
        watch.text_chars += len(ev.get("text") or "")


async def _translated_stream(resp: httpx.Response, call: Call, up_fmt: Format, conn_id: str, watch: _Watch) -> AsyncIterator[bytes]:
    decoder = up_fmt.decoder()
    encoder = call.fmt.encoder(call.meta)
    started = False
    err: GatewayError | None = None
    cancelled = True
    t0 = time.monotonic()

    def progress(done: bool) -> bytes:
        chars = sum(len(p.get("text") or "") for p in encoder.content) + len(encoder.st.get("text") or "")
        return encoder.progress({"tokens_generated": chars // 4, "elapsed_ms": int((time.monotonic() - t0) * 1000), "done": done})

    try:
        async for chunk in _ticking(body_chunks(resp), call.progress):
            if chunk is None:
                if started:
                    yield progress(False)
                continue
            out = []
            failure = None
            for ev in decoder.feed(chunk):
                if ev.get("type") == "error":
                    failure = ev
                    break
                b = encoder.push(ev)
                if b:
                    out.append(b)
            if failure is not None:
                if out:  # what upstream sent before failing still reaches the client, then the error
                    started = True
                    yield b"".join(out)
                kind = failure.get("kind") or "server"
                raise UpstreamError(failure.get("message") or "upstream stream error", status=ERROR_KINDS.get(kind, 502), kind=kind, provider=conn_id)
            if out:
                started = True
                b = b"".join(out)
                watch.bytes_out += len(b)
                yield b
        tail = b"".join(encoder.push(ev) for ev in decoder.close())
        if call.progress:
            tail += progress(True)
        tail += encoder.end()
        watch.bytes_out += len(tail)
        cancelled = False
        watch.response = encoder.response()
        yield tail
    except (httpx.HTTPError, UpstreamError) as e:
        cancelled = False
        err = e if isinstance(e, UpstreamError) else transport_error(e, conn_id)
        if not started:
            raise err from None
        yield encoder.error(err)
    finally:
        await resp.aclose()
        watch.usage = clean_usage(encoder.st["usage"])
        watch.text_chars = sum(len(p.get("text") or "") for p in encoder.content) + len(encoder.st.get("text") or "")
        if started or not err:
            watch.close(err, cancelled=cancelled)


async def _ticking(chunks: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes | None]:
    """The chunks as they come, plus None every `interval` seconds (0: no ticks): a slow upstream
    still lets the stream show it is alive."""
    if not interval:
        async for c in chunks:
            yield c
        return
    it = chunks.__aiter__()
    pending: asyncio.Future[bytes] | None = None
    last = time.monotonic()
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, interval - (time.monotonic() - last)))
            if not done:
                last = time.monotonic()
                yield None
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield chunk
            if time.monotonic() - last >= interval:
                last = time.monotonic()
                yield None
    finally:
        if pending is not None and not pending.done():
            pending.cancel()


def error_response(fmt: Format, err: GatewayError, extra_headers: dict[str, str] | None = None) -> Response:
    headers = {**(extra_headers or {}), **err.headers}
    return Response(fmt.encode_error(err), err.status, headers, media_type="application/json")


def json_error(err: GatewayError) -> JSONResponse:
    return JSONResponse({"error": {"message": err.message, "type": err.kind}}, status=err.status, headers=err.headers)


async def run_count_tokens(gw: Gateway, call: Call) -> Response:
    """The upstream's own count where its format and spec offer one, else an estimate marked
    as such (`x-omniroute-token-count: estimate`)."""
    body = call.body
    if not isinstance(body, dict):
        raise ClientError("request body must be a JSON object")
    req = call.fmt.decode_request(body, call.meta, validated=True)
    res = resolve(call.rt, req.get("model") or "", {"stats": gw.routing_stats})
    pset = gw.policies()
    if pset.rules:
        first = pset.evaluate(_facts(call, req, pset.fields))
        if first.denied:
            raise first.error()
    target = res.targets[0]
    conn, model = target.connection, target.model
    up = conn.format
    count, how = None, "estimate"
    if up.count_encode is not None and up.count_decode is not None and "count_tokens" in conn.spec.endpoints:
        payload = orjson.dumps(up.count_encode({"src": req, "meta": {"model": model.upstream or model.id}}))
        request = gw.upstream.build(conn, conn.accounts[0], "count_tokens", model, stream=False, body=payload)
        try:
            resp = await gw.upstream.send(request, conn, model, 0)
            raw = await resp.aread()
            await resp.aclose()
            if resp.status_code < 400:
                value = up.count_decode({"src": orjson.loads(raw)})
                if isinstance(value, int) and not isinstance(value, bool):
                    count, how = value, "upstream"
        except (UpstreamError, httpx.HTTPError, orjson.JSONDecodeError):
            gw.log.info("count_tokens fell back to an estimate", extra={"provider": conn.id})
    if count is None:
        count = estimate_tokens(req)
    if call.fmt.count_answer is None:
        raise ClientError(f"the {call.fmt.id} format has no count-tokens answer", status=404, kind="not_found")
    out = call.fmt.count_answer({"count": count, "estimated": how == "estimate"})
    headers = {"x-omniroute-token-count": how, "x-omniroute-model": target.key}
    return JSONResponse(out, 200, headers)
