"""Translation properties over the format specs (hypothesis).

(a) Any client body is decoded or refused with ClientError, nothing else: bodies built from each
    client format's own field names with random values, valid bodies with random mutations, and
    any JSON at all; a decoded request then encodes for every upstream format or is refused with
    ClientError. In process, and (smaller) against the running server: 200 or 4xx, never 5xx, and a
    400 from the gateway never reached upstream.
(b) canonical -> format -> canonical keeps every field the format carries, for the four upstream
    formats: request encode/decode, response encode/decode, stream encode/decode. The canonical
    objects are drawn from what each format carries (the comments say what a format cannot).
"""

from __future__ import annotations

import base64
import copy
import json
import string
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from engine.compile import BUILTIN_SPECS
from engine.errors import ClientError
from engine.source import load_file, validate
from engine.translate import Format, compile_format
from tests.support import Gateway
from tools.fake_upstream.launch import FakeUpstream

CLIENT_FORMATS = ("openai-chat", "openai-responses", "anthropic-messages", "gemini", "ollama")
UPSTREAM_FORMATS = ("openai-chat", "anthropic-messages", "gemini", "ollama")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def fmt(fid: str) -> Format:
    path = BUILTIN_SPECS / "formats" / f"{fid}.yaml"
    doc, problems = load_file(Path(path))
    problems += validate(doc, "format")
    found: list[str] = []
    compiled = compile_format(fid, doc.data, lambda p, m: found.append(f"{p}: {m}"))
    assert not problems and not found and compiled is not None, (problems, found)
    return compiled


# ---------------------------------------------------------------- (a) any body: decoded or ClientError

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGPg4vr/HwAEUwJ2k2d1ZQAAAABJRU5ErkJggg=="
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "openai-chat": [
        {
            "model": "openai/gpt-4.1",
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "hi"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "max_tokens": 10,
            "temperature": 0.5,
            "stop": ["x"],
            "stream": True,
            "stream_options": {"include_usage": True},
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": {"type": "object"}},
            },
            "reasoning_effort": "low",
            "seed": 3,
            "n": 1,
            "user": "u",
        }
    ],
    "openai-responses": [
        {
            "model": "openai/gpt-4.1",
            "instructions": "be brief",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "hi"},
                        {"type": "input_image", "image_url": "https://x/y.png"},
                    ],
                },
                {
                    "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": "t"}],
                    "encrypted_content": "e",
                },
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}}},
            "reasoning": {"effort": "minimal"},
            "max_output_tokens": 20,
            "stream": False,
        }
    ],
    "anthropic-messages": [
        {
            "model": "anthropic/claude-sonnet-4-5",
            "max_tokens": 2000,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "hi"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "s"},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "ok"}],
                            "is_error": False,
                        }
                    ],
                },
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "stop_sequences": ["x"],
            "top_k": 3,
            "metadata": {"user_id": "u"},
        }
    ],
    "gemini": [
        {
            "systemInstruction": {"parts": [{"text": "be brief"}]},
            "contents": [
                {
                    "role": "user",
                    "parts": [{"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}],
                },
                {
                    "role": "model",
                    "parts": [
                        {"text": "t", "thought": True, "thoughtSignature": "c2ln"},
                        {"functionCall": {"name": "f", "args": {"a": 1}}},
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"name": "f", "response": {"output": "ok"}}},
                        {"text": "and?"},
                    ],
                },
            ],
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "f",
                            "parameters": {"type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}},
                        }
                    ]
                }
            ],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}},
            "generationConfig": {
                "temperature": 0.3,
                "topK": 4,
                "maxOutputTokens": 30,
                "stopSequences": ["x"],
                "responseMimeType": "application/json",
                "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 1024},
            },
        }
    ],
    "ollama": [
        {
            "model": "ollama/llama3.2",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi", "images": [PNG]},
                {
                    "role": "assistant",
                    "content": "",
                    "thinking": "hm",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
                },
                {"role": "tool", "content": "ok", "tool_name": "f"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "format": {"type": "object"},
            "think": "high",
            "stream": False,
            "options": {"temperature": 0.2, "num_predict": 5, "stop": "x", "top_k": 2, "seed": 1},
        }
    ],
}
GEMINI_META = {"model": "gemini/gemini-2.5-flash", "stream": False}


def _names(schema: Any, out: set[str]) -> set[str]:
    if isinstance(schema, dict):
        for k, v in schema.items():
            if k == "properties" and isinstance(v, dict):
                out.update(v)
            _names(v, out)
    elif isinstance(schema, list):
        for v in schema:
            _names(v, out)
    return out


def _sample_names(x: Any, out: set[str]) -> set[str]:
    if isinstance(x, dict):
        out.update(x)
        for v in x.values():
            _sample_names(v, out)
    elif isinstance(x, list):
        for v in x:
            _sample_names(v, out)
    return out


@cache
def vocabulary(fid: str) -> list[str]:
    words = _names(fmt(fid).raw.get("request", {}).get("validate"), set())
    for sample in SAMPLES[fid]:
        _sample_names(sample, words)
    return sorted(words)


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(
        [
            "",
            "user",
            "assistant",
            "model",
            "tool",
            "system",
            "text",
            "image",
            "function",
            "tool_use",
            "tool_result",
            "thinking",
            "auto",
            "any",
            "none",
            "required",
            "json_object",
            "json_schema",
            "{}",
            '{"a":1}',
            "{bad",
            "data:image/png;base64,AAAA",
            "https://x/y.png",
            "openai/gpt-4.1",
            "OBJECT",
            "STOP",
            "base64",
            "url",
        ]
    ),
    st.text(max_size=8),
)


def any_json(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
        max_leaves=30,
    )


def same_type(value: Any, names: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-5, 200000)
    if isinstance(value, float):
        return st.floats(-1, 3, allow_nan=False)
    if isinstance(value, str):
        return leaves.filter(lambda v: isinstance(v, str))
    if isinstance(value, list):
        return st.lists(st.sampled_from(value), max_size=4) if value else st.just([])
    if isinstance(value, dict):
        return (
            st.dictionaries(st.sampled_from(sorted(value)), any_json(names), max_size=len(value))
            if value
            else st.just({})
        )
    return st.none()


