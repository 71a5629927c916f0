"""OpenAI's request checks and error shape: what api.openai.com refuses, in its own words.

Errors are `{"error": {"message", "type", "param", "code"}}`; a parameter the API does not know
is refused by name ("Unrecognized request argument supplied: X").
"""

from __future__ import annotations

from typing import Any

from .wire import Headers, Reply, json_reply, rand_id

CHAT_PARAMS = frozenset(
    {
        "model", "messages", "stream", "stream_options", "temperature", "top_p", "n", "stop",
        "max_tokens", "max_completion_tokens", "presence_penalty", "frequency_penalty",
        "logit_bias", "logprobs", "top_logprobs", "user", "seed", "tools", "tool_choice",
        "parallel_tool_calls", "response_format", "reasoning_effort", "metadata", "store",
        "service_tier", "modalities", "prediction", "audio", "web_search_options", "verbosity",
        "prompt_cache_key", "safety_identifier", "functions", "function_call", "moderation",
        "prompt_cache_retention", "prompt_cache_options",
    }
)  # fmt: skip
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
PART_TYPES = {
    "user": {"text", "image_url", "input_audio", "file"},
    "system": {"text"},
    "developer": {"text"},
    "tool": {"text"},
    "assistant": {"text", "refusal"},
}
_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: (
        "invalid_request_error",
        "insufficient_permissions",
        "You have insufficient permissions for this operation.",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    409: ("invalid_request_error", None, "Conflict."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


def error(
    status: int,
    message: str | None = None,
    *,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: Headers | None = None,
) -> Reply:
    d_type, d_code, d_msg = _DEFAULTS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
    )
    extra: Headers = [(b"x-request-id", ("req_" + rand_id(24)).encode())]
    if status == 429:
        extra.append((b"retry-after", b"1"))
    if headers:
        extra.extend(headers)
    err = {
        "message": message or d_msg,
        "type": type_ or d_type,
        "param": param,
        "code": code if (code or message) else d_code,
    }
    return json_reply(status, {"error": err}, extra)


def invalid(message: str, param: str | None = None, code: str | None = None) -> Reply:
    return error(400, message, type_="invalid_request_error", param=param, code=code)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return "an object"


def _missing(param: str) -> Reply:
    return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _bad_type(param: str, expected: str, value: Any) -> Reply:
    return invalid(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def check_range(
    body: dict[str, Any], name: str, lo: float, hi: float | None, integer: bool = False
) -> Reply | None:
    value = body.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        return _bad_type(name, "an integer" if integer else "a decimal", value)
    kind = "integer" if integer else "decimal"
    if value < lo:
        return invalid(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {lo:g}, but got {value} instead.",
            param=name,
            code=f"{kind}_below_min_value",
        )
    if hi is not None and value > hi:
        return invalid(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {hi:g}, but got {value} instead.",
            param=name,
            code=f"{kind}_above_max_value",
        )
    return None


def validate_chat(body: dict[str, Any]) -> Reply | None:
    for key in body:
        if key not in CHAT_PARAMS:
            return invalid(f"Unrecognized request argument supplied: {key}")
    if not body.get("model"):
        return invalid("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        return _missing("messages")
    if not isinstance(messages, list):
        return _bad_type("messages", "an array", messages)
    if not messages:
        return invalid("[] is too short - 'messages'", "messages")
    pending: dict[str, int] = {}  # tool_call_id -> index of the assistant message that made it
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            return _bad_type(where, "an object", msg)
        role = msg.get("role")
        if role is None:
            return _missing(f"{where}.role")
        if role not in ROLES:
            return invalid(
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', "
                "'tool', and 'developer'.",
                f"{where}.role",
                "invalid_value",
            )
        if pending and role != "tool":
            first = min(pending.values())
            return invalid(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(pending)}",
                f"messages.[{first}].role",
            )
        problem = _check_content(msg, role, where)
        if problem:
            return problem
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if not call_id:
                return _missing(f"{where}.tool_call_id")
            if call_id not in pending:
                return invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                    "'tool_calls'.",
                    f"messages.[{i}].role",
                )
            del pending[call_id]
        elif role == "assistant" and msg.get("tool_calls") is not None:
            calls = msg["tool_calls"]
            if not isinstance(calls, list):
                return _bad_type(f"{where}.tool_calls", "an array", calls)
            for j, call in enumerate(calls):
                at = f"{where}.tool_calls[{j}]"
                if not isinstance(call, dict):
                    return _bad_type(at, "an object", call)
                for need in ("id", "type", "function"):
                    if need not in call:
                        return _missing(f"{at}.{need}")
                fn = call["function"]
                if not isinstance(fn, dict) or "name" not in fn or "arguments" not in fn:
                    missing = "name" if not isinstance(fn, dict) or "name" not in fn else "arguments"
                    return _missing(f"{at}.function.{missing}")
                if not isinstance(fn["arguments"], str):
                    return _bad_type(f"{at}.function.arguments", "a string", fn["arguments"])
                pending[call["id"]] = i
    if pending:
        first = min(pending.values())
        return invalid(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(pending)}",
            f"messages.[{first}].role",
        )
    if "stream_options" in body and body["stream_options"] is not None and body.get("stream") is not True:
        return invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )
    for name, lo, hi, integer in (
        ("temperature", 0, 2, False),
        ("top_p", 0, 1, False),
        ("n", 1, 128, True),
        ("max_tokens", 1, None, True),
        ("max_completion_tokens", 1, None, True),
        ("presence_penalty", -2, 2, False),
        ("frequency_penalty", -2, 2, False),
    ):
        problem = check_range(body, name, lo, hi, integer)
        if problem:
            return problem
    return _check_tools(body)


