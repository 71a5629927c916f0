"""Ollama, under `/ollama`: /api/chat, /api/embed, /api/tags, /api/version.

Wire format as the Ollama server sends it: NDJSON lines (streaming is the default), whole
`tool_calls` with object arguments, and the counters and nanosecond durations on the final
`done: true` line. Ollama is keyless; a Go JSON decoder ignores unknown fields, so only type
mismatches and the checks Ollama itself makes are rejected.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Any

import orjson

from . import behaviour as bh
from .behaviour import Plan, Turn
from .wire import CT_NDJSON, Frame, Headers, Reply, Request, drive, json_reply, stream_reply

PREFIX = "/ollama"
ROLES = ("system", "user", "assistant", "tool")
TAGS = (
    ("llama3.2:latest", "llama", "3.2B", 2019393189),
    ("qwen3:8b", "qwen3", "8.2B", 5225387923),
    ("nomic-embed-text:latest", "nomic-bert", "137M", 274302450),
)
_BASE64 = re.compile(r"[^A-Za-z0-9+/=\r\n]")

DEFAULT_MESSAGES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "model not found",
    429: "too many requests",
    500: "llama runner process has terminated: exit status 2",
    503: "server busy, please try again. maximum pending requests exceeded",
}


def error(status: int, message: str | None = None, headers: Headers | None = None) -> Reply:
    extra: Headers = [(b"retry-after", b"1")] if status == 429 else []
    if headers:
        extra.extend(headers)
    return json_reply(status, {"error": message or DEFAULT_MESSAGES.get(status, "error")}, extra)


def invalid(message: str) -> Reply:
    return error(400, message)


def auth(req: Request) -> Reply | None:
    return None


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _unmarshal(value: Any, field: str, go_type: str) -> Reply:
    return invalid(f"json: cannot unmarshal {_go_type(value)} into Go struct field {field} of type {go_type}")


def _body(req: Request) -> dict[str, Any] | Reply:
    if req.json_error:
        return invalid("invalid character looking for beginning of value")
    if not isinstance(req.json, dict):
        return _unmarshal(req.json, "", "api.ChatRequest")
    return req.json


def _check_base64(data: str) -> str | None:
    bad = _BASE64.search(data)
    if bad:
        return f"illegal base64 data at input byte {bad.start()}"
    compact = data.replace("\r", "").replace("\n", "")
    if len(compact) % 4:
        return f"illegal base64 data at input byte {len(compact) - len(compact) % 4}"
    return None


def validate(body: dict[str, Any]) -> Reply | None:
    if not body.get("model"):
        return invalid("model is required")
    messages = body.get("messages")
    if messages is None:
        return invalid("messages is required")
    if not isinstance(messages, list):
        return _unmarshal(messages, "ChatRequest.messages", "[]api.Message")
    for msg in messages:
        if not isinstance(msg, dict):
            return _unmarshal(msg, "ChatRequest.messages", "api.Message")
        role = msg.get("role")
        if role not in ROLES:
            return invalid(f"invalid role: {role!r}; must be one of system, user, assistant, tool")
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            return _unmarshal(content, "Message.messages.content", "string")
        images = msg.get("images")
        if images is not None:
            if not isinstance(images, list):
                return _unmarshal(images, "Message.messages.images", "[]api.ImageData")
            for image in images:
                if not isinstance(image, str):
                    return _unmarshal(image, "Message.messages.images", "api.ImageData")
                problem = _check_base64(image)
                if problem:
                    return invalid(problem)
        calls = msg.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                return _unmarshal(calls, "Message.messages.tool_calls", "[]api.ToolCall")
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict):
                    return _unmarshal(fn, "ToolCall.messages.tool_calls.function", "api.ToolCallFunction")
                args = fn.get("arguments")
                if args is not None and not isinstance(args, dict):
                    return _unmarshal(
                        args,
                        "ToolCallFunction.messages.tool_calls.function.arguments",
                        "api.ToolCallFunctionArguments",
                    )
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return _unmarshal(tools, "ChatRequest.tools", "api.Tools")
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        return _unmarshal(options, "ChatRequest.options", "map[string]interface {}")
    return None


def to_turn(body: dict[str, Any]) -> Turn:
    turn = Turn()
    messages = body["messages"]
    for msg in messages:
        content = msg.get("content") or ""
        turn.prompt_chars += len(content)
        if msg["role"] == "user":
            turn.user_text = content
    results = []
    for msg in reversed(messages):
        if msg["role"] != "tool":
            break
        results.append(msg.get("content") or "")
    if results:
        turn.tool_results = results[::-1]
    for tool in body.get("tools") or ():
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and fn.get("name"):
            turn.tools.append((fn["name"], fn.get("parameters") or {}))
    options = body.get("options") or {}
    limit = options.get("num_predict")
    turn.max_tokens = limit if isinstance(limit, int) and limit >= 0 else None
    stop = options.get("stop")
    turn.stop = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str)]
    return turn


def created_at() -> str:
    ns = time.time_ns()
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"
    )


def _totals(plan: Plan) -> dict[str, Any]:
    prompt_ns = plan.input_tokens * 100_000
    eval_ns = max(1, plan.output_tokens) * 1_000_000
    return {
        "total_duration": 1_000_000 + prompt_ns + eval_ns,
        "load_duration": 1_000_000,
        "prompt_eval_count": plan.input_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": plan.output_tokens,
        "eval_duration": eval_ns,
    }


def _calls(plan: Plan) -> list[dict[str, Any]]:
    return [{"function": {"name": c.name, "arguments": c.args}} for c in plan.tool_calls]


DONE_REASON = {"stop": "stop", "length": "length", "tool": "stop", "stop_sequence": "stop"}


def chat_response(plan: Plan, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": plan.text}
    if plan.thinking:
        message["thinking"] = plan.thinking
    if plan.tool_calls:
        message["tool_calls"] = _calls(plan)
    out = {
        "model": model,
        "created_at": created_at(),
        "message": message,
        "done_reason": DONE_REASON[plan.stop],
        "done": True,
    }
    out.update(_totals(plan))
    return out


def stream_frames(plan: Plan, model: str) -> list[Frame]:
    stamp = created_at()

    def line(message: dict[str, Any]) -> bytes:
        return orjson.dumps({"model": model, "created_at": stamp, "message": message, "done": False}) + b"\n"

    frames: list[Frame] = [
        (line({"role": "assistant", "content": "", "thinking": w}), True) for w in plan.thinking_chunks
    ]
    frames.extend((line({"role": "assistant", "content": w}), True) for w in plan.chunks)
    if plan.tool_calls:
        frames.append((line({"role": "assistant", "content": "", "tool_calls": _calls(plan)}), True))
    final: dict[str, Any] = {
        "model": model,
        "created_at": stamp,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": DONE_REASON[plan.stop],
    }
    final.update(_totals(plan))
    frames.append((orjson.dumps(final) + b"\n", False))
    return frames


async def chat(req: Request) -> Reply:
    body = _body(req)
    if isinstance(body, Reply):
        return body
    problem = validate(body)
    if problem:
        return problem
    model = body["model"]
    plan = bh.make_plan(to_turn(body), model)
    if plan.error:
        return error(plan.error)
    if plan.slow_ms:
        await asyncio.sleep(plan.slow_ms / 1000)
    if body.get("stream", True) is False:
        return json_reply(200, chat_response(plan, model))
    return stream_reply(drive(stream_frames(plan, model), plan.slow_ms, plan.cut), CT_NDJSON)


async def embed(req: Request) -> Reply:
    body = _body(req)
    if isinstance(body, Reply):
        return body
    model = body.get("model")
    if not model:
        return invalid("model is required")
    raw = body.get("input", [])
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return _unmarshal(raw, "EmbedRequest.input", "string")
    dims = body.get("dimensions") or 768
    vectors = [bh.embedding(t, dims) for t in texts]
    tokens = sum(bh.tokens_for_chars(len(t)) for t in texts)
    return json_reply(
        200,
        {
            "model": model,
            "embeddings": vectors,
            "total_duration": 1_000_000 + tokens * 100_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": tokens,
        },
    )


async def tags(req: Request) -> Reply:
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": "2025-01-01T00:00:00.000000000Z",
            "size": size,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": family,
                "families": [family],
                "parameter_size": params,
                "quantization_level": "Q4_K_M",
            },
        }
        for name, family, params, size in TAGS
    ]
    return json_reply(200, {"models": models})


async def version(req: Request) -> Reply:
    return json_reply(200, {"version": "0.12.6"})


ROUTES = {
    ("POST", PREFIX + "/api/chat"): ("ollama.chat", chat),
    ("POST", PREFIX + "/api/embed"): ("ollama.embed", embed),
    ("GET", PREFIX + "/api/tags"): ("ollama.tags", tags),
    ("GET", PREFIX + "/api/version"): ("ollama.version", version),
}
