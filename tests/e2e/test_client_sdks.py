"""Client-format routes beyond the pair matrix, through the official SDKs and raw HTTP.

Gemini: google-genai with api_version v1beta and v1 and model names that contain a slash (the SDK
puts `openai/gpt-4.1` into the path as is: `/v1beta/models/openai/gpt-4.1:generateContent`, which
the gateway's `{target:path}` route takes apart at the last colon), the streamed JSON-array
framing (no `?alt=sse`), the model list. Ollama: `/api/chat` and `/v1/api/chat` NDJSON, streaming
by default, `/api/tags`. And a deterministic mid-stream failure: an upstream that sends the last
words of an answer and its in-band error event in one network write.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import orjson
import pytest
from google import genai
from google.genai import types as gt

from tests.e2e.sdk_clients import CLIENTS, PDF_B64, WAV_B64, AnthropicMessages, Gemini, OpenAIChat
from tests.e2e.wire_views import UPSTREAMS, VIEWS, one_chat
from tests.support import Gateway, demo_providers
from tools.fake_upstream.launch import FakeUpstream


@pytest.fixture(scope="module")
def gw(gateway_factory: Any, fake: FakeUpstream, raw_upstream: str) -> Gateway:
    providers = demo_providers(fake.base_url)
    providers["rawanthropic"] = {"spec": "anthropic", "base_url": f"{raw_upstream}/v1", "api_key": "sk-raw"}
    providers["backoff"] = {
        "spec": "openai",
        "base_url": f"{fake.base_url}/openai/v1",
        "api_key": "sk-backoff",
    }
    gateway: Gateway = gateway_factory({"providers": providers})
    return gateway


# ---------------------------------------------------------------- Gemini


@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("version", ["v1beta", "v1"])
def test_gemini_sdk_with_slashed_model_names(
    gw: Gateway, fake: FakeUpstream, version: str, upstream: str
) -> None:
    marker = "mk" + uuid.uuid4().hex[:12]
    client = Gemini(gw.base_url, api_version=version)
    urls = client.hdr.urls
    model = UPSTREAMS[upstream]
    out = client.sdk.models.generate_content(model=model, contents=f"[[words:3]] {marker}")
    assert out.text == "word1 word2 word3"
    chunks = list(client.sdk.models.generate_content_stream(model=model, contents=f"[[words:4]] {marker}-s"))
    assert "".join(c.text or "" for c in chunks) == "word1 word2 word3 word4"
    assert len([c for c in chunks if c.text]) >= 4  # streamed, not buffered
    assert chunks[-1].usage_metadata is not None and chunks[-1].usage_metadata.candidates_token_count == 4
    # the slash stays a slash in the path; the version segment is the one asked for
    assert urls[0] == f"{gw.base_url}/{version}/models/{model}:generateContent"
    assert urls[1] == f"{gw.base_url}/{version}/models/{model}:streamGenerateContent?alt=sse"
    body = one_chat(fake, upstream, f"{marker}-s")
    assert VIEWS[upstream].turns(body)[-1].text == f"[[words:4]] {marker}-s"


@pytest.mark.parametrize("upstream", list(UPSTREAMS))
def test_gemini_stream_without_alt_sse_is_a_json_array(
    gw: Gateway, fake: FakeUpstream, upstream: str
) -> None:
    """`:streamGenerateContent` without `?alt=sse` answers one JSON array whose elements arrive as
    they are generated (how Google's REST API streams by default)."""
    marker = "mk" + uuid.uuid4().hex[:12]
    url = f"{gw.base_url}/v1beta/models/{UPSTREAMS[upstream]}:streamGenerateContent"
    body = {
        "contents": [{"role": "user", "parts": [{"text": f"[[words:5]] {marker}"}]}],
        "systemInstruction": {"parts": [{"text": f"sys {marker}"}]},
    }
    pieces: list[bytes] = []
    with httpx.stream("POST", url, json=body, headers={"x-goog-api-key": "any"}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        pieces.extend(r.iter_raw())
    items = json.loads(b"".join(pieces))
    assert isinstance(items, list) and len(items) >= 5
    text = "".join(p.get("text", "") for it in items for p in it["candidates"][0]["content"].get("parts", []))
    assert text == "word1 word2 word3 word4 word5"
    last = items[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["candidatesTokenCount"] == 5
    assert VIEWS[upstream].system(one_chat(fake, upstream, marker)) == f"sys {marker}"


def test_gemini_count_tokens_route_under_v1(gw: Gateway) -> None:
    client = genai.Client(api_key="any", http_options=gt.HttpOptions(base_url=gw.base_url, api_version="v1"))
    out = client.models.count_tokens(
        model="anthropic/claude-sonnet-4-5", contents="count me please, twelve words or so in this sentence"
    )
    assert out.total_tokens is not None and out.total_tokens > 0


def test_gemini_model_list_v1beta(gw: Gateway) -> None:
    client = genai.Client(
        api_key="any", http_options=gt.HttpOptions(base_url=gw.base_url, api_version="v1beta")
    )
    models = {m.name: m for m in client.models.list()}
    for model in UPSTREAMS.values():
        assert f"models/{model}" in models
        assert "generateContent" in (models[f"models/{model}"].supported_actions or [])
    assert models["models/gemini/gemini-2.5-flash"].input_token_limit


def test_gemini_model_list_v1(gw: Gateway) -> None:
    client = genai.Client(api_key="any", http_options=gt.HttpOptions(base_url=gw.base_url, api_version="v1"))
    names = {m.name for m in client.models.list()}
    assert {f"models/{m}" for m in UPSTREAMS.values()} <= names


def test_gemini_unknown_action_is_a_gemini_404(gw: Gateway) -> None:
    r = httpx.post(
        f"{gw.base_url}/v1beta/models/openai/gpt-4.1:embedContent",
        json={"content": {"parts": [{"text": "x"}]}},
    )
    assert r.status_code == 404
    assert r.json()["error"]["status"] == "NOT_FOUND" and r.json()["error"]["code"] == 404


# ---------------------------------------------------------------- Ollama


def test_ollama_sdk_lists_models(gw: Gateway) -> None:
    names = {m.model for m in ollama.Client(host=gw.base_url).list().models}
    assert set(UPSTREAMS.values()) <= names


@pytest.mark.parametrize("path", ["/api/chat", "/v1/api/chat"])
def test_ollama_chat_streams_ndjson_by_default(gw: Gateway, fake: FakeUpstream, path: str) -> None:
    """No `stream` in the body means a stream (Ollama's default): NDJSON lines, the last one done
    with the counters."""
    marker = "mk" + uuid.uuid4().hex[:12]
    body = {
        "model": "anthropic/claude-sonnet-4-5",
        "messages": [{"role": "user", "content": f"[[words:4]] {marker}"}],
    }
    with httpx.stream("POST", gw.base_url + path, json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert "".join(x["message"]["content"] for x in lines) == "word1 word2 word3 word4"
    assert [x["done"] for x in lines].count(True) == 1 and lines[-1]["done"] is True
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == 4
    assert one_chat(fake, "anthropic", marker)["stream"] is True


@pytest.mark.parametrize("path", ["/api/chat", "/v1/api/chat"])
def test_ollama_errors_are_ollama_shaped(gw: Gateway, path: str) -> None:
    r = httpx.post(gw.base_url + path, json={"model": "openai/gpt-4.1", "messages": "hi"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)


# ---------------------------------------------------------------- a mid-stream failure, deterministic

RAW_WORDS = ("word1", " word2", " word3")


class _RawAnthropic(http.server.BaseHTTPRequestHandler):
    """An Anthropic-format upstream that sends the first word, pauses, then the last two words
    and an in-band `error` event in ONE write, and closes: what a provider that fails right after
    a burst of tokens looks like to the gateway, without timing luck."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))

        def ev(obj: dict[str, Any]) -> bytes:
            return f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n".encode()

        def delta(text: str) -> bytes:
            return ev(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
            )

        usage = {"input_tokens": 5, "output_tokens": 1}
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        self.wfile.write(
            ev(
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_raw",
                        "type": "message",
                        "role": "assistant",
                        "model": "claude-sonnet-4-5",
                        "content": [],
                        "stop_reason": None,
                        "usage": usage,
                    },
                }
            )
            + ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            + delta(RAW_WORDS[0])
        )
        self.wfile.flush()
        time.sleep(0.3)
        self.wfile.write(
            delta(RAW_WORDS[1])
            + delta(RAW_WORDS[2])
            + ev({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        )
        self.wfile.flush()


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RawAnthropic)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "client",
    [pytest.param(c) for c in CLIENTS],
)
def test_in_band_error_after_a_burst_keeps_the_words_before_it(gw: Gateway, client: str) -> None:
    """Every word upstream sent before failing reaches the client, then the client's error event.
    (The Anthropic client is the same-format fast path: bytes are relayed as they are.)"""
    fail = CLIENTS[client](gw.base_url).cut("rawanthropic/claude-sonnet-4-5", "go")
    assert fail.text_before == "".join(RAW_WORDS)


# ---------------------------------------------------------------- the gateway's own errors, per client format

BAD_BODIES = {
    # (route, a body its format refuses, what the error names)
    "openai": (
        "/v1/chat/completions",
        {"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
        "temperature",
    ),
    "responses": ("/v1/responses", {"model": "openai/gpt-4.1"}, "input"),
    "anthropic": (
        "/v1/messages",
        {"model": "anthropic/claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]},
        "max_tokens",
    ),
    "gemini": ("/v1beta/models/openai/gpt-4.1:generateContent", {"contents": "hello"}, "contents"),
    "ollama": (
        "/api/chat",
        {"model": "openai/gpt-4.1", "messages": [{"role": "wizard", "content": "x"}]},
        "role",
    ),
}


def _error_text(client: str, body: Any) -> str:
    if client in ("openai", "responses"):
        assert body["error"]["type"] == "invalid_request_error"
        return str(body["error"]["message"])
    if client == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        return str(body["error"]["message"])
    if client == "gemini":
        assert body["error"]["code"] == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
        return str(body["error"]["message"])
    assert isinstance(body["error"], str)
    return str(body["error"])


@pytest.mark.parametrize("client", list(BAD_BODIES))
def test_a_refused_request_is_a_400_in_the_client_shape_and_never_reaches_upstream(
    gw: Gateway, fake: FakeUpstream, client: str
) -> None:
    route, body, names = BAD_BODIES[client]
    before = fake.stats()["total"]
    r = httpx.post(gw.base_url + route, json=body, timeout=30)
    assert r.status_code == 400
    assert names in _error_text(client, r.json())
    assert fake.stats()["total"] == before


UNKNOWN_MODEL = {
    "openai": (
        "/v1/chat/completions",
        {"model": "nosuch/model", "messages": [{"role": "user", "content": "x"}]},
    ),
    "responses": ("/v1/responses", {"model": "nosuch/model", "input": "x"}),
    "anthropic": (
        "/v1/messages",
        {"model": "nosuch/model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    ),
    "gemini": ("/v1beta/models/nosuch/model:generateContent", {"contents": [{"parts": [{"text": "x"}]}]}),
    "ollama": ("/api/chat", {"model": "nosuch/model", "messages": [{"role": "user", "content": "x"}]}),
}


@pytest.mark.parametrize("client", list(UNKNOWN_MODEL))
def test_an_unknown_model_is_a_400_in_the_client_shape(gw: Gateway, fake: FakeUpstream, client: str) -> None:
    route, body = UNKNOWN_MODEL[client]
    before = fake.stats()["total"]
    r = httpx.post(gw.base_url + route, json=body, timeout=30)
    assert r.status_code == 400
    assert "no provider 'nosuch'" in _error_text(client, r.json())
    assert fake.stats()["total"] == before


def test_a_model_that_backs_off_says_why(gw: Gateway) -> None:
    """Two upstream 500s in a row put the model in back-off; the next request's 503 says so."""
    url = f"{gw.base_url}/v1/chat/completions"
    for _ in range(2):
        r = httpx.post(
            url,
            json={"model": "backoff/gpt-4.1", "messages": [{"role": "user", "content": "[[error:500]]"}]},
            timeout=30,
        )
        assert r.status_code == 500
    r = httpx.post(
        url, json={"model": "backoff/gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}, timeout=30
    )
    assert r.status_code == 503 and r.headers.get("retry-after")
    assert "backing off" in r.json()["error"]["message"], r.json()


# ---------------------------------------------------------------- files (documents, audio)


def gemini_with_file(gw: Gateway, model: str, text: str, mime_type: str, b64: str) -> Any:
    """google-genai sends `text` and one inline file part (the SDK base64-encodes the bytes)."""
    part = gt.Part(inline_data=gt.Blob(mime_type=mime_type, data=base64.b64decode(b64)))
    return Gemini(gw.base_url).sdk.models.generate_content(
        model=model, contents=[gt.Content(role="user", parts=[gt.Part(text=text), part])]
    )


def test_a_pdf_from_a_gemini_client_reaches_anthropic_as_a_document(gw: Gateway, fake: FakeUpstream) -> None:
    marker = "mk" + uuid.uuid4().hex[:12]
    out = gemini_with_file(gw, UPSTREAMS["anthropic"], f"summarise {marker}", "application/pdf", PDF_B64)
    assert out.text == f"Hello! You said: summarise {marker}"
    blocks = one_chat(fake, "anthropic", marker)["messages"][0]["content"]
    docs = [b for b in blocks if b["type"] == "document"]
    assert docs and docs[0]["source"] == {"type": "base64", "media_type": "application/pdf", "data": PDF_B64}


def test_a_pdf_from_the_openai_sdk_reaches_anthropic_as_a_titled_document(
    gw: Gateway, fake: FakeUpstream
) -> None:
    marker = "mk" + uuid.uuid4().hex[:12]
    client = OpenAIChat(gw.base_url)
    out = client.sdk.chat.completions.create(
        model=UPSTREAMS["anthropic"],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"summarise {marker}"},
                    {
                        "type": "file",
                        "file": {"file_data": f"data:application/pdf;base64,{PDF_B64}", "filename": "q3.pdf"},
                    },
                ],
            }
        ],
    )
    assert out.choices[0].message.content == f"Hello! You said: summarise {marker}"
    assert "x-omniroute-lossy" not in client.hdr.last
    blocks = one_chat(fake, "anthropic", marker)["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": f"summarise {marker}"},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64},
            "title": "q3.pdf",
        },
    ]


