"""Anthropic's request checks and error shape: what api.anthropic.com refuses, in its own words.

Errors are `{"type": "error", "error": {"type", "message"}, "request_id"}` with the documented
error types; field problems read like the API's validator ("max_tokens: Field required",
"n: Extra inputs are not permitted").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .wire import Headers, Reply, json_reply, rand_id

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


def request_id() -> str:
    return "req_011C" + rand_id(20)


def error(status: int, message: str | None = None, headers: Headers | None = None) -> Reply:
    kind, default = ERROR_TYPES.get(status, ("api_error", "Internal server error"))
    rid = request_id()
    extra: Headers = [(b"request-id", rid.encode())]
    if status == 429:
        extra.append((b"retry-after", b"1"))
    if headers:
        extra.extend(headers)
    body = {"type": "error", "error": {"type": kind, "message": message or default}, "request_id": rid}
    return json_reply(status, body, extra)


def invalid(message: str) -> Reply:
    return error(400, message)


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


def _bad_tag(at: str, tag: Any, choices: Iterable[str]) -> Reply:
    """Anthropic's refusal of a discriminator value outside the union's tags."""
    expected = ", ".join(f"'{t}'" for t in choices)
    return invalid(f"{at}: Input tag '{tag}' found using 'type' does not match any of the expected tags: {expected}")


def _check_block(block: Any, i: int, j: int, role: str) -> Reply | None:
    at = f"messages.{i}.content.{j}"
    if not isinstance(block, dict):
        return invalid(f"{at}: Input should be a valid dictionary")
    kind = block.get("type")
    if kind not in BLOCK_TYPES:
        return _bad_tag(at, kind, BLOCK_TYPES)
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
            return _bad_tag(f"{at}.image.source", stype, ("base64", "url", "file"))
    elif kind == "document":
        return _check_document(block.get("source"), at)
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


DOCUMENT_SOURCES = {  # source type -> (media type it must name or None, required fields)
    "base64": ("application/pdf", ("data",)),
    "text": ("text/plain", ("data",)),
    "url": (None, ("url",)),
    "content": (None, ("content",)),
    "file": (None, ("file_id",)),
}


def _check_document(source: Any, at: str) -> Reply | None:
    """A document block's source: base64 takes application/pdf only, text takes text/plain."""
    if not isinstance(source, dict):
        return invalid(f"{at}.document.source: Field required")
    stype = source.get("type")
    if stype not in DOCUMENT_SOURCES:
        return _bad_tag(f"{at}.document.source", stype, DOCUMENT_SOURCES)
    media, fields = DOCUMENT_SOURCES[stype]
    if media is not None and source.get("media_type") != media:
        return invalid(f"{at}.document.source.{stype}.media_type: Input should be '{media}'")
    for name in fields:
        if name not in source:
            return invalid(f"{at}.document.source.{stype}.{name}: Field required")
        if name != "content" and not isinstance(source[name], str):
            return invalid(f"{at}.document.source.{stype}.{name}: Input should be a valid string")
    return None


def _check_thinking(body: dict[str, Any], need_max_tokens: bool) -> Reply | None:
    thinking = body.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, dict):
        return invalid("thinking: Input should be a valid dictionary")
    kind = thinking.get("type")
    if kind not in ("enabled", "disabled", "adaptive", "between_tools"):
        return _bad_tag("thinking", kind, ("enabled", "disabled", "adaptive", "between_tools"))
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