def _slots(body: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) of a JSON value, depth first."""
    out: list[tuple[Any, Any]] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k in list(x):
                out.append((x, k))
                walk(x[k])
        elif isinstance(x, list):
            for i in range(len(x)):
                out.append((x, i))
                walk(x[i])

    walk(body)
    return out


@st.composite
def client_bodies(draw: st.DrawFn, fid: str) -> Any:
    """A body for client format `fid`: its own field names with random values, a valid body with
    random mutations, or any JSON at all."""
    names = st.sampled_from(vocabulary(fid))
    kind = draw(st.sampled_from(["shaped", "mutated", "mutated", "random"]))
    if kind == "random":
        return draw(any_json(st.text(max_size=6)))
    if kind == "shaped":
        return draw(st.dictionaries(names, any_json(names | st.text(max_size=4)), max_size=8))
    body = copy.deepcopy(draw(st.sampled_from(SAMPLES[fid])))
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(body)
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(["replace", "same_type", "same_type", "delete", "add"]))
        if op == "replace":
            container[key] = draw(any_json(names))
        elif op == "same_type":  # a plausible value: what validators let through, decoders must take
            container[key] = draw(same_type(container[key], names))
        elif op == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[draw(names)] = draw(any_json(names))
        else:
            container.append(draw(any_json(names)))
    return body


def decode_or_refuse(fid: str, body: Any) -> dict[str, Any] | None:
    """The canonical request, or None when refused with ClientError (any other exception fails)."""
    f = fmt(fid)
    meta = dict(GEMINI_META) if fid == "gemini" else {}
    try:
        f.validate(body)
        return f.decode_request(body, meta, validated=True)
    except ClientError as e:
        assert e.status == 400 and e.message
        return None


@pytest.mark.parametrize("fid", CLIENT_FORMATS)
@SETTINGS
@given(data=st.data())
def test_any_client_body_is_decoded_or_refused_cleanly(fid: str, data: st.DataObject) -> None:
    body = data.draw(client_bodies(fid))
    req = decode_or_refuse(fid, body)
    if req is None:
        return
    # what decoders promise the rest of the engine
    assert isinstance(req["model"], str) and req["model"]
    for m in req.get("messages") or ():
        assert m["role"] in ("user", "assistant", "tool")
        for p in m["content"]:
            assert p["type"] in ("text", "image", "tool_call", "tool_result", "thinking"), p
    # and a decoded request goes to every upstream format, or is refused as the client's fault
    for up in UPSTREAM_FORMATS:
        try:
            fmt(up).encode_request(copy.deepcopy(req), {"model": "m", "stream": bool(req.get("stream"))})
        except ClientError:
            pass


# Bodies the properties found slipping through a client validator into an upstream that refuses
# them (or crashes on them): each is now refused at the door, naming the field.
LEAKS = [
    pytest.param(
        "openai-chat",
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
        "tools[0].function",
        id="openai-chat function tool without its function",
    ),
    pytest.param(
        "openai-chat",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": ""}}],
        },
        "tools[0].function.name",
        id="openai-chat function tool with an empty name",
    ),
    pytest.param(
        "openai-chat",
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": {"a": 1}, "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
            ],
        },
        "messages[1].tool_calls[0].id",
        id="openai-chat tool call id that is not a string",
    ),
    pytest.param(
        "anthropic-messages",
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": []}]}
                    ],
                }
            ],
        },
        "messages[0].content[0].content[0].text",
        id="anthropic tool_result text block whose text is not text",
    ),
]


@pytest.mark.parametrize(("fid", "body", "field"), LEAKS)
def test_validators_refuse_what_upstreams_refuse(fid: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(ClientError) as e:
        fmt(fid).validate(body)
    assert e.value.param == field and field in e.value.message


# ---------------------------------------------------------------- (a) what upstream accepts
# The fake upstream carries each provider's request checks (tools/fake_upstream/*_checks.py): a
# request the gateway writes must pass them. Canonical conversations are valid ones (results follow
# their calls, roles alternate where an API wants it), so a refusal is the gateway's doing.


def upstream_refusal(fid: str, wire: Any) -> str | None:
    """Why the fake upstream of format `fid` would refuse this body (None: it takes it)."""
    from tools.fake_upstream import anthropic_checks, gemini_checks, openai_checks
    from tools.fake_upstream import ollama as fake_ollama

    body = orjson.loads(orjson.dumps(wire))
    if fid == "openai-chat":
        reply = openai_checks.validate_chat(body)
    elif fid == "anthropic-messages":
        reply = anthropic_checks.validate(body, anthropic_checks.MESSAGE_FIELDS, need_max_tokens=True)
        # a rule of the real API the fake does not check: with thinking on, the last assistant turn,
        # when it made tool calls, starts with a (signed) thinking block
        last = next((m for m in reversed(body["messages"]) if m["role"] == "assistant"), None)
        blocks = last["content"] if last and isinstance(last["content"], list) else []
        if (
            reply is None
            and (body.get("thinking") or {}).get("type") == "enabled"
            and any(b["type"] == "tool_use" for b in blocks)
        ) and blocks[0]["type"] not in ("thinking", "redacted_thinking"):
            return "When `thinking` is enabled, a final `assistant` message must start with a thinking block"
    elif fid == "gemini":
        try:
            gemini_checks.check(body, "GenerateContentRequest")
        except gemini_checks.ProtoError as e:
            return str(e)
        reply = gemini_checks.validate(body)
    else:
        reply = fake_ollama.validate(body)
    return None if reply is None else reply.body.decode()


UP_MODELS = {
    "openai-chat": "gpt-4.1",
    "anthropic-messages": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
    "ollama": "llama3.2",
}


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Canonical requests with everything any format carries, valid as conversations."""
    generic = Carries(
        "generic",
        ids=True,
        url_images=True,
        signatures=True,
        assistant_thinking=True,
        alternating=draw(st.booleans()),
        one_text_per_user=False,
        results_with_ids=True,
        is_error=True,
    )
    messages, tools = draw(conversations(generic))
    req: dict[str, Any] = {"model": "any", "messages": messages}
    if draw(st.booleans()):
        req["system"] = draw(words)
    if tools:
        req["tools"] = tools
        if draw(st.booleans()):
            req["tool_choice"] = draw(
                st.sampled_from(["auto", "none", "required", {"name": tools[-1]["name"]}])
            )
        if draw(st.booleans()):
            req["parallel_tool_calls"] = draw(st.booleans())
    elif draw(st.booleans()):
        req["tool_choice"] = draw(st.sampled_from(["auto", "none"]))  # a client may say it with no tools
    for key, strategy in (
        ("max_tokens", st.integers(1, 32000)),
        ("temperature", st.floats(0, 2)),
        ("top_p", st.floats(0, 1)),
        ("top_k", st.integers(1, 100)),
        ("seed", st.integers(0, 2**31 - 1)),
        ("stop", st.lists(words, min_size=1, max_size=4)),
        (
            "response_format",
            st.sampled_from(
                [
                    {"type": "json_object"},
                    {"type": "json_schema", "schema": {"type": "object"}, "name": "out"},
                ]
            ),
        ),
        (
            "reasoning",
            st.sampled_from(
                [
                    {"effort": "low"},
                    {"effort": "high"},
                    {"budget_tokens": 2048},
                    {"budget_tokens": 20000, "effort": "high"},
                ]
            ),
        ),
        ("user", ident),
    ):
        if draw(st.booleans()):
            req[key] = draw(strategy)
    if draw(st.booleans()):
        req["stream"] = True
    return req


@pytest.mark.parametrize("up", UPSTREAM_FORMATS)
@SETTINGS
@given(data=st.data())
def test_encoders_write_what_the_upstream_accepts(up: str, data: st.DataObject) -> None:
    req = data.draw(valid_requests())
    wire = fmt(up).encode_request(
        copy.deepcopy(req), {"model": UP_MODELS[up], "stream": bool(req.get("stream"))}
    )
    note(json.dumps(wire, ensure_ascii=False))
    assert upstream_refusal(up, wire) is None