def _check_content(msg: dict[str, Any], role: str, where: str) -> Reply | None:
    content = msg.get("content")
    if content is None:
        if role == "assistant" and (msg.get("tool_calls") or msg.get("function_call")):
            return None
        if role == "assistant":
            return invalid("Invalid value for 'content': expected a string, got null.", f"{where}.content")
        return _missing(f"{where}.content")
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return _bad_type(f"{where}.content", "one of a string or array of objects", content)
    allowed = PART_TYPES.get(role, {"text"})
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            return _bad_type(at, "an object", part)
        kind = part.get("type")
        if kind not in allowed:
            names = sorted(allowed)
            listed = ", ".join(f"'{n}'" for n in names[:-1]) + (
                f", and '{names[-1]}'" if len(names) > 1 else f"'{names[0]}'"
            )
            return invalid(
                f"Invalid value: '{kind}'. Supported values are: {listed}.", f"{at}.type", "invalid_value"
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            return _missing(f"{at}.text")
        if kind in ("file", "input_audio"):
            problem = _check_media_part(part, kind, at)
            if problem:
                return problem
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                return _missing(f"{at}.image_url.url")
    return None


def _check_media_part(part: dict[str, Any], kind: str, at: str) -> Reply | None:
    """A `file` part carries file_data (a PDF as a data URL) or file_id; an `input_audio` part
    base64 data and a format, wav or mp3."""
    if kind == "file":
        file = part.get("file")
        if not isinstance(file, dict):
            return _missing(f"{at}.file")
        data, file_id = file.get("file_data"), file.get("file_id")
        if data is None and file_id is None:
            return invalid(
                f"Missing required parameter: '{at}.file.file_data' or '{at}.file.file_id'.",
                f"{at}.file",
                "missing_required_parameter",
            )
        if data is not None:
            if not isinstance(data, str):
                return _bad_type(f"{at}.file.file_data", "a string", data)
            if not data.startswith("data:application/pdf;base64,"):
                return invalid(
                    f"Invalid file data: '{at}.file.file_data'. Expected a base64-encoded data URL with a PDF "
                    "(data:application/pdf;base64,...).",
                    f"{at}.file.file_data",
                    "invalid_value",
                )
        return None
    audio = part.get("input_audio")
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        return _missing(f"{at}.input_audio.data")
    if audio.get("format") not in ("wav", "mp3"):
        return invalid(
            f"Invalid value: '{audio.get('format')}'. Supported values are: 'wav' and 'mp3'.",
            f"{at}.input_audio.format",
            "invalid_value",
        )
    return None


def _check_tools(body: dict[str, Any]) -> Reply | None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return _bad_type("tools", "an array", tools)
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                return _bad_type(f"tools[{i}]", "an object", tool)
            if tool.get("type") == "custom":
                continue
            if tool.get("type") != "function":
                return invalid(
                    f"Invalid value: '{tool.get('type')}'. Supported values are: 'function' and 'custom'.",
                    f"tools[{i}].type",
                    "invalid_value",
                )
            fn = tool.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                return _missing(f"tools[{i}].function.name")
            name = fn["name"]
            if not name or len(name) > 64 or not all(c.isalnum() or c in "_-" for c in name):
                return invalid(
                    f"Invalid 'tools[{i}].function.name': string does not match pattern. Expected a string that "
                    "matches the pattern '^[a-zA-Z0-9_-]+$'.",
                    f"tools[{i}].function.name",
                    "invalid_value",
                )
    if body.get("tool_choice") is not None and not tools:
        return invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            "tool_choice",
        )
    return None
