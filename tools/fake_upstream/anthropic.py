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
from .behaviour import Plan, Turn
from .wire import CT_SSE, Frame, Headers, Reply, Request, drive, json_reply, rand_id, sse, stream_reply

PREFIX = "/anthropic/v1"

MESSAGE_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
        "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
        "container", "mcp_servers", "context_management", "cache_control", "output_config",
        "inference_geo", "speed", "diagnostics", "user_profile_id", "workspace_id",
    }
)  # fmt: skip
COUNT_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers", "context_management",
     "output_config", "cache_control", "speed"}
)  # fmt: skip
BLOCK_TYPES = (
    "text", "image", "document", "search_result", "tool_use", "tool_result", "thinking", "redacted_thinking",
    "server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
    "mcp_tool_use", "mcp_tool_result", "container_upload",
)  # fmt: skip
IMAGE_MEDIA = ("image/jpeg", "image/png", "image/gif", "image/webp")
MODELS = (
    ("claude-opus-4-1-20250805", "Claude Opus 4.1"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5"),
)
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")

ERROR_TYPES = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization. Please retry after 1s.",
    ),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}

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


def _request_id() -> str:
    return "req_011C" + rand_id(20)


def error(status: int, message: str | None = None, headers: Headers | None = None) -> Reply:
    kind, default = ERROR_TYPES.get(status, ("api_error", "Internal server error"))
    rid = _request_id()
    extra: Headers = [(b"request-id", rid.encode())]
    if status == 429:
        extra.append((b"retry-after", b"1"))
    if headers:
        extra.extend(headers)
    body = {"type": "error", "error": {"type": kind, "message": message or default}, "request_id": rid}
    return json_reply(status, body, extra)


def invalid(message: str) -> Reply:
    return error(400, message)


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


