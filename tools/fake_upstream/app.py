"""The ASGI 3 app: routes each provider's prefix, records stats, applies scripted outcomes.

Routes (stats ids in brackets):
    /openai/v1     POST chat/completions [openai.chat], GET models [openai.models],
                   POST embeddings [openai.embeddings], POST images/generations [openai.images]
    /anthropic/v1  POST messages [anthropic.messages], POST messages/count_tokens
                   [anthropic.count_tokens], GET models [anthropic.models]
    /gemini/v1beta POST models/{m}:generateContent [gemini.generate], :streamGenerateContent
                   [gemini.stream], :countTokens [gemini.count_tokens], :embedContent [gemini.embed],
                   :batchEmbedContents [gemini.batch_embed]; GET models [gemini.models],
                   GET models/{m} [gemini.model]
                   POST audio/transcriptions [openai.transcriptions] (multipart upload)
    /ollama        POST api/chat [ollama.chat], POST api/embed [ollama.embed], GET api/tags
                   [ollama.tags], GET api/version [ollama.version]
    /deepgram      POST v1/listen [deepgram.listen] (raw audio body, `Token` auth)
    /assemblyai    POST v2/upload [assemblyai.upload], POST v2/transcript [assemblyai.transcript],
                   GET v2/transcript/{id} [assemblyai.poll]
    /together/v1   POST images/generations [together.images]
    /fireworks/inference/v1
                   POST workflows/accounts/fireworks/models/{m}/text_to_image [fireworks.images]
Control, no prefix:
    GET /_stats    {"counts": {route: n}, "total": n, "requests": [last 200, secrets redacted]}
    POST /_reset   clear stats and scripts
    POST /_script  {"match": {"model": ..., "route": ...}, "responses": [{"status", "headers",
                   "delay_ms", "body"}, ...]}: outcomes consumed in order by matching requests;
                   status 200 means "behave normally" (after the delay, with the extra headers).
                   `route` matches a route id or a whole provider ("openai").
    GET /_health   {"ok": true, "token": ...} for the launcher's readiness check
    GET /_files/image.png   the PNG that image `url`s point at
Requests to an unknown path under a provider prefix are answered 404 in that provider's shape
and counted under "not_found", so a gateway calling a wrong URL shows up in the stats.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from . import anthropic, assemblyai, deepgram, fireworks, gemini, ollama, openai, openai_audio, together
from .behaviour import PNG
from .wire import SECRET_HEADERS, Reply, Request, header_list, json_reply

Handler = Callable[[Request], Awaitable[Reply]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

PROVIDERS: dict[str, Any] = {
    "openai": openai, "anthropic": anthropic, "gemini": gemini, "ollama": ollama, "deepgram": deepgram,
    "assemblyai": assemblyai, "together": together, "fireworks": fireworks,
}  # fmt: skip
ROUTES: dict[tuple[str, str], tuple[str, Handler]] = {
    **openai.ROUTES,
    **openai_audio.ROUTES,
    **anthropic.ROUTES,
    **gemini.ROUTES,
    **ollama.ROUTES,
    **deepgram.ROUTES,
    **assemblyai.ROUTES,
    **together.ROUTES,
    **fireworks.ROUTES,
}
RECENT = 200
# Lets the launcher tell its own server from anything else that grabbed the same port.
TOKEN = os.environ.get("FAKE_UPSTREAM_TOKEN", "")


@dataclass
class Script:
    model: str | None
    route: str | None
    queue: deque[dict[str, Any]]

    def matches(self, route: str, model: str | None) -> bool:
        if self.model is not None and self.model != model:
            return False
        return self.route is None or self.route == route or route.startswith(self.route + ".")


@dataclass
class State:
    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0
    recent: deque[tuple[str, str, str, dict[str, str], Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT)
    )
    scripts: list[Script] = field(default_factory=list)

    def record(self, route: str, req: Request) -> None:
        self.counts[route] = self.counts.get(route, 0) + 1
        self.total += 1
        # Redaction waits for /_stats: most recorded requests are never read.
        self.recent.append((route, req.path, req.query_string, req.headers, req.json))

    def take(self, route: str, model: str | None) -> dict[str, Any] | None:
        for script in self.scripts:
            if script.queue and script.matches(route, model):
                outcome = script.queue.popleft()
                if not script.queue:
                    self.scripts.remove(script)
                return outcome
        return None


STATE = State()


def _redact_query(qs: str) -> str:
    if "key=" not in qs:
        return qs
    return "&".join("key=***" if part.startswith("key=") else part for part in qs.split("&"))


def stats_body() -> dict[str, Any]:
    requests = [
        {
            "route": route,
            "path": path,
            "query": _redact_query(qs),
            "headers": {k: ("***" if k in SECRET_HEADERS else v) for k, v in headers.items()},
            "body": body,
        }
        for route, path, qs, headers, body in STATE.recent
    ]
    return {"counts": dict(STATE.counts), "total": STATE.total, "requests": requests}


def _control_error(message: str) -> Reply:
    return json_reply(400, {"error": message})


def add_script(body: Any) -> Reply:
    if not isinstance(body, dict) or not isinstance(body.get("responses"), list):
        return _control_error('expected {"match": {...}, "responses": [...]}')
    match = body.get("match") or {}
    if not isinstance(match, dict) or set(match) - {"model", "route"}:
        return _control_error('"match" takes only "model" and "route"')
    queue: deque[dict[str, Any]] = deque()
    for item in body["responses"]:
        if isinstance(item, int):
            item = {"status": item}
        if not isinstance(item, dict) or not isinstance(item.get("status", 200), int):
            return _control_error("each response is an object with an integer status")
        queue.append(item)
    if queue:
        STATE.scripts.append(Script(match.get("model"), match.get("route"), queue))
    return json_reply(200, {"ok": True, "queued": len(queue)})


async def control(method: str, req: Request) -> Reply | None:
    path = req.path
    if path == "/_stats" and method == "GET":
        return json_reply(200, stats_body())
    if path == "/_reset" and method == "POST":
        STATE.counts.clear()
        STATE.total = 0
        STATE.recent.clear()
        STATE.scripts.clear()
        return json_reply(200, {"ok": True})
    if path == "/_script" and method == "POST":
        return add_script(req.json)
    if path == "/_health":
        return json_reply(200, {"ok": True, "token": TOKEN})
    if path == "/_files/image.png":
        return Reply(200, [(b"content-type", b"image/png"), (b"content-length", str(len(PNG)).encode())], PNG)
    return None


def _provider_of(path: str) -> Any:
    name = path[1:].split("/", 1)[0]
    return PROVIDERS.get(name)


async def handle(method: str, req: Request) -> Reply:
    entry = ROUTES.get((method, req.path))
    if entry is not None:
        route, handler = entry
    else:
        dynamic = (
            gemini.match(method, req.path) if req.path.startswith(gemini.PREFIX)
            else assemblyai.match(method, req.path) if req.path.startswith(assemblyai.PREFIX)
            else None
        )  # fmt: skip
        if dynamic is None:
            answer = await control(method, req)
            if answer is not None:
                return answer
            STATE.record("not_found", req)
            provider = _provider_of(req.path)
            if provider is None:
                return json_reply(404, {"error": f"no route for {method} {req.path}"})
            return provider.error(404, f"Invalid URL ({method} {req.path})")
        route, handler, req.params = dynamic
    req.route = route
    body = req.json
    req.model = (
        req.params.get("model") or (body.get("model") if isinstance(body, dict) else None) or req.query.get("model")
    )
    STATE.record(route, req)
    provider = PROVIDERS[route.split(".", 1)[0]]

    extra = None
    if STATE.scripts:
        outcome = STATE.take(route, req.model)
        if outcome is not None:
            delay = outcome.get("delay_ms") or 0
            if delay:
                await asyncio.sleep(delay / 1000)
            status = outcome.get("status", 200)
            extra = header_list(outcome.get("headers"))
            if status != 200:
                if "body" in outcome:
                    return json_reply(status, outcome["body"], extra)
                forced: Reply = provider.error(status, headers=extra)
                return forced
    try:
        denied = provider.auth(req)
        result: Reply = denied if denied is not None else await handler(req)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # A body shape the fake's checks did not foresee: the real APIs answer such input with a
        # 400, never a 5xx, so the fake does too (and names what tripped it).
        result = provider.error(400, f"invalid request body (fake_upstream could not read it: {exc!r})")
    except Exception as exc:  # a bug here must surface as an answer, not as a hung client
        result = provider.error(500, f"fake_upstream internal error: {exc!r}")
    if extra:
        result.headers.extend(extra)
    return result


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    if kind != "http":
        return
    raw = await _read_body(receive)
    qs = scope.get("query_string", b"").decode("latin-1")
    req = Request(
        method=scope["method"],
        path=scope["path"],
        query=dict(parse_qsl(qs)) if qs else {},
        query_string=qs,
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        body=raw,
    )
    if raw:
        try:
            req.json = orjson.loads(raw)
        except orjson.JSONDecodeError:
            req.json_error = True
    reply = await handle(req.method, req)
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    if reply.chunks is None:
        await send({"type": "http.response.body", "body": reply.body})
        return
    # A BrokenStream raised by the chunks propagates on purpose: the server then drops the
    # connection without the terminating chunk, which is how a provider failing mid-stream looks.
    async for chunk in reply.chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
