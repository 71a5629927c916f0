"""OpenAI, under `/openai/v1`: chat completions, models, embeddings, images.

Wire format as api.openai.com sends it: SSE `data:` lines ending with `data: [DONE]`, the
role-only first chunk, tool-call argument fragments keyed by `index`, and usage in a final
`choices: []` chunk only when `stream_options.include_usage` is true.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from . import behaviour as bh
from .behaviour import Plan, Turn
from .openai_checks import check_range, error, invalid, validate_chat
from .wire import CT_SSE, Frame, Headers, Reply, Request, drive, dumps, json_reply, now, rand_id, stream_reply

PREFIX = "/openai/v1"

EMBEDDING_PARAMS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
IMAGE_PARAMS = frozenset(
    {
        "prompt", "model", "n", "quality", "response_format", "size", "style", "user", "background",
        "moderation", "output_compression", "output_format", "partial_images", "stream",
    }
)  # fmt: skip
MODELS = (
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini", "gpt-5",
    "text-embedding-3-small", "text-embedding-3-large", "dall-e-3", "gpt-image-1",
)  # fmt: skip

# Static rate-limit headers, so gateways can exercise their header parsing on every answer.
RATE_HEADERS: Headers = [
    (b"openai-version", b"2020-10-01"),
    (b"openai-processing-ms", b"1"),
    (b"x-ratelimit-limit-requests", b"10000"),
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"x-ratelimit-reset-requests", b"6ms"),
    (b"x-ratelimit-limit-tokens", b"30000000"),
    (b"x-ratelimit-remaining-tokens", b"29999000"),
    (b"x-ratelimit-reset-tokens", b"2ms"),
]


def auth(req: Request) -> Reply | None:
    header = req.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
            "username) if you're accessing the API from your browser and are prompted for a username and "
            "password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
            type_="invalid_request_error",
        )
    verdict = bh.key_verdict(key)
    if verdict == 401:
        return error(
            401,
            f"Incorrect API key provided: {bh.mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )
    if verdict == 429:
        return error(
            429,
            "You exceeded your current quota, please check your plan and billing details. For more "
            "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            type_="insufficient_quota",
            code="insufficient_quota",
        )
    if verdict == 403:
        return error(403)
    return None


def _body(req: Request) -> dict[str, Any] | Reply:
    if req.json_error or not isinstance(req.json, dict):
        return invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
            "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
            "help center at help.openai.com.)"
        )
    return req.json


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def to_turn(body: dict[str, Any]) -> Turn:
    messages = body["messages"]
    turn = Turn()
    chars = 0
    for msg in messages:
        text = _text(msg.get("content"))
        chars += len(text)
        if msg.get("role") == "user":
            turn.user_text = text
    results: list[str] = []
    for msg in reversed(messages):
        if msg.get("role") != "tool":
            break
        results.append(_text(msg.get("content")))
    if results:
        turn.tool_results = results[::-1]
    turn.prompt_chars = chars
    for tool in body.get("tools") or ():
        fn = tool.get("function") if tool.get("type") == "function" else None
        if fn:
            turn.tools.append((fn["name"], fn.get("parameters") or {}))
    choice = body.get("tool_choice")
    if choice in ("none", "required"):
        turn.tool_choice = choice
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        turn.tool_choice = choice["function"].get("name")
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    turn.max_tokens = limit if isinstance(limit, int) else None
    stop = body.get("stop")
    turn.stop = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str)]
    return turn


FINISH = {"stop": "stop", "length": "length", "tool": "tool_calls", "stop_sequence": "stop"}


def usage(plan: Plan, n: int = 1) -> dict[str, Any]:
    completion = plan.output_tokens * n
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning_tokens * n,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _call_ids(plan: Plan) -> list[str]:
    return ["call_" + rand_id(24) for _ in plan.tool_calls]


def completion(plan: Plan, model: str, n: int) -> dict[str, Any]:
    choices = []
    for idx in range(n):
        message: dict[str, Any] = {"role": "assistant", "content": None if plan.tool_calls else plan.text}
        if plan.thinking:
            message["reasoning_content"] = plan.thinking
        if plan.tool_calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": c.name, "arguments": c.args_json}}
                for cid, c in zip(_call_ids(plan), plan.tool_calls, strict=True)
            ]
        message["refusal"] = None
        message["annotations"] = []
        choices.append(
            {"index": idx, "message": message, "logprobs": None, "finish_reason": FINISH[plan.stop]}
        )
    return {
        "id": "chatcmpl-" + rand_id(29),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": usage(plan, n),
        "service_tier": "default",
        "system_fingerprint": "fp_fake0001",
    }


def stream_frames(plan: Plan, model: str, n: int, include_usage: bool) -> list[Frame]:
    head = {
        "id": "chatcmpl-" + rand_id(29),
        "object": "chat.completion.chunk",
        "created": now(),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake0001",
    }

    # Every chunk shares its head; serialising it once keeps long streams cheap to build.
    prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":['
    suffix = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"

    def chunk(idx: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": idx, "delta": delta, "logprobs": None, "finish_reason": finish}
        return prefix + orjson.dumps(choice) + suffix

    frames: list[Frame] = []
    for idx in range(n):
        frames.append(
            (
                chunk(
                    idx, {"role": "assistant", "content": None if plan.tool_calls else "", "refusal": None}
                ),
                False,
            )
        )
        frames.extend((chunk(idx, {"reasoning_content": w}), True) for w in plan.thinking_chunks)
        frames.extend((chunk(idx, {"content": w}), True) for w in plan.chunks)
        for k, (cid, call) in enumerate(zip(_call_ids(plan), plan.tool_calls, strict=True)):
            opening = {
                "index": k,
                "id": cid,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            frames.append((chunk(idx, {"tool_calls": [opening]}), True))
            for piece in call.fragments():
                frames.append(
                    (chunk(idx, {"tool_calls": [{"index": k, "function": {"arguments": piece}}]}), True)
                )
        frames.append((chunk(idx, {}, FINISH[plan.stop]), False))
    if include_usage:
        obj = dict(head)
        obj["choices"] = []
        obj["usage"] = usage(plan, n)
        frames.append((b"data: " + dumps(obj) + b"\n\n", False))
    frames.append((b"data: [DONE]\n\n", False))
    return frames


def _headers() -> Headers:
    return [(b"x-request-id", ("req_" + rand_id(24)).encode()), *RATE_HEADERS]


async def chat(req: Request) -> Reply:
    body = _body(req)
    if isinstance(body, Reply):
        return body
    problem = validate_chat(body)
    if problem:
        return problem
    model = body["model"]
    plan = bh.make_plan(to_turn(body), model)
    if plan.error:
        return error(plan.error)
    if plan.slow_ms:
        await asyncio.sleep(plan.slow_ms / 1000)
    n = body.get("n") or 1
    if body.get("stream") is True:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        frames = stream_frames(plan, model, n, include_usage)
        return stream_reply(drive(frames, plan.slow_ms, plan.cut), CT_SSE, _headers())
    return json_reply(200, completion(plan, model, n), _headers())


async def models(req: Request) -> Reply:
    created = 1_700_000_000
    data = [{"id": m, "object": "model", "created": created, "owned_by": "system"} for m in MODELS]
    return json_reply(200, {"object": "list", "data": data}, _headers())


async def embeddings(req: Request) -> Reply:
    body = _body(req)
    if isinstance(body, Reply):
        return body
    for key in body:
        if key not in EMBEDDING_PARAMS:
            return invalid(f"Unrecognized request argument supplied: {key}")
    model = body.get("model")
    if not model:
        return invalid("you must provide a model parameter")
    raw = body.get("input")
    if raw is None:
        return invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    texts = _embedding_inputs(raw)
    if texts is None:
        return invalid(
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
        )
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        return invalid(
            f"Invalid value: '{fmt}'. Supported values are: 'float' and 'base64'.",
            "encoding_format",
            "invalid_value",
        )
    dims = body.get("dimensions")
    if dims is not None:
        problem = check_range(body, "dimensions", 1, None, integer=True)
        if problem:
            return problem
        if "text-embedding-3" not in model:
            return invalid("This model does not support specifying dimensions.", "dimensions")
    size = dims or (3072 if "large" in model else 1536)
    data = []
    tokens = 0
    for i, text in enumerate(texts):
        vec = bh.embedding(text, size)
        data.append(
            {
                "object": "embedding",
                "index": i,
                "embedding": bh.embedding_b64(vec) if fmt == "base64" else vec,
            }
        )
        tokens += bh.tokens_for_chars(len(text))
    result = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json_reply(200, result, _headers())


def _embedding_inputs(raw: Any) -> list[str] | None:
    if isinstance(raw, str):
        return [raw] if raw else None
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(x, str) and x for x in raw):
        return list(raw)
    if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        return [" ".join(map(str, raw))]
    if all(isinstance(x, list) and x and all(isinstance(t, int) for t in x) for x in raw):
        return [" ".join(map(str, x)) for x in raw]
    return None


async def images(req: Request) -> Reply:
    body = _body(req)
    if isinstance(body, Reply):
        return body
    for key in body:
        if key not in IMAGE_PARAMS:
            return invalid(f"Unrecognized request argument supplied: {key}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    problem = check_range(body, "n", 1, 10, integer=True)
    if problem:
        return problem
    model = body.get("model") or "dall-e-2"
    default_fmt = "b64_json" if model.startswith("gpt-image") else "url"
    fmt = body.get("response_format") or default_fmt
    if fmt not in ("url", "b64_json"):
        return invalid(
            f"Invalid value: '{fmt}'. Supported values are: 'url' and 'b64_json'.",
            "response_format",
            "invalid_value",
        )
    host = req.headers.get("host", "127.0.0.1")
    item: dict[str, Any] = (
        {"b64_json": bh.PNG_B64} if fmt == "b64_json" else {"url": f"http://{host}/_files/image.png"}
    )
    if model == "dall-e-3":
        item["revised_prompt"] = prompt
    result: dict[str, Any] = {"created": now(), "data": [dict(item) for _ in range(body.get("n") or 1)]}
    if model.startswith("gpt-image"):
        tokens = bh.tokens_for_chars(len(prompt))
        result["usage"] = {
            "total_tokens": tokens + 272,
            "input_tokens": tokens,
            "output_tokens": 272,
            "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
        }
    return json_reply(200, result, _headers())


ROUTES = {
    ("POST", PREFIX + "/chat/completions"): ("openai.chat", chat),
    ("GET", PREFIX + "/models"): ("openai.models", models),
    ("POST", PREFIX + "/embeddings"): ("openai.embeddings", embeddings),
    ("POST", PREFIX + "/images/generations"): ("openai.images", images),
}
