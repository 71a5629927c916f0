"""The transcription route in process: upload limit from the config, refusals before any upstream
call, and what one upstream call carries (a mock transport stands in for the network)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import wave
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import orjson
import pytest

from engine.compile import build
from engine.gateway import Gateway
from engine.http import Request, Router
from engine.modalities import register
from engine.upstream import Upstream

BOUNDARY = "b0undary"


def wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x01\x00" * int(seconds * 8000))
    return buf.getvalue()


def form(fields: dict[str, str], filename: str, data: bytes) -> bytes:
    out = b"".join(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items())
    out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'.encode()
    return out + data + f"\r\n--{BOUNDARY}--\r\n".encode()


class Harness:
    def __init__(self, tmp: Path, max_upload: int | None = None) -> None:
        rt = build(None, text=f"data_dir: {tmp}\nproviders:\n  deepgram: {{api_key: dg-key}}\n", env={})
        if max_upload is not None:  # the config key is read from the raw config
            rt = dataclasses.replace(rt, raw_config=MappingProxyType({**rt.raw_config, "server": {"max_upload_bytes": max_upload}}))
        self.sent: list[httpx.Request] = []
        self.gw = Gateway(rt, upstream=Upstream(transport=httpx.MockTransport(self._answer)))
        self.router = Router()
        register(self.router, self.gw)
        self.received = 0

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        body = {"metadata": {"duration": 0.5}, "results": {"channels": [{"alternatives": [{"transcript": "hi"}], "detected_language": "en"}]}}
        return httpx.Response(200, json=body)

    def post(self, body: bytes, chunk: int = 1000, content_type: str = f"multipart/form-data; boundary={BOUNDARY}") -> tuple[int, Any]:
        messages = [{"type": "http.request", "body": body[i : i + chunk], "more_body": i + chunk < len(body)}
                    for i in range(0, max(len(body), 1), chunk)]

        async def receive() -> dict[str, Any]:
            self.received += 1
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        scope = {"type": "http", "method": "POST", "path": "/v1/audio/transcriptions", "query_string": b"",
                 "headers": [(b"content-type", content_type.encode())], "client": ("127.0.0.1", 1)}
        handler, _, _ = self.router.match("POST", "/v1/audio/transcriptions")
        assert handler is not None

        async def run() -> Any:
            resp = await handler(Request(scope, receive))
            await self.gw.upstream.aclose()
            return resp

        resp = asyncio.run(run())
        self.left = len(messages)
        return resp.status, orjson.loads(resp.body)


def test_a_deepgram_call_carries_the_audio_and_its_auth(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    audio = wav(0.5)
    status, body = h.post(form({"model": "deepgram/nova-3", "language": "en"}, "clip.wav", audio))
    assert status == 200 and body == {"text": "hi", "task": "transcribe", "language": "en", "duration": 0.5}
    (req,) = h.sent
    assert req.url.path == "/v1/listen" and req.url.params["model"] == "nova-3" and req.url.params["language"] == "en"
    assert req.headers["authorization"] == "Token dg-key" and req.headers["content-type"] == "audio/wav"
    assert req.headers["content-length"] == str(len(audio)) and req.content == audio


def test_the_configured_limit_refuses_with_413_and_reads_the_rest(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_upload=4096)
    status, body = h.post(form({"model": "deepgram/nova-3"}, "clip.wav", wav(1.0)), chunk=512)
    assert status == 413 and "limit of 4096 bytes" in body["error"]["message"] and body["error"]["param"] == "file"
    assert h.sent == [] and h.left == 0  # no upstream call; the body was drained so the client sees the 413


@pytest.mark.parametrize(
    ("body", "ctype", "message"),
    [
        (form({"model": "deepgram/nova-3"}, "clip.txt", wav(0.1)), None, "no audio file extension"),
        (form({"model": "deepgram/nova-3"}, "clip.wav", b"not audio"), None, "content is not audio"),
        (form({}, "clip.wav", wav(0.1)), None, "missing required field 'model'"),
        (form({"model": "deepgram/nova-3", "response_format": "srt"}, "clip.wav", wav(0.1)), None, "response_format"),
        (b'{"model": "deepgram/nova-3"}', "application/json", "multipart/form-data"),
        (form({"model": "deepgram/nova-3"}, "clip.wav", wav(0.1))[:-20], None, "closing boundary"),
    ],
)
def test_refusals_before_any_upstream_call(tmp_path: Path, body: bytes, ctype: str | None, message: str) -> None:
    h = Harness(tmp_path)
    status, answer = h.post(body, content_type=ctype or f"multipart/form-data; boundary={BOUNDARY}")
    assert status == 400 and message in answer["error"]["message"] and answer["error"]["type"] == "invalid_request_error"
    assert h.sent == []
