"""The modality format specs' answers (response.decode, which the spec test runner reads as chat),
and which format each upstream speaks for a modality."""

from __future__ import annotations

from typing import Any

import pytest

from engine.compile import build
from engine.errors import UpstreamError
from engine.modality_run import steps_of, upstream_format
from engine.runtime import Runtime

CONFIG = """
providers:
  openai: {api_key: k}
  gemini: {api_key: k}
  ollama: {}
  groq: {api_key: k}
  deepgram: {api_key: k}
  assemblyai: {api_key: k}
  anthropic: {api_key: k}
  together: {api_key: k}
  fireworks: {api_key: k}
  xai: {api_key: k}
"""


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    return build(None, text=CONFIG + f"data_dir: {tmp_path_factory.mktemp('d')}\n", env={})


def decode(rt: Runtime, fid: str, src: Any, req: dict[str, Any] | None = None, vars_: Any = None) -> Any:
    node = rt.formats[fid].resp_decode
    assert node is not None
    return node({"src": src, "req": req or {}, "meta": {"model": "m"}, "vars": vars_ or {}})


@pytest.mark.parametrize(
    ("conn", "modality", "fid"),
    [("openai", "embeddings", "openai-embeddings"), ("openai", "images", "openai-images"),
     ("openai", "transcriptions", "openai-transcriptions"), ("groq", "transcriptions", "openai-transcriptions"),
     ("gemini", "embeddings", "gemini-embeddings"), ("ollama", "embeddings", "ollama-embeddings"),
     ("deepgram", "transcriptions", "deepgram"), ("assemblyai", "transcriptions", "assemblyai"),
     ("xai", "images", "openai-images"), ("together", "images", "together-images"),
     ("fireworks", "images", "fireworks-images"), ("together", "embeddings", "openai-embeddings")],
)
def test_the_format_each_upstream_speaks(rt: Runtime, conn: str, modality: str, fid: str) -> None:
    assert upstream_format(rt, rt.connections[conn], modality).id == fid


def test_a_provider_format_without_a_default_says_how_to_fix_it(rt: Runtime) -> None:
    with pytest.raises(UpstreamError) as e:
        upstream_format(rt, rt.connections["anthropic"], "embeddings")
    assert "endpoints.embeddings.format" in e.value.message and e.value.retryable


def test_steps_of_caches_per_format(rt: Runtime) -> None:
    fmt = rt.formats["assemblyai"]
    assert steps_of(fmt) is steps_of(fmt)
    assert [s.name for s in steps_of(fmt)] == ["upload", "create", "poll"]
    assert steps_of(rt.formats["openai-embeddings"])[0].name == "request"


def test_openai_embeddings_decode_in_index_order(rt: Runtime) -> None:
    src = {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}], "usage": {"prompt_tokens": 4}}
    assert decode(rt, "openai-embeddings", src) == {"data": [[1.0], [2.0]], "usage": {"input_tokens": 4}}


def test_gemini_embeddings_batch_and_single_with_estimated_tokens(rt: Runtime) -> None:
    req = {"input": ["abcdefgh", "ab"]}
    batch = decode(rt, "gemini-embeddings", {"embeddings": [{"values": [0.1]}, {"values": [0.2]}]}, req)
    assert batch == {"data": [[0.1], [0.2]], "usage": {"input_tokens": 3}}
    single = decode(rt, "gemini-embeddings", {"embedding": {"values": [0.3]}}, {"input": ["abcd"]})
    assert single == {"data": [[0.3]], "usage": {"input_tokens": 1}}


def test_ollama_embeddings(rt: Runtime) -> None:
    out = decode(rt, "ollama-embeddings", {"model": "x", "embeddings": [[0.5, 0.5]], "prompt_eval_count": 7})
    assert out == {"data": [[0.5, 0.5]], "usage": {"input_tokens": 7}}


def test_openai_images(rt: Runtime) -> None:
    out = decode(rt, "openai-images", {"created": 5, "data": [{"url": "http://x/1.png", "revised_prompt": "p"}], "usage": {}})
    assert out == {"created": 5, "data": [{"url": "http://x/1.png", "revised_prompt": "p"}]}


def test_openai_transcriptions_verbose_and_plain_json(rt: Runtime) -> None:
    verbose = {"task": "transcribe", "language": "english", "duration": 2.5, "text": "hi", "segments": []}
    assert decode(rt, "openai-transcriptions", verbose) == {"text": "hi", "language": "english", "duration": 2.5}
    plain = {"text": "hi", "usage": {"type": "duration", "seconds": 3}}
    assert decode(rt, "openai-transcriptions", plain, {"language": "en"}) == {"text": "hi", "language": "en", "duration": 3}
    assert decode(rt, "openai-transcriptions", {"text": "hi"}, {"duration": 1.25}) == {"text": "hi", "duration": 1.25}


def test_deepgram_answer(rt: Runtime) -> None:
    src = {"metadata": {"duration": 3.2, "channels": 1},
           "results": {"channels": [{"detected_language": "en", "alternatives": [{"transcript": "hello world", "confidence": 0.9}]}]}}
    assert decode(rt, "deepgram", src) == {"text": "hello world", "language": "en", "duration": 3.2}
    silent = {"metadata": {"duration": 1.0}, "results": {"channels": [{"alternatives": [{"transcript": ""}]}]}}
    assert decode(rt, "deepgram", silent, {"language": "de"}) == {"text": "", "language": "de", "duration": 1.0}


def test_assemblyai_answer(rt: Runtime) -> None:
    src = {"id": "t", "status": "completed", "text": "hello", "audio_duration": 4.0, "language_code": "en_us"}
    assert decode(rt, "assemblyai", src) == {"text": "hello", "language": "en_us", "duration": 4.0}


@pytest.mark.parametrize(("fid", "body", "message"), [
    ("deepgram", b'{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"r"}', "Invalid credentials."),
    ("assemblyai", b'{"error":"Authentication error, API token missing/invalid"}', "Authentication error, API token missing/invalid"),
    ("gemini-embeddings", b'{"error":{"code":400,"message":"bad dims","status":"INVALID_ARGUMENT"}}', "bad dims"),
    ("ollama-embeddings", b'{"error":"model not found"}', "model not found"),
    ("together-images", b'{"error":{"message":"n must be at most 4","type":"invalid_request_error","param":"n","code":null}}',
     "n must be at most 4"),
    ("fireworks-images", b'{"error":{"object":"error","type":"invalid_request_error","message":"bad aspect_ratio"}}',
     "bad aspect_ratio"),
])
def test_upstream_error_messages(rt: Runtime, fid: str, body: bytes, message: str) -> None:
    assert rt.formats[fid].decode_error(400, body) == message


def test_fireworks_image_models_use_the_short_id_in_the_workflow_url(rt: Runtime) -> None:
    conn = rt.connections["fireworks"]
    model = conn.models["accounts/fireworks/models/flux-1-schnell-fp8"]
    assert model.type == "image" and model.upstream == "flux-1-schnell-fp8"
    assert conn.spec.endpoints["images"]["path"] == "/workflows/accounts/fireworks/models/{model}/text_to_image"
    assert steps_of(rt.formats["fireworks-images"])[0].repeat is not None
