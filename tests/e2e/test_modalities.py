"""Embeddings, images and transcription end to end: real server, official openai SDK, fake upstreams.

Upstreams: OpenAI-format (openai, groq-style), Gemini and Ollama embeddings, Deepgram (raw audio,
`Token` auth) and AssemblyAI (upload, create, poll). Audio is a real WAV written by `wave`.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import uuid
import wave
from typing import Any

import httpx
import openai
import pytest

from tests.support import Gateway
from tools.fake_upstream.launch import FakeUpstream


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    """A mono 16-bit sine-ish WAV of `seconds`."""
    frames = int(seconds * rate)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", (i * 37 % 2000) - 1000) for i in range(frames)))
    return buf.getvalue()


@pytest.fixture(scope="module")
def gw(gateway_factory: Any, fake: FakeUpstream) -> Gateway:
    base = fake.base_url
    return gateway_factory(
        {
            "providers": {
                "openai": {"base_url": f"{base}/openai/v1", "api_key": "sk-fake-openai"},
                "gemini": {"base_url": f"{base}/gemini/v1beta", "api_key": "fake-gemini-key"},
                "ollama": {"base_url": f"{base}/ollama"},
                "groq": {"base_url": f"{base}/openai/v1", "api_key": "gsk-fake"},
                "deepgram": {"base_url": f"{base}/deepgram", "api_key": "dg-fake"},
                "assemblyai": {"base_url": f"{base}/assemblyai", "api_key": "aai-fake"},
            },
            "combos": {
                "embed-any": {"strategy": "priority", "targets": ["openai/text-embedding-3-small", "gemini/gemini-embedding-2"]},
                "mixed": {"strategy": "priority", "targets": ["openai/gpt-4.1", "ollama/nomic-embed-text"]},
            },
        }
    )


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key="anything", max_retries=0)


def count(fake: FakeUpstream, route: str) -> int:
    return int(fake.stats()["counts"].get(route, 0))


def usage_rows(gw: Gateway, rid_model: str, modality: str) -> list[dict[str, Any]]:
    """Final usage rows of `modality` for `rid_model`, waiting for the writer's flush."""
    sql = ("SELECT provider, model_requested, status, input_tokens, images, audio_seconds, cost_micro_usd, final, attempt "
           f"FROM usage WHERE modality = '{modality}' AND model_requested = '{rid_model}' ORDER BY ts, attempt")
    deadline = time.monotonic() + 10
    while True:
        r = httpx.post(f"{gw.base_url}/api/usage/query", json={"sql": sql}, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        rows = [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


# ---------------------------------------------------------------- embeddings


@pytest.mark.parametrize("model", ["openai/text-embedding-3-small", "gemini/gemini-embedding-2", "ollama/nomic-embed-text"])
def test_embeddings_float_and_base64_agree(gw: Gateway, model: str) -> None:
    c = client(gw)
    texts = [f"alpha {uuid.uuid4().hex}", "beta"]
    floats = c.embeddings.create(model=model, input=texts, encoding_format="float", dimensions=16)
    packed = c.embeddings.create(model=model, input=texts, dimensions=16)  # the SDK asks base64 by default
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 16
    for f, b in zip(floats.data, packed.data, strict=True):
        assert b.embedding == pytest.approx(f.embedding, abs=1e-6)
    assert floats.usage.prompt_tokens > 0 and floats.model == model


def test_embeddings_base64_on_the_wire(gw: Gateway) -> None:
    r = httpx.post(f"{gw.base_url}/v1/embeddings", json={"model": "openai/text-embedding-3-small", "input": "hi", "encoding_format": "base64"})
    assert r.status_code == 200 and r.headers["x-omniroute-provider"] == "openai"
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert len(raw) == 4 * 1536


def test_embedding_combo_falls_back_and_records_usage(gw: Gateway, fake: FakeUpstream) -> None:
    fake.script(503, route="openai.embeddings")
    r = client(gw).embeddings.with_raw_response.create(model="embed-any", input="fall back please", encoding_format="float")
    assert r.headers["x-omniroute-model"] == "gemini/gemini-embedding-2"
    assert r.headers["x-omniroute-fallbacks"] == "1"
    assert len(r.parse().data[0].embedding) == 3072
    rows = usage_rows(gw, "embed-any", "embedding")
    assert [(x["provider"], x["status"], x["final"]) for x in rows[-2:]] == [("openai", 503, False), ("gemini", 200, True)]
    assert rows[-1]["input_tokens"] > 0 and rows[-1]["cost_micro_usd"] is not None


def test_chat_model_on_embeddings_is_400_naming_the_type(gw: Gateway, fake: FakeUpstream) -> None:
    before = count(fake, "openai.chat") + count(fake, "openai.embeddings")
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).embeddings.create(model="openai/gpt-4.1", input="x")
    assert "is a chat model" in str(e.value) and "embedding model" in str(e.value)
    assert count(fake, "openai.chat") + count(fake, "openai.embeddings") == before


def test_combo_keeps_only_targets_of_the_right_type(gw: Gateway) -> None:
    r = client(gw).embeddings.with_raw_response.create(model="mixed", input="x", encoding_format="float")
    assert r.headers["x-omniroute-model"] == "ollama/nomic-embed-text"


def test_pinned_provider_routes(gw: Gateway) -> None:
    r = httpx.post(f"{gw.base_url}/v1/providers/ollama/embeddings", json={"model": "nomic-embed-text", "input": ["a"]})
    assert r.status_code == 200 and r.headers["x-omniroute-model"] == "ollama/nomic-embed-text"
    r = httpx.post(f"{gw.base_url}/v1/providers/ollama/embeddings", json={"model": "openai/text-embedding-3-small", "input": "a"})
    assert r.status_code == 400 and "belongs to provider 'openai'" in r.json()["error"]["message"]
    r = httpx.post(f"{gw.base_url}/v1/providers/openai/images/generations", json={"model": "dall-e-3", "prompt": "p"})
    assert r.status_code == 200 and r.headers["x-omniroute-model"] == "openai/dall-e-3"


def test_bad_embedding_request_is_400_in_openai_shape(gw: Gateway) -> None:
    r = httpx.post(f"{gw.base_url}/v1/embeddings", json={"model": "openai/text-embedding-3-small", "input": 5})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and "input" in r.json()["error"]["message"]


def test_model_lists(gw: Gateway) -> None:
    emb = httpx.get(f"{gw.base_url}/v1/embeddings").json()["data"]
    ids = {m["id"] for m in emb}
    assert {"openai/text-embedding-3-small", "gemini/gemini-embedding-2", "ollama/nomic-embed-text", "embed-any"} <= ids
    assert "openai/gpt-4.1" not in ids and "mixed" not in ids
    img = {m["id"] for m in httpx.get(f"{gw.base_url}/v1/images/generations").json()["data"]}
    assert "openai/gpt-image-1" in img and "openai/text-embedding-3-small" not in img
    every = {m["id"]: m["type"] for m in client(gw).models.list().model_dump()["data"]}
    assert every["openai/text-embedding-3-small"] == "embedding" and every["openai/gpt-image-1"] == "image"
    assert every["deepgram/nova-3"] == "audio"


# ---------------------------------------------------------------- images


def test_images_url_and_b64_json(gw: Gateway) -> None:
    c = client(gw)
    data = c.images.generate(model="openai/dall-e-3", prompt="a red square", n=2, size="1024x1024", response_format="url").data or []
    assert len(data) == 2 and (data[0].url or "").startswith("http")
    assert data[0].revised_prompt == "a red square"
    data = c.images.generate(model="openai/dall-e-3", prompt="a red square", response_format="b64_json").data or []
    assert base64.b64decode(data[0].b64_json or "").startswith(b"\x89PNG")
    # gpt-image models only answer base64; a client that asked for url gets a data URL
    data = c.images.generate(model="openai/gpt-image-1", prompt="a red square", response_format="url").data or []
    assert (data[0].url or "").startswith("data:image/png;base64,")
    rows = usage_rows(gw, "openai/dall-e-3", "image")
    assert rows[0]["images"] == 2 and rows[0]["status"] == 200


# ---------------------------------------------------------------- transcription


@pytest.mark.parametrize(
    ("model", "route"),
    [("openai/whisper-1", "openai.transcriptions"), ("groq/whisper-large-v3", "openai.transcriptions"),
     ("deepgram/nova-3", "deepgram.listen"), ("assemblyai/best", "assemblyai.poll")],
)
def test_transcription(gw: Gateway, fake: FakeUpstream, model: str, route: str) -> None:
    audio = wav_bytes(1.5)
    before = count(fake, route)
    out = client(gw).audio.transcriptions.create(model=model, file=("hello.wav", audio, "audio/wav"))
    assert out.text == "fake transcript of 1.50 seconds of audio"
    extra = out.model_dump()
    assert extra["task"] == "transcribe" and extra["duration"] == pytest.approx(1.5) and extra["language"]
    assert count(fake, route) > before
    rows = usage_rows(gw, model, "audio")
    assert rows[-1]["audio_seconds"] == pytest.approx(1.5) and rows[-1]["status"] == 200
    assert rows[-1]["cost_micro_usd"] == {"openai/whisper-1": 150, "groq/whisper-large-v3": 46, "deepgram/nova-3": 108,
                                          "assemblyai/best": 87}[model]  # seconds x per_audio_second of the spec


def test_transcription_upstream_requests_look_right(gw: Gateway, fake: FakeUpstream) -> None:
    client(gw).audio.transcriptions.create(model="deepgram/nova-3", file=("a.wav", wav_bytes(0.5)), language="de")
    sent = [r for r in fake.stats()["requests"] if r["route"] == "deepgram.listen"][-1]
    assert sent["headers"]["authorization"] == "***" and sent["headers"]["content-type"] == "audio/wav"
    assert "model=nova-3" in sent["query"] and "language=de" in sent["query"] and "detect_language" not in sent["query"]
    client(gw).audio.transcriptions.create(model="assemblyai/best", file=("a.wav", wav_bytes(0.5)))
    create = [r for r in fake.stats()["requests"] if r["route"] == "assemblyai.transcript"][-1]["body"]
    assert create["speech_models"] == ["universal-3-pro"] and create["language_detection"] is True
    assert create["audio_url"].startswith("https://cdn.assemblyai.com/upload/")


def test_transcription_text_format(gw: Gateway) -> None:
    text = client(gw).audio.transcriptions.create(model="openai/whisper-1", file=("a.wav", wav_bytes(1.0)), response_format="text")
    assert text.strip() == "fake transcript of 1.00 seconds of audio"


def _no_audio_calls(fake: FakeUpstream) -> int:
    return sum(count(fake, r) for r in ("openai.transcriptions", "deepgram.listen", "assemblyai.upload"))


def test_wrong_type_upload_is_400_without_upstream_call(gw: Gateway, fake: FakeUpstream) -> None:
    before = _no_audio_calls(fake)
    for name, data, why in [("notes.txt", b"hello there", "no audio file extension"),
                            ("fake.wav", b"this is not audio at all", "content is not audio")]:
        with pytest.raises(openai.BadRequestError) as e:
            client(gw).audio.transcriptions.create(model="deepgram/nova-3", file=(name, data))
        assert why in str(e.value) and name in str(e.value)
    r = httpx.post(f"{gw.base_url}/v1/audio/transcriptions", json={"model": "openai/whisper-1"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).audio.transcriptions.create(model="openai/text-embedding-3-small", file=("a.wav", wav_bytes(0.2)))
    assert "is an embedding model" in str(e.value) and "needs an audio model" in str(e.value)
    assert _no_audio_calls(fake) == before


def test_oversize_upload_is_413_without_upstream_call(gw: Gateway, fake: FakeUpstream) -> None:
    before = _no_audio_calls(fake)
    big = wav_bytes(0.1) + b"\0" * (25 * 2**20)
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).audio.transcriptions.create(model="openai/whisper-1", file=("big.wav", big))
    assert e.value.status_code == 413 and "larger than the limit" in str(e.value)
    assert _no_audio_calls(fake) == before