@pytest.mark.parametrize("up", UPSTREAM_FORMATS)
@pytest.mark.parametrize("client", UPSTREAM_FORMATS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # 16 pairs
@given(data=st.data())
def test_valid_client_bodies_translate_to_what_the_upstream_accepts(
    client: str, up: str, data: st.DataObject
) -> None:
    """A correct client body (written by that format's own encoder, which its own upstream accepts)
    is taken by the gateway and translated into a body the other upstream accepts."""
    req = data.draw(valid_requests())
    stream = bool(req.get("stream"))
    body = orjson.loads(
        orjson.dumps(
            fmt(client).encode_request(copy.deepcopy(req), {"model": UP_MODELS[client], "stream": stream})
        )
    )
    note("client body: " + json.dumps(body, ensure_ascii=False))
    body_meta = {"model": UP_MODELS[client], "stream": stream} if client == "gemini" else {}
    canonical = fmt(client).decode_request(body, body_meta)  # the gateway takes what a correct client sends
    wire = fmt(up).encode_request(canonical, {"model": UP_MODELS[up], "stream": stream})
    note("upstream body: " + json.dumps(wire, ensure_ascii=False))
    assert upstream_refusal(up, wire) is None


def responses_body(req: dict[str, Any]) -> dict[str, Any]:
    """A Responses API body saying what canonical `req` says (the format has no encoder here: it is
    a client format only), written the way the openai SDK's typed params spell it."""
    items: list[dict[str, Any]] = []
    for m in req["messages"]:
        for p in m["content"]:
            if m["role"] == "user":
                if p["type"] == "text":
                    items.append({"role": "user", "content": [{"type": "input_text", "text": p["text"]}]})
                else:
                    url = p.get("url") or f"data:{p['media_type']};base64,{p['data']}"
                    items.append(
                        {
                            "role": "user",
                            "content": [{"type": "input_image", "image_url": url, "detail": "auto"}],
                        }
                    )
            elif p["type"] == "text":
                items.append(
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": p["text"], "annotations": []}],
                    }
                )
            elif p["type"] == "thinking":
                item = {"type": "reasoning", "summary": [{"type": "summary_text", "text": p["text"]}]}
                if p.get("signature"):
                    item["encrypted_content"] = p["signature"]
                items.append(item)
            elif p["type"] == "tool_call":
                items.append(
                    {
                        "type": "function_call",
                        "call_id": p["id"],
                        "name": p["name"],
                        "arguments": p["arguments"],
                    }
                )
            elif p["type"] == "tool_result":
                items.append(
                    {"type": "function_call_output", "call_id": p["tool_call_id"], "output": p["content"]}
                )
    body: dict[str, Any] = {"model": "openai/gpt-4.1", "input": items}
    if req.get("system"):
        body["instructions"] = req["system"]
    if req.get("tools"):
        body["tools"] = [
            {
                "type": "function",
                "name": t["name"],
                "description": t["description"],
                "parameters": t["parameters"],
                "strict": False,
            }
            for t in req["tools"]
        ]
        tc = req.get("tool_choice")
        if tc is not None:
            body["tool_choice"] = {"type": "function", "name": tc["name"]} if isinstance(tc, dict) else tc
    for key, wire in (
        ("max_tokens", "max_output_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("user", "user"),
    ):
        if req.get(key) is not None:
            body[wire] = req[key]
    if req.get("reasoning", {}).get("effort"):
        body["reasoning"] = {"effort": req["reasoning"]["effort"]}
    rf = req.get("response_format")
    if rf:
        body["text"] = {
            "format": {"type": "json_schema", "name": "out", "schema": rf["schema"]}
            if rf["type"] == "json_schema"
            else {"type": "json_object"}
        }
    if req.get("stream"):
        body["stream"] = True
    return body


@pytest.mark.parametrize("up", UPSTREAM_FORMATS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_responses_bodies_translate_to_what_the_upstream_accepts(up: str, data: st.DataObject) -> None:
    req = data.draw(valid_requests())
    body = orjson.loads(orjson.dumps(responses_body(req)))
    note("client body: " + json.dumps(body, ensure_ascii=False))
    fmt("openai-responses").validate(body)
    canonical = fmt("openai-responses").decode_request(body, {})
    wire = fmt(up).encode_request(canonical, {"model": UP_MODELS[up], "stream": bool(req.get("stream"))})
    note("upstream body: " + json.dumps(wire, ensure_ascii=False))
    assert upstream_refusal(up, wire) is None


# ---------------------------------------------------------------- (a) end to end

ROUTES = {
    "openai-chat": "/v1/chat/completions",
    "openai-responses": "/v1/responses",
    "anthropic-messages": "/v1/messages",
    "gemini": "/v1beta/models/{model}:generateContent",
    "ollama": "/api/chat",
}
UPSTREAM_MODELS = {
    "openai": "openai/gpt-4.1",
    "anthropic": "anthropic/claude-sonnet-4-5",
    "gemini": "gemini/gemini-2.5-flash",
    "ollama": "ollama/llama3.2",
}
SAME_FORMAT = {
    "openai-chat": "openai",
    "anthropic-messages": "anthropic",
    "gemini": "gemini",
    "ollama": "ollama",
}


@pytest.fixture(scope="module")
def prop_gateway(gateway_factory: Any) -> Gateway:
    gw: Gateway = gateway_factory({"settings": {"log_level": "info"}})
    return gw


@pytest.mark.parametrize("fid", CLIENT_FORMATS)
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_server_answers_any_body_with_200_or_4xx(
    prop_gateway: Gateway, fake: FakeUpstream, fid: str, data: st.DataObject
) -> None:
    """200 or 4xx, never 5xx, for any body on any route. A 4xx the gateway made itself (no
    x-omniroute-provider: no upstream answered) never reached upstream; a 4xx an upstream gave
    (garbage the client's own API refuses too, passed on) comes from exactly one upstream call."""
    upstream = data.draw(st.sampled_from(sorted(UPSTREAM_MODELS)))
    body = data.draw(client_bodies(fid))
    model = UPSTREAM_MODELS[upstream]
    if (
        isinstance(body, dict)
        and isinstance(body.get("model"), str)
        and body["model"] in UPSTREAM_MODELS.values()
    ):
        body["model"] = model
    before = fake.stats()["total"]
    url = prop_gateway.base_url + ROUTES[fid].format(model=model)
    headers = {
        "content-type": "application/json",
        "x-omniroute-no-cache": "true",
    }  # every answer from upstream
    with httpx.stream("POST", url, content=orjson.dumps(body), timeout=30, headers=headers) as r:
        raw = r.read()
    note(f"{r.status_code} {dict(r.headers)} {raw[:500]!r}")
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, raw[:500])
    calls = fake.stats()["total"] - before
    if r.status_code >= 400 and "x-omniroute-provider" not in r.headers:
        assert calls == 0, "a request the gateway refused reached upstream"
    else:
        assert calls == 1, f"{calls} upstream calls for one request"


# ---------------------------------------------------------------- (b) round trips: strategies

words = st.text(alphabet=string.ascii_letters + string.digits + " .,!?é字", min_size=1, max_size=12).filter(
    lambda s: s.strip() != ""
)
ident = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=10)
tool_names = st.sampled_from(["get_weather", "lookup", "f", "search_web", "x_1"])
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), words)
json_obj = st.dictionaries(
    ident,
    st.recursive(
        json_scalar, lambda i: st.lists(i, max_size=3) | st.dictionaries(ident, i, max_size=3), max_leaves=6
    ),
    max_size=4,
)
args = json_obj.map(lambda d: json.dumps(d, separators=(",", ":"), ensure_ascii=False))
signatures = st.binary(min_size=3, max_size=24).map(
    lambda b: base64.b64encode(b).decode()
)  # opaque, base64 on the wire
b64_images = st.sampled_from(
    [
        ("image/png", PNG),
        ("image/jpeg", "/9j/4AAQSkZJRgABAQ=="),
        ("image/gif", "R0lGODlhAQABAAAAACw="),
        ("image/webp", "UklGRiQAAABXRUJQVlA4"),
    ]
)
url_images = st.sampled_from(
    ["https://example.com/a.png", "https://example.com/b.jpg", "https://example.com/c.webp?x=1"]
)
schemas = st.sampled_from(
    [
        {"type": "object", "properties": {}},
        {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
        },
    ]
)


