"""What an upstream request body says, read in that upstream's own wire format.

The translation matrix checks both ends: what the client got back, and what the fake upstream
received (`fake.stats()["requests"]`). Each reader here looks only where the upstream's own API
puts a thing (OpenAI's system message, Anthropic's `system`, Gemini's `systemInstruction`, ...),
so a system prompt that arrives as a user turn, or an image URL that arrives as text, is caught.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from tools.fake_upstream import anthropic as fake_anthropic
from tools.fake_upstream import behaviour
from tools.fake_upstream import gemini as fake_gemini
from tools.fake_upstream import ollama as fake_ollama
from tools.fake_upstream import openai as fake_openai
from tools.fake_upstream.gemini_checks import get_field
from tools.fake_upstream.launch import FakeUpstream

UPSTREAMS = {
    "openai": "openai/gpt-4.1",
    "anthropic": "anthropic/claude-sonnet-4-5",
    "gemini": "gemini/gemini-2.5-flash",
    "ollama": "ollama/llama3.2",
}
# The route id the fake records for a chat call of each upstream (stream or not).
CHAT_ROUTES = {
    "openai": {"openai.chat"},
    "anthropic": {"anthropic.messages"},
    "gemini": {"gemini.generate", "gemini.stream"},
    "ollama": {"ollama.chat"},
}


def received(fake: FakeUpstream, marker: str) -> list[dict[str, Any]]:
    """The requests the fake recorded whose body contains `marker` (oldest first)."""
    needle = marker.encode()
    return [r for r in fake.stats()["requests"] if needle in orjson.dumps(r.get("body"))]


def one_chat(fake: FakeUpstream, upstream: str, marker: str) -> dict[str, Any]:
    """The single chat request an upstream received for `marker`; its body."""
    reqs = received(fake, marker)
    assert len(reqs) == 1, f"expected one upstream request with {marker}, got {len(reqs)}"
    assert reqs[0]["route"] in CHAT_ROUTES[upstream], reqs[0]["route"]
    body: dict[str, Any] = reqs[0]["body"]
    return body


@dataclass(frozen=True)
class Image:
    kind: str  # "base64" | "url"
    value: str  # the base64 data or the URL
    media_type: str | None = None


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant" | "tool"
    text: str


# ---------------------------------------------------------------- OpenAI chat


def _oa_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content or () if p.get("type") == "text")


class OpenAIView:
    name = "openai"

    @staticmethod
    def system(b: dict[str, Any]) -> str | None:
        texts = [_oa_text(m.get("content")) for m in b["messages"] if m["role"] in ("system", "developer")]
        return "\n\n".join(texts) if texts else None

    @staticmethod
    def turns(b: dict[str, Any]) -> list[Turn]:
        return [
            Turn(m["role"], _oa_text(m.get("content")))
            for m in b["messages"]
            if m["role"] not in ("system", "developer")
        ]

    @staticmethod
    def images(b: dict[str, Any]) -> list[Image]:
        out = []
        for m in b["messages"]:
            for p in m.get("content") if isinstance(m.get("content"), list) else ():
                if p.get("type") == "image_url":
                    url = p["image_url"]["url"]
                    if url.startswith("data:"):
                        head, _, data = url.partition(",")
                        out.append(Image("base64", data, head[5:].split(";")[0]))
                    else:
                        out.append(Image("url", url))
        return out

    @staticmethod
    def files(b: dict[str, Any]) -> list[Image]:
        """`file` parts (a data URL in file_data) and `input_audio` parts."""
        out = []
        for m in b["messages"]:
            for p in m.get("content") if isinstance(m.get("content"), list) else ():
                if p.get("type") == "file" and "file_data" in p["file"]:
                    head, _, data = p["file"]["file_data"].partition(",")
                    out.append(Image("base64", data, head[5:].split(";")[0]))
                elif p.get("type") == "input_audio":
                    media = {"wav": "audio/wav", "mp3": "audio/mpeg"}[p["input_audio"]["format"]]
                    out.append(Image("base64", p["input_audio"]["data"], media))
        return out

    @staticmethod
    def tools(b: dict[str, Any]) -> dict[str, Any]:
        return {t["function"]["name"]: t["function"].get("parameters") for t in b.get("tools") or ()}

    @staticmethod
    def history_calls(b: dict[str, Any]) -> list[tuple[str | None, str, Any]]:
        return [
            (tc["id"], tc["function"]["name"], orjson.loads(tc["function"]["arguments"]))
            for m in b["messages"]
            if m["role"] == "assistant"
            for tc in m.get("tool_calls") or ()
        ]

    @staticmethod
    def results(b: dict[str, Any]) -> list[tuple[str | None, str | None, str]]:
        """(id of the call answered, name, content) of each tool result."""
        return [
            (m["tool_call_id"], None, _oa_text(m.get("content")))
            for m in b["messages"]
            if m["role"] == "tool"
        ]

    @staticmethod
    def thinking_asked(b: dict[str, Any]) -> bool:
        return bool(b.get("reasoning_effort"))

    @staticmethod
    def max_tokens(b: dict[str, Any]) -> int | None:
        return b.get("max_completion_tokens") or b.get("max_tokens")

    @staticmethod
    def forced_tool(b: dict[str, Any]) -> str | None:
        tc = b.get("tool_choice")
        return tc["function"]["name"] if isinstance(tc, dict) else None

    @staticmethod
    def stop(b: dict[str, Any]) -> list[str] | None:
        s = b.get("stop")
        return [s] if isinstance(s, str) else s

    @staticmethod
    def sampling(b: dict[str, Any]) -> tuple[Any, Any]:
        return b.get("temperature"), b.get("top_p")

    @staticmethod
    def json_schema(b: dict[str, Any]) -> Any:
        rf = b.get("response_format") or {}
        return (rf.get("json_schema") or {}).get("schema") if rf.get("type") == "json_schema" else None

    @staticmethod
    def prompt_tokens(b: dict[str, Any]) -> int:
        return behaviour.tokens_for_chars(fake_openai.to_turn(b).prompt_chars)


# ---------------------------------------------------------------- Anthropic Messages


def _an_blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


class AnthropicView:
    name = "anthropic"

    @staticmethod
    def system(b: dict[str, Any]) -> str | None:
        s = b.get("system")
        if s is None or isinstance(s, str):
            return s
        return "\n\n".join(x["text"] for x in s)

    @staticmethod
    def turns(b: dict[str, Any]) -> list[Turn]:
        out = []
        for m in b["messages"]:
            blocks = _an_blocks(m["content"])
            if any(x["type"] == "tool_result" for x in blocks):
                out.append(Turn("tool", ""))
            text = "".join(x.get("text") or "" for x in blocks if x["type"] == "text")
            if text or not any(x["type"] == "tool_result" for x in blocks):
                out.append(Turn(m["role"], text))
        return out

    @staticmethod
    def images(b: dict[str, Any]) -> list[Image]:
        out = []
        for m in b["messages"]:
            for x in _an_blocks(m["content"]):
                if x["type"] == "image":
                    src = x["source"]
                    if src["type"] == "base64":
                        out.append(Image("base64", src["data"], src["media_type"]))
                    else:
                        out.append(Image("url", src["url"]))
        return out

    @staticmethod
    def files(b: dict[str, Any]) -> list[Image]:
        """`document` blocks: base64 and text sources (as base64) with their media type, URLs."""
        out = []
        for m in b["messages"]:
            for x in _an_blocks(m["content"]):
                if x["type"] == "document":
                    src = x["source"]
                    if src["type"] == "base64":
                        out.append(Image("base64", src["data"], src["media_type"]))
                    elif src["type"] == "text":
                        out.append(
                            Image(
                                "base64", base64.b64encode(src["data"].encode()).decode(), src["media_type"]
                            )
                        )
                    elif src["type"] == "url":
                        out.append(Image("url", src["url"]))
        return out

    @staticmethod
    def tools(b: dict[str, Any]) -> dict[str, Any]:
        return {t["name"]: t.get("input_schema") for t in b.get("tools") or ()}

    @staticmethod
    def history_calls(b: dict[str, Any]) -> list[tuple[str | None, str, Any]]:
        return [
            (x["id"], x["name"], x["input"])
            for m in b["messages"]
            if m["role"] == "assistant"
            for x in _an_blocks(m["content"])
            if x["type"] == "tool_use"
        ]

    @staticmethod
    def results(b: dict[str, Any]) -> list[tuple[str | None, str | None, str]]:
        out = []
        for m in b["messages"]:
            for x in _an_blocks(m["content"]):
                if x["type"] == "tool_result":
                    c = x.get("content")
                    text = c if isinstance(c, str) else "".join(y.get("text") or "" for y in c or ())
                    out.append((x["tool_use_id"], None, text))
        return out

    @staticmethod
    def thinking_asked(b: dict[str, Any]) -> bool:
        t = b.get("thinking") or {}
        return (
            t.get("type") == "enabled"
            and t.get("budget_tokens", 0) >= 1024
            and b["max_tokens"] > t["budget_tokens"]
        )

    @staticmethod
    def max_tokens(b: dict[str, Any]) -> int | None:
        return b.get("max_tokens")

    @staticmethod
    def forced_tool(b: dict[str, Any]) -> str | None:
        tc = b.get("tool_choice") or {}
        return tc.get("name") if tc.get("type") == "tool" else None

    @staticmethod
    def stop(b: dict[str, Any]) -> list[str] | None:
        return b.get("stop_sequences")

    @staticmethod
    def sampling(b: dict[str, Any]) -> tuple[Any, Any]:
        return b.get("temperature"), b.get("top_p")

    @staticmethod
    def json_schema(b: dict[str, Any]) -> Any:
        return None  # Anthropic Messages has no JSON output mode

    @staticmethod
    def prompt_tokens(b: dict[str, Any]) -> int:
        return behaviour.tokens_for_chars(fake_anthropic.to_turn(b).prompt_chars)


# ---------------------------------------------------------------- Gemini


class GeminiView:
    """Gemini's proto JSON accepts camelCase and snake_case field names (google-genai itself sends
    some nested fields in snake_case): every field is read by either name (`get_field`)."""

    name = "gemini"

    @staticmethod
    def system(b: dict[str, Any]) -> str | None:
        s = get_field(b, "systemInstruction")
        return "\n\n".join(p.get("text") or "" for p in s["parts"]) if s else None

    @staticmethod
    def turns(b: dict[str, Any]) -> list[Turn]:
        out = []
        for c in b["contents"]:
            role = {"model": "assistant"}.get(c.get("role") or "user", "user")
            results = any(get_field(p, "functionResponse") for p in c["parts"])
            if results:
                out.append(Turn("tool", ""))
            text = "".join(p.get("text") or "" for p in c["parts"] if not p.get("thought"))
            if text or not results:
                out.append(Turn(role, text))
        return out

    @staticmethod
    def images(b: dict[str, Any]) -> list[Image]:
        return [m for m in GeminiView._media(b) if not m.media_type or m.media_type.startswith("image/")]

    @staticmethod
    def files(b: dict[str, Any]) -> list[Image]:
        return [m for m in GeminiView._media(b) if m.media_type and not m.media_type.startswith("image/")]

    @staticmethod
    def _media(b: dict[str, Any]) -> list[Image]:
        out = []
        for c in b["contents"]:
            for p in c["parts"]:
                if (blob := get_field(p, "inlineData")) is not None:
                    out.append(Image("base64", blob["data"], get_field(blob, "mimeType")))
                elif (f := get_field(p, "fileData")) is not None:
                    out.append(Image("url", get_field(f, "fileUri"), get_field(f, "mimeType")))
        return out

    @staticmethod
    def tools(b: dict[str, Any]) -> dict[str, Any]:
        return {
            d["name"]: get_field(d, "parametersJsonSchema") or d.get("parameters")
            for t in b.get("tools") or ()
            for d in get_field(t, "functionDeclarations") or ()
        }

    @staticmethod
    def history_calls(b: dict[str, Any]) -> list[tuple[str | None, str, Any]]:
        return [
            (fc.get("id"), fc["name"], fc.get("args") or {})
            for c in b["contents"]
            if c.get("role") == "model"
            for p in c["parts"]
            if (fc := get_field(p, "functionCall"))
        ]

    @staticmethod
    def results(b: dict[str, Any]) -> list[tuple[str | None, str | None, str]]:
        return [
            (fr.get("id"), fr["name"], fake_gemini._response_text(fr.get("response")))
            for c in b["contents"]
            for p in c["parts"]
            if (fr := get_field(p, "functionResponse"))
        ]

    @staticmethod
    def thinking_asked(b: dict[str, Any]) -> bool:
        t = get_field(get_field(b, "generationConfig") or {}, "thinkingConfig") or {}
        budget, level = get_field(t, "thinkingBudget"), get_field(t, "thinkingLevel")
        return bool(get_field(t, "includeThoughts")) and (budget not in (None, 0) or bool(level))

    @staticmethod
    def max_tokens(b: dict[str, Any]) -> int | None:
        return get_field(get_field(b, "generationConfig") or {}, "maxOutputTokens")  # type: ignore[no-any-return]

    @staticmethod
    def forced_tool(b: dict[str, Any]) -> str | None:
        fcc = get_field(get_field(b, "toolConfig") or {}, "functionCallingConfig") or {}
        names = get_field(fcc, "allowedFunctionNames") or []
        return names[0] if fcc.get("mode") == "ANY" and len(names) == 1 else None

    @staticmethod
    def stop(b: dict[str, Any]) -> list[str] | None:
        return get_field(get_field(b, "generationConfig") or {}, "stopSequences")  # type: ignore[no-any-return]

    @staticmethod
    def sampling(b: dict[str, Any]) -> tuple[Any, Any]:
        g = get_field(b, "generationConfig") or {}
        return g.get("temperature"), get_field(g, "topP")

    @staticmethod
    def json_schema(b: dict[str, Any]) -> Any:
        g = get_field(b, "generationConfig") or {}
        if get_field(g, "responseMimeType") != "application/json":
            return None
        return get_field(g, "responseJsonSchema") or get_field(g, "responseSchema")

    @staticmethod
    def prompt_tokens(b: dict[str, Any]) -> int:
        return behaviour.tokens_for_chars(fake_gemini.to_turn(b).prompt_chars)


# ---------------------------------------------------------------- Ollama


class OllamaView:
    name = "ollama"

    @staticmethod
    def system(b: dict[str, Any]) -> str | None:
        texts = [m.get("content") or "" for m in b["messages"] if m["role"] == "system"]
        return "\n\n".join(texts) if texts else None

    @staticmethod
    def turns(b: dict[str, Any]) -> list[Turn]:
        return [Turn(m["role"], m.get("content") or "") for m in b["messages"] if m["role"] != "system"]

    @staticmethod
    def images(b: dict[str, Any]) -> list[Image]:
        return [Image("base64", img, _sniff(img)) for m in b["messages"] for img in m.get("images") or ()]

    @staticmethod
    def files(b: dict[str, Any]) -> list[Image]:
        return []  # Ollama's chat API has no file parts

    @staticmethod
    def tools(b: dict[str, Any]) -> dict[str, Any]:
        return {t["function"]["name"]: t["function"].get("parameters") for t in b.get("tools") or ()}

    @staticmethod
    def history_calls(b: dict[str, Any]) -> list[tuple[str | None, str, Any]]:
        return [
            (tc.get("id"), tc["function"]["name"], tc["function"].get("arguments") or {})
            for m in b["messages"]
            if m["role"] == "assistant"
            for tc in m.get("tool_calls") or ()
        ]

    @staticmethod
    def results(b: dict[str, Any]) -> list[tuple[str | None, str | None, str]]:
        return [
            (m.get("tool_call_id"), m.get("tool_name"), m.get("content") or "")
            for m in b["messages"]
            if m["role"] == "tool"
        ]

    @staticmethod
    def thinking_asked(b: dict[str, Any]) -> bool:
        return b.get("think") not in (None, False)

    @staticmethod
    def max_tokens(b: dict[str, Any]) -> int | None:
        return (b.get("options") or {}).get("num_predict")

    @staticmethod
    def forced_tool(b: dict[str, Any]) -> str | None:
        return None  # Ollama has no tool choice

    @staticmethod
    def stop(b: dict[str, Any]) -> list[str] | None:
        s = (b.get("options") or {}).get("stop")
        return [s] if isinstance(s, str) else s

    @staticmethod
    def sampling(b: dict[str, Any]) -> tuple[Any, Any]:
        o = b.get("options") or {}
        return o.get("temperature"), o.get("top_p")

    @staticmethod
    def json_schema(b: dict[str, Any]) -> Any:
        return b.get("format") if isinstance(b.get("format"), dict) else None

    @staticmethod
    def prompt_tokens(b: dict[str, Any]) -> int:
        return behaviour.tokens_for_chars(fake_ollama.to_turn(b).prompt_chars)


def _sniff(data: str) -> str:
    raw = base64.b64decode(data[:16] + "=" * (-len(data[:16]) % 4))
    return "image/png" if raw.startswith(b"\x89PNG") else "image/jpeg"


VIEWS: dict[str, Any] = {
    "openai": OpenAIView,
    "anthropic": AnthropicView,
    "gemini": GeminiView,
    "ollama": OllamaView,
}
