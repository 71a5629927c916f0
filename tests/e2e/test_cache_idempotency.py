"""Response cache and idempotency through the real server, counted at the fake upstream."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
import uuid
from typing import Any

import anthropic
import httpx
import ollama
import openai
import orjson
import pytest
from google import genai
from google.genai import types as gt

from tests.support import Gateway
from tools.fake_upstream.launch import FakeUpstream

KEYS = [{"name": "alice", "key": "sk-alice-123456"}, {"name": "bob", "key": "sk-bob-1234567"}]


def upstream_calls(fake: FakeUpstream, marker: str) -> int:
    return sum(1 for r in fake.stats()["requests"] if marker in str(r.get("body")))


def stored_formats(gw: Gateway, marker: str) -> list[str | None]:
    """For each persisted entry whose answer mentions `marker`: the wire format it was stored in
    (None for a canonical entry). The writer thread commits within LINGER_S; poll a little longer."""
    deadline = time.monotonic() + 5
    while True:
        conn = sqlite3.connect(gw.workdir / "data" / "cache.sqlite3")
        try:
            rows = [orjson.loads(b).get("wire") for (b,) in conn.execute("SELECT body FROM entries") if marker.encode() in bytes(b)]
        finally:
            conn.close()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.fixture(scope="module")
def gw(gateway_factory: Any) -> Gateway:
    return gateway_factory({"keys": KEYS, "cache": {"ttl_s": 2}})


def oa(gw: Gateway, key: str = "sk-alice-123456") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)


def test_cross_format_hit_and_key_isolation(gw: Gateway, fake: FakeUpstream) -> None:
    q = f"what is {uuid.uuid4().hex}?"
    first = oa(gw).chat.completions.with_raw_response.create(model="openai/gpt-4.1", max_tokens=4096, messages=[{"role": "user", "content": q}])
    assert first.headers["x-omniroute-cache"] == "MISS"
    # the same-format fast path stored the answer as it came, decoded only now, for the hit
    assert stored_formats(gw, q) == ["openai-chat"]
    # the same question through the Anthropic route, same key: one cache entry
    an = anthropic.Anthropic(base_url=gw.base_url, api_key="sk-alice-123456", max_retries=0)
    r = an.messages.with_raw_response.create(model="openai/gpt-4.1", max_tokens=4096, messages=[{"role": "user", "content": q}])
    assert r.headers["x-omniroute-cache"] == "HIT" and r.headers["x-omniroute-model"] == "openai/gpt-4.1"
    assert r.parse().content[0].text == first.parse().choices[0].message.content
    # the Ollama route, streaming: a replayed stream the SDK parses
    parts = list(ollama.Client(host=gw.base_url, headers={"authorization": "Bearer sk-alice-123456"}).chat(
        model="openai/gpt-4.1", messages=[{"role": "user", "content": q}], options={"num_predict": 4096}, stream=True))
    assert "".join(p.message.content for p in parts) == first.parse().choices[0].message.content
    assert upstream_calls(fake, q) == 1
    # another key never sees alice's answer
    other = oa(gw, "sk-bob-1234567").chat.completions.with_raw_response.create(model="openai/gpt-4.1", max_tokens=4096, messages=[{"role": "user", "content": q}])
    assert other.headers["x-omniroute-cache"] == "MISS" and upstream_calls(fake, q) == 2


def test_anthropic_fast_path_answer_serves_an_openai_client(gw: Gateway, fake: FakeUpstream) -> None:
    """Anthropic client to an Anthropic upstream: stored as the upstream sent it, then decoded for a
    hit through the OpenAI route."""
    q = f"capital {uuid.uuid4().hex}?"
    an = anthropic.Anthropic(base_url=gw.base_url, api_key="sk-alice-123456", max_retries=0)
    first = an.messages.with_raw_response.create(model="anthropic/claude-sonnet-4-5", max_tokens=512, messages=[{"role": "user", "content": q}])
    assert first.headers["x-omniroute-cache"] == "MISS"
    assert stored_formats(gw, q) == ["anthropic-messages"]
    r = oa(gw).chat.completions.with_raw_response.create(model="anthropic/claude-sonnet-4-5", max_tokens=512, messages=[{"role": "user", "content": q}])
    assert r.headers["x-omniroute-cache"] == "HIT"
    assert r.parse().choices[0].message.content == first.parse().content[0].text
    assert upstream_calls(fake, q) == 1


def test_gemini_fast_path_answer_serves_an_openai_client(gw: Gateway, fake: FakeUpstream) -> None:
    q = f"river {uuid.uuid4().hex}?"
    client = genai.Client(api_key="sk-alice-123456", http_options=gt.HttpOptions(base_url=gw.base_url, api_version="v1beta"))
    first = client.models.generate_content(model="gemini/gemini-2.5-flash", contents=q)
    assert stored_formats(gw, q) == ["gemini"]
    r = oa(gw).chat.completions.with_raw_response.create(model="gemini/gemini-2.5-flash", messages=[{"role": "user", "content": q}])
    assert r.headers["x-omniroute-cache"] == "HIT"
    assert r.parse().choices[0].message.content == first.text
    assert upstream_calls(fake, q) == 1


def test_stream_hit_replays_a_stream(gw: Gateway, fake: FakeUpstream) -> None:
    q = f"[[words:5]] {uuid.uuid4().hex}"
    a = "".join(c.choices[0].delta.content or "" for c in oa(gw).chat.completions.create(
        model="openai/gpt-4.1", messages=[{"role": "user", "content": q}], stream=True) if c.choices)
    time.sleep(0.1)
    with oa(gw).chat.completions.with_streaming_response.create(model="openai/gpt-4.1", messages=[{"role": "user", "content": q}], stream=True) as r:
        assert r.headers["x-omniroute-cache"] == "HIT"
        b = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
    assert a == b and upstream_calls(fake, q) == 1


def test_not_cached_errors_hot_requests_and_bypass(gw: Gateway, fake: FakeUpstream) -> None:
    q = f"[[error:500]] {uuid.uuid4().hex}"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            oa(gw).chat.completions.create(model="openai/gpt-4.1-mini", messages=[{"role": "user", "content": q}])
    assert upstream_calls(fake, q) == 2
    hot = f"hot {uuid.uuid4().hex}"
    for _ in range(2):
        r = oa(gw).chat.completions.with_raw_response.create(model="openai/gpt-4.1", temperature=0.9, messages=[{"role": "user", "content": hot}])
        assert "x-omniroute-cache" not in r.headers
    assert upstream_calls(fake, hot) == 2
    q2 = f"bypass {uuid.uuid4().hex}"
    oa(gw).chat.completions.create(model="openai/gpt-4.1", messages=[{"role": "user", "content": q2}])
    time.sleep(0.1)
    r = oa(gw).chat.completions.with_raw_response.create(model="openai/gpt-4.1", messages=[{"role": "user", "content": q2}], extra_headers={"X-OmniRoute-No-Cache": "true"})
    assert "x-omniroute-cache" not in r.headers and upstream_calls(fake, q2) == 2


def test_ttl_expiry_and_restart_keeps_persistent_tier(gateway_factory: Any, fake: FakeUpstream) -> None:
    gw = gateway_factory({"cache": {"ttl_s": 1}})
    q = f"ttl {uuid.uuid4().hex}"
    body = {"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": q}]}
    assert httpx.post(f"{gw.base_url}/v1/chat/completions", json=body).headers["x-omniroute-cache"] == "MISS"
    time.sleep(1.3)
    assert httpx.post(f"{gw.base_url}/v1/chat/completions", json=body).headers["x-omniroute-cache"] == "MISS"
    assert upstream_calls(fake, q) == 2
    # restart on the same data dir: the persistent tier answers
    cfg = gw.config_path.read_text().replace("ttl_s: 1", "ttl_s: 3600")
    gw.write_config(cfg)
    time.sleep(0.5)
    q2 = f"persist {uuid.uuid4().hex}"
    body2 = {"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": q2}]}
    httpx.post(f"{gw.base_url}/v1/chat/completions", json=body2)
    time.sleep(0.2)
    gw.stop()
    gw.start()
    assert httpx.post(f"{gw.base_url}/v1/chat/completions", json=body2).headers["x-omniroute-cache"] == "HIT"
    stats = httpx.get(f"{gw.base_url}/api/cache").json()
    assert stats["semanticCache"]["dbSize"] >= 1 and set(stats["idempotency"]) == {"activeKeys", "windowMs"}
    assert httpx.delete(f"{gw.base_url}/api/cache").json()["cleared"] >= 1


def test_idempotent_duplicates_call_upstream_once(gw: Gateway, fake: FakeUpstream) -> None:
    q = f"[[slow:300]] [[words:3]] {uuid.uuid4().hex}"
    body = {"model": "openai/gpt-4.1", "temperature": 1.0, "messages": [{"role": "user", "content": q}]}
    headers = {"authorization": "Bearer sk-alice-123456", "idempotency-key": uuid.uuid4().hex}

    def post() -> httpx.Response:
        return httpx.post(f"{gw.base_url}/v1/chat/completions", json=body, headers=headers, timeout=10)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(), range(4)))
    assert {r.status_code for r in answers} == {200}
    assert len({r.content for r in answers}) == 1
    assert sum(r.headers.get("x-omniroute-idempotent") == "true" for r in answers) == 3
    later = post()
    assert later.headers.get("x-omniroute-idempotent") == "true" and later.content == answers[0].content
    assert upstream_calls(fake, q) == 1
    conflict = httpx.post(f"{gw.base_url}/v1/chat/completions", json={**body, "max_tokens": 5}, headers=headers)
    assert conflict.status_code == 409 and "different" in conflict.json()["error"]["message"]


def test_semantic_tier_answers_a_rephrased_question(gateway_factory: Any, fake: FakeUpstream) -> None:
    gw = gateway_factory({"keys": KEYS, "cache": {"semantic": {"enabled": True, "model": "openai/text-embedding-3-small", "threshold": 0.9}}})
    tag = uuid.uuid4().hex
    first = oa(gw).chat.completions.with_raw_response.create(
        model="openai/gpt-4.1", messages=[{"role": "user", "content": f"What is the capital of France? {tag}"}])
    assert first.headers["x-omniroute-cache"] == "MISS"
    time.sleep(0.1)
    # the same words, other case and punctuation: another exact key, the same meaning
    again = oa(gw).chat.completions.with_raw_response.create(
        model="openai/gpt-4.1", messages=[{"role": "user", "content": f"what is the capital of france {tag}"}])
    assert again.headers["x-omniroute-cache"] == "HIT; semantic"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    chats = [r for r in fake.stats()["requests"] if r["route"] == "openai.chat" and tag in str(r.get("body"))]
    assert len(chats) == 1  # the rephrased question never reached upstream
    # a different question is not similar enough; another key never sees alice's answers
    other = oa(gw).chat.completions.with_raw_response.create(
        model="openai/gpt-4.1", messages=[{"role": "user", "content": f"How tall is Mont Blanc? {tag}"}])
    assert other.headers["x-omniroute-cache"] == "MISS"
    bob = oa(gw, "sk-bob-1234567").chat.completions.with_raw_response.create(
        model="openai/gpt-4.1", messages=[{"role": "user", "content": f"what is the capital of France {tag}"}])
    assert bob.headers["x-omniroute-cache"] == "MISS"
    # the embedding went through the gateway's own embeddings route, to the fake upstream
    assert any(r["route"] == "openai.embeddings" and tag in str(r.get("body")) for r in fake.stats()["requests"])
