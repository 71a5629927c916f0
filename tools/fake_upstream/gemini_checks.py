"""Gemini's request checks and error shape: what generativelanguage.googleapis.com refuses.

Errors are `{"error": {"code", "message", "status"}}` with google.rpc status names. Two layers
of checks: the proto-JSON parser (unknown field names, camelCase or snake_case both accepted; a
list where the proto field is not repeated; a non-object where a Struct is expected), then the
API's own rules on contents, roles and function-call turns.

The proto tables (MESSAGES) map each message's camelCase fields to a kind. A kind is the name of another message, one of
the leaf markers below, or a tuple `("repeated", kind)` / `("map", kind)`.
"""

from __future__ import annotations

import re
from typing import Any

from .wire import Headers, Reply, Request, json_reply

SCALAR = "scalar"  # string, number, bool or enum: not descended into
STRUCT = "struct"  # google.protobuf.Struct: any JSON object
VALUE = "value"  # google.protobuf.Value: any JSON value

REPEATED = "repeated"
MAP = "map"

Kind = str | tuple[str, str]


def _rep(kind: str) -> tuple[str, str]:
    return (REPEATED, kind)


MESSAGES: dict[str, dict[str, Kind]] = {
    "GenerateContentRequest": {
        "model": SCALAR,
        "contents": _rep("Content"),
        "systemInstruction": "Content",
        "generationConfig": "GenerationConfig",
        "tools": _rep("Tool"),
        "toolConfig": "ToolConfig",
        "safetySettings": _rep("SafetySetting"),
        "cachedContent": SCALAR,
        "serviceTier": SCALAR,
        "store": SCALAR,
    },
    "Content": {"role": SCALAR, "parts": _rep("Part")},
    "Part": {
        "text": SCALAR,
        "inlineData": "Blob",
        "fileData": "FileData",
        "functionCall": "FunctionCall",
        "functionResponse": "FunctionResponse",
        "executableCode": "ExecutableCode",
        "codeExecutionResult": "CodeExecutionResult",
        "thought": SCALAR,
        "thoughtSignature": SCALAR,
        "videoMetadata": "VideoMetadata",
        "partMetadata": STRUCT,
        "mediaResolution": "MediaResolution",
    },
    "Blob": {"mimeType": SCALAR, "data": SCALAR},
    "FileData": {"mimeType": SCALAR, "fileUri": SCALAR},
    "VideoMetadata": {"startOffset": SCALAR, "endOffset": SCALAR, "fps": SCALAR},
    "MediaResolution": {"level": SCALAR},
    "FunctionCall": {"id": SCALAR, "name": SCALAR, "args": STRUCT},
    "FunctionResponse": {
        "id": SCALAR,
        "name": SCALAR,
        "response": STRUCT,
        "parts": _rep("FunctionResponsePart"),
        "willContinue": SCALAR,
        "scheduling": SCALAR,
    },
    "FunctionResponsePart": {"inlineData": "Blob"},
    "ExecutableCode": {"language": SCALAR, "code": SCALAR},
    "CodeExecutionResult": {"outcome": SCALAR, "output": SCALAR},
    "GenerationConfig": {
        "stopSequences": _rep(SCALAR),
        "responseMimeType": SCALAR,
        "responseSchema": "Schema",
        "responseJsonSchema": VALUE,
        "_responseJsonSchema": VALUE,
        "responseModalities": _rep(SCALAR),
        "candidateCount": SCALAR,
        "maxOutputTokens": SCALAR,
        "temperature": SCALAR,
        "topP": SCALAR,
        "topK": SCALAR,
        "seed": SCALAR,
        "presencePenalty": SCALAR,
        "frequencyPenalty": SCALAR,
        "responseLogprobs": SCALAR,
        "logprobs": SCALAR,
        "enableEnhancedCivicAnswers": SCALAR,
        "speechConfig": STRUCT,
        "thinkingConfig": "ThinkingConfig",
        "imageConfig": STRUCT,
        "mediaResolution": SCALAR,
    },
    "ThinkingConfig": {"includeThoughts": SCALAR, "thinkingBudget": SCALAR, "thinkingLevel": SCALAR},
    "Schema": {
        "type": SCALAR,
        "format": SCALAR,
        "title": SCALAR,
        "description": SCALAR,
        "nullable": SCALAR,
        "enum": _rep(SCALAR),
        "maxItems": SCALAR,
        "minItems": SCALAR,
        "properties": (MAP, "Schema"),
        "required": _rep(SCALAR),
        "minProperties": SCALAR,
        "maxProperties": SCALAR,
        "minLength": SCALAR,
        "maxLength": SCALAR,
        "pattern": SCALAR,
        "example": VALUE,
        "anyOf": _rep("Schema"),
        "propertyOrdering": _rep(SCALAR),
        "default": VALUE,
        "items": "Schema",
        "minimum": SCALAR,
        "maximum": SCALAR,
    },
    "Tool": {
        "functionDeclarations": _rep("FunctionDeclaration"),
        "googleSearchRetrieval": STRUCT,
        "codeExecution": STRUCT,
        "googleSearch": STRUCT,
        "computerUse": STRUCT,
        "urlContext": STRUCT,
        "fileSearch": STRUCT,
        "googleMaps": STRUCT,
        "mcpServers": VALUE,
    },
    "FunctionDeclaration": {
        "name": SCALAR,
        "description": SCALAR,
        "behavior": SCALAR,
        "parameters": "Schema",
        "parametersJsonSchema": VALUE,
        "response": "Schema",
        "responseJsonSchema": VALUE,
    },
    "ToolConfig": {
        "functionCallingConfig": "FunctionCallingConfig",
        "retrievalConfig": STRUCT,
        "includeServerSideToolInvocations": SCALAR,
    },
    "FunctionCallingConfig": {"mode": SCALAR, "allowedFunctionNames": _rep(SCALAR)},
    "SafetySetting": {"category": SCALAR, "threshold": SCALAR},
    "CountTokensRequest": {"contents": _rep("Content"), "generateContentRequest": "GenerateContentRequest"},
    "EmbedContentRequest": {
        "model": SCALAR,
        "content": "Content",
        "taskType": SCALAR,
        "title": SCALAR,
        "outputDimensionality": SCALAR,
    },
    "BatchEmbedContentsRequest": {"requests": _rep("EmbedContentRequest")},
}