def validate(body: dict[str, Any], known: frozenset[str], need_max_tokens: bool) -> Reply | None:
    for key in body:
        if key not in known:
            return invalid(f"{key}: Extra inputs are not permitted")
    for key in ("model", "messages", "max_tokens") if need_max_tokens else ("model", "messages"):
        if key not in body:
            return invalid(f"{key}: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        return invalid("model: Input should be a valid string")
    if need_max_tokens:
        mt = body["max_tokens"]
        if isinstance(mt, bool) or not isinstance(mt, int):
            return invalid("max_tokens: Input should be a valid integer")
        if mt < 1:
            return invalid("max_tokens: Input should be greater than or equal to 1")
    problem = _check_system(body.get("system"))
    if problem:
        return problem
    problem = _check_messages(body["messages"])
    if problem:
        return problem
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            return invalid("temperature: Input should be a valid number")
        if temperature < 0:
            return invalid("temperature: Input should be greater than or equal to 0")
        if temperature > 1:
            return invalid("temperature: Input should be less than or equal to 1")
    top_p = body.get("top_p")
    if isinstance(top_p, (int, float)) and not 0 <= top_p <= 1:
        return invalid(
            "top_p: Input should be less than or equal to 1"
            if top_p > 1
            else "top_p: Input should be greater than or equal to 0"
        )
    problem = _check_thinking(body, need_max_tokens)
    if problem:
        return problem
    return _check_tools(body)


def _check_system(system: Any) -> Reply | None:
    if system is None or isinstance(system, str):
        return None
    if not isinstance(system, list):
        return invalid("system: Input should be a valid list")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            return invalid(f"system.{i}.type: Input should be 'text'")
        text = block.get("text")
        if not isinstance(text, str):
            return invalid(f"system.{i}.text: Field required")
        if not text:
            return invalid("system: text content blocks must be non-empty")
    return None


def _check_messages(messages: Any) -> Reply | None:
    if not isinstance(messages, list):
        return invalid("messages: Input should be a valid list")
    if not messages:
        return invalid("messages: at least one message is required")
    pending: list[str] = []  # tool_use ids the next message must answer
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return invalid(f"messages.{i}: Input should be a valid dictionary")
        for key in msg:
            if key not in ("role", "content"):
                return invalid(f"messages.{i}.{key}: Extra inputs are not permitted")
        role = msg.get("role")
        if role is None:
            return invalid(f"messages.{i}.role: Field required")
        if role not in ("user", "assistant"):
            return invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in msg:
            return invalid(f"messages.{i}.content: Field required")
        content = msg["content"]
        last = i == len(messages) - 1
        if isinstance(content, str):
            blocks: list[Any] = (
                [{"type": "text", "text": content}] if content or not (last and role == "assistant") else []
            )
        elif isinstance(content, list):
            blocks = content
        else:
            return invalid(f"messages.{i}.content: Input should be a valid string")
        if not blocks and not (last and role == "assistant"):
            return invalid(
                f"messages.{i}: all messages must have non-empty content except for the optional final assistant message"
            )
        answered: list[str] = []
        uses: list[str] = []
        for j, block in enumerate(blocks):
            problem = _check_block(block, i, j, role)
            if problem:
                return problem
            if block["type"] == "tool_result":
                answered.append(block["tool_use_id"])
            elif block["type"] == "tool_use":
                uses.append(block["id"])
        for j, use_id in enumerate(answered):
            if use_id not in pending:
                return invalid(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {use_id}. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )
        missing = [u for u in pending if u not in answered]
        if missing:
            return invalid(
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in "
                "the next message."
            )
        pending = uses
    if pending:
        return invalid(
            f"messages.{len(messages)}: `tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(pending)}. Each `tool_use` block must have a corresponding `tool_result` block in the next message."
        )
    return None


def _check_block(block: Any, i: int, j: int, role: str) -> Reply | None:
    at = f"messages.{i}.content.{j}"
    if not isinstance(block, dict):
        return invalid(f"{at}: Input should be a valid dictionary")
    kind = block.get("type")
    if kind not in BLOCK_TYPES:
        expected = ", ".join(f"'{t}'" for t in BLOCK_TYPES)
        return invalid(
            f"{at}: Input tag '{kind}' found using 'type' does not match any of the expected tags: {expected}"
        )
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            return invalid(f"{at}.text.text: Field required")
        if not text:
            return invalid("messages: text content blocks must be non-empty")
        if not text.strip():
            return invalid("messages: text content blocks must contain non-whitespace text")
    elif kind == "image":
        source = block.get("source")
        if not isinstance(source, dict):
            return invalid(f"{at}.image.source: Field required")
        stype = source.get("type")
        if stype == "base64":
            if source.get("media_type") not in IMAGE_MEDIA:
                return invalid(
                    f"{at}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                )
            if not isinstance(source.get("data"), str):
                return invalid(f"{at}.image.source.base64.data: Field required")
        elif stype == "url":
            if not isinstance(source.get("url"), str):
                return invalid(f"{at}.image.source.url.url: Field required")
        elif stype != "file":
            return invalid(
                f"{at}.image.source: Input tag '{stype}' found using 'type' does not match any of the expected tags: "
                "'base64', 'url', 'file'"
            )
    elif kind == "tool_use":
        if role != "assistant":
            return invalid(f"{at}: tool_use blocks are only allowed in assistant messages")
        for key in ("id", "name", "input"):
            if key not in block:
                return invalid(f"{at}.tool_use.{key}: Field required")
        if not isinstance(block["input"], dict):
            return invalid(f"{at}.tool_use.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if role != "user":
            return invalid(f"{at}: tool_result blocks are only allowed in user messages")
        if not isinstance(block.get("tool_use_id"), str):
            return invalid(f"{at}.tool_result.tool_use_id: Field required")
        content = block.get("content")
        if content is not None and not isinstance(content, (str, list)):
            return invalid(f"{at}.tool_result.content: Input should be a valid string")
    elif kind == "thinking":
        if not isinstance(block.get("thinking"), str):
            return invalid(f"{at}.thinking.thinking: Field required")
        if not isinstance(block.get("signature"), str) or not block["signature"]:
            return invalid(f"{at}.thinking.signature: Field required")
    return None


def _check_thinking(body: dict[str, Any], need_max_tokens: bool) -> Reply | None:
    thinking = body.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, dict):
        return invalid("thinking: Input should be a valid dictionary")
    kind = thinking.get("type")
    if kind not in ("enabled", "disabled", "adaptive", "between_tools"):
        return invalid(
            f"thinking: Input tag '{kind}' found using 'type' does not match any of the expected tags: "
            "'enabled', 'disabled', 'adaptive', 'between_tools'"
        )
    if kind != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int):
        return invalid("thinking.enabled.budget_tokens: Field required")
    if budget < 1024:
        return invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    if need_max_tokens and budget >= body["max_tokens"]:
        return invalid(
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at "
            "https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size"
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        return invalid(
            "`temperature` may only be set to 1 when thinking is enabled. Please consult our documentation."
        )
    return None


def _check_tools(body: dict[str, Any]) -> Reply | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return invalid("tools: Input should be a valid list")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            return invalid(f"tools.{i}: Input should be a valid dictionary")
        if tool.get("type") not in (None, "custom"):
            continue  # server tools (web_search_..., bash_..., ...) carry their own shapes
        name = tool.get("name")
        if not isinstance(name, str):
            return invalid(f"tools.{i}.custom.name: Field required")
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,128}", name):
            return invalid(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        if schema is None:
            return invalid(f"tools.{i}.custom.input_schema: Field required")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        for key in tool:
            if key not in ("type", "name", "description", "input_schema", "cache_control", "strict", "input_examples",
                           "defer_loading", "allowed_callers", "eager_input_streaming"):  # fmt: skip
                return invalid(f"tools.{i}.custom.{key}: Extra inputs are not permitted")
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            return invalid(
                "tool_choice: Input tag found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
            )
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            return invalid("tool_choice.tool.name: Field required")
    return None


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
    return [(b"request-id", _request_id().encode()), *RATE_HEADERS]


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