class Carries:
    """What one upstream format's request carries, for the strategies and the comparison."""

    def __init__(
        self,
        fid: str,
        *,
        ids: bool,
        url_images: bool,
        signatures: bool,
        assistant_thinking: bool,
        alternating: bool,
        one_text_per_user: bool,
        results_with_ids: bool,
        is_error: bool,
    ) -> None:
        self.fid, self.ids, self.url_images, self.signatures = fid, ids, url_images, signatures
        self.assistant_thinking, self.alternating = assistant_thinking, alternating
        self.one_text_per_user, self.results_with_ids, self.is_error = (
            one_text_per_user,
            results_with_ids,
            is_error,
        )


CARRY = {
    # OpenAI: ids, URL images; thinking in history and its signatures are not sent back; a
    # user turn's text parts join into one string when there is no image; no is_error.
    "openai-chat": Carries(
        "openai-chat",
        ids=True,
        url_images=True,
        signatures=False,
        assistant_thinking=False,
        alternating=False,
        one_text_per_user=True,
        results_with_ids=True,
        is_error=False,
    ),
    # Anthropic: ids, URL images, signed thinking; turns alternate (tool results are user turns).
    "anthropic-messages": Carries(
        "anthropic-messages",
        ids=True,
        url_images=True,
        signatures=True,
        assistant_thinking=True,
        alternating=True,
        one_text_per_user=False,
        results_with_ids=True,
        is_error=True,
    ),
    # Gemini: no ids (positional on decode), file URIs, signed thoughts; user and tool turns are
    # both "user" contents, so turns alternate.
    "gemini": Carries(
        "gemini",
        ids=False,
        url_images=True,
        signatures=True,
        assistant_thinking=True,
        alternating=True,
        one_text_per_user=False,
        results_with_ids=False,
        is_error=True,
    ),
    # Ollama: no ids, base64 images only, thinking text without signature, one string of text.
    "ollama": Carries(
        "ollama",
        ids=False,
        url_images=False,
        signatures=False,
        assistant_thinking=True,
        alternating=False,
        one_text_per_user=True,
        results_with_ids=False,
        is_error=False,
    ),
}