_CAMEL = re.compile(r"_([a-z])")
_SNAKE = re.compile(r"([A-Z])")


def camel(name: str) -> str:
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


def snake(name: str) -> str:
    return _SNAKE.sub(lambda m: "_" + m.group(1).lower(), name)


class ProtoError(Exception):
    """A request the proto-JSON parser refuses; the message is Google's wording."""


def check(obj: Any, message: str, path: str = "") -> None:
    """Raise ProtoError for the first field Google's parser would refuse in `obj`."""
    fields = MESSAGES[message]
    if not isinstance(obj, dict):
        where = f" at '{path}'" if path else ""
        raise ProtoError(f"Invalid JSON payload received. Expected an object{where}.")
    for key, value in obj.items():
        kind = fields.get(key) or fields.get(camel(key))
        if kind is None:
            where = f" at '{path}'" if path else ""
            raise ProtoError(
                f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.'
            )
        child = f"{path}.{snake(camel(key))}" if path else snake(camel(key))
        _check_value(value, kind, key, path, child)


def _check_value(value: Any, kind: Kind, key: str, parent: str, child: str) -> None:
    if value is None:
        return
    if isinstance(kind, tuple):
        mode, inner = kind
        if mode == MAP:
            if not isinstance(value, dict):
                raise ProtoError(f"Invalid value at '{child}' (map), {_show(value)}")
            for name, item in value.items():
                _check_value(item, inner, name, child, f"{child}[{name}]")
            return
        # Google's parser takes a lone element where a repeated field is expected.
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, list):
                raise ProtoError(
                    f"Invalid JSON payload received. Unknown name \"{key}\" at '{child}[{i}]': Cannot bind a list."
                )
            _check_value(item, inner, key, parent, f"{child}[{i}]")
        return
    if kind == VALUE:
        return
    if isinstance(value, list):
        where = f" at '{parent}'" if parent else ""
        raise ProtoError(
            f'Invalid JSON payload received. Unknown name "{key}"{where}: Proto field is not repeating, cannot start list.'
        )
    if kind == SCALAR:
        if isinstance(value, dict):
            where = f" at '{parent}'" if parent else ""
            raise ProtoError(
                f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.'
            )
        return
    if kind == STRUCT:
        if not isinstance(value, dict):
            raise ProtoError(
                f"Invalid value at '{child}' (type.googleapis.com/google.protobuf.Struct), {_show(value)}"
            )
        return
    if not isinstance(value, dict):
        raise ProtoError(
            f"Invalid value at '{child}' (type.googleapis.com/google.ai.generativelanguage.v1beta.{kind}), {_show(value)}"
        )
    check(value, kind, child)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- error shape and the API's own rules ---------------------------------------------------

STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
ERROR_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out. Please try again.",
}
MIME_TYPES = ("text/plain", "application/json", "application/xml", "application/yaml", "text/x.enum")


