"""The fake upstream speaks each provider's wire format: proven by the official SDKs parsing it.

One real server per module (per xdist worker), started with `FakeUpstream`. Tests never reset
shared state; those that read stats or queue scripts use model names of their own.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes

from tools.fake_upstream import FakeUpstream
from tools.fake_upstream import behaviour as bh

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "detailed": {"type": "boolean"},
        "note": {"type": "string"},
    },
    "required": ["city", "unit", "days", "detailed"],
}
WEATHER_ARGS = {"city": "Paris", "unit": "celsius", "days": 7, "detailed": True}
OPENAI_TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}]
ANTHROPIC_TOOLS: Any = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}]
THINKING_WORDS = len(bh.THINKING_TEXT.split())


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def http(fake: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def oai(fake: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url("openai"), api_key="sk-test", max_retries=0)


@pytest.fixture(scope="module")
def claude(fake: FakeUpstream) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.sdk_url("anthropic"), api_key="sk-ant-test", max_retries=0)


def _gemini(fake: FakeUpstream, key: str = "AIza-test") -> genai.Client:
    options = gtypes.HttpOptions(base_url=fake.sdk_url("gemini"), api_version="v1beta")
    return genai.Client(api_key=key, http_options=options)


@pytest.fixture(scope="module")
def gem(fake: FakeUpstream) -> genai.Client:
    return _gemini(fake)


@pytest.fixture(scope="module")
def llama(fake: FakeUpstream) -> ollama.Client:
    return ollama.Client(host=fake.sdk_url("ollama"))


def _tokens(*texts: str) -> int:
    return max(1, sum(len(t) for t in texts) // 4)


# --- behaviour (pure) -----------------------------------------------------------------------


def test_directives_parse_and_strip() -> None:
    d, clean = bh.parse_directives(
        "Say [[words:3]] hi [[slow:20]] [[tool:get_x]] [[cut:2]] [[cached:9]] [[error:503]]"
    )
    assert (d.words, d.slow_ms, d.tool_name, d.tool_count, d.cut, d.cached, d.error) == (
        3,
        20,
        "get_x",
        1,
        2,
        9,
        503,
    )
    assert clean == "Say hi"


def test_arguments_follow_the_schema_and_fragments_rejoin() -> None:
    assert bh.args_for_schema(WEATHER_SCHEMA) == WEATHER_ARGS
    assert bh.value_for_schema({"type": ["null", "number"]}) == 42
    call = bh.ToolCall("f", WEATHER_ARGS, json.dumps(WEATHER_ARGS))
    assert len(call.fragments()) == 3
    assert "".join(call.fragments()) == call.args_json


def test_embeddings_are_deterministic_unit_vectors() -> None:
    a, b = bh.embedding("hello", 64), bh.embedding("hello", 64)
    assert a == b != bh.embedding("other", 64)
    assert abs(sum(x * x for x in a) - 1) < 1e-9


# --- OpenAI ---------------------------------------------------------------------------------


def test_openai_plain_answer_and_usage(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi there"}])
    choice = resp.choices[0]
    assert choice.message.content == "Hello! You said: hi there"
    assert choice.finish_reason == "stop"
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (_tokens("hi there"), 5)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 5


def test_openai_stream_reassembled_with_usage(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "count [[words:6]]"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "word1 word2 word3 word4 word5 word6"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    with oai.chat.completions.stream(
        model="gpt-4o", messages=[{"role": "user", "content": "yo [[words:4]]"}]
    ) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == "word1 word2 word3 word4"
    assert final.usage is None  # no include_usage, no usage chunk


def test_openai_tool_calls_plain_and_streamed(oai: openai.OpenAI) -> None:
    msgs: Any = [{"role": "user", "content": "weather? [[tool]]"}]
    resp = oai.chat.completions.create(model="gpt-4o", messages=msgs, tools=OPENAI_TOOLS)
    assert resp.choices[0].finish_reason == "tool_calls"
    call = resp.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.id.startswith("call_") and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == WEATHER_ARGS  # type: ignore[union-attr]

    msgs = [{"role": "user", "content": "two [[tools:2]]"}]
    with oai.chat.completions.stream(model="gpt-4o", messages=msgs, tools=OPENAI_TOOLS) as s:
        fragments = [e for e in s if e.type == "tool_calls.function.arguments.delta"]
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [WEATHER_ARGS, WEATHER_ARGS]
    assert len({c.id for c in calls}) == 2 and len(fragments) >= 6
    assert final.choices[0].finish_reason == "tool_calls"


def test_openai_tool_result_round_trip(oai: openai.OpenAI) -> None:
    msgs: Any = [
        {"role": "user", "content": "weather? [[tool]]"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21C"},
    ]
    resp = oai.chat.completions.create(model="gpt-4o", messages=msgs, tools=OPENAI_TOOLS)
    assert resp.choices[0].message.content == "Tool result: Sunny, 21C"


def test_openai_reasoning_cached_and_length(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "q [[think]] [[cached:7]] [[words:9]]"}],
        max_tokens=4,
    )
    msg = resp.choices[0].message
    assert msg.model_extra and msg.model_extra["reasoning_content"] == bh.THINKING_TEXT
    assert msg.content == "word1 word2 word3 word4" and resp.choices[0].finish_reason == "length"
    usage = resp.usage
    assert usage and usage.completion_tokens_details and usage.prompt_tokens_details
    assert usage.completion_tokens_details.reasoning_tokens == THINKING_WORDS
    assert usage.completion_tokens == 4 + THINKING_WORDS
    assert usage.prompt_tokens_details.cached_tokens == 7


@pytest.mark.parametrize(
    ("key", "model", "text", "exc", "status"),
    [
        ("bad-key", "gpt-4o", "hi", openai.AuthenticationError, 401),
        ("forbidden-key", "gpt-4o", "hi", openai.PermissionDeniedError, 403),
        ("quota-key", "gpt-4o", "hi", openai.RateLimitError, 429),
        ("sk", "fail-503", "hi", openai.InternalServerError, 503),
        ("sk", "gpt-4o", "hi [[error:429]]", openai.RateLimitError, 429),
        ("sk", "gpt-4o", "hi [[error:404]]", openai.NotFoundError, 404),
    ],
)
def test_openai_errors_raise_sdk_classes(
    oai: openai.OpenAI, key: str, model: str, text: str, exc: type[openai.APIStatusError], status: int
) -> None:
    client = oai.with_options(api_key=key)
    with pytest.raises(exc) as info:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict) and {"message", "type", "param", "code"} <= set(info.value.body)
    if status == 429:
        assert info.value.response.headers["retry-after"] == "1"
    if key.startswith("quota"):
        assert info.value.code == "insufficient_quota"


def test_openai_embeddings_images_models(oai: openai.OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it itself.
    one = oai.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert [len(d.embedding) for d in one.data] == [1536, 1536]
    floats = oai.embeddings.create(
        model="text-embedding-3-small", input="alpha", dimensions=8, encoding_format="float"
    )
    short = oai.embeddings.create(model="text-embedding-3-small", input="alpha", dimensions=8)
    assert len(floats.data[0].embedding) == 8
    assert all(
        abs(a - b) < 1e-6 for a, b in zip(floats.data[0].embedding, short.data[0].embedding, strict=True)
    )
    assert one.usage.prompt_tokens == 2

    img = oai.images.generate(model="dall-e-3", prompt="a cat", response_format="b64_json")
    assert img.data and base64.b64decode(img.data[0].b64_json or "").startswith(b"\x89PNG")
    url = oai.images.generate(model="dall-e-2", prompt="a cat", n=2)
    assert img.data and url.data and len(url.data) == 2
    assert httpx.get(url.data[0].url or "").content == bh.PNG
    assert "gpt-4o" in {m.id for m in oai.models.list()}


BAD_OPENAI = [
    ({"foo": 1}, "Unrecognized request argument supplied: foo"),
    ({"messages": []}, "[] is too short - 'messages'"),
    ({"stream_options": {"include_usage": True}}, "only allowed when 'stream' is enabled"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "Invalid value: 'robot'"),
    (
        {
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "user", "content": "y"},
            ]
        },
        "did not have response messages: c1",
    ),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ]
        },
        "expected a string, but got an object",
    ),
    ({"temperature": 3}, "Expected a value <= 2"),
]


@pytest.mark.parametrize(("patch", "needle"), BAD_OPENAI)
def test_openai_validation(http: httpx.Client, patch: dict[str, Any], needle: str) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **patch}
    resp = http.post("/openai/v1/chat/completions", json=body, headers={"authorization": "Bearer sk"})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"


def test_openai_missing_key(http: httpx.Client) -> None:
    resp = http.post("/openai/v1/chat/completions", json={"model": "m", "messages": []})
    assert resp.status_code == 401 and "didn't provide an API key" in resp.json()["error"]["message"]


# --- Anthropic ------------------------------------------------------------------------------


def test_anthropic_plain_answer_and_usage(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        system="be nice",
        messages=[{"role": "user", "content": "hi there"}],
    )
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello! You said: hi there"
    assert msg.stop_reason == "end_turn" and msg.id.startswith("msg_")
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (_tokens("be nice", "hi there"), 5)


def test_anthropic_stream_with_thinking_and_cache(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "hi [[think]] [[cached:11]] [[words:5]]"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "word1 word2 word3 word4 word5"
    thinking, answer = final.content
    assert thinking.type == "thinking" and thinking.thinking == bh.THINKING_TEXT and thinking.signature
    assert answer.type == "text" and answer.text == text
    assert final.usage.output_tokens == 5 + THINKING_WORDS
    assert final.usage.cache_read_input_tokens == 11
    assert final.stop_reason == "end_turn"


def test_anthropic_tool_use_plain_and_streamed(claude: anthropic.Anthropic) -> None:
    msgs: Any = [{"role": "user", "content": "weather? [[tool]]"}]
    msg = claude.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, tools=ANTHROPIC_TOOLS, messages=msgs
    )
    block = msg.content[0]
    assert msg.stop_reason == "tool_use" and block.type == "tool_use"
    assert block.id.startswith("toolu_") and block.name == "get_weather" and block.input == WEATHER_ARGS

    msgs = [{"role": "user", "content": "weather twice? [[tools:2]]"}]
    with claude.messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, tools=ANTHROPIC_TOOLS, messages=msgs
    ) as s:
        final = s.get_final_message()
    assert [b.input for b in final.content if b.type == "tool_use"] == [WEATHER_ARGS, WEATHER_ARGS]
    assert final.stop_reason == "tool_use"


def test_anthropic_tool_result_round_trip_and_count_tokens(claude: anthropic.Anthropic) -> None:
    msgs: Any = [
        {"role": "user", "content": "weather? [[tool]]"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"}]},
    ]
    msg = claude.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, tools=ANTHROPIC_TOOLS, messages=msgs
    )
    assert msg.content[0].type == "text" and msg.content[0].text == "Tool result: Sunny"
    count = claude.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x" * 40}]
    )
    assert count.input_tokens == 10
    assert {m.id for m in claude.models.list()} >= {"claude-sonnet-4-5-20250929"}


@pytest.mark.parametrize(
    ("key", "model", "exc", "status", "kind"),
    [
        ("bad-key", "claude-x", anthropic.AuthenticationError, 401, "authentication_error"),
        ("forbidden", "claude-x", anthropic.PermissionDeniedError, 403, "permission_error"),
        ("quota-1", "claude-x", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("good", "fail-529", anthropic.OverloadedError, 529, "overloaded_error"),
        ("good", "fail-500", anthropic.InternalServerError, 500, "api_error"),
    ],
)
def test_anthropic_errors_raise_sdk_classes(
    claude: anthropic.Anthropic,
    key: str,
    model: str,
    exc: type[anthropic.APIStatusError],
    status: int,
    kind: str,
) -> None:
    client = claude.with_options(api_key=key)
    with pytest.raises(exc) as info:
        client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == kind
    assert body["request_id"].startswith("req_")


def test_anthropic_stream_cut_is_an_error_event(claude: anthropic.Anthropic) -> None:
    seen: list[str] = []
    msgs: Any = [{"role": "user", "content": "[[words:9]] [[cut:3]]"}]
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        claude.messages.stream(model="claude-x", max_tokens=100, messages=msgs) as stream,
    ):
        seen.extend(stream.text_stream)
    assert seen == ["word1", " word2", " word3"]
    assert "overloaded_error" in str(info.value)


BAD_ANTHROPIC = [
    ({"n": 2}, "n: Extra inputs are not permitted"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
        "text content blocks must be non-empty",
    ),
    (
        {"messages": [{"role": "system", "content": "x"}]},
        "messages.0.role: Input should be 'user' or 'assistant'",
    ),
    ({"messages": [{"role": "user", "content": []}]}, "all messages must have non-empty content"),
    ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
    ({"thinking": {"type": "enabled", "budget_tokens": 500}}, "greater than or equal to 1024"),
    (
        {"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 4000}},
        "`max_tokens` must be greater",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {"role": "user", "content": "no result"},
            ]
        },
        "`tool_use` ids were found without `tool_result` blocks immediately after: t1",
    ),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": "{}"}],
                }
            ]
        },
        "tool_use.input: Input should be a valid dictionary",
    ),
]


@pytest.mark.parametrize(("patch", "needle"), BAD_ANTHROPIC)
def test_anthropic_validation(http: httpx.Client, patch: dict[str, Any], needle: str) -> None:
    body = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **patch}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    resp = http.post("/anthropic/v1/messages", json=body, headers=headers)
    assert resp.status_code == 400, resp.text
    data = resp.json()
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert needle in data["error"]["message"]


def test_anthropic_headers_checked(http: httpx.Client) -> None:
    body = {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    no_key = http.post("/anthropic/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    no_version = http.post("/anthropic/v1/messages", json=body, headers={"x-api-key": "k"})
    assert no_version.status_code == 400 and "anthropic-version" in no_version.json()["error"]["message"]


# --- Gemini ---------------------------------------------------------------------------------


def test_gemini_plain_answer_and_usage(gem: genai.Client) -> None:
    resp = gem.models.generate_content(
        model="gemini-2.5-flash",
        contents="hi there",
        config=gtypes.GenerateContentConfig(system_instruction="be nice", temperature=0.2),
    )
    assert resp.text == "Hello! You said: hi there"
    cand = resp.candidates[0]  # type: ignore[index]
    assert cand.finish_reason == gtypes.FinishReason.STOP
    usage = resp.usage_metadata
    assert usage and usage.prompt_token_count == _tokens("hi there", "be nice")
    assert usage.candidates_token_count == 5 and usage.total_token_count == usage.prompt_token_count + 5


def test_gemini_stream_has_cumulative_usage_on_every_chunk(gem: genai.Client) -> None:
    chunks = list(gem.models.generate_content_stream(model="gemini-2.5-flash", contents="go [[words:4]]"))
    assert "".join(c.text or "" for c in chunks) == "word1 word2 word3 word4"
    counts = [c.usage_metadata.candidates_token_count for c in chunks]  # type: ignore[union-attr]
    assert counts == [1, 2, 3, 4]
    assert chunks[-1].candidates[0].finish_reason == gtypes.FinishReason.STOP  # type: ignore[index]


def test_gemini_function_calls_plain_and_streamed(gem: genai.Client) -> None:
    decl = gtypes.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER_SCHEMA)
    config = gtypes.GenerateContentConfig(tools=[gtypes.Tool(function_declarations=[decl])])
    resp = gem.models.generate_content(
        model="gemini-2.5-flash", contents="weather [[tools:2]]", config=config
    )
    calls = resp.function_calls or []
    assert [(c.name, c.args, c.id) for c in calls] == [("get_weather", WEATHER_ARGS, None)] * 2
    streamed = list(
        gem.models.generate_content_stream(model="gemini-2.5-flash", contents="w [[tool]]", config=config)
    )
    assert [c.args for s in streamed for c in s.function_calls or []] == [WEATHER_ARGS]


def test_gemini_function_response_round_trip(gem: genai.Client) -> None:
    contents = [
        gtypes.Content(role="user", parts=[gtypes.Part(text="weather? [[tool]]")]),
        gtypes.Content(
            role="model", parts=[gtypes.Part.from_function_call(name="get_weather", args={"city": "Paris"})]
        ),
        gtypes.Content(
            role="user",
            parts=[gtypes.Part.from_function_response(name="get_weather", response={"result": "Rain"})],
        ),
    ]
    resp = gem.models.generate_content(model="gemini-2.5-flash", contents=contents)
    assert resp.text == "Tool result: Rain"


def test_gemini_thoughts_and_cache(gem: genai.Client) -> None:
    config = gtypes.GenerateContentConfig(thinking_config=gtypes.ThinkingConfig(include_thoughts=True))
    resp = gem.models.generate_content(
        model="gemini-2.5-flash", contents="hm [[think]] [[cached:6]]", config=config
    )
    thought = resp.candidates[0].content.parts[0]  # type: ignore[index,union-attr]
    assert thought.thought is True and thought.text == bh.THINKING_TEXT and thought.thought_signature
    assert resp.text == "Hello! You said: hm"
    usage = resp.usage_metadata
    assert usage and usage.thoughts_token_count == THINKING_WORDS and usage.cached_content_token_count == 6


def test_gemini_errors_and_side_endpoints(fake: FakeUpstream, gem: genai.Client) -> None:
    # Keep each client referenced: a collected genai.Client closes its HTTP client.
    bad, exhausted = _gemini(fake, "bad-key"), _gemini(fake, "quota-key")
    with pytest.raises(genai_errors.ClientError) as info:
        bad.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert info.value.code == 401 and info.value.status == "UNAUTHENTICATED"
    with pytest.raises(genai_errors.ClientError) as quota:
        exhausted.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert quota.value.code == 429 and quota.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(genai_errors.ServerError) as server:
        gem.models.generate_content(model="fail-503", contents="hi")
    assert server.value.code == 503 and server.value.status == "UNAVAILABLE"

    assert gem.models.count_tokens(model="gemini-2.5-flash", contents="x" * 20).total_tokens == 5
    emb = gem.models.embed_content(
        model="gemini-embedding-001",
        contents=["a", "b"],
        config=gtypes.EmbedContentConfig(output_dimensionality=16),
    )
    assert [len(e.values or []) for e in emb.embeddings or []] == [16, 16]
    assert "models/gemini-2.5-flash" in {m.name for m in gem.models.list()}


def test_gemini_wire_framing(http: httpx.Client) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "[[words:3]]"}]}]}
    path = "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    sse = http.post(path + "?alt=sse&key=k", json=body)
    assert sse.headers["content-type"].startswith("text/event-stream")
    events = sse.text.split("\r\n\r\n")
    assert events[-1] == "" and all(e.startswith("data: ") for e in events[:-1]) and len(events) == 4
    array = http.post(path, json=body, headers={"x-goog-api-key": "k"})
    parsed = array.json()
    assert isinstance(parsed, list) and len(parsed) == 3
    assert parsed[-1]["usageMetadata"]["candidatesTokenCount"] == 3


BAD_GEMINI = [
    ({"contents": []}, "contents is not specified"),
    ({"foo": 1}, 'Unknown name "foo": Cannot find field.'),
    ({"generationConfig": {"max_tokens": 5}}, "Unknown name \"max_tokens\" at 'generation_config'"),
    (
        {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
        "Please use a valid role: user, model.",
    ),
    (
        {
            "contents": [
                {"role": "user", "parts": [{"text": "x"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": ["no"]}}]},
            ]
        },
        "Proto field is not repeating, cannot start list.",
    ),
    (
        {
            "contents": [{"role": "user", "parts": [{"text": "x"}]}],
            "tools": [
                {
                    "functionDeclarations": [
                        {"name": "f", "parameters": {"type": "object", "additionalProperties": False}}
                    ]
                }
            ],
        },
        'Unknown name "additionalProperties"',
    ),
    (
        {"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
        "function response turn comes immediately after a function call turn",
    ),
]


@pytest.mark.parametrize(("patch", "needle"), BAD_GEMINI)
def test_gemini_validation(http: httpx.Client, patch: dict[str, Any], needle: str) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **patch}
    resp = http.post("/gemini/v1beta/models/gemini-2.5-flash:generateContent?key=k", json=body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == 400 and err["status"] == "INVALID_ARGUMENT" and needle in err["message"]


def test_gemini_accepts_snake_case_fields(http: httpx.Client) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi [[words:2]]"}]}],
        "system_instruction": {"parts": [{"text": "sys"}]},
        "generation_config": {"max_output_tokens": 1, "thinking_config": {"thinking_budget": 0}},
    }
    resp = http.post("/gemini/v1beta/models/gemini-2.5-flash:generateContent?key=k", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"


# --- Ollama ---------------------------------------------------------------------------------


def test_ollama_chat_plain_and_streamed(llama: ollama.Client) -> None:
    resp = llama.chat(model="llama3.2", messages=[{"role": "user", "content": "hi there"}])
    assert resp.message.content == "Hello! You said: hi there" and resp.done and resp.done_reason == "stop"
    assert (resp.prompt_eval_count, resp.eval_count) == (_tokens("hi there"), 5)
    parts = list(
        llama.chat(model="llama3.2", messages=[{"role": "user", "content": "[[words:3]]"}], stream=True)
    )
    assert "".join(p.message.content or "" for p in parts) == "word1 word2 word3"
    assert parts[-1].done and parts[-1].eval_count == 3 and not parts[0].done


def test_ollama_tools_thinking_and_tool_result(llama: ollama.Client) -> None:
    resp = llama.chat(
        model="qwen3", messages=[{"role": "user", "content": "w [[tool]] [[think]]"}], tools=OPENAI_TOOLS
    )
    calls = resp.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("get_weather", WEATHER_ARGS)]
    assert resp.message.thinking == bh.THINKING_TEXT
    parts = list(
        llama.chat(
            model="qwen3", messages=[{"role": "user", "content": "[[tool]]"}], tools=OPENAI_TOOLS, stream=True
        )
    )
    assert [c.function.arguments for p in parts for c in p.message.tool_calls or []] == [WEATHER_ARGS]
    history: Any = [
        {"role": "user", "content": "w"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {}}}],
        },
        {"role": "tool", "content": "Cloudy"},
    ]
    assert llama.chat(model="qwen3", messages=history).message.content == "Tool result: Cloudy"


def test_ollama_errors_embed_and_tags(llama: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        llama.chat(model="fail-500", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 500
    emb = llama.embed(model="nomic-embed-text", input=["a", "b"])
    assert [len(v) for v in emb.embeddings] == [768, 768]
    assert "llama3.2:latest" in {m.model for m in llama.list().models}


BAD_OLLAMA = [
    ({"model": ""}, "model is required"),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                }
            ]
        },
        "cannot unmarshal string into Go struct field ToolCallFunction.messages.tool_calls.function.arguments",
    ),
    (
        {"messages": [{"role": "user", "content": "x", "images": ["data:image/png;base64,AAAA"]}]},
        "illegal base64 data at input byte 4",
    ),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, "cannot unmarshal array"),
]


@pytest.mark.parametrize(("patch", "needle"), BAD_OLLAMA)
def test_ollama_validation(http: httpx.Client, patch: dict[str, Any], needle: str) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], **patch}
    resp = http.post("/ollama/api/chat", json=body)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]


# --- streams that break mid-way -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (
            "/openai/v1/chat/completions",
            {
                "model": "m",
                "stream": True,
                "messages": [{"role": "user", "content": "[[words:8]] [[cut:2]]"}],
            },
            {"authorization": "Bearer k"},
        ),
        (
            "/gemini/v1beta/models/m:streamGenerateContent?alt=sse",
            {"contents": [{"parts": [{"text": "[[words:8]] [[cut:2]]"}]}]},
            {"x-goog-api-key": "k"},
        ),
        (
            "/ollama/api/chat",
            {"model": "m", "messages": [{"role": "user", "content": "[[words:8]] [[cut:2]]"}]},
            {},
        ),
    ],
)
def test_cut_breaks_the_connection(
    http: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str]
) -> None:
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", path, json=body, headers=headers) as resp,
    ):
        assert resp.status_code == 200
        for piece in resp.iter_bytes():
            received += piece
    assert b"word2" in received and b"word3" not in received


# --- tool choice and pacing ----------------------------------------------------------------


def test_forced_tool_choice_calls_a_tool_and_none_suppresses_it(
    oai: openai.OpenAI, claude: anthropic.Anthropic, gem: genai.Client
) -> None:
    tools: Any = [*OPENAI_TOOLS, {"type": "function", "function": {"name": "get_time", "parameters": {}}}]
    msgs: Any = [{"role": "user", "content": "hello"}]
    named: Any = {"type": "function", "function": {"name": "get_time"}}
    forced = oai.chat.completions.create(model="m", messages=msgs, tools=tools, tool_choice=named)
    assert [c.function.name for c in forced.choices[0].message.tool_calls or []] == ["get_time"]  # type: ignore[union-attr]
    muted: Any = [{"role": "user", "content": "hello [[tool]]"}]
    none = oai.chat.completions.create(model="m", messages=muted, tools=tools, tool_choice="none")
    assert (
        none.choices[0].message.content == "Hello! You said: hello" and not none.choices[0].message.tool_calls
    )

    any_tool = claude.messages.create(
        model="c", max_tokens=50, tools=ANTHROPIC_TOOLS, tool_choice={"type": "any"}, messages=msgs
    )
    assert any_tool.stop_reason == "tool_use"

    calling = gtypes.FunctionCallingConfig(mode=gtypes.FunctionCallingConfigMode.ANY)
    decl = gtypes.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER_SCHEMA)
    config = gtypes.GenerateContentConfig(
        tools=[gtypes.Tool(function_declarations=[decl])],
        tool_config=gtypes.ToolConfig(function_calling_config=calling),
    )
    resp = gem.models.generate_content(model="gemini-2.5-flash", contents="hello", config=config)
    assert [c.name for c in resp.function_calls or []] == ["get_weather"]


def test_slow_directive_and_scripted_delay(fake: FakeUpstream, http: httpx.Client) -> None:
    body = {
        "model": "pace-model",
        "stream": True,
        "messages": [{"role": "user", "content": "[[words:3]] [[slow:60]]"}],
    }
    started = time.monotonic()
    with http.stream("POST", "/ollama/api/chat", json=body) as resp:
        first = time.monotonic() - started
        lines = [line for line in resp.iter_lines() if line]
    total = time.monotonic() - started
    assert len(lines) == 4 and first >= 0.06 and total >= 0.18  # before the answer, then between chunks
    fake.script({"status": 200, "delay_ms": 80}, model="pace-model", route="ollama.chat")
    started = time.monotonic()
    resp = http.post(
        "/ollama/api/chat",
        json={"model": "pace-model", "stream": False, "messages": [{"role": "user", "content": "x"}]},
    )
    assert resp.status_code == 200 and time.monotonic() - started >= 0.08


# --- control endpoints ----------------------------------------------------------------------


def test_stats_count_and_redact(fake: FakeUpstream, http: httpx.Client) -> None:
    body = {"model": "stats-model", "messages": [{"role": "user", "content": "hi"}]}
    http.post("/openai/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-secret"})
    http.post(
        "/gemini/v1beta/models/stats-model:countTokens?key=secret",
        json={"contents": [{"parts": [{"text": "a"}]}]},
    )
    http.get("/openai/v1/nowhere")
    stats = fake.stats()
    assert stats["counts"]["openai.chat"] >= 1 and stats["counts"]["not_found"] >= 1
    assert stats["total"] >= 3
    mine = [
        r
        for r in stats["requests"]
        if "stats-model" in r["path"] or (r["body"] or {}).get("model") == "stats-model"
    ]
    assert [r["route"] for r in mine] == ["openai.chat", "gemini.count_tokens"]
    assert mine[0]["headers"]["authorization"] == "***" and mine[0]["body"] == body
    assert mine[1]["query"] == "key=***"
    assert "secret" not in json.dumps(stats)


def test_scripts_force_outcomes_in_order(
    fake: FakeUpstream, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    fake.script(503, {"status": 429, "headers": {"x-extra": "1"}}, 200, model="scripted-model")
    msgs: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="scripted-model", messages=msgs)
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="scripted-model", messages=msgs)
    assert info.value.response.headers["x-extra"] == "1"
    assert oai.chat.completions.create(model="scripted-model", messages=msgs).choices[0].message.content
    assert oai.chat.completions.create(model="scripted-model", messages=msgs).choices[0].message.content

    fake.script({"status": 529}, route="anthropic", model="scripted-claude")
    with pytest.raises(anthropic.OverloadedError):
        claude.messages.create(model="scripted-claude", max_tokens=5, messages=msgs)
    assert claude.messages.create(model="scripted-claude", max_tokens=5, messages=msgs).content


def test_second_instance_runs_side_by_side(fake: FakeUpstream) -> None:
    other = FakeUpstream().start()
    try:
        assert other.running and other.port != fake.port
        other.script(500, model="x")
        other.reset()
        assert other.stats() == {"counts": {}, "total": 0, "requests": []}
        assert other.url("gemini").endswith("/gemini/v1beta")
    finally:
        other.stop()
    assert not other.running and fake.running


# --- Together and Fireworks images ------------------------------------------------------------

TOGETHER_IMAGES = "/together/v1/images/generations"
FIREWORKS_SCHNELL = "/fireworks/inference/v1/workflows/accounts/fireworks/models/flux-1-schnell-fp8/text_to_image"
BEARER = {"authorization": "Bearer tg-test"}


def test_together_images_url_and_base64(http: httpx.Client) -> None:
    body = {"model": "black-forest-labs/FLUX.1-schnell", "prompt": "a cat", "width": 1024, "height": 768, "n": 2}
    url = http.post(TOGETHER_IMAGES, json=body, headers=BEARER)
    assert url.status_code == 200, url.text
    answer = url.json()
    assert answer["object"] == "list" and answer["model"] == body["model"] and answer["id"]
    assert [(d["index"], d["type"]) for d in answer["data"]] == [(0, "url"), (1, "url")]
    assert http.get(answer["data"][0]["url"]).content == bh.PNG
    b64 = http.post(TOGETHER_IMAGES, json={**body, "n": 1, "response_format": "base64"}, headers=BEARER).json()
    assert b64["data"] == [{"index": 0, "type": "b64_json", "b64_json": bh.PNG_B64}]
    assert http.post(TOGETHER_IMAGES, json=body, headers=BEARER).json() == answer  # deterministic


BAD_TOGETHER = [
    ({"size": "1024x1024"}, 400, "Unrecognized request argument supplied: size"),
    ({"response_format": "b64_json"}, 400, "Invalid response_format 'b64_json'"),
    ({"n": 5}, 400, "n must be between 1 and 4"),
    ({"width": "1024"}, 400, "valid integer: width"),
    ({"prompt": None}, 400, "Field required: prompt"),
    ({"model": "openai/dall-e-3"}, 404, "Unable to access model openai/dall-e-3"),
]


@pytest.mark.parametrize(("patch", "status", "needle"), BAD_TOGETHER)
def test_together_images_validation(http: httpx.Client, patch: dict[str, Any], status: int, needle: str) -> None:
    body = {k: v for k, v in {"model": "black-forest-labs/FLUX.1-schnell", "prompt": "p", **patch}.items() if v is not None}
    resp = http.post(TOGETHER_IMAGES, json=body, headers=BEARER)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert needle in err["message"] and set(err) == {"message", "type", "param", "code"}


def test_together_auth(http: httpx.Client) -> None:
    body = {"model": "black-forest-labs/FLUX.1-schnell", "prompt": "p"}
    assert http.post(TOGETHER_IMAGES, json=body).status_code == 401
    resp = http.post(TOGETHER_IMAGES, json=body, headers={"authorization": "Bearer bad-key"})
    assert resp.status_code == 401 and "Invalid API key" in resp.json()["error"]["message"]


def test_fireworks_text_to_image_json_and_png(http: httpx.Client) -> None:
    body = {"prompt": "a cat", "aspect_ratio": "4:3", "seed": 7}
    resp = http.post(FIREWORKS_SCHNELL, json=body, headers={**BEARER, "accept": "application/json"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["base64"] == [f"data:image/png;base64,{bh.PNG_B64}"]
    assert answer["finishReason"] == "SUCCESS" and answer["seed"] == 7 and answer["id"]
    raw = http.post(FIREWORKS_SCHNELL, json=body, headers={**BEARER, "accept": "image/png"})
    assert raw.status_code == 200 and raw.content == bh.PNG and raw.headers["content-type"] == "image/png"
    assert raw.headers["finish-reason"] == "SUCCESS" and raw.headers["seed"] == "7"
    default = http.post(FIREWORKS_SCHNELL, json={"prompt": "a cat"}, headers=BEARER)  # no Accept: image bytes
    assert default.content == bh.PNG
    filtered = http.post(FIREWORKS_SCHNELL, json={"prompt": "[filtered]"}, headers={**BEARER, "accept": "application/json"})
    assert filtered.json()["finishReason"] == "CONTENT_FILTERED" and filtered.json()["base64"] == []


BAD_FIREWORKS = [
    ({"n": 2}, "Extra inputs are not permitted: n"),
    ({"size": "1024x1024"}, "Extra inputs are not permitted: size"),
    ({"aspect_ratio": "7:5"}, "aspect_ratio"),
    ({"num_inference_steps": "4"}, "valid integer: num_inference_steps"),
    ({"guidance_scale": True}, "valid number: guidance_scale"),
    ({"prompt": ""}, "Field required: prompt"),
]


@pytest.mark.parametrize(("patch", "needle"), BAD_FIREWORKS)
def test_fireworks_validation(http: httpx.Client, patch: dict[str, Any], needle: str) -> None:
    resp = http.post(FIREWORKS_SCHNELL, json={"prompt": "p", **patch}, headers={**BEARER, "accept": "application/json"})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert needle in err["message"] and err["object"] == "error" and err["type"] == "invalid_request_error"


def test_fireworks_unknown_model_auth_and_jpeg(http: httpx.Client) -> None:
    other = FIREWORKS_SCHNELL.replace("flux-1-schnell-fp8", "flux-kontext-pro")
    resp = http.post(other, json={"prompt": "p"}, headers=BEARER)
    assert resp.status_code == 404 and resp.json()["error"]["object"] == "error"
    assert http.post(FIREWORKS_SCHNELL, json={"prompt": "p"}).status_code == 401
    jpeg = http.post(FIREWORKS_SCHNELL, json={"prompt": "p"}, headers={**BEARER, "accept": "image/jpeg"})
    assert jpeg.status_code == 406