def test_audio_from_a_gemini_client_reaches_openai_as_input_audio(gw: Gateway, fake: FakeUpstream) -> None:
    """google-genai sends the bytes as URL-safe base64; OpenAI gets standard base64 in input_audio."""
    marker = "mk" + uuid.uuid4().hex[:12]
    out = gemini_with_file(gw, UPSTREAMS["openai"], f"transcribe {marker}", "audio/wav", WAV_B64)
    assert out.text == f"Hello! You said: transcribe {marker}"
    content = one_chat(fake, "openai", marker)["messages"][0]["content"]
    assert content == [
        {"type": "text", "text": f"transcribe {marker}"},
        {"type": "input_audio", "input_audio": {"data": WAV_B64, "format": "wav"}},
    ]


def test_a_plain_text_document_from_the_anthropic_sdk_reaches_openai_as_text_and_gemini_as_inline_data(
    gw: Gateway, fake: FakeUpstream
) -> None:
    client = AnthropicMessages(gw.base_url)
    doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "Q3 revenue: 12 €"},
    }
    for upstream in ("openai", "gemini"):
        marker = "mk" + uuid.uuid4().hex[:12]
        out = client.sdk.messages.create(
            model=UPSTREAMS[upstream],
            max_tokens=50,
            messages=[{"role": "user", "content": [doc, {"type": "text", "text": f"read {marker}"}]}],
        )
        assert out.content[0].type == "text"
        body = one_chat(fake, upstream, marker)
        if upstream == "openai":
            # Chat Completions files are PDFs only: the text travels as text
            assert body["messages"][0]["content"][0] == {"type": "text", "text": "Q3 revenue: 12 €"}
        else:
            blob = body["contents"][0]["parts"][0]["inlineData"]
            assert blob["mimeType"] == "text/plain"
            assert base64.b64decode(blob["data"]).decode() == "Q3 revenue: 12 €"