def error(
    status: int, message: str | None = None, headers: Headers | None = None, details: list[Any] | None = None
) -> Reply:
    err: dict[str, Any] = {
        "code": status,
        "message": message or ERROR_MESSAGES.get(status, "Error."),
        "status": STATUS.get(status, "UNKNOWN"),
    }
    extra: Headers = []
    if status == 429:
        extra.append((b"retry-after", b"1"))
        details = details or [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
    if details:
        err["details"] = details
    if headers:
        extra.extend(headers)
    return json_reply(status, {"error": err}, extra)


def invalid(message: str) -> Reply:
    return error(400, message)


def get_field(obj: dict[str, Any], name: str) -> Any:
    """A field by its camelCase name, or by the snake_case name the parser also accepts."""
    value = obj.get(name)
    return obj.get(snake(name)) if value is None else value


def body_of(req: Request, message: str) -> dict[str, Any] | Reply:
    if req.json_error:
        return invalid("Invalid JSON payload received. Unexpected token.")
    if not isinstance(req.json, dict):
        return invalid("Invalid JSON payload received. Expected an object.")
    try:
        check(req.json, message)
    except ProtoError as exc:
        return invalid(str(exc))
    return req.json


_DATA_FIELDS = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
)


def validate_contents(contents: Any, owner: str = "GenerateContentRequest") -> Reply | None:
    if not contents:
        return invalid(f"* {owner}.contents: contents is not specified\n")
    if isinstance(contents, dict):
        contents = [contents]
    previous_calls = -1  # function calls in the previous turn; -1 when it was not a model turn
    previous_role = ""
    for i, content in enumerate(contents):
        role = content.get("role") or "user"
        if role not in ("user", "model"):
            return invalid("Please use a valid role: user, model.")
        parts = content.get("parts")
        if isinstance(parts, dict):
            parts = [parts]
        if not parts:
            return invalid(f"* {owner}.contents[{i}].parts: contents.parts must not be empty.\n")
        calls = responses = 0
        for j, part in enumerate(parts):
            present = [f for f in _DATA_FIELDS if get_field(part, f) is not None]
            if not present:
                return invalid(
                    f"* {owner}.contents[{i}].parts[{j}].data: required oneof field 'data' must have one initialized field\n"
                )
            text = part.get("text")
            if text is not None and not isinstance(text, str):
                return invalid(f"Invalid value at 'contents[{i}].parts[{j}].text' (TYPE_STRING), {text}")
            problem = _check_media(part, f"contents[{i}].parts[{j}]")
            if problem:
                return problem
            for field, label in (
                ("functionCall", "function_call"),
                ("functionResponse", "function_response"),
            ):
                value = get_field(part, field)
                if value is not None and not value.get("name"):
                    return invalid(
                        f"* {owner}.contents[{i}].parts[{j}].{label}.name: Name cannot be empty.\n"
                    )
            calls += get_field(part, "functionCall") is not None
            responses += get_field(part, "functionResponse") is not None
        if calls and previous_role != "user":
            return invalid(
                "Please ensure that function call turn comes immediately after a user turn or after a function response turn."
            )
        if responses:
            if previous_calls <= 0:
                return invalid(
                    "Please ensure that function response turn comes immediately after a function call turn."
                )
            if responses != previous_calls:
                return invalid(
                    "Please ensure that the number of function response parts is equal to the number of function call "
                    "parts of the function call turn."
                )
        previous_calls = calls if role == "model" else -1
        previous_role = role
    return None


def _check_media(part: dict[str, Any], at: str) -> Reply | None:
    """inlineData needs a mime type and base64 bytes (any media: images, PDFs, audio, video);
    fileData a file URI."""
    blob = get_field(part, "inlineData")
    if blob is not None:
        if not get_field(blob, "mimeType"):
            return invalid(f"* GenerateContentRequest.{at}.inline_data.mime_type: mime_type is not specified.\n")
        data = blob.get("data")
        if not isinstance(data, str) or not _is_base64(data):
            return invalid(f"Invalid value at '{at}.inline_data.data' (TYPE_BYTES), Base64 decoding failed for {_show(data)}")
    file = get_field(part, "fileData")
    if file is not None and not get_field(file, "fileUri"):
        return invalid(f"* GenerateContentRequest.{at}.file_data.file_uri: file_uri is not specified.\n")
    return None


_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")  # the standard or the URL-safe alphabet


def _is_base64(data: str) -> bool:
    return _BASE64.fullmatch(data) is not None and len(data.rstrip("=")) % 4 != 1


def validate(body: dict[str, Any]) -> Reply | None:
    problem = validate_contents(body.get("contents"))
    if problem:
        return problem
    config = get_field(body, "generationConfig") or {}
    mime = get_field(config, "responseMimeType")
    if mime is not None and mime not in MIME_TYPES:
        return invalid(
            "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are `text/plain`, "
            "`application/json`, `application/xml`, `application/yaml` and `text/x.enum`.\n"
        )
    count = get_field(config, "candidateCount")
    if isinstance(count, int) and count > 8:
        return invalid(
            "* GenerateContentRequest.generation_config.candidate_count: must be between 1 and 8\n"
        )
    return None
