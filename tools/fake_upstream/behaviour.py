"""What the fake model "says": directives, deterministic answers, tool arguments, token counts.

Everything here is provider-neutral and stateless. A provider module reduces its request to a
`Turn` and renders the resulting `Plan` in its own wire format, so the four providers give the
same answer, the same token counts and the same stop reason for the same conversation.

Directives, found in the text of the last user message (all stripped from the echoed text):
    [[words:N]]     answer exactly N words ("word1 word2 ...")
    [[tool]]        call the first declared tool; [[tool:NAME]] that tool; [[tools:N]] N calls
                    (a request's forced tool choice also calls one; tool choice "none" calls none)
    [[think]]       include reasoning / thinking output
    [[length]]      stop because of the token limit
    [[error:CODE]]  answer that HTTP error in the provider's error shape
    [[slow:MS]]     sleep MS ms before answering and between stream chunks
    [[cut:N]]       break a stream after N content chunks
    [[cached:N]]    report N cached input tokens
Model names: `fail-CODE` always answers that error, `slow-MS` always delays.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Any

import orjson

_DIRECTIVE = re.compile(r"\[\[\s*([a-zA-Z_]+)\s*(?::\s*([^\]]*?))?\s*\]\]")
_FAIL_MODEL = re.compile(r"(?:^|/)fail-(\d{3})(?:\b|$)")
_SLOW_MODEL = re.compile(r"(?:^|/)slow-(\d+)(?:\b|$)")

# Echoing a long prompt back would make long answers; the echo is only there to be recognisable.
MAX_ECHO_WORDS = 40
TOOL_CALL_TOKENS = 10
THINKING_TEXT = "The user wants a short answer, so I will reply briefly and clearly."


@dataclass(slots=True)
class Directives:
    words: int | None = None
    tool_count: int = 0
    tool_name: str | None = None
    think: bool = False
    length: bool = False
    error: int | None = None
    slow_ms: int = 0
    cut: int | None = None
    cached: int = 0


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def parse_directives(text: str) -> tuple[Directives, str]:
    """The directives found in `text`, and the text with every `[[...]]` marker removed."""
    d = Directives()
    if "[[" not in text:
        return d, " ".join(text.split())
    for m in _DIRECTIVE.finditer(text):
        name, arg = m.group(1).lower(), m.group(2)
        if name == "words":
            d.words = max(0, _int(arg, 5))
        elif name == "tool":
            d.tool_count = max(d.tool_count, 1)
            if arg:
                d.tool_name = arg
        elif name == "tools":
            d.tool_count = max(1, _int(arg, 2))
        elif name == "think":
            d.think = True
        elif name == "length":
            d.length = True
        elif name == "error":
            d.error = _int(arg, 500)
        elif name == "slow":
            d.slow_ms = max(0, _int(arg, 100))
        elif name == "cut":
            d.cut = max(0, _int(arg, 1))
        elif name == "cached":
            d.cached = max(0, _int(arg, 0))
    return d, " ".join(_DIRECTIVE.sub(" ", text).split())


@dataclass(slots=True)
class Turn:
    """A request reduced to what decides the answer."""

    user_text: str = ""
    # Set when the conversation ends with tool results: their contents, as text.
    tool_results: list[str] | None = None
    # Declared tools: (name, JSON-schema-like parameters).
    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The request's tool choice: None (model decides), "none", "required", or a tool name.
    tool_choice: str | None = None
    prompt_chars: int = 0
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ToolCall:
    name: str
    args: dict[str, Any]
    args_json: str

    def fragments(self, n: int = 3) -> list[str]:
        """The argument JSON cut into `n` pieces, the way streams deliver it."""
        s = self.args_json
        if len(s) < n:
            return [s]
        step = -(-len(s) // n)
        return [s[i : i + step] for i in range(0, len(s), step)]


@dataclass(slots=True)
class Plan:
    text: str = ""
    chunks: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    thinking: str = ""
    thinking_chunks: list[str] = field(default_factory=list)
    signature: str = ""
    stop: str = "stop"  # "stop" | "length" | "tool" | "stop_sequence"
    stop_sequence: str | None = None
    input_tokens: int = 1  # uncached prompt tokens
    cached_tokens: int = 0
    output_tokens: int = 0  # answer + tool calls + reasoning
    reasoning_tokens: int = 0
    slow_ms: int = 0
    cut: int | None = None
    error: int | None = None

    @property
    def prompt_tokens(self) -> int:
        """Total prompt tokens, cached included (OpenAI's and Gemini's notion)."""
        return self.input_tokens + self.cached_tokens


def word_chunks(words: list[str]) -> list[str]:
    """One chunk per word; every word after the first keeps its leading space."""
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def tokens_for_chars(chars: int) -> int:
    return max(1, chars // 4)


def make_plan(turn: Turn, model: str) -> Plan:
    d, clean = parse_directives(turn.user_text)
    plan = Plan(slow_ms=d.slow_ms, cut=d.cut, error=d.error, cached_tokens=d.cached)
    plan.input_tokens = tokens_for_chars(turn.prompt_chars)
    m = _FAIL_MODEL.search(model)
    if m:
        plan.error = int(m.group(1))
    m = _SLOW_MODEL.search(model)
    if m:
        plan.slow_ms += int(m.group(1))

    if turn.tool_results is not None:
        words = ("Tool result: " + " ".join(turn.tool_results)).split()
    elif turn.tool_choice != "none" and (
        (d.tool_count and turn.tools) or d.tool_name or (turn.tool_choice and turn.tools)
    ):
        # A forced tool choice makes the model call a tool even without a directive, as real ones do.
        if turn.tool_choice not in (None, "required") and not d.tool_name:
            d.tool_name = turn.tool_choice
        d.tool_count = d.tool_count or 1
        plan.tool_calls = _tool_calls(d, turn.tools)
        words = []
    elif d.words is not None:
        words = [f"word{i}" for i in range(1, d.words + 1)]
    else:
        echo = clean.split()[:MAX_ECHO_WORDS]
        words = ["Hello!", "You", "said:", *echo] if echo else ["Hello!"]

    if turn.max_tokens is not None and len(words) > turn.max_tokens:
        words = words[: max(turn.max_tokens, 0)]
        plan.stop = "length"
    text = " ".join(words)
    for seq in turn.stop:
        if seq and seq in text:
            words = text[: text.index(seq)].split()
            text = " ".join(words)  # streamed chunks rejoin to exactly this
            plan.stop, plan.stop_sequence = "stop_sequence", seq
            break
    plan.text = text
    plan.chunks = word_chunks(words)
    if d.length:
        plan.stop = "length"
    elif plan.tool_calls and plan.stop == "stop":
        plan.stop = "tool"

    if d.think:
        plan.thinking = THINKING_TEXT
        thinking_words = THINKING_TEXT.split()
        plan.thinking_chunks = word_chunks(thinking_words)
        plan.reasoning_tokens = len(thinking_words)
        plan.signature = signature_for(THINKING_TEXT)
    plan.output_tokens = len(words) + TOOL_CALL_TOKENS * len(plan.tool_calls) + plan.reasoning_tokens
    return plan


def signature_for(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return base64.b64encode(b"fake-signature:" + digest * 3).decode()


def _tool_calls(d: Directives, tools: list[tuple[str, dict[str, Any]]]) -> list[ToolCall]:
    if d.tool_name:
        schema = next((s for n, s in tools if n == d.tool_name), {})
        chosen = [(d.tool_name, schema)] * max(1, d.tool_count)
    else:
        chosen = [tools[i % len(tools)] for i in range(d.tool_count)]
    calls = []
    for name, schema in chosen:
        args = args_for_schema(schema)
        calls.append(ToolCall(name, args, orjson.dumps(args).decode()))
    return calls


def args_for_schema(schema: Any) -> dict[str, Any]:
    """Arguments that satisfy the schema's required properties, each filled by its type."""
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties") or {}
    required = schema.get("required") or []
    out: dict[str, Any] = {}
    for name in required:
        if isinstance(name, str):
            out[name] = value_for_schema(props.get(name) if isinstance(props, dict) else None)
    return out