@st.composite
def conversations(draw: st.DrawFn, c: Carries) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(messages, tools) a format carries: user turns with text and images, assistant turns with
    thinking, text and tool calls, tool turns answering the calls before them."""
    tools = [
        {"name": n, "description": draw(words), "parameters": draw(schemas)}
        for n in draw(st.lists(tool_names, max_size=3, unique=True))
    ]
    messages: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # calls of the last assistant turn, not yet answered
    n_turns = draw(st.integers(1, 6))
    counter = 0
    for i in range(n_turns):
        # tool results come right after the calls they answer (every API demands it)
        user_side = i % 2 == 0 if c.alternating else bool(pending) or draw(st.booleans()) or i == 0
        if user_side:
            if pending:
                results = []
                for call in pending:
                    r = {"type": "tool_result", "tool_call_id": call["id"], "content": draw(words)}
                    if c.fid in ("anthropic-messages", "gemini", "ollama"):
                        r["name"] = call["name"]
                    if c.is_error and draw(st.booleans()):
                        r["is_error"] = True
                    results.append(r)
                if c.alternating:
                    messages.append({"role": "tool", "content": results})
                else:
                    messages.extend({"role": "tool", "content": [r]} for r in results)
                pending = []
                if draw(st.booleans()):
                    continue  # the tool turn alone is this turn
            parts: list[dict[str, Any]] = [{"type": "text", "text": draw(words)}]
            if not c.one_text_per_user:
                parts += [{"type": "text", "text": draw(words)} for _ in range(draw(st.integers(0, 1)))]
            for _ in range(draw(st.integers(0, 2))):
                if c.url_images and draw(st.booleans()):
                    parts.append({"type": "image", "url": draw(url_images)})
                else:
                    media, data = draw(b64_images)
                    parts.append({"type": "image", "media_type": media, "data": data})
            messages.append({"role": "user", "content": parts})
        else:
            if c.alternating and messages and messages[-1]["role"] == "assistant":
                continue
            content: list[dict[str, Any]] = []
            if c.assistant_thinking and draw(st.booleans()):
                th: dict[str, Any] = {"type": "thinking", "text": draw(words)}
                if c.signatures:
                    th["signature"] = draw(signatures)
                if c.fid == "anthropic-messages" or "signature" in th or draw(st.booleans()):
                    content.append(th)

            def signed(content: list[dict[str, Any]]) -> None:
                # Gemini: a signature that arrived on a text or functionCall part is an empty
                # thinking part right before it, and goes back on that part
                if c.fid == "gemini" and draw(st.booleans()):
                    content.append({"type": "thinking", "text": "", "signature": draw(signatures)})

            if draw(st.booleans()):
                signed(content)
                content.append({"type": "text", "text": draw(words)})
            if tools and draw(st.booleans()):
                for _ in range(draw(st.integers(1, 2))):
                    signed(content)
                    counter += 1
                    call = {
                        "type": "tool_call",
                        "id": f"call_{counter}_{draw(ident)}",
                        "name": draw(st.sampled_from([t["name"] for t in tools])),
                        "arguments": draw(args),
                    }
                    content.append(call)
                    pending.append(call)
            if not content:
                content.append({"type": "text", "text": draw(words)})
            messages.append({"role": "assistant", "content": content})
    if pending:  # a conversation does not end on unanswered calls in these tests
        named = c.fid != "openai-chat"  # OpenAI's tool messages carry no function name
        results = [
            {
                "type": "tool_result",
                "tool_call_id": p["id"],
                "content": "ok",
                **({"name": p["name"]} if named else {}),
            }
            for p in pending
        ]
        messages.append({"role": "tool", "content": results})
        if not c.alternating:
            last = messages.pop()
            messages.extend({"role": "tool", "content": [r]} for r in last["content"])
        messages.append({"role": "user", "content": [{"type": "text", "text": draw(words)}]})
    if messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": [{"type": "text", "text": draw(words)}]})
    return messages, tools


@st.composite
def requests(draw: st.DrawFn, fid: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(canonical request, encode meta, the canonical request expected back after the round trip)."""
    c = CARRY[fid]
    messages, tools = draw(conversations(c))
    model = {
        "gemini": draw(st.sampled_from(["gemini-2.5-flash", "gemini-3-pro-preview"])),
        "ollama": "llama3.2",
    }.get(fid, "m-1")
    req: dict[str, Any] = {"model": model, "messages": messages}
    want: dict[str, Any] = {"model": model, "messages": copy.deepcopy(messages)}

    def both(key: str, value: Any, expected: Any = None) -> None:
        req[key] = value
        want[key] = value if expected is None else expected

    if draw(st.booleans()):
        both("system", draw(words))
    if tools:
        both("tools", tools)
        choices = ["auto", "required", {"name": tools[0]["name"]}] + ([] if fid == "gemini" else ["none"])
        if fid != "ollama" and draw(st.booleans()):  # Ollama has no tool choice
            both("tool_choice", draw(st.sampled_from(choices)))
        if fid == "openai-chat" and draw(st.booleans()):
            both("parallel_tool_calls", draw(st.booleans()))
        if fid == "anthropic-messages" and req.get("tool_choice") != "none" and draw(st.booleans()):
            both("parallel_tool_calls", False)  # disable_parallel_tool_use; true is the default, not sent
            want.setdefault("tool_choice", "auto")  # the flag lives in tool_choice, so auto is said
    stream = draw(st.booleans())
    if stream:
        both("stream", True)
        if fid == "openai-chat":
            want["include_usage"] = True  # always asked upstream, so usage can be recorded
    elif fid == "ollama":
        want["stream"] = False  # Ollama's default is a stream: false is said explicitly
    if fid == "anthropic-messages":
        max_tokens = draw(st.integers(1, 64000))
        both("max_tokens", max_tokens)
        thinking = draw(st.booleans()) and req.get("tool_choice") in (None, "auto", "none")
        if thinking:
            budget = draw(st.integers(1024, 30000))
            req["max_tokens"] = want["max_tokens"] = budget + draw(st.integers(1, 5000))
            req["reasoning"] = {"budget_tokens": budget}
            want["reasoning"] = {
                "budget_tokens": budget,
                "effort": "low" if budget < 4096 else ("medium" if budget < 16384 else "high"),
            }
            last = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), [])
            if any(p["type"] == "tool_call" for p in last) and last[0]["type"] != "thinking":
                del want["reasoning"]  # Anthropic refuses thinking there: it stays off for the turn
        else:
            if draw(st.booleans()):
                both("temperature", draw(st.floats(0, 1)))
            elif draw(st.booleans()):
                both("top_p", draw(st.floats(0, 1)))
            if draw(st.booleans()):
                both("top_k", draw(st.integers(1, 100)))
    else:
        if draw(st.booleans()):
            both("max_tokens", draw(st.integers(1, 64000)))
        if draw(st.booleans()):
            both("temperature", draw(st.floats(0, 2)))
        if draw(st.booleans()):
            both("top_p", draw(st.floats(0, 1)))
        if draw(st.booleans()):
            both("seed", draw(st.integers(-(2**31), 2**31 - 1)))
        if fid in ("gemini", "ollama") and draw(st.booleans()):
            both("top_k", draw(st.integers(1, 100)))
        if fid == "openai-chat" and draw(st.booleans()):
            both("n", draw(st.integers(2, 4)))
        rf = draw(st.sampled_from([None, "json_object", "json_schema"]))
        if rf == "json_object":
            both("response_format", {"type": "json_object"})
        elif rf == "json_schema":
            schema = draw(schemas)
            if fid == "openai-chat":
                both("response_format", {"type": "json_schema", "schema": schema, "name": draw(ident)})
            else:  # Gemini and Ollama carry the schema, not its name
                both(
                    "response_format",
                    {"type": "json_schema", "schema": schema, "name": draw(ident)},
                    {"type": "json_schema", "schema": schema},
                )
        if draw(st.booleans()):
            if fid == "openai-chat":
                both("reasoning", {"effort": draw(st.sampled_from(["low", "medium", "high"]))})
            elif fid == "gemini" and model.startswith("gemini-2"):
                both("reasoning", {"budget_tokens": draw(st.integers(1, 24576))})
            elif fid == "gemini":
                both("reasoning", {"effort": draw(st.sampled_from(["low", "medium", "high"]))})
            else:  # Ollama's think switch: on, without a level (gpt-oss models take the level)
                both("reasoning", {"effort": "medium"})
    if draw(st.booleans()):
        both("stop", draw(st.lists(words, min_size=1, max_size=3)))
    if fid in ("openai-chat", "anthropic-messages") and draw(st.booleans()):
        both("user", draw(ident))
    return req, {"model": model, "stream": stream}, want


def canon(x: Any, *, ids: bool) -> Any:
    """Comparable form: tool arguments parsed; without ids on the wire, ids renamed by first
    appearance (so what must match is which result answers which call)."""
    x = copy.deepcopy(x)
    names: dict[str, str] = {}

    def rid(i: str) -> str:
        return i if ids else names.setdefault(i, f"#{len(names)}")

    for m in (x.get("messages") or []) if isinstance(x, dict) and "messages" in x else []:
        for p in m["content"]:
            if p["type"] == "tool_call":
                p["id"] = rid(p["id"])
                p["arguments"] = json.loads(p["arguments"] or "{}")
            elif p["type"] == "tool_result":
                p["tool_call_id"] = rid(p["tool_call_id"])
    return x


@pytest.mark.parametrize("fid", UPSTREAM_FORMATS)
@SETTINGS
@given(data=st.data())
def test_request_round_trip_keeps_what_the_format_carries(fid: str, data: st.DataObject) -> None:
    req, meta, want = data.draw(requests(fid))
    f = fmt(fid)
    wire = f.encode_request(copy.deepcopy(req), meta)
    note(json.dumps(wire, ensure_ascii=False))
    wire = orjson.loads(orjson.dumps(wire))  # what travels is JSON
    back = f.decode_request(
        wire, {"model": meta["model"], "stream": meta["stream"]} if fid == "gemini" else {}
    )
    if fid == "gemini" and not meta["stream"]:
        want["stream"] = False  # the route says whether it streams; decode keeps what it was told
    assert canon(back, ids=CARRY[fid].ids) == canon(want, ids=CARRY[fid].ids)


# ---------------------------------------------------------------- (b) responses and streams

USAGE_CARRIED = {
    "openai-chat": ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens"),
    "anthropic-messages": (
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    ),
    "gemini": ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens"),
    "ollama": ("input_tokens", "output_tokens"),
}


@st.composite
def usages(draw: st.DrawFn, fid: str) -> dict[str, int]:
    carried = USAGE_CARRIED[fid]
    cached = draw(st.integers(0, 5000)) if "cached_tokens" in carried else 0
    write = draw(st.integers(0, 5000)) if "cache_write_tokens" in carried else 0
    reasoning = draw(st.integers(0, 5000)) if "reasoning_tokens" in carried else 0
    return {
        "input_tokens": cached + write + draw(st.integers(0, 100000)),  # input counts cached tokens too
        "output_tokens": reasoning + draw(st.integers(0, 100000)),  # output counts reasoning too
        "cached_tokens": cached,
        "cache_write_tokens": write,
        "reasoning_tokens": reasoning,
    }


