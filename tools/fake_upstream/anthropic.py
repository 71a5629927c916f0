"""Anthropic Messages, under `/anthropic/v1`: messages, count_tokens, models.

Wire format as api.anthropic.com sends it: named SSE events (`message_start`, `content_block_*`,
`ping`, `message_delta`, `message_stop`, `error`), content blocks with their own indexes, usage
split between `message_start` (input) and `message_delta` (cumulative output).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from . import behaviour as bh
from .anthropic_checks import COUNT_FIELDS, MESSAGE_FIELDS, error, invalid, request_id, validate
from .behaviour import Plan, Turn
from .wire import CT_SSE, Frame, Headers, Reply, Request, drive, json_reply, rand_id, sse, stream_reply

PREFIX = "/anthropic/v1"

MODELS = (
    ("claude-opus-4-1-20250805", "Claude Opus 4.1"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5"),
)
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")

RATE_HEADERS: Headers = [
    (b"anthropic-ratelimit-requests-limit", b"4000"),
    (b"anthropic-ratelimit-requests-remaining", b"3999"),
    (b"anthropic-ratelimit-requests-reset", b"2030-01-01T00:00:00Z"),
    (b"anthropic-ratelimit-tokens-limit", b"2400000"),
    (b"anthropic-ratelimit-tokens-remaining", b"2398000"),
    (b"anthropic-ratelimit-tokens-reset", b"2030-01-01T00:00:00Z"),
    (b"anthropic-ratelimit-input-tokens-limit", b"2000000"),
    (b"anthropic-ratelimit-input-tokens-remaining", b"1999000"),
    (b"anthropic-ratelimit-input-tokens-reset", b"2030-01-01T00:00:00Z"),
    (b"anthropic-ratelimit-output-tokens-limit", b"400000"),
    (b"anthropic-ratelimit-output-tokens-remaining", b"399000"),
    (b"anthropic-ratelimit-output-tokens-reset", b"2030-01-01T00:00:00Z"),
]


def auth(req: Request) -> Reply | None:
    key = req.headers.get("x-api-key", "")
    if not key:
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else ""
    if not key:
        return error(401, "x-api-key header is required")
    verdict = bh.key_verdict(key)
    if verdict:
        return error(verdict)
    version = req.headers.get("anthropic-version")
    if not version:
        return invalid("anthropic-version: header is required")
    if not _VERSION.match(version):
        return invalid(f'anthropic-version: "{version}" is not a valid version')
    return None


def _body(req: Request) -> dict[str, Any] | Reply:
    if req.json_error or not isinstance(req.json, dict):
        return invalid(
            "There was an error parsing the body of your request. Please make sure the body is valid JSON."
        )
    return req.json


def _block_text(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return block.get("text") or ""
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
            )
    return ""


def to_turn(body: dict[str, Any]) -> Turn:
    turn = Turn()
    system = body.get("system")
    chars = len(system) if isinstance(system, str) else sum(len(b.get("text", "")) for b in system or ())
    messages = body["messages"]
    for msg in messages:
        content = msg["content"]
        if isinstance(content, str):
            chars += len(content)
            if msg["role"] == "user":
                turn.user_text = content
            continue
        texts = [b.get("text", "") for b in content if b.get("type") == "text"]
        chars += sum(len(_block_text(b)) for b in content)
        if msg["role"] == "user" and texts:
            turn.user_text = " ".join(texts)
    last = messages[-1]
    if last["role"] == "user" and isinstance(last["content"], list):
        results = [_block_text(b) for b in last["content"] if b.get("type") == "tool_result"]
        if results:
            turn.tool_results = results
    turn.prompt_chars = chars
    for tool in body.get("tools") or ():
        if tool.get("type") in (None, "custom"):
            turn.tools.append((tool["name"], tool.get("input_schema") or {}))
    choice = body.get("tool_choice") or {}
    kind = str(choice.get("type"))
    turn.tool_choice = {"none": "none", "any": "required", "tool": choice.get("name")}.get(kind)
    turn.max_tokens = body.get("max_tokens")
    turn.stop = [s for s in body.get("stop_sequences") or () if isinstance(s, str)]
    return turn


STOP = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use", "stop_sequence": "stop_sequence"}


def usage(plan: Plan, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": plan.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": plan.cached_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message(plan: Plan, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if plan.thinking:
        content.append({"type": "thinking", "thinking": plan.thinking, "signature": plan.signature})
    if plan.text:
        content.append({"type": "text", "text": plan.text})
    for call in plan.tool_calls:
        content.append(
            {"type": "tool_use", "id": "toolu_01" + rand_id(22), "name": call.name, "input": call.args}
        )
    return {
        "id": "msg_01" + rand_id(22),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP[plan.stop],
        "stop_sequence": plan.stop_sequence,
        "usage": usage(plan, plan.output_tokens),
    }


def stream_frames(plan: Plan, model: str) -> list[Frame]:
    start = message(plan, model)
    start.update(content=[], stop_reason=None, stop_sequence=None, usage=usage(plan, 1))
    frames: list[Frame] = [(sse({"type": "message_start", "message": start}, "message_start"), False)]
    index = 0
    pinged = False

    def open_block(block: dict[str, Any]) -> None:
        nonlocal pinged
        frames.append(
            (
                sse(
                    {"type": "content_block_start", "index": index, "content_block": block},
                    "content_block_start",
                ),
                False,
            )
        )
        if not pinged:
            frames.append((sse({"type": "ping"}, "ping"), False))
            pinged = True

    def delta(d: dict[str, Any], content: bool = True) -> None:
        frames.append(
            (sse({"type": "content_block_delta", "index": index, "delta": d}, "content_block_delta"), content)
        )

    def close_block() -> None:
        nonlocal index
        frames.append((sse({"type": "content_block_stop", "index": index}, "content_block_stop"), False))
        index += 1

    if plan.thinking:
        open_block({"type": "thinking", "thinking": "", "signature": ""})
        for w in plan.thinking_chunks:
            delta({"type": "thinking_delta", "thinking": w})
        delta({"type": "signature_delta", "signature": plan.signature}, content=False)
        close_block()
    if plan.chunks:
        open_block({"type": "text", "text": ""})
        for w in plan.chunks:
            delta({"type": "text_delta", "text": w})
        close_block()
    for call in plan.tool_calls:
        open_block({"type": "tool_use", "id": "toolu_01" + rand_id(22), "name": call.name, "input": {}})
        delta({"type": "input_json_delta", "partial_json": ""}, content=False)
        for piece in call.fragments():
            delta({"type": "input_json_delta", "partial_json": piece})
        close_block()
    if not pinged:
        frames.append((sse({"type": "ping"}, "ping"), False))
    final_usage = usage(plan, plan.output_tokens)
    del final_usage["cache_creation"], final_usage["service_tier"]
    frames.append(
        (
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": STOP[plan.stop], "stop_sequence": plan.stop_sequence},
                    "usage": final_usage,
                },
                "message_delta",
            ),
            False,
        )
    )
    frames.append((sse({"type": "message_stop"}, "message_stop"), False))
    return frames


CUT_EVENT = sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")


def _headers() -> Headers:
    return [(b"request-id", request_id().encode()), *RATE_HEADERS]


async def messages(req: Request) -> Reply:
    body = _body(req)
    if isinstance(body, Reply):
        return body
    problem = validate(body, MESSAGE_FIELDS, need_max_tokens=True)
    if problem:
        return problem
    model = body["model"]
    plan = bh.make_plan(to_turn(body), model)
    if plan.error:
        return error(plan.error)
    if plan.slow_ms:
        await asyncio.sleep(plan.slow_ms / 1000)
    if body.get("stream") is True:
        frames = stream_frames(plan, model)
        return stream_reply(drive(frames, plan.slow_ms, plan.cut, CUT_EVENT), CT_SSE, _headers())
    return json_reply(200, message(plan, model), _headers())


async def count_tokens(req: Request) -> Reply:
    body = _body(req)
    if isinstance(body, Reply):
        return body
    problem = validate(body, COUNT_FIELDS, need_max_tokens=False)
    if problem:
        return problem
    turn = to_turn(body)
    return json_reply(200, {"input_tokens": bh.tokens_for_chars(turn.prompt_chars)}, _headers())


async def models(req: Request) -> Reply:
    data = [
        {"type": "model", "id": mid, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}
        for mid, name in MODELS
    ]
    body = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
    return json_reply(200, body, _headers())


ROUTES = {
    ("POST", PREFIX + "/messages"): ("anthropic.messages", messages),
    ("POST", PREFIX + "/messages/count_tokens"): ("anthropic.count_tokens", count_tokens),
    ("GET", PREFIX + "/models"): ("anthropic.models", models),
}