def value_for_schema(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "Paris"
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "any_of", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return value_for_schema((non_null or options)[0])
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    kind = str(kind).lower()
    return {
        "number": 42,
        "integer": 7,
        "boolean": True,
        "array": [],
        "object": {},
        "null": None,
    }.get(kind, "Paris")


# --- embeddings and images -------------------------------------------------------------------


def embedding(text: str, dims: int) -> list[float]:
    """A unit vector from the bag of the text's words, each word a hashed direction: the same
    words give the same vector whatever the case and punctuation, and texts sharing most of
    their words point close together, as a real embedding would (semantic-cache tests)."""
    dims = max(1, dims)
    vec = [0.0] * dims
    for word in re.findall(r"\w+", text.lower()) or [text]:
        ints = array("H", hashlib.shake_256(word.encode()).digest(dims * 2))
        for i, v in enumerate(ints):
            vec[i] += (v - 32767.5) / 32767.5
    norm = sum(x * x for x in vec) ** 0.5 or 1.0
    return [x / norm for x in vec]


def embedding_b64(vec: list[float]) -> str:
    """Base64 of little-endian float32, as OpenAI's `encoding_format: base64`."""
    packed = array("f", vec)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8-bit RGBA
    pixels = zlib.compress(b"\x00\x4a\x90\xe2\xff")  # filter byte + one blue pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG = _png_1x1()
PNG_B64 = base64.b64encode(PNG).decode()


def key_verdict(key: str) -> int | None:
    """The HTTP status a provider answers for this API key, or None when the key is good."""
    if key.startswith("bad"):
        return 401
    if key.startswith("quota"):
        return 429
    if key.startswith("forbidden"):
        return 403
    return None


def mask_key(key: str) -> str:
    if len(key) <= 8:
        return key[:2] + "*" * max(0, len(key) - 2)
    return key[:4] + "*" * (len(key) - 8) + key[-4:]
