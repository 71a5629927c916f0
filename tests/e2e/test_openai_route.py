"""The OpenAI chat route end to end: real granian server, official openai SDK, fake upstream."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from tests.support import Gateway
from tools.fake_upstream.launch import FakeUpstream


def client(gw: Gateway, key: str = "anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)


def received(fake: FakeUpstream, marker: str) -> list[dict]:
    return [r for r in fake.stats()["requests"] if marker in str(r.get("body"))]


def test_chat_non_stream(gateway: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    r = client(gateway).chat.completions.with_raw_response.create(
        model="openai/gpt-4.1", messages=[{"role": "user", "content": f"hello {marker}"}], max_tokens=50
    )
    out = r.parse()
    assert marker in out.choices[0].message.content
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    assert r.headers["x-omniroute-model"] == "openai/gpt-4.1"
    assert r.headers["x-omniroute-provider"] == "openai"
    assert "upstream;dur=" in r.headers["server-timing"]
    sent = received(fake, marker)
    assert len(sent) == 1 and sent[0]["body"]["model"] == "gpt-4.1"  # prefix removed upstream
    assert sent[0]["headers"]["authorization"] == "***"  # a key was sent (the fake redacts it)


def test_chat_stream_chunks_arrive_and_reassemble(gateway: Gateway) -> None:
    stream = client(gateway).chat.completions.create(
        model="openai/gpt-4.1", messages=[{"role": "user", "content": "[[words:12]]"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == [f"word{i}" for i in range(1, 13)]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 12  # not buffered into one
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_stream_without_include_usage_has_no_usage_chunk(gateway: Gateway) -> None:
    chunks = list(client(gateway).chat.completions.create(model="openai/gpt-4.1", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_is_not_buffered(gateway: Gateway) -> None:
    """With 300 ms between upstream chunks, the first chunk reaches the client long before the last."""
    import time

    t0 = time.perf_counter()
    arrivals = []
    for c in client(gateway).chat.completions.create(
        model="openai/gpt-4.1", messages=[{"role": "user", "content": "[[words:4]] [[slow:300]]"}], stream=True
    ):
        if c.choices and c.choices[0].delta.content:
            arrivals.append(time.perf_counter() - t0)
    assert len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] > 0.6  # spread over time, as upstream sent them


def test_tool_call_round_trip(gateway: Gateway) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    c = client(gateway)
    out = c.chat.completions.create(model="openai/gpt-4.1", messages=[{"role": "user", "content": "[[tool]]"}], tools=tools)
    call = out.choices[0].message.tool_calls[0]
    assert out.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    follow = c.chat.completions.create(
        model="openai/gpt-4.1",
        messages=[
            {"role": "user", "content": "[[tool]]"},
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=tools,
    )
    assert "sunny" in follow.choices[0].message.content


def test_alias_and_bare_model(gateway: Gateway, fake: FakeUpstream) -> None:
    r = client(gateway).chat.completions.with_raw_response.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    assert r.headers["x-omniroute-model"] == "openai/gpt-4.1-mini"
    r = client(gateway).chat.completions.with_raw_response.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert r.headers["x-omniroute-model"] == "anthropic/claude-sonnet-4-5"


def test_combo_falls_back_on_503(gateway: Gateway) -> None:
    r = client(gateway).chat.completions.with_raw_response.create(model="duo", messages=[{"role": "user", "content": "hi"}])
    assert r.headers["x-omniroute-model"] == "openai/gpt-4.1"
    assert r.headers["x-omniroute-attempts"] == "2"


def test_unknown_and_ambiguous_models_are_400_naming_candidates(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway).chat.completions.create(model="nosuch/model", messages=[{"role": "user", "content": "hi"}])
    assert "no provider 'nosuch'" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway).chat.completions.create(model="gpt-4.1-nanoo", messages=[{"role": "user", "content": "hi"}])
    assert "unknown model" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client(gateway).chat.completions.create(model="openai/../etc", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "'model'"),
        (b'{"model": "openai/gpt-4.1", "messages": "hi"}', "messages"),
        (b'{"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
        (b'{"model": "openai/gpt-4.1", "messages": []}', "messages"),
    ],
)
def test_malformed_requests_are_400_and_never_reach_upstream(gateway: Gateway, fake: FakeUpstream, body: bytes, needle: str) -> None:
    before = fake.stats()["total"]
    r = httpx.post(f"{gateway.base_url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"
    assert fake.stats()["total"] == before


def test_upstream_errors_keep_status_and_openai_shape(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory()  # its own: a 429 rightly cools the account down for the others
    with pytest.raises(openai.InternalServerError) as e2:
        client(gw).chat.completions.create(model="openai/gpt-4.1", messages=[{"role": "user", "content": "[[error:500]]"}])
    assert e2.value.status_code == 500
    with pytest.raises(openai.RateLimitError) as e:
        client(gw).chat.completions.create(model="openai/gpt-4.1", messages=[{"role": "user", "content": "[[error:429]]"}])
    assert e.value.status_code == 429 and e.value.response.headers.get("retry-after") == "1"
    # the account now cools down until the upstream's Retry-After: 503 naming why, with Retry-After
    with pytest.raises(openai.InternalServerError) as e3:
        client(gw).chat.completions.create(model="openai/gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    assert e3.value.status_code == 503 and "rate limited" in str(e3.value)
    assert e3.value.response.headers.get("retry-after")


def test_model_list_includes_models_aliases_and_combos(gateway: Gateway) -> None:
    ids = {m.id for m in client(gateway).models.list()}
    assert {"openai/gpt-4.1", "anthropic/claude-sonnet-4-5", "fast", "duo"} <= ids


def test_pinned_provider_route(gateway: Gateway) -> None:
    url = f"{gateway.base_url}/v1/providers/openai/chat/completions"
    ok = httpx.post(url, json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200 and ok.headers["x-omniroute-model"] == "openai/gpt-4.1"
    other = httpx.post(url, json={"model": "anthropic/claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]})
    assert other.status_code == 400 and "belongs to provider 'anthropic'" in other.json()["error"]["message"]


def test_api_keys(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory({"keys": [{"name": "team-a", "key": "sk-team-a-123456"}], "server": {"require_api_key": True}})
    ok = client(gw, "sk-team-a-123456").chat.completions.create(model="openai/gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        client(gw, "sk-wrong-key").chat.completions.create(model="openai/gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    r = httpx.post(f"{gw.base_url}/v1/chat/completions", json={"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    assert "sk-team-a-123456" not in gw.log()
