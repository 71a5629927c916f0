"""Canonical file parts (documents, audio, video): the `files` features, what each chat format
declares it carries and what its encoder really sends, and the fake upstreams that accept the
documented file shapes and refuse the others, as the real APIs do."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engine.canonical import FEATURES, estimate_tokens, features_used, files_refused
from engine.compile import BUILTIN_SPECS
from engine.expr import compile_node
from engine.source import load_file
from engine.translate import Format, compile_format
from tools.fake_upstream import FakeUpstream

PDF = "JVBERi0xLjQKMSAwIG9iago8PD4+CmVuZG9iagp0cmFpbGVyCjw8Pj4KJSVFT0YK"
WAV = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA="
TEXT = "aMOpbGxv"  # "héllo"
CHAT_FORMATS = ("openai-chat", "anthropic-messages", "gemini", "ollama")


def _format(fid: str) -> Format:
    doc, problems = load_file(BUILTIN_SPECS / "formats" / f"{fid}.yaml")
    assert not problems
    fmt = compile_format(fid, doc.data, lambda p, m: pytest.fail(f"{p}: {m}"))
    assert fmt is not None
    return fmt


def _request(*parts: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "read"}, *parts]}],
    }


def _file(media_type: str, data: str | None = None, url: str | None = None) -> dict[str, Any]:
    part = {"type": "file", "media_type": media_type, "data": data, "url": url}
    return {k: v for k, v in part.items() if v is not None}


# ---------------------------------------------------------------- canonical


def test_features_of_file_parts() -> None:
    assert {"files", "file_urls", "file_ids"} <= set(FEATURES)
    used = features_used(
        _request(
            _file("application/pdf", PDF),
            _file("video/mp4", url="https://x/v.mp4"),
            {"type": "file", "file_id": "f1"},
        )
    )
    assert used == {"files", "file_urls", "file_ids", "files:application/pdf", "files:video/mp4"}
    assert features_used(_request(_file("audio/wav", WAV))) == {"files", "files:audio/wav"}
    assert "images" not in used  # a PDF is not an image


def test_files_refused_by_media_type() -> None:
    used = {"files", "files:application/pdf", "files:audio/wav", "files:video/mp4"}
    assert files_refused(used, None) == []
    assert sorted(files_refused(used, ("application/pdf", "audio/*"))) == ["files:video/mp4"]


def test_a_file_counts_towards_the_token_estimate() -> None:
    assert estimate_tokens(_request(_file("application/pdf", "A" * 4000))) > estimate_tokens(_request())


def test_base64_helper() -> None:
    assert compile_node("base64(s, 'encode')")({"s": "héllo"}) == TEXT
    assert compile_node("= base64(s, 'decode')")({"s": TEXT}) == "héllo"
    assert compile_node("base64(s, 'decode')")({"s": None}) is None


# ---------------------------------------------------------------- each format: declared == sent

SAMPLES = [
    _file("application/pdf", PDF),
    _file("application/pdf", url="https://example.com/a.pdf"),
    _file("text/plain", TEXT),
    _file("audio/wav", WAV),
    _file("audio/mpeg", "SUQzBA=="),
    _file("video/mp4", "AAAAIGZ0eXA="),
    _file("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "UEsDBA=="),
]


def _sent(fid: str, encoded: dict[str, Any]) -> bool:
    """Whether an encoded one-file request carries more than its text part."""
    if fid == "gemini":
        return len(encoded["contents"][0]["parts"]) > 1
    if fid == "ollama":
        return False
    content = encoded["messages"][-1]["content"]
    return isinstance(content, list) and len(content) > 1


@pytest.mark.parametrize("fid", CHAT_FORMATS)
@pytest.mark.parametrize("part", SAMPLES, ids=lambda p: f"{p['media_type']}{'-url' if 'url' in p else ''}")
def test_a_file_is_sent_or_reported_never_silently_dropped(fid: str, part: dict[str, Any]) -> None:
    fmt = _format(fid)
    req = _request(part)
    lossy = fmt.lossy(features_used(req))
    sent = _sent(fid, fmt.encode_request(req, {"model": "m", "stream": False}))
    assert sent != bool(lossy), (sent, lossy)
    if lossy:
        assert lossy[0] in ("files", "file_urls", f"files:{part['media_type']}"), lossy


@pytest.mark.parametrize("fid", CHAT_FORMATS)
def test_a_file_id_is_never_sent_and_always_reported(fid: str) -> None:
    fmt = _format(fid)
    req = _request({"type": "file", "file_id": "file-abc", "filename": "a.pdf"})
    assert not _sent(fid, fmt.encode_request(req, {"model": "m", "stream": False}))
    assert "file_ids" in fmt.lossy(features_used(req)) or "files" in fmt.lossy(features_used(req))


def test_declared_support() -> None:
    assert "files" not in _format("ollama").supports
    assert _format("gemini").file_types is None
    assert _format("anthropic-messages").file_types == ("application/pdf", "text/plain")
    assert "file_urls" not in _format("openai-chat").supports


# ---------------------------------------------------------------- fake upstreams


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with FakeUpstream() as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


def _anthropic(http: httpx.Client, *blocks: dict[str, Any]) -> httpx.Response:
    body = {
        "model": "claude-x",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "read this"}, *blocks]}],
    }
    return http.post(
        "/anthropic/v1/messages", json=body, headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}
    )


def _openai(http: httpx.Client, *parts: dict[str, Any]) -> httpx.Response:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "read this"}, *parts]}],
    }
    return http.post("/openai/v1/chat/completions", json=body, headers={"authorization": "Bearer sk"})


def _gemini(http: httpx.Client, *parts: dict[str, Any]) -> httpx.Response:
    body = {"contents": [{"role": "user", "parts": [{"text": "read this"}, *parts]}]}
    return http.post("/gemini/v1beta/models/gemini-2.5-flash:generateContent?key=k", json=body)


def test_anthropic_fake_accepts_documents(http: httpx.Client) -> None:
    r = _anthropic(
        http,
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
            "title": "a.pdf",
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "héllo"}},
        {
            "type": "document",
            "source": {"type": "url", "url": "https://example.com/a.pdf"},
            "citations": {"enabled": True},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "Hello! You said: read this"  # the echo reads text blocks only


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        (
            {"type": "image", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}},
            "image.source.base64.media_type",
        ),
        (
            {"type": "document", "source": {"type": "base64", "media_type": "audio/wav", "data": WAV}},
            "Input should be 'application/pdf'",
        ),
        (
            {"type": "document", "source": {"type": "text", "media_type": "text/markdown", "data": "x"}},
            "Input should be 'text/plain'",
        ),
        (
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf"}},
            "document.source.base64.data: Field required",
        ),
        (
            {"type": "document", "source": {"type": "audio", "data": WAV}},
            "does not match any of the expected tags",
        ),
        ({"type": "document"}, "document.source: Field required"),
    ],
)
def test_anthropic_fake_refuses_bad_documents(http: httpx.Client, block: dict[str, Any], needle: str) -> None:
    r = _anthropic(http, block)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_openai_fake_accepts_pdf_and_audio(http: httpx.Client) -> None:
    r = _openai(
        http,
        {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "a.pdf"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
        {"type": "input_audio", "input_audio": {"data": WAV, "format": "wav"}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello! You said: read this"


@pytest.mark.parametrize(
    ("part", "needle"),
    [
        ({"type": "file", "file": {"file_data": f"data:audio/wav;base64,{WAV}"}}, "Invalid file data"),
        ({"type": "file", "file": {"filename": "a.pdf"}}, "file.file_data' or"),
        (
            {"type": "input_audio", "input_audio": {"data": WAV, "format": "flac"}},
            "Supported values are: 'wav' and 'mp3'",
        ),
        ({"type": "input_audio", "input_audio": {"format": "wav"}}, "input_audio.data"),
    ],
)
def test_openai_fake_refuses_bad_file_parts(http: httpx.Client, part: dict[str, Any], needle: str) -> None:
    r = _openai(http, part)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_gemini_fake_accepts_media_of_any_kind(http: httpx.Client) -> None:
    r = _gemini(
        http,
        {"inlineData": {"mimeType": "application/pdf", "data": PDF}},
        {"inline_data": {"mime_type": "audio/wav", "data": WAV}},
        {
            "fileData": {
                "mimeType": "video/mp4",
                "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/x",
            }
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"] == "Hello! You said: read this"


@pytest.mark.parametrize(
    ("part", "needle"),
    [
        ({"inlineData": {"data": PDF}}, "mime_type is not specified"),
        ({"inlineData": {"mimeType": "application/pdf", "data": "not base64!"}}, "Base64 decoding failed"),
        ({"fileData": {"mimeType": "application/pdf"}}, "file_uri is not specified"),
    ],
)
def test_gemini_fake_refuses_bad_media(http: httpx.Client, part: dict[str, Any], needle: str) -> None:
    r = _gemini(http, part)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