@st.composite
def answer_parts(draw: st.DrawFn, fid: str) -> list[dict[str, Any]]:
    """An answer's content as the format orders it. OpenAI and Ollama carry one reasoning text,
    one answer text, then the calls; Anthropic and Gemini keep any order of blocks."""
    sig = CARRY[fid].signatures

    def thinking() -> dict[str, Any]:
        p = {"type": "thinking", "text": draw(words)}
        if sig and (fid == "anthropic-messages" or draw(st.booleans())):
            p["signature"] = draw(signatures)
        return p

    made: list[int] = []

    def call() -> dict[str, Any]:
        made.append(len(made))  # ids are unique within an answer
        return {
            "type": "tool_call",
            "id": f"call_{len(made)}_{draw(ident)}",
            "name": draw(tool_names),
            "arguments": draw(args),
        }

    if fid in ("openai-chat", "ollama"):
        parts = [thinking()] if draw(st.booleans()) else []
        parts += [{"type": "text", "text": draw(words)}] if draw(st.booleans()) else []
        return parts + [call() for _ in range(draw(st.integers(0, 2)))]
    kinds = draw(st.lists(st.sampled_from(["thinking", "text", "tool_call"]), max_size=5))
    parts = []
    for k in kinds:
        if k == "thinking":
            if parts and parts[-1]["type"] == "thinking":
                continue  # adjacent thinking is one block too
            parts.append(thinking())
        elif k == "text":
            if parts and parts[-1]["type"] == "text":
                continue  # adjacent texts are one block
            parts.append({"type": "text", "text": draw(words)})
        else:
            parts.append(call())
    if fid == "gemini" and parts and parts[0]["type"] != "thinking" and draw(st.booleans()):
        # a signature that came on a text or functionCall part: an empty thinking part before it
        parts.insert(0, {"type": "thinking", "text": "", "signature": draw(signatures)})
    return parts


def stop_for(draw: st.DrawFn, fid: str, parts: list[dict[str, Any]]) -> str:
    if any(p["type"] == "tool_call" for p in parts):
        return draw(st.sampled_from(["tool_calls", "length"]))
    return draw(
        st.sampled_from(["stop", "length"] + ([] if fid == "ollama" else ["content_filter"]))
    )  # Ollama has no filter reason


def canon_parts(parts: list[dict[str, Any]], fid: str) -> list[dict[str, Any]]:
    ids = CARRY[fid].ids
    out = []
    for p in copy.deepcopy(parts):
        p = {k: v for k, v in p.items() if v is not None}
        if p["type"] == "tool_call":
            p["arguments"] = json.loads(p["arguments"] or "{}")
            if not ids:
                p.pop("id")
        if p["type"] == "thinking" and not CARRY[fid].signatures:
            p.pop("signature", None)
        out.append(p)
    return out


def canon_usage(u: dict[str, Any], fid: str) -> dict[str, int]:
    return {k: u.get(k) or 0 for k in USAGE_CARRIED[fid]}


@pytest.mark.parametrize("fid", UPSTREAM_FORMATS)
@SETTINGS
@given(data=st.data())
def test_response_round_trip_keeps_what_the_format_carries(fid: str, data: st.DataObject) -> None:
    parts = data.draw(answer_parts(fid))
    resp = {
        "id": "up-1",
        "model": "m-1",
        "content": parts,
        "stop_reason": stop_for(data.draw, fid, parts),
        "usage": data.draw(usages(fid)),
    }
    f = fmt(fid)
    wire = orjson.loads(
        orjson.dumps(
            f.encode_response(copy.deepcopy(resp), {"id": "r1", "model": "m-1", "created": 1700000000})
        )
    )
    note(json.dumps(wire, ensure_ascii=False))
    back = f.decode_response(wire)
    assert canon_parts(back["content"], fid) == canon_parts(parts, fid)
    assert back["stop_reason"] == resp["stop_reason"]
    assert canon_usage(back["usage"], fid) == canon_usage(resp["usage"], fid)
    if fid != "ollama":  # Ollama answers carry no id
        assert back["id"] and back["model"] == "m-1"