def test_files_an_upstream_cannot_take_are_reported_lost(gw: Gateway, fake: FakeUpstream) -> None:
    """A video to Anthropic (documents only) and a PDF to Ollama (no files at all) are dropped and
    named in x-omniroute-lossy; an OpenAI file_id, meaningless elsewhere, is reported too."""
    cases = [
        (
            "anthropic",
            {"type": "file", "file": {"file_data": "data:video/mp4;base64,AAAAIGZ0eXA="}},
            "files:video/mp4",
        ),
        (
            "ollama",
            {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF_B64}"}},
            "files",
        ),
        ("gemini", {"type": "file", "file": {"file_id": "file-abc123"}}, "file_ids"),
    ]
    for upstream, part, lost in cases:
        marker = "mk" + uuid.uuid4().hex[:12]
        body = {
            "model": UPSTREAMS[upstream],
            "messages": [{"role": "user", "content": [{"type": "text", "text": f"look {marker}"}, part]}],
        }
        r = httpx.post(f"{gw.base_url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == f"Hello! You said: look {marker}"
        assert lost in r.headers["x-omniroute-lossy"].split(","), r.headers.get("x-omniroute-lossy")
        sent = orjson.dumps(one_chat(fake, upstream, marker))
        assert b"AAAAIGZ0eXA=" not in sent and PDF_B64.encode() not in sent and b"file-abc123" not in sent
