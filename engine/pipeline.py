"""The chat pipeline: parse -> resolve -> for each attempt: build, send, translate back -> record.

Hub and spoke: the client body decodes to the canonical request once; each attempt encodes it for
its upstream's format. When the client and upstream formats are the same the original body goes
through with only the model rewritten, and a stream's events are relayed byte for byte (the fast
path). Fallback to the next attempt happens only before the first byte reached the client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from .canonical import features_used
from .errors import ClientError, GatewayError, UpstreamError
from .http import JSONResponse, Response, StreamingResponse
from .routing import Target, resolve
from .stream import SSEParser
from .upstream import transport_error

if TYPE_CHECKING:
    from .gateway import Gateway
    from .runtime import ApiKey, Runtime
    from .translate import Format


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
    t0: float = field(default_factory=time.perf_counter)
    timing: dict[str, float] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    req: dict[str, Any] | None = None

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


def needs_translation(call: Call, target: Target) -> bool:
    return target.connection.format is not call.fmt


async def run_chat(gw: Gateway, call: Call) -> Response:
    t = time.perf_counter()
    head = call.fmt.peek(call.body, call.meta)
    t = call.mark("parse", t)
    stream = bool(head.get("stream"))
    meta = call.meta
    meta["stream"] = stream
    meta["id"] = call.rid
    meta["created"] = int(time.time())
    meta.setdefault("model", head["model"])
    meta["include_usage"] = bool(head.get("include_usage"))
    res = resolve(call.rt, head["model"], {"call": call})
    gw.authorize_model(call.key, res)
    t = call.mark("route", t)
    last: GatewayError | None = None
    targets = res.targets
    for attempt, target in enumerate(targets):
        try:
            return await _attempt(gw, call, target, attempt, stream, res.combo.name if res.combo else None)
        except UpstreamError as e:
            e.attempt = attempt
            last = e
            if not e.retryable or attempt == len(targets) - 1:
                break
            gw.log.info("falling back to the next target", extra={"rid": call.rid, "provider": target.connection.id, "status": e.status})
    if last is None:  # resolve never returns an empty plan; this keeps the type checker honest
        raise GatewayError(f"no target for model '{head['model']}'")
    raise last


async def _attempt(gw: Gateway, call: Call, target: Target, attempt: int, stream: bool, combo: str | None) -> Response:
    conn, model = target.connection, target.model
    up_fmt = conn.format
    t = time.perf_counter()
    passthrough = up_fmt is call.fmt
    req = None if passthrough else call.canonical()
    lossy = up_fmt.lossy(features_used(req)) if req is not None else []
    if lossy:
        if call.rt.strict:
            raise ClientError(f"{conn.id}/{model.id} ({up_fmt.id}) cannot carry: {', '.join(lossy)} (strict_translation is on)")
        call.headers["x-omniroute-lossy"] = ",".join(lossy)
    if passthrough:
        body = dict(call.body)
        body["model"] = model.upstream or model.id
        if stream and up_fmt.id == "openai-chat":
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        payload = orjson.dumps(body)
    else:
        payload = orjson.dumps(up_fmt.encode_request(call.canonical(), {"model": model.upstream or model.id, "stream": stream}))
    account = conn.accounts[0]
    request = gw.upstream.build(conn, account, "chat", model, stream=stream, body=payload)
    t = call.mark("translate", t)
    resp = await gw.upstream.send(request, conn, model, attempt)
    t = call.mark("upstream", t)
    call.headers["x-omniroute-model"] = f"{conn.id}/{model.id}"
    call.headers["x-omniroute-provider"] = conn.id
    call.headers["x-omniroute-attempts"] = str(attempt + 1)
    if resp.status_code >= 400:
        raw = await resp.aread()
        await resp.aclose()
        raise _upstream_error(up_fmt, resp, raw, conn.id, model.id)
    if not stream:
        try:
            raw = await resp.aread()
        except httpx.HTTPError as e:
            raise transport_error(e, conn.id) from None
        finally:
            await resp.aclose()
        t = call.mark("upstream", t)
        if passthrough:
            out = raw
        else:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"{conn.id} answered with invalid JSON", status=502, provider=conn.id) from None
            canonical = up_fmt.decode_response(parsed)
            out = orjson.dumps(call.fmt.encode_response(canonical, call.meta))
        call.mark("translate", t)
        headers = {**call.headers, "server-timing": call.server_timing()}
        return Response(out, 200, headers, media_type="application/json")
    chunks = _passthrough_stream(resp, call, conn.id) if passthrough else _translated_stream(resp, call, up_fmt, conn.id)
    # Read until the client would get its first bytes: a failure before that can still fall back.
    first = await _first_output(chunks)
    call.mark("upstream", t)
    headers = {**call.headers, "server-timing": call.server_timing()}
    return StreamingResponse(_prepend(first, chunks), 200, headers, media_type=_media_type(call))


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
    if first:
        yield first
    async for chunk in rest:
        yield chunk


async def _passthrough_stream(resp: httpx.Response, call: Call, conn_id: str) -> AsyncIterator[bytes]:
    """Relay each SSE event's bytes as they arrive. The only rewrite: the usage-only chunk we asked
    upstream for is dropped when the client did not ask for it."""
    parser = SSEParser()
    want_usage = call.meta.get("include_usage")
    started = False
    try:
        async for chunk in resp.aiter_bytes():
            out = []
            for event, data in parser.feed(chunk):
                if not want_usage and data.startswith('{') and '"choices":[]' in data and '"usage"' in data:
                    continue
                out.append(f"event: {event}\ndata: {data}\n\n" if event else f"data: {data}\n\n")
            if out:
                started = True
                yield "".join(out).encode()
    except httpx.HTTPError as e:
        err = transport_error(e, conn_id)
        if not started:
            raise err from None
        yield call.fmt.encoder(call.meta).error(err)
    finally:
        await resp.aclose()


async def _translated_stream(resp: httpx.Response, call: Call, up_fmt: Format, conn_id: str) -> AsyncIterator[bytes]:
    decoder = up_fmt.decoder()
    encoder = call.fmt.encoder(call.meta)
    started = False
    try:
        async for chunk in resp.aiter_bytes():
            out = []
            for ev in decoder.feed(chunk):
                if ev.get("type") == "error":
                    raise UpstreamError(ev.get("message") or "upstream stream error", status=502, provider=conn_id)
                b = encoder.push(ev)
                if b:
                    out.append(b)
            if out:
                started = True
                yield b"".join(out)
        tail = [encoder.push(ev) for ev in decoder.close()]
        yield b"".join(tail) + encoder.end()
    except (httpx.HTTPError, UpstreamError) as e:
        err = e if isinstance(e, UpstreamError) else transport_error(e, conn_id)
        if not started:
            raise err from None
        yield encoder.error(err)
    finally:
        await resp.aclose()


def error_response(fmt: Format, err: GatewayError, extra_headers: dict[str, str] | None = None) -> Response:
    headers = {**(extra_headers or {}), **err.headers}
    return Response(fmt.encode_error(err), err.status, headers, media_type="application/json")


def json_error(err: GatewayError) -> JSONResponse:
    return JSONResponse({"error": {"message": err.message, "type": err.kind}}, status=err.status, headers=err.headers)
