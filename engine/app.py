"""The app (RSGI and ASGI): client routes per wire format, model lists, health, and the management API.

Every error leaves in the wire format of the route the client called: each chat route is bound to
its format spec, and `encode_error` of that spec shapes the body.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from . import __version__
from .errors import ClientError, GatewayError, OmniError
from .gateway import Gateway
from .http import BodyTooLarge, JSONResponse, Receive, Request, Response, Router, Scope, Send
from .idempotency import Replay, key_from_headers, request_digest
from .pipeline import Call, error_class, error_response, json_error, run_chat, run_count_tokens

ChatMeta = Callable[[Request], dict[str, Any]]


def _no_meta(req: Request) -> dict[str, Any]:
    return {}


class App:
    """The gateway as an RSGI application (granian's native interface; `__rsgi__`), also an ASGI 3
    one (`__call__`). `gateway` holds the current runtime and long-lived state."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.router = Router()
        self.started = False
        self._routes()

    # ------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        """Open the stores and start watching the config (once; the server calls it, or whoever
        embeds the server calls it before serving)."""
        if self.started:
            return
        await self.gw.start()
        from .reload import Reloader

        if self.gw.runtime.settings.get("reload", True) and os.environ.get("OMNIROUTE_NO_RELOAD") != "1":
            self.gw.reloader = Reloader(self.gw)
            self.gw.reloader.start()
        self.started = True

    async def shutdown(self) -> None:
        if self.started:
            self.started = False
            await self.gw.close()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # A worker process calls this before its loop runs; the embedded server's caller has
        # already run startup() on the running loop.
        if not self.started and not loop.is_running():
            loop.run_until_complete(self.startup())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.started and not loop.is_running():
            loop.run_until_complete(self.shutdown())

    # ------------------------------------------------------------ entry points

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto == "http":
            resp = await self.handle(Request.from_rsgi(scope, proto))
            await resp.rsgi(proto)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            resp = await self.handle(Request(scope, receive))
            await resp(send, receive)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, req: Request) -> Response:
        handler, params, known = self.router.match(req.method, req.path)
        if handler is None:
            status = 405 if known else 404
            msg = f"method {req.method} not allowed on {req.path}" if known else f"no route {req.method} {req.path}"
            return JSONResponse({"error": {"message": msg, "type": "invalid_request_error"}}, status)
        req.params = params
        flt = self.gw.policy_store.ip_filter()
        if flt is not None and not flt.allows(req.client):
            return JSONResponse({"error": {"message": f"address {req.client} is not allowed by the IP filter", "type": "permission_error"}}, 403)
        try:
            return await handler(req)
        except GatewayError as e:
            return json_error(e)
        except Exception:
            self.gw.log.exception("unhandled error", extra={"path": req.path})
            return JSONResponse({"error": {"message": "internal error", "type": "server_error"}}, 500)

    # ------------------------------------------------------------ routes

    def _routes(self) -> None:
        r = self.router
        chat = self.chat_handler
        r.route("POST", "/v1/chat/completions", "/chat/completions")(chat("openai-chat"))
        r.route("POST", "/v1/providers/{provider}/chat/completions")(chat("openai-chat", pin=True))
        r.route("POST", "/v1/messages")(chat("anthropic-messages"))
        r.route("POST", "/v1/messages/count_tokens")(chat("anthropic-messages", count=True))
        r.route("POST", "/v1/responses", "/responses")(chat("openai-responses"))
        r.route("POST", "/v1/api/chat", "/api/chat")(chat("ollama"))
        r.route("POST", "/v1beta/models/{target:path}", "/v1/models/{target:path}")(self.gemini_handler())
        r.route("GET", "/v1/models", "/models")(self.models)
        r.route("GET", "/v1beta/models")(self.gemini_models)
        r.route("GET", "/api/tags", "/v1/api/tags")(self.ollama_tags)
        r.route("GET", "/api/monitoring/health", "/health")(self.health)
        r.route("POST", "/api/shutdown")(self.admin(self.api_shutdown))
        from .admin import register_all

        register_all(r, self.gw, self.admin)
        from .modalities import register as register_modalities

        register_modalities(r, self.gw)

    def admin(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a management handler with the admin check."""

        async def guarded(req: Request) -> Response:
            self.gw.authorize_admin(req)
            return await handler(req)

        return guarded

    def chat_handler(
        self, fmt_id: str, *, meta: ChatMeta = _no_meta, pin: bool = False, count: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        gw = self.gw

        async def handle(req: Request) -> Response:
            rt = gw.runtime
            fmt = rt.formats.get(fmt_id)
            if fmt is None:
                return JSONResponse({"error": {"message": f"the {fmt_id} format is not installed", "type": "not_found"}}, 404)
            try:
                key = gw.authenticate(req, rt)
                try:
                    raw = await req.body(rt.server.max_body_bytes)
                except BodyTooLarge as e:
                    raise ClientError(str(e), status=413) from None
                ikey = key_from_headers(req.headers)
                if ikey is not None:
                    got = await gw.idempotency.begin(key.name if key else None, ikey, request_digest(req.method, req.path, raw))
                    if isinstance(got, Replay):
                        return got.response()
                    with got:
                        return got.wrap(await handle_once(req, rt, fmt, key, raw))
                return await handle_once(req, rt, fmt, key, raw)
            except GatewayError as e:
                return error_response(fmt, e)

        async def handle_once(req: Request, rt: Any, fmt: Any, key: Any, raw: bytes) -> Response:
            """One request after authentication; every error becomes an answer in the client's
            format here, so an idempotent duplicate replays that same answer."""
            call: Call | None = None
            try:
                body = parse_json(raw)
                call = Call(gw.request_id(), rt, fmt, req.path, key, body, meta(req), bytes_in=len(raw), headers_in=req.headers, ip=req.client)
                if pin:
                    _pin_provider(rt, body, req.params["provider"])
                if count or call.meta.get("action") == "countTokens":
                    return await run_count_tokens(gw, call)
                return await run_chat(gw, call)
            except GatewayError as e:
                if call is not None and not call.recorded_final:
                    # A request that failed before any attempt still leaves its record.
                    gw.record(call.record(gw, status=e.status, error_class=error_class(e)))
                return error_response(fmt, e, call.headers if call else None)

        return handle

    def gemini_handler(self) -> Callable[[Request], Awaitable[Response]]:
        def meta(req: Request) -> dict[str, Any]:
            model, _, action = req.params["target"].rpartition(":")
            stream = action == "streamGenerateContent"
            framing = "sse" if req.query.get("alt") == "sse" else "json-array"
            return {"model": model, "stream": stream, "framing": framing if stream else None, "action": action}

        handle = self.chat_handler("gemini", meta=meta)

        async def gemini(req: Request) -> Response:
            _, _, action = req.params["target"].rpartition(":")
            if action not in ("generateContent", "streamGenerateContent", "countTokens"):
                fmt = self.gw.runtime.formats.get("gemini")
                err = ClientError(f"unsupported method ':{action}' (use :generateContent or :streamGenerateContent)", status=404, kind="not_found")
                return error_response(fmt, err) if fmt else json_error(err)
            return await handle(req)

        return gemini

    async def models(self, req: Request) -> Response:
        if "x-goog-api-key" in req.headers or (req.query_string and "key" in req.query):
            return await self.gemini_models(req)  # google-genai lists models under /v1 too
        rt = self.gw.runtime
        self.gw.authenticate(req, rt)
        created = int(self.gw.started)
        data: list[dict[str, Any]] = []
        for cid, conn in rt.connections.items():
            for mid, m in conn.models.items():
                data.append({"id": f"{cid}/{mid}", "object": "model", "created": created, "owned_by": cid, "type": m.type})
        for name, target in rt.aliases.items():
            data.append({"id": name, "object": "model", "created": created, "owned_by": "alias", "type": "alias", "target": target})
        for name, combo in rt.combos.items():
            data.append({"id": name, "object": "model", "created": created, "owned_by": "combo", "type": "combo", "strategy": combo.strategy})
        return JSONResponse({"object": "list", "data": data})

    def _chat_models(self) -> list[tuple[str, Any]]:
        rt = self.gw.runtime
        out: list[tuple[str, Any]] = [(f"{cid}/{mid}", m) for cid, conn in rt.connections.items() for mid, m in conn.models.items() if m.type == "chat"]
        out += [(name, None) for name in (*rt.aliases, *rt.combos)]
        return out

    async def gemini_models(self, req: Request) -> Response:
        self.gw.authenticate(req, self.gw.runtime)
        models = []
        for name, m in self._chat_models():
            entry: dict[str, Any] = {
                "name": f"models/{name}", "displayName": (m.name if m else name) or name, "version": "omniroute",
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
            }
            if m is not None and m.context:
                entry["inputTokenLimit"] = m.context
            if m is not None and m.max_output:
                entry["outputTokenLimit"] = m.max_output
            models.append(entry)
        return JSONResponse({"models": models})

    async def ollama_tags(self, req: Request) -> Response:
        self.gw.authenticate(req, self.gw.runtime)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.gw.started))
        models = [
            {"name": name, "model": name, "modified_at": stamp, "size": 0, "digest": "",
             "details": {"format": "", "family": name.partition("/")[0], "families": None, "parameter_size": "", "quantization_level": ""}}
            for name, _ in self._chat_models()
        ]
        return JSONResponse({"models": models})

    async def api_shutdown(self, req: Request) -> Response:
        """Graceful: granian stops accepting, drains in-flight requests, then the lifespan shutdown
        flushes usage records. The signal goes to the serving process (granian's supervisor when
        there are several workers), which stops every worker."""
        import signal

        if self.gw.usage is not None:
            self.gw.usage.audit("admin", "system.shutdown", "gateway", None)
        os.kill(int(os.environ.get("OMNIROUTE_SERVER_PID") or os.getpid()), signal.SIGTERM)
        return JSONResponse({"status": "shutting down"}, 202)

    async def health(self, req: Request) -> Response:
        gw = self.gw
        rt = gw.runtime
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "uptime_s": round(time.time() - gw.started, 3),
                "generation": rt.generation,
                "fingerprint": rt.fingerprint,
                "config_file": rt.config_file,
                "last_reload_at": gw.last_reload_at,
                "last_reload_error": gw.last_reload_error,
                "summary": rt.summary(),
            }
        )


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise ClientError("request body is empty: send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ClientError(f"request body is not valid JSON: {e}") from None


def _pin_provider(rt: Any, body: Any, provider: str) -> None:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return  # decode reports the missing model in the client's words
    if provider not in rt.prefixes:
        raise ClientError(f"unknown provider '{provider}' (configured: {', '.join(sorted(rt.connections))})", status=404, kind="not_found")
    model: str = body["model"]
    prefix, sep, _ = model.partition("/")
    if sep and prefix in rt.prefixes:
        if rt.prefixes[prefix] != rt.prefixes[provider]:
            raise ClientError(f"model '{model}' belongs to provider '{prefix}', not '{provider}'", param="model")
        return
    body["model"] = f"{provider}/{model}"


def create_app(config_file: str | None = None, *, env: dict[str, str] | None = None) -> App:
    """Build the runtime from `config_file` (or $OMNIROUTE_CONFIG) and return the ASGI app."""
    from .compile import build

    path = config_file or os.environ.get("OMNIROUTE_CONFIG") or "config.yaml"
    try:
        runtime = build(path, env=env)
    except OmniError:
        raise
    return App(Gateway(runtime))


def _from_env() -> App:
    """granian's factory target: each worker builds its app from $OMNIROUTE_CONFIG."""
    return create_app(os.environ.get("OMNIROUTE_CONFIG"))
