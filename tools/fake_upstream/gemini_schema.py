"""The proto-JSON field tables of Gemini's GenerateContentRequest, and a checker that rejects
what Google's parser rejects: unknown field names (camelCase or snake_case both accepted), a
list where the proto field is not repeated, and a non-object where a Struct is expected.

Messages are dicts of camelCase field -> kind. A kind is the name of another message, one of
the leaf markers below, or a tuple `("repeated", kind)` / `("map", kind)`.
"""

from __future__ import annotations

import re
from typing import Any

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