def assemble(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The response a list of canonical stream events adds up to."""
    content: list[dict[str, Any]] = []
    calls: dict[Any, dict[str, Any]] = {}
    usage: dict[str, int] = {}
    stop = None
    for ev in events:
        t = ev["type"]
        last = content[-1] if content else None
        if t in ("text", "thinking"):
            if last is None or last["type"] != t:
                last = {"type": t, "text": ""}
                content.append(last)
            last["text"] += ev.get("text") or ""
            if ev.get("signature"):
                last["signature"] = ev["signature"]
        elif t == "tool_start":
            calls[ev["index"]] = {
                "type": "tool_call",
                "id": ev.get("id"),
                "name": ev["name"],
                "arguments": "",
            }
            content.append(calls[ev["index"]])
        elif t == "tool_args":
            calls[ev["index"]]["arguments"] += ev["delta"]
        elif t == "usage":
            usage.update({k: v for k, v in ev.items() if k != "type" and v is not None})
        elif t == "finish":
            stop = ev["stop_reason"]
        elif t == "error":
            raise AssertionError(f"an error event: {ev}")
    if stop in (None, "stop") and calls:
        stop = "tool_calls"
    return {
        "content": [p for p in content if p["type"] != "text" or p["text"]],
        "stop_reason": stop or "stop",
        "usage": usage,
    }


@st.composite
def stream_events(draw: st.DrawFn, fid: str) -> list[dict[str, Any]]:
    """A canonical stream: blocks of deltas (text and thinking cut in pieces, tool arguments in
    fragments), then usage and finish, as an upstream decoder emits them."""
    parts = draw(answer_parts(fid))
    events: list[dict[str, Any]] = [{"type": "start", "id": "up-1", "model": "m-1"}]

    def pieces(s: str) -> list[str]:
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(s) - 1)), max_size=3))) if len(s) > 1 else []
        return [s[a:b] for a, b in zip([0, *cuts], [*cuts, len(s)], strict=True)]

    for i, p in enumerate(parts):
        if p["type"] in ("text", "thinking"):
            events += [{"type": p["type"], "text": piece} for piece in pieces(p["text"])]
            if p.get("signature"):
                events.append({"type": "thinking", "signature": p["signature"]})
        else:
            events.append({"type": "tool_start", "index": i, "id": p["id"], "name": p["name"]})
            events += [{"type": "tool_args", "index": i, "delta": piece} for piece in pieces(p["arguments"])]
    u = draw(usages(fid))
    events.append({"type": "usage", **u})
    events.append({"type": "finish", "stop_reason": stop_for(draw, fid, parts)})
    return events


@pytest.mark.parametrize("fid", UPSTREAM_FORMATS)
@SETTINGS
@given(data=st.data())
def test_stream_round_trip_keeps_what_the_format_carries(fid: str, data: st.DataObject) -> None:
    events = data.draw(stream_events(fid))
    f = fmt(fid)
    enc = f.encoder({"id": "r1", "model": "m-1", "include_usage": True, "stream": True})
    wire = b"".join(enc.push(copy.deepcopy(ev)) for ev in events) + enc.end()
    note(wire.decode())
    dec = f.decoder()
    cut = data.draw(st.integers(0, len(wire)))  # the network cuts the bytes anywhere
    back = dec.feed(wire[:cut]) + dec.feed(wire[cut:]) + dec.close()
    want, got = assemble(events), assemble(back)
    assert canon_parts(got["content"], fid) == canon_parts(want["content"], fid)
    assert got["stop_reason"] == want["stop_reason"]
    assert canon_usage(got["usage"], fid) == canon_usage(want["usage"], fid)
    # and the encoder's own account of the stream (what usage records and the cache see) agrees
    assert canon_parts(enc.response()["content"], fid) == canon_parts(want["content"], fid)


# ---------------------------------------------------------------- (c) what the official SDKs read back
# The client side of a translation: canonical answers (whole, or as streams of deltas) encoded in
# each client format, then parsed and, for streams, reassembled by that format's official SDK (its
# own accumulators where it has them). What the SDK ends up with must be what was encoded.

CLIENT_SIGNATURES = {
    "openai-chat": False,
    "openai-responses": True,
    "anthropic-messages": True,
    "gemini": True,
    "ollama": False,
}
CLIENT_IDS = {
    "openai-chat": True,
    "openai-responses": True,
    "anthropic-messages": True,
    "gemini": False,
    "ollama": False,
}
META = {"id": "r1", "model": "m-1", "created": 1700000000, "include_usage": True, "stream": True}


@st.composite
def client_answer(draw: st.DrawFn, fid: str) -> dict[str, Any]:
    flat = fid in ("openai-chat", "ollama")
    base = "openai-chat" if flat else "anthropic-messages"  # the shape answer_parts draws
    parts = draw(answer_parts(base))
    for p in parts:
        if p["type"] == "thinking" and not CLIENT_SIGNATURES[fid]:
            p.pop("signature", None)
    usage = draw(usages("anthropic-messages"))
    if fid == "ollama":
        usage = {**usage, "cached_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0}
    else:
        usage["cache_write_tokens"] = 0  # only Anthropic (and Responses) clients see cache writes
    stop = stop_for(draw, "ollama" if fid == "ollama" else base, parts)
    return {"id": "up-1", "model": "m-1", "content": parts, "stop_reason": stop, "usage": usage}


def sdk_read(fid: str, obj: Any) -> dict[str, Any]:
    """A whole answer in client format `fid`, parsed by the official SDK, in canonical terms."""
    parts: list[dict[str, Any]] = []
    if fid == "openai-chat":
        from openai.types.chat import ChatCompletion

        c = ChatCompletion.model_validate(obj)
        msg = c.choices[0].message
        if (msg.model_extra or {}).get("reasoning_content"):
            parts.append({"type": "thinking", "text": msg.model_extra["reasoning_content"]})
        if msg.content:
            parts.append({"type": "text", "text": msg.content})
        parts += [
            {"type": "tool_call", "id": t.id, "name": t.function.name, "arguments": t.function.arguments}
            for t in msg.tool_calls or ()
        ]
        u = c.usage
        assert u is not None
        stop = {"tool_calls": "tool_calls", "length": "length", "content_filter": "content_filter"}.get(
            c.choices[0].finish_reason, "stop"
        )
        usage = {
            "input_tokens": u.prompt_tokens,
            "output_tokens": u.completion_tokens,
            "cached_tokens": u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0,
            "reasoning_tokens": u.completion_tokens_details.reasoning_tokens
            if u.completion_tokens_details
            else 0,
        }
    elif fid == "openai-responses":
        from openai.types.responses import Response

        r = obj if not isinstance(obj, dict) else Response.model_validate(obj)
        for item in r.output:
            if item.type == "reasoning":
                p = {"type": "thinking", "text": "".join(x.text for x in item.summary)}
                if item.encrypted_content:
                    p["signature"] = item.encrypted_content
                parts.append(p)
            elif item.type == "message":
                parts.append(
                    {"type": "text", "text": "".join(x.text for x in item.content if x.type == "output_text")}
                )
            elif item.type == "function_call":
                parts.append(
                    {"type": "tool_call", "id": item.call_id, "name": item.name, "arguments": item.arguments}
                )
        reason = r.incomplete_details.reason if r.incomplete_details else None
        stop = {"max_output_tokens": "length", "content_filter": "content_filter"}.get(reason or "", "stop")
        if stop == "stop" and any(p["type"] == "tool_call" for p in parts):
            stop = "tool_calls"
        assert r.usage is not None
        usage = {
            "input_tokens": r.usage.input_tokens,
            "output_tokens": r.usage.output_tokens,
            "cached_tokens": r.usage.input_tokens_details.cached_tokens,
            "reasoning_tokens": r.usage.output_tokens_details.reasoning_tokens,
        }
    elif fid == "anthropic-messages":
        from anthropic.types import Message

        m = obj if not isinstance(obj, dict) else Message.model_validate(obj)
        for b in m.content:
            if b.type == "thinking":
                parts.append({"type": "thinking", "text": b.thinking, "signature": b.signature})
            elif b.type == "text":
                parts.append({"type": "text", "text": b.text})
            elif b.type == "tool_use":
                parts.append(
                    {"type": "tool_call", "id": b.id, "name": b.name, "arguments": json.dumps(b.input)}
                )
        stop = {"max_tokens": "length", "tool_use": "tool_calls", "refusal": "content_filter"}.get(
            m.stop_reason or "", "stop"
        )
        u = m.usage
        cached, write = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
        usage = {
            "input_tokens": u.input_tokens + cached + write,
            "output_tokens": u.output_tokens,
            "cached_tokens": cached,
            "cache_write_tokens": write,
            "reasoning_tokens": u.output_tokens_details.thinking_tokens if u.output_tokens_details else 0,
        }
    else:
        raise AssertionError(fid)
    return {"content": parts, "stop_reason": stop, "usage": usage}


def gemini_read(chunks: list[Any]) -> dict[str, Any]:
    """Gemini chunks through google-genai's types: parts concatenated, the last finish reason, the
    latest (cumulative) usage."""
    from google.genai import types as gt

    events: list[dict[str, Any]] = []
    usage: dict[str, int] = {}
    last_total = -1
    for obj in chunks:
        r = gt.GenerateContentResponse.model_validate(obj)
        cand = r.candidates[0]
        for i, p in enumerate(cand.content.parts or () if cand.content else ()):
            sig = base64.b64encode(p.thought_signature).decode() if p.thought_signature else None
            if p.thought:
                events.append({"type": "thinking", "text": p.text or "", "signature": sig})
            elif p.function_call is not None:
                events.append(
                    {
                        "type": "tool_start",
                        "index": f"{id(obj)}:{i}",
                        "id": None,
                        "name": p.function_call.name,
                    }
                )
                events.append(
                    {
                        "type": "tool_args",
                        "index": f"{id(obj)}:{i}",
                        "delta": json.dumps(p.function_call.args or {}),
                    }
                )
            elif p.text:
                events.append({"type": "text", "text": p.text})
        if cand.finish_reason is not None:
            fr = cand.finish_reason.value
            events.append(
                {
                    "type": "finish",
                    "stop_reason": {"MAX_TOKENS": "length", "SAFETY": "content_filter"}.get(fr, "stop"),
                }
            )
        u = r.usage_metadata
        if u is not None and u.total_token_count is not None:
            assert u.total_token_count >= last_total, "cumulative usage went down"
            last_total = u.total_token_count
            usage = {
                "input_tokens": u.prompt_token_count or 0,
                "output_tokens": (u.candidates_token_count or 0) + (u.thoughts_token_count or 0),
                "cached_tokens": u.cached_content_token_count or 0,
                "reasoning_tokens": u.thoughts_token_count or 0,
            }
    out = assemble(events)
    out["usage"] = usage
    return out


def ollama_read(lines: list[Any]) -> dict[str, Any]:
    import ollama

    events: list[dict[str, Any]] = []
    usage: dict[str, int] = {}
    for n, obj in enumerate(lines):
        r = ollama.ChatResponse.model_validate(obj)
        if r.message.thinking:
            events.append({"type": "thinking", "text": r.message.thinking})
        if r.message.content:
            events.append({"type": "text", "text": r.message.content})
        for i, t in enumerate(r.message.tool_calls or ()):
            events.append({"type": "tool_start", "index": f"{n}:{i}", "id": None, "name": t.function.name})
            events.append(
                {"type": "tool_args", "index": f"{n}:{i}", "delta": json.dumps(dict(t.function.arguments))}
            )
        if r.done:
            assert n == len(lines) - 1, "a line after done"
            events.append(
                {"type": "finish", "stop_reason": "length" if r.done_reason == "length" else "stop"}
            )
            usage = {"input_tokens": r.prompt_eval_count or 0, "output_tokens": r.eval_count or 0}
    return {**assemble(events), "usage": usage}


def compare_answers(fid: str, got: dict[str, Any], want: dict[str, Any]) -> None:
    ids = CLIENT_IDS[fid]
    carried = {
        "ollama": USAGE_CARRIED["ollama"],
        "anthropic-messages": USAGE_CARRIED["anthropic-messages"],
    }.get(fid, USAGE_CARRIED["openai-chat"])

    def parts(ps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for p in ps:
            p = {k: v for k, v in p.items() if v not in (None, "") or k == "text"}
            if p["type"] == "tool_call":
                p["arguments"] = json.loads(p["arguments"] or "{}")
                if not ids:
                    p.pop("id", None)
            if p["type"] == "thinking" and not CLIENT_SIGNATURES[fid]:
                p.pop("signature", None)
            out.append(p)
        return out

    assert parts(got["content"]) == parts(want["content"])
    assert got["stop_reason"] == want["stop_reason"]
    assert {k: got["usage"].get(k) or 0 for k in carried} == {k: want["usage"].get(k) or 0 for k in carried}


@pytest.mark.parametrize("fid", CLIENT_FORMATS)
@SETTINGS
@given(data=st.data())
def test_sdks_read_the_answers_clients_get(fid: str, data: st.DataObject) -> None:
    resp = data.draw(client_answer(fid))
    obj = orjson.loads(orjson.dumps(fmt(fid).encode_response(copy.deepcopy(resp), META)))
    note(json.dumps(obj, ensure_ascii=False))
    if fid == "gemini":
        got = gemini_read([obj])
    elif fid == "ollama":
        got = ollama_read([obj])
    else:
        got = sdk_read(fid, obj)
    compare_answers(fid, got, resp)


def _frames(fid: str, raw: bytes) -> list[Any]:
    from engine.stream import parser_for

    f = fmt(fid)
    parser = parser_for(f.framing)
    return [orjson.loads(d) for _, d in [*parser.feed(raw), *parser.close()] if d != f.done]


@pytest.mark.parametrize("fid", CLIENT_FORMATS)
@SETTINGS
@given(data=st.data())
def test_sdks_reassemble_the_streams_clients_get(fid: str, data: st.DataObject) -> None:
    resp = data.draw(client_answer(fid))
    events = data.draw(stream_events_for(resp))
    enc = fmt(fid).encoder(dict(META))
    raw = b"".join(enc.push(copy.deepcopy(ev)) for ev in events) + enc.end()
    note(raw.decode())
    frames = _frames(fid, raw)
    if fid == "openai-chat":
        from openai.lib.streaming.chat import ChatCompletionStreamState
        from openai.types.chat import ChatCompletionChunk

        state = ChatCompletionStreamState()
        for fr in frames:
            state.handle_chunk(ChatCompletionChunk.model_validate(fr))
        # the snapshot, not get_final_completion(): that refuses to parse a length-cut answer
        snap = state.current_completion_snapshot.model_dump()
        got = sdk_read(fid, {**snap, "object": "chat.completion"})
    elif fid == "openai-responses":
        from openai import omit
        from openai.lib.streaming.responses import ResponseStreamState
        from openai.types.responses import ResponseStreamEvent
        from pydantic import TypeAdapter

        adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
        state = ResponseStreamState(input_tools=omit, text_format=omit)
        seqs = []
        for fr in frames:
            ev = adapter.validate_python(fr)
            seqs.append(ev.sequence_number)
            state.handle_event(ev)
        assert seqs == list(range(len(seqs))), "sequence numbers"
        last = adapter.validate_python(frames[-1])
        assert last.type in ("response.completed", "response.incomplete")
        got = sdk_read(fid, last.response)
        if last.type == "response.completed":  # the SDK's own reassembly of the deltas agrees
            assert state._completed_response is not None
            compare_answers(fid, sdk_read(fid, state._completed_response), resp)
    elif fid == "anthropic-messages":
        from anthropic.lib.streaming._messages import accumulate_event

        snapshot = None
        bufs: dict[int, bytes] = {}
        for fr in frames:
            snapshot = accumulate_event(event=fr, current_snapshot=snapshot, json_bufs=bufs)
        got = sdk_read(fid, snapshot)
    elif fid == "gemini":
        got = gemini_read(frames)
    else:
        got = ollama_read(frames)
    compare_answers(fid, got, resp)


@st.composite
def stream_events_for(draw: st.DrawFn, resp: dict[str, Any]) -> list[dict[str, Any]]:
    """The canonical events an upstream decoder would emit for `resp`, deltas cut anywhere."""
    events: list[dict[str, Any]] = [{"type": "start", "id": "up-1", "model": "m-1"}]

    def pieces(s: str) -> list[str]:
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(s) - 1)), max_size=3))) if len(s) > 1 else []
        return [s[a:b] for a, b in zip([0, *cuts], [*cuts, len(s)], strict=True)]

    for i, p in enumerate(resp["content"]):
        if p["type"] in ("text", "thinking"):
            events += [{"type": p["type"], "text": x} for x in pieces(p["text"])]
            if p.get("signature"):
                events.append({"type": "thinking", "signature": p["signature"]})
        else:
            events.append({"type": "tool_start", "index": i, "id": p["id"], "name": p["name"]})
            events += [{"type": "tool_args", "index": i, "delta": x} for x in pieces(p["arguments"])]
    events.append({"type": "usage", **resp["usage"]})
    events.append({"type": "finish", "stop_reason": resp["stop_reason"]})
    return events
