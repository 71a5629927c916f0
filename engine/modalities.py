"""Embeddings, image generation and audio transcription: the client routes (the pipeline below
them is engine/modality_run.py; the upstream exchange, engine/steps.py).

    POST /v1/embeddings, /v1/providers/{provider}/embeddings        GET /v1/embeddings lists models
    POST /v1/images/generations, /v1/providers/{provider}/images/generations   GET lists models
    POST /v1/audio/transcriptions                                   multipart/form-data upload

Each modality has a client format (openai-embeddings, openai-images, openai-transcriptions) that
validates and decodes the client's request and encodes the answer, and per upstream a format spec
of the same modality that says what the request and answer look like there; errors leave in the
OpenAI shape (the openai-chat format's `errors.encode`). Uploads are parsed as they stream in
(engine/multipart.py), refused before any upstream call when larger than
`server.max_upload_bytes` (default 25 MiB: 413) or not audio by name and content (400,
engine/audio.py).

Canonical models:
    embeddings      request  {model, input: [str], dimensions?}
                    response {data: [[float]], usage: {input_tokens}}
    images          request  {model, prompt, n, size?, response_format: url|b64_json, quality?, style?}
                    response {data: [{url? | b64_json?, revised_prompt?}], created}
    transcriptions  request  {model, language?, prompt?, temperature?, response_format, filename,
                              content_type, size, duration?} + the audio, spooled (engine/multipart.py)
                    response {text, language?, duration?}
Usage units: input tokens for embeddings, images for images, seconds of audio for transcription,
priced from the model's spec (`input`, `per_image`, `per_audio_second`).
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from .audio import AUDIO_TYPES, AudioError, check_audio, wav_duration
from .errors import ClientError, GatewayError
from .http import JSONResponse, Request, Response, Router
from .modality_run import MODALITIES, Call, Modality, serve
from .multipart import FormError, TooLarge, Upload, boundary_of, parse_form
from .pipeline import error_class, error_response, json_error
from .routing import resolve

if TYPE_CHECKING:
    from .gateway import Gateway
    from .runtime import Runtime
    from .translate import Format

Handler = Callable[[Request], Awaitable[Response]]
DEFAULT_MAX_UPLOAD = 25 * 2**20
_DRAIN_CAP = 64 * 2**20  # after a refused upload, read at most this much more so the client sees the answer


def register(router: Router, gw: Gateway, guard: Callable[[Handler], Handler] | None = None) -> None:
    """Add the routes; `guard`, when given, wraps every handler (an extra check before it runs)."""
    wrap = guard or (lambda h: h)
    emb, img, audio = MODALITIES["embeddings"], MODALITIES["images"], MODALITIES["transcriptions"]
    router.route("POST", emb.path)(wrap(_json_route(gw, emb, pin=False)))
    router.route("POST", "/v1/providers/{provider}/embeddings")(wrap(_json_route(gw, emb, pin=True)))
    router.route("GET", emb.path)(wrap(_lister(gw, emb)))
    router.route("POST", img.path)(wrap(_json_route(gw, img, pin=False)))
    router.route("POST", "/v1/providers/{provider}/images/generations")(wrap(_json_route(gw, img, pin=True)))
    router.route("GET", img.path)(wrap(_lister(gw, img)))
    router.route("POST", audio.path)(wrap(_transcription_route(gw, audio)))


def _client_format(rt: Runtime, m: Modality) -> Format:
    fmt = rt.formats.get(m.client_format)
    if fmt is None:
        raise ClientError(f"the {m.client_format} format is not installed", status=404, kind="not_found")
    return fmt


def _error(rt: Runtime, e: GatewayError, headers: dict[str, str] | None = None) -> Response:
    fmt = rt.formats.get("openai-chat")
    return error_response(fmt, e, headers) if fmt is not None else json_error(e)


def _json_route(gw: Gateway, m: Modality, pin: bool) -> Handler:
    async def handle(req: Request) -> Response:
        rt = gw.runtime
        call: Call | None = None
        try:
            fmt = _client_format(rt, m)
            key = gw.authenticate(req, rt)
            from .app import _pin_provider, parse_json
            from .http import BodyTooLarge

            try:
                raw = await req.body(rt.server.max_body_bytes)
            except BodyTooLarge as e:
                raise ClientError(str(e), status=413) from None
            body = parse_json(raw)
            call = Call(gw, rt, m, fmt, key, req, len(raw), gw.request_id())
            if isinstance(body, dict):
                call.model = body.get("model") if isinstance(body.get("model"), str) else None
            if pin:
                _pin_provider(rt, body, req.params["provider"])
            canonical = fmt.decode_request(body, {})
            out = await serve(call, canonical, None)
            meta = {"model": call.model, "response_format": canonical.get("response_format")}
            answer = fmt.encode_response(out, meta)
            if m.name == "embeddings" and isinstance(body, dict) and body.get("encoding_format") == "base64":
                for item in answer.get("data") or ():
                    item["embedding"] = _float32_b64(item["embedding"])
            return Response(orjson.dumps(answer), 200, call.headers, media_type="application/json")
        except GatewayError as e:
            return _failed(gw, rt, call, e)

    return handle


def _failed(gw: Gateway, rt: Runtime, call: Call | None, e: GatewayError) -> Response:
    if call is not None and not call.recorded_final:
        gw.record(call.record(status=e.status, error_class=error_class(e)))  # failed before any attempt
    return _error(rt, e, call.headers if call else None)


def _float32_b64(vec: list[float]) -> str:
    """OpenAI's `encoding_format: base64`: the vector as little-endian float32, base64 encoded.
    Binary packing, not a mapping: the one thing the format spec leaves to Python."""
    packed = array("f", vec)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _lister(gw: Gateway, m: Modality) -> Handler:
    async def handle(req: Request) -> Response:
        rt = gw.runtime
        try:
            gw.authenticate(req, rt)
        except GatewayError as e:
            return _error(rt, e)
        created = int(gw.started)
        data = [{"id": f"{cid}/{mid}", "object": "model", "created": created, "owned_by": cid, "type": model.type}
                for cid, conn in rt.connections.items() if m.name in conn.spec.endpoints
                for mid, model in conn.models.items() if model.type == m.model_type]
        for name, kind in [*((a, "alias") for a in rt.aliases), *((c, "combo") for c in rt.combos)]:
            try:
                targets = resolve(rt, name, order=False).targets
            except GatewayError:
                continue
            if targets and all(t.model.type == m.model_type for t in targets):
                data.append({"id": name, "object": "model", "created": created, "owned_by": kind, "type": kind})
        return JSONResponse({"object": "list", "data": data})

    return handle


# ---------------------------------------------------------------- transcription upload


class _Body:
    """The request body as chunks, knowing when it ended (a refused upload is drained, not cut)."""

    def __init__(self, req: Request) -> None:
        self._it, self.ended, self.size = req.stream().__aiter__(), False, 0

    async def chunks(self) -> Any:
        while not self.ended:
            try:
                chunk = await self._it.__anext__()
            except StopAsyncIteration:
                self.ended = True
                return
            self.size += len(chunk)
            yield chunk

    async def drain(self) -> None:
        start = self.size
        async for _ in self.chunks():
            if self.size - start > _DRAIN_CAP:
                return


def _transcription_route(gw: Gateway, m: Modality) -> Handler:
    async def handle(req: Request) -> Response:
        rt = gw.runtime
        call: Call | None = None
        upload: Upload | None = None
        body = _Body(req)
        try:
            fmt = _client_format(rt, m)
            key = gw.authenticate(req, rt)
            limit = int((rt.raw_config.get("server") or {}).get("max_upload_bytes", DEFAULT_MAX_UPLOAD))
            try:
                boundary = boundary_of(req.headers.get("content-type", ""))
                fields, upload = await parse_form(body.chunks(), boundary, file_field="file", max_file_bytes=limit)
            except FormError as e:
                raise ClientError(str(e)) from None
            except TooLarge as e:
                await body.drain()
                raise ClientError(str(e), status=413, param="file") from None
            call = Call(gw, rt, m, fmt, key, req, body.size, gw.request_id(), model=fields.get("model"))
            if upload is None:
                raise ClientError("missing required field 'file': send the audio as a multipart file part", param="file")
            head = upload.head()
            try:
                kind = check_audio(upload.filename, head)
            except AudioError as e:
                raise ClientError(str(e), param="file") from None
            upload.content_type = AUDIO_TYPES[kind]
            canonical = fmt.decode_request(fields, {})
            canonical.update(filename=upload.filename, content_type=upload.content_type, size=upload.size)
            duration = wav_duration(head, upload.size)
            if duration is not None:
                canonical["duration"] = duration
            out = await serve(call, canonical, upload)
            answer = fmt.encode_response(out, {"model": call.model})
            if canonical.get("response_format") == "text":
                return Response(out.get("text") or "", 200, call.headers, media_type="text/plain; charset=utf-8")
            return Response(orjson.dumps(answer), 200, call.headers, media_type="application/json")
        except GatewayError as e:
            if not body.ended and e.status < 500:
                await body.drain()
            return _failed(gw, rt, call, e)
        finally:
            if upload is not None:
                upload.close()

    return handle

