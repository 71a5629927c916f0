"""X-OmniRoute-Progress: liveness events every SDK still parses."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import ollama
import openai
import orjson
import pytest
from google import genai
from google.genai import types

from tests.support import Gateway

SLOW = "[[words:6]] [[slow:150]]"
HDR = {"X-OmniRoute-Progress": "true"}


@pytest.fixture(scope="module")
def gw(gateway_factory: Any) -> Gateway:
    return gateway_factory({"settings": {"progress_interval_s": 0.2}})


def test_openai_chat_raw_stream_has_progress_comments_and_a_final_done(gw: Gateway) -> None:
    body = {"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": SLOW}], "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, headers=HDR, timeout=10) as r:
        assert r.headers["x-omniroute-progress"] == "enabled"
        raw = r.read().decode()
    marks = [orjson.loads(line[len(": progress "):]) for line in raw.splitlines() if line.startswith(": progress ")]
    assert len(marks) >= 3 and marks[-1]["done"] is True and not any(m["done"] for m in marks[:-1])
    assert marks[-1]["tokens_generated"] > 0 and marks[-1]["elapsed_ms"] >= 600
    assert raw.rstrip().endswith("data: [DONE]")


def test_no_header_no_progress(gw: Gateway) -> None:
    body = {"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": SLOW}], "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=10) as r:
        assert "x-omniroute-progress" not in r.headers
        assert "progress" not in r.read().decode()


def test_sdks_parse_progress_streams(gw: Gateway) -> None:
    words = [f"word{i}" for i in range(1, 7)]
    oa = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key="x", max_retries=0, default_headers=HDR)
    chunks = oa.chat.completions.create(model="anthropic/claude-sonnet-4-5", messages=[{"role": "user", "content": SLOW}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split() == words

    events = list(oa.responses.create(model="openai/gpt-4.1", input=SLOW, stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text.split() == words

    an = anthropic.Anthropic(base_url=gw.base_url, api_key="x", max_retries=0, default_headers=HDR)
    with an.messages.stream(model="openai/gpt-4.1", max_tokens=100, messages=[{"role": "user", "content": SLOW}]) as s:
        assert s.get_final_text().split() == words

    g = genai.Client(api_key="x", http_options=types.HttpOptions(base_url=gw.base_url, headers=HDR))
    text = "".join(c.text or "" for c in g.models.generate_content_stream(model="openai/gpt-4.1", contents=SLOW))
    assert text.split() == words

    ol = ollama.Client(host=gw.base_url, headers=HDR)
    parts = list(ol.chat(model="openai/gpt-4.1", messages=[{"role": "user", "content": SLOW}], stream=True))
    assert "".join(p.message.content or "" for p in parts).split() == words
    assert parts[-1].done is True


def test_anthropic_raw_stream_has_named_progress_events(gw: Gateway) -> None:
    body = {"model": "openai/gpt-4.1", "max_tokens": 50, "messages": [{"role": "user", "content": SLOW}], "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/v1/messages", json=body, headers=HDR, timeout=10) as r:
        raw = r.read().decode()
    assert "event: progress\n" in raw
    assert raw.index('"done":true') < raw.index("event: message_stop")
