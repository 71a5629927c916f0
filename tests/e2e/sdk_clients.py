"""The five client formats, each driven through its official SDK, behind one small interface.

A `Conv` says what to ask (turns, system prompt, tools, thinking, limits, stream or not); each
client builds that request the way its SDK wants it, lets the SDK parse (and, for streams,
reassemble) the answer, and reports it as a `Reply` in the client format's own terms: the raw stop
reason, the usage fields the format carries. The matrix tests then assert per-format expectations
(`STOP`) and what the fake upstream received (wire_views).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import ollama
import openai
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gt

Call = tuple[str | None, str, dict[str, Any]]  # (id, name, arguments)
Result = tuple[str | None, str, str]  # (id of the call answered, its name, content)

# The stop reason each client format reports: neutral -> raw value in that format.
STOP = {
    "openai": {"stop": "stop", "length": "length", "tool": "tool_calls"},
    "responses": {"stop": "completed", "length": "incomplete:max_output_tokens", "tool": "completed"},
    "anthropic": {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"},
    "gemini": {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP"},
    "ollama": {"stop": "stop", "length": "length", "tool": "stop"},
}
# Formats that carry cached input tokens and thinking signatures.
CARRIES_CACHED = {"openai", "responses", "anthropic", "gemini"}
CARRIES_SIGNATURE = {"responses", "anthropic", "gemini"}


@dataclass
class Image:
    """An attachment: an image, or (media_type not image/*) a file such as a PDF or audio, which
    each client sends in its format's own file shape."""

    kind: str  # "base64" | "url"
    value: str  # base64 PNG data or a URL
    media_type: str = "image/png"

    @property
    def is_file(self) -> bool:
        return not self.media_type.startswith("image/")


PDF_B64 = "JVBERi0xLjQKMSAwIG9iago8PD4+CmVuZG9iagp0cmFpbGVyCjw8Pj4KJSVFT0YK"  # a minimal PDF
WAV_B64 = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA="  # a silent WAV
AUDIO_FORMATS = {"audio/wav": "wav", "audio/mpeg": "mp3"}  # OpenAI input_audio formats


@dataclass
class Conv:
    """What to send. `turns` items: ("user", text) | ("user", text, Image) | ("assistant", text)
    | ("calls", [Call]) | ("results", [Result])."""

    turns: list[tuple[Any, ...]]
    system: str | None = None
    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    thinking: bool = False
    max_tokens: int | None = None
    stream: bool = False
    tool_choice: str | None = None  # the name of a tool the model must call
    stop: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    json_schema: dict[str, Any] | None = None


@dataclass
class Usage:
    input: int | None  # every input token, cached ones included (normalised from the format's fields)
    output: int | None  # every output token, reasoning included
    cached: int | None
    raw: dict[str, Any]
    reasoning: int | None = None  # of `output`, the reasoning tokens (where the format says)


@dataclass
class Reply:
    text: str = ""
    thinking: str = ""
    signature: str | None = None
    calls: list[Call] = field(default_factory=list)
    stop: str | None = None
    usage: Usage | None = None
    usage_seen: int = 0  # stream chunks/events that carried usage
    text_chunks: int = 0  # stream chunks that carried answer text
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Failure:
    status: int | None  # HTTP status (None: an in-stream error event)
    retry_after: str | None
    body: Any  # the error as the client format shapes it
    text_before: str = ""  # answer text the client got before a mid-stream error


def _args(raw: Any) -> dict[str, Any]:
    return raw if isinstance(raw, dict) else json.loads(raw or "{}")


class _Headers:
    """httpx hooks remembering the URL of each request and the headers of the last response."""

    def __init__(self) -> None:
        self.last: dict[str, str] = {}
        self.urls: list[str] = []

    def __call__(self, response: Any) -> None:
        self.last = dict(response.headers)

    def request(self, request: Any) -> None:
        self.urls.append(str(request.url))

    def hooks(self) -> dict[str, list[Any]]:
        return {"request": [self.request], "response": [self]}

    def client(self) -> httpx.Client:
        return httpx.Client(event_hooks=self.hooks(), timeout=30)

    def client2(self) -> Any:
        """The anthropic SDK runs on httpx2 and refuses httpx objects."""
        import httpx2

        return httpx2.Client(event_hooks=self.hooks(), timeout=30)


# ---------------------------------------------------------------- OpenAI chat


class OpenAIChat:
    name = "openai"

    def __init__(self, base_url: str) -> None:
        self.hdr = _Headers()
        self.sdk = openai.OpenAI(
            base_url=f"{base_url}/v1", api_key="sk-any", max_retries=0, http_client=self.hdr.client()
        )

    @staticmethod
    def messages(conv: Conv) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"role": "system", "content": conv.system}] if conv.system else []
        for t in conv.turns:
            if t[0] == "user":
                if len(t) > 2:
                    img: Image = t[2]
                    url = f"data:{img.media_type};base64,{img.value}" if img.kind == "base64" else img.value
                    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
                    if img.media_type in AUDIO_FORMATS:
                        audio = {"data": img.value, "format": AUDIO_FORMATS[img.media_type]}
                        part = {"type": "input_audio", "input_audio": audio}
                    elif img.is_file:
                        part = {"type": "file", "file": {"file_data": url, "filename": "attachment.pdf"}}
                    out.append({"role": "user", "content": [{"type": "text", "text": t[1]}, part]})
                else:
                    out.append({"role": "user", "content": t[1]})
            elif t[0] == "assistant":
                out.append({"role": "assistant", "content": t[1]})
            elif t[0] == "calls":
                calls = [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                    for i, n, a in t[1]
                ]
                out.append({"role": "assistant", "content": None, "tool_calls": calls})
            elif t[0] == "results":
                out.extend({"role": "tool", "tool_call_id": i, "content": c} for i, _, c in t[1])
        return out

    def kwargs(self, model: str, conv: Conv) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": model, "messages": self.messages(conv)}
        if conv.tools:
            kw["tools"] = [
                {"type": "function", "function": {"name": n, "parameters": s}} for n, s in conv.tools
            ]
        if conv.thinking:
            kw["reasoning_effort"] = "low"
        if conv.max_tokens:
            kw["max_tokens"] = conv.max_tokens
        if conv.tool_choice:
            kw["tool_choice"] = {"type": "function", "function": {"name": conv.tool_choice}}
        if conv.stop:
            kw["stop"] = conv.stop
        if conv.temperature is not None:
            kw["temperature"] = conv.temperature
        if conv.top_p is not None:
            kw["top_p"] = conv.top_p
        if conv.json_schema:
            kw["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": conv.json_schema},
            }
        return kw

    def send(self, model: str, conv: Conv) -> Reply:
        kw = self.kwargs(model, conv)
        if not conv.stream:
            out = self.sdk.chat.completions.create(**kw)
            msg, u = out.choices[0].message, out.usage
            return Reply(
                text=msg.content or "",
                thinking=(msg.model_extra or {}).get("reasoning_content") or "",
                calls=[(c.id, c.function.name, _args(c.function.arguments)) for c in msg.tool_calls or ()],
                stop=out.choices[0].finish_reason,
                usage=self._usage(u),
                usage_seen=1 if u else 0,
                headers=self.hdr.last,
            )
        reply = Reply()
        with self.sdk.chat.completions.stream(**kw, stream_options={"include_usage": True}) as stream:
            for ev in stream:
                if ev.type != "chunk":
                    continue
                chunk = ev.chunk
                if chunk.usage is not None:
                    reply.usage_seen += 1
                for ch in chunk.choices:
                    reply.thinking += (ch.delta.model_extra or {}).get("reasoning_content") or ""
                    reply.text_chunks += 1 if ch.delta.content else 0
            try:
                final = stream.get_final_completion()
            except openai.LengthFinishReasonError as e:  # the helper refuses to parse a cut answer
                final = e.completion
        reply.headers = self.hdr.last
        msg = final.choices[0].message
        reply.text = msg.content or ""
        reply.calls = [(c.id, c.function.name, _args(c.function.arguments)) for c in msg.tool_calls or ()]
        reply.stop = final.choices[0].finish_reason
        reply.usage = self._usage(final.usage)
        return reply

    @staticmethod
    def _usage(u: Any) -> Usage | None:
        if u is None:
            return None
        cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else None
        reasoning = u.completion_tokens_details.reasoning_tokens if u.completion_tokens_details else None
        return Usage(u.prompt_tokens, u.completion_tokens, cached, u.model_dump(), reasoning)

    def fail(self, model: str, prompt: str, status: int, stream: bool = False) -> Failure:
        expected = {429: openai.RateLimitError, 500: openai.InternalServerError}[status]
        try:
            self.sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], stream=stream
            )
        except expected as e:
            return Failure(e.status_code, e.response.headers.get("retry-after"), e.response.json())
        raise AssertionError(f"no {expected.__name__}")

    def cut(self, model: str, prompt: str) -> Failure:
        text = ""
        try:
            for chunk in self.sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], stream=True
            ):
                text += "".join(c.delta.content or "" for c in chunk.choices)
        except openai.APIError as e:
            return Failure(getattr(e, "status_code", None), None, e.body, text)
        raise AssertionError(f"the stream ended without an error after {text!r}")


# ---------------------------------------------------------------- OpenAI Responses


class OpenAIResponses:
    name = "responses"

    def __init__(self, base_url: str) -> None:
        self.hdr = _Headers()
        self.sdk = openai.OpenAI(
            base_url=f"{base_url}/v1", api_key="sk-any", max_retries=0, http_client=self.hdr.client()
        )

    @staticmethod
    def items(conv: Conv) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for t in conv.turns:
            if t[0] == "user":
                content: list[dict[str, Any]] = [{"type": "input_text", "text": t[1]}]
                if len(t) > 2:
                    img: Image = t[2]
                    url = f"data:{img.media_type};base64,{img.value}" if img.kind == "base64" else img.value
                    if img.media_type in AUDIO_FORMATS:
                        audio = {"data": img.value, "format": AUDIO_FORMATS[img.media_type]}
                        content.append({"type": "input_audio", "input_audio": audio})
                    elif img.is_file:
                        where = "file_data" if img.kind == "base64" else "file_url"
                        content.append({"type": "input_file", where: url, "filename": "attachment.pdf"})
                    else:
                        content.append({"type": "input_image", "image_url": url, "detail": "auto"})
                out.append({"role": "user", "content": content})
            elif t[0] == "assistant":
                out.append({"role": "assistant", "content": t[1]})
            elif t[0] == "calls":
                out.extend(
                    {"type": "function_call", "call_id": i, "name": n, "arguments": json.dumps(a)}
                    for i, n, a in t[1]
                )
            elif t[0] == "results":
                out.extend({"type": "function_call_output", "call_id": i, "output": c} for i, _, c in t[1])
        return out

    def kwargs(self, model: str, conv: Conv) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": model, "input": self.items(conv)}
        if conv.system:
            kw["instructions"] = conv.system
        if conv.tools:
            kw["tools"] = [
                {"type": "function", "name": n, "parameters": s, "strict": False} for n, s in conv.tools
            ]
        if conv.thinking:
            kw["reasoning"] = {"effort": "low", "summary": "auto"}
        if conv.max_tokens:
            kw["max_output_tokens"] = conv.max_tokens
        if conv.tool_choice:
            kw["tool_choice"] = {"type": "function", "name": conv.tool_choice}
        assert not conv.stop, "the Responses API has no stop sequences"
        if conv.temperature is not None:
            kw["temperature"] = conv.temperature
        if conv.top_p is not None:
            kw["top_p"] = conv.top_p
        if conv.json_schema:
            kw["text"] = {"format": {"type": "json_schema", "name": "answer", "schema": conv.json_schema}}
        return kw

    def send(self, model: str, conv: Conv) -> Reply:
        kw = self.kwargs(model, conv)
        reply = Reply()
        if not conv.stream:
            out = self.sdk.responses.create(**kw)
            reply.usage_seen = 1 if out.usage else 0
            reply.headers = self.hdr.last
        else:
            with self.sdk.responses.stream(**kw) as stream:
                last = None
                for ev in stream:
                    reply.text_chunks += 1 if ev.type == "response.output_text.delta" else 0
                    response = getattr(ev, "response", None)
                    reply.usage_seen += 1 if response is not None and response.usage is not None else 0
                    last = ev
                # get_final_response() knows only response.completed; a stream cut short by the
                # token limit ends with response.incomplete, whose response is as complete.
                assert last is not None and last.type in ("response.completed", "response.incomplete"), last
                out = last.response
            reply.headers = self.hdr.last
        for item in out.output:
            if item.type == "reasoning":
                reply.thinking += "".join(s.text for s in item.summary)
                reply.signature = item.encrypted_content
            elif item.type == "message":
                reply.text += "".join(c.text for c in item.content if c.type == "output_text")
            elif item.type == "function_call":
                reply.calls.append((item.call_id, item.name, _args(item.arguments)))
        reply.stop = out.status + (f":{out.incomplete_details.reason}" if out.incomplete_details else "")
        u = out.usage
        if u is not None:
            reply.usage = Usage(
                u.input_tokens,
                u.output_tokens,
                u.input_tokens_details.cached_tokens,
                u.model_dump(),
                u.output_tokens_details.reasoning_tokens,
            )
        return reply

    def fail(self, model: str, prompt: str, status: int, stream: bool = False) -> Failure:
        expected = {429: openai.RateLimitError, 500: openai.InternalServerError}[status]
        try:
            self.sdk.responses.create(model=model, input=prompt, stream=stream)
        except expected as e:
            return Failure(e.status_code, e.response.headers.get("retry-after"), e.response.json())
        raise AssertionError(f"no {expected.__name__}")

    def cut(self, model: str, prompt: str) -> Failure:
        """The Responses API reports a failed stream in band: an `error` event, then
        `response.failed` as the last event (the SDK yields both, it does not raise)."""
        text, events = "", []
        for ev in self.sdk.responses.create(model=model, input=prompt, stream=True):
            events.append(ev)
            if ev.type == "response.output_text.delta":
                text += ev.delta
        types = [e.type for e in events]
        assert types[-1] == "response.failed", types[-3:]
        assert types[-2] == "error", types[-3:]
        assert events[-1].response.status == "failed" and events[-1].response.error is not None
        return Failure(None, None, events[-2].model_dump(), text)


# ---------------------------------------------------------------- Anthropic Messages


class AnthropicMessages:
    name = "anthropic"

    def __init__(self, base_url: str) -> None:
        self.hdr = _Headers()
        self.sdk = anthropic.Anthropic(
            base_url=base_url, api_key="sk-ant-any", max_retries=0, http_client=self.hdr.client2()
        )

    @staticmethod
    def messages(conv: Conv) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for t in conv.turns:
            if t[0] == "user":
                if len(t) > 2:
                    img: Image = t[2]
                    src = (
                        {"type": "base64", "media_type": img.media_type, "data": img.value}
                        if img.kind == "base64"
                        else {"type": "url", "url": img.value}
                    )
                    block = {"type": "document" if img.is_file else "image", "source": src}
                    out.append({"role": "user", "content": [{"type": "text", "text": t[1]}, block]})
                else:
                    out.append({"role": "user", "content": t[1]})
            elif t[0] == "assistant":
                out.append({"role": "assistant", "content": t[1]})
            elif t[0] == "calls":
                out.append(
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in t[1]],
                    }
                )
            elif t[0] == "results":
                out.append(
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": i, "content": c} for i, _, c in t[1]
                        ],
                    }
                )
        return out

    def kwargs(self, model: str, conv: Conv) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "model": model,
            "messages": self.messages(conv),
            "max_tokens": conv.max_tokens or 4096,
        }
        if conv.system:
            kw["system"] = conv.system
        if conv.tools:
            kw["tools"] = [{"name": n, "input_schema": s} for n, s in conv.tools]
        if conv.thinking:
            kw["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        if conv.tool_choice:
            kw["tool_choice"] = {"type": "tool", "name": conv.tool_choice}
        if conv.stop:
            kw["stop_sequences"] = conv.stop
        # this SDK version no longer takes sampling parameters; the API (and older SDKs) still do
        sampling = {"temperature": conv.temperature, "top_p": conv.top_p}
        if any(v is not None for v in sampling.values()):
            kw["extra_body"] = {k: v for k, v in sampling.items() if v is not None}
        assert not conv.json_schema, "Anthropic Messages has no JSON output mode"
        return kw

    def send(self, model: str, conv: Conv) -> Reply:
        kw = self.kwargs(model, conv)
        reply = Reply()
        if not conv.stream:
            out = self.sdk.messages.create(**kw)
            reply.usage_seen = 1
            reply.headers = self.hdr.last
        else:
            with self.sdk.messages.stream(**kw) as stream:
                for ev in stream:
                    reply.text_chunks += 1 if ev.type == "text" else 0
                    reply.usage_seen += 1 if ev.type in ("message_start", "message_delta") else 0
                out = stream.get_final_message()
            reply.headers = self.hdr.last
        for b in out.content:
            if b.type == "thinking":
                reply.thinking += b.thinking
                reply.signature = b.signature
            elif b.type == "text":
                reply.text += b.text
            elif b.type == "tool_use":
                reply.calls.append((b.id, b.name, dict(b.input)))
        reply.stop = out.stop_reason
        u = out.usage
        cached = u.cache_read_input_tokens or 0
        total = (u.input_tokens or 0) + cached + (u.cache_creation_input_tokens or 0)
        thinking = u.output_tokens_details.thinking_tokens if u.output_tokens_details else None
        reply.usage = Usage(total, u.output_tokens, cached, u.model_dump(), thinking)
        return reply

    def fail(self, model: str, prompt: str, status: int, stream: bool = False) -> Failure:
        expected = {429: anthropic.RateLimitError, 500: anthropic.InternalServerError}[status]
        try:
            self.sdk.messages.create(
                model=model, max_tokens=100, messages=[{"role": "user", "content": prompt}], stream=stream
            )
        except expected as e:
            return Failure(e.status_code, e.response.headers.get("retry-after"), e.response.json())
        raise AssertionError(f"no {expected.__name__}")

    def cut(self, model: str, prompt: str) -> Failure:
        text = ""
        try:
            with self.sdk.messages.stream(
                model=model, max_tokens=100, messages=[{"role": "user", "content": prompt}]
            ) as stream:
                for ev in stream:
                    if ev.type == "text":
                        text += ev.text
        except anthropic.APIStatusError as e:  # the SDK raises on an `error` event
            return Failure(None, None, e.body, text)
        raise AssertionError(f"the stream ended without an error after {text!r}")

    def count(self, model: str, conv: Conv) -> tuple[int, dict[str, str]]:
        kw = self.kwargs(model, conv)
        kw.pop("max_tokens")
        raw = self.sdk.messages.with_raw_response.count_tokens(**kw)
        return raw.parse().input_tokens, dict(raw.headers)


# ---------------------------------------------------------------- Gemini


class Gemini:
    name = "gemini"

    def __init__(self, base_url: str, api_version: str = "v1beta") -> None:
        self.hdr = _Headers()
        self.sdk = genai.Client(
            api_key="gemini-any",
            http_options=gt.HttpOptions(
                base_url=base_url, api_version=api_version, httpx_client=self.hdr.client()
            ),
        )

    @staticmethod
    def contents(conv: Conv) -> list[gt.Content]:
        out = []
        for t in conv.turns:
            if t[0] == "user":
                parts = [gt.Part(text=t[1])]
                if len(t) > 2:
                    img: Image = t[2]
                    if img.kind == "base64":
                        parts.append(
                            gt.Part(
                                inline_data=gt.Blob(
                                    mime_type=img.media_type, data=base64.b64decode(img.value)
                                )
                            )
                        )
                    else:
                        parts.append(
                            gt.Part(file_data=gt.FileData(mime_type=img.media_type, file_uri=img.value))
                        )
                out.append(gt.Content(role="user", parts=parts))
            elif t[0] == "assistant":
                out.append(gt.Content(role="model", parts=[gt.Part(text=t[1])]))
            elif t[0] == "calls":
                out.append(
                    gt.Content(
                        role="model",
                        parts=[gt.Part(function_call=gt.FunctionCall(name=n, args=a)) for _, n, a in t[1]],
                    )
                )
            elif t[0] == "results":
                parts = [
                    gt.Part(function_response=gt.FunctionResponse(name=n, response={"output": c}))
                    for _, n, c in t[1]
                ]
                out.append(gt.Content(role="user", parts=parts))
        return out

    def config(self, conv: Conv) -> gt.GenerateContentConfig:
        cfg = gt.GenerateContentConfig(
            automatic_function_calling=gt.AutomaticFunctionCallingConfig(disable=True)
        )
        if conv.system:
            cfg.system_instruction = conv.system
        if conv.tools:
            decls = [gt.FunctionDeclaration(name=n, parameters_json_schema=s) for n, s in conv.tools]
            cfg.tools = [gt.Tool(function_declarations=decls)]
        if conv.thinking:
            cfg.thinking_config = gt.ThinkingConfig(include_thoughts=True, thinking_budget=1024)
        if conv.max_tokens:
            cfg.max_output_tokens = conv.max_tokens
        if conv.tool_choice:
            fcc = gt.FunctionCallingConfig(
                mode=gt.FunctionCallingConfigMode.ANY, allowed_function_names=[conv.tool_choice]
            )
            cfg.tool_config = gt.ToolConfig(function_calling_config=fcc)
        if conv.stop:
            cfg.stop_sequences = conv.stop
        if conv.temperature is not None:
            cfg.temperature = conv.temperature
        if conv.top_p is not None:
            cfg.top_p = conv.top_p
        if conv.json_schema:
            cfg.response_mime_type = "application/json"
            cfg.response_json_schema = conv.json_schema
        return cfg

    def send(self, model: str, conv: Conv) -> Reply:
        args = {"model": model, "contents": self.contents(conv), "config": self.config(conv)}
        chunks = (
            list(self.sdk.models.generate_content_stream(**args))
            if conv.stream
            else [self.sdk.models.generate_content(**args)]
        )
        reply = Reply(headers=self.hdr.last)
        last_total = -1
        for ch in chunks:
            cand = ch.candidates[0] if ch.candidates else None
            for p in (cand.content.parts if cand and cand.content else None) or ():
                if p.thought:
                    reply.thinking += p.text or ""
                    if p.thought_signature:
                        reply.signature = base64.b64encode(p.thought_signature).decode()
                elif p.function_call is not None:
                    reply.calls.append(
                        (p.function_call.id, p.function_call.name, dict(p.function_call.args or {}))
                    )
                elif p.text:
                    reply.text += p.text
                    reply.text_chunks += 1
            if cand is not None and cand.finish_reason is not None:
                reply.stop = cand.finish_reason.value
            u = ch.usage_metadata
            if u is not None and u.total_token_count is not None:
                reply.usage_seen += 1
                # Gemini usage is cumulative: each report must hold the totals so far, never less.
                assert u.total_token_count >= last_total, "usage went down between chunks"
                last_total = u.total_token_count
                output = (u.candidates_token_count or 0) + (u.thoughts_token_count or 0)
                reply.usage = Usage(
                    u.prompt_token_count,
                    output,
                    u.cached_content_token_count,
                    u.model_dump(exclude_none=True),
                    u.thoughts_token_count,
                )
        return reply

    def fail(self, model: str, prompt: str, status: int, stream: bool = False) -> Failure:
        expected = {429: genai_errors.ClientError, 500: genai_errors.ServerError}[status]
        try:
            if stream:
                list(self.sdk.models.generate_content_stream(model=model, contents=prompt))
            else:
                self.sdk.models.generate_content(model=model, contents=prompt)
        except expected as e:
            return Failure(e.code, self.hdr.last.get("retry-after"), e.details)
        raise AssertionError(f"no {expected.__name__}")

    def cut(self, model: str, prompt: str) -> Failure:
        text = ""
        try:
            for ch in self.sdk.models.generate_content_stream(model=model, contents=prompt):
                text += ch.text or ""
        except genai_errors.APIError as e:  # the SDK raises on a chunk that carries `error`
            return Failure(None, None, e.details, text)
        raise AssertionError(f"the stream ended without an error after {text!r}")

    def count(self, model: str, conv: Conv) -> tuple[int, dict[str, str]]:
        out = self.sdk.models.count_tokens(model=model, contents=self.contents(conv))
        assert out.total_tokens is not None
        return out.total_tokens, dict(self.hdr.last)


# ---------------------------------------------------------------- Ollama


class Ollama:
    name = "ollama"

    def __init__(self, base_url: str) -> None:
        self.hdr = _Headers()
        self.base_url = base_url
        self.sdk = ollama.Client(host=base_url, event_hooks=self.hdr.hooks(), timeout=30)

    @staticmethod
    def messages(conv: Conv) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"role": "system", "content": conv.system}] if conv.system else []
        for t in conv.turns:
            if t[0] == "user":
                msg: dict[str, Any] = {"role": "user", "content": t[1]}
                if len(t) > 2:
                    assert t[2].kind == "base64", "Ollama takes base64 images only"
                    msg["images"] = [base64.b64decode(t[2].value)]
                out.append(msg)
            elif t[0] == "assistant":
                out.append({"role": "assistant", "content": t[1]})
            elif t[0] == "calls":
                calls = [{"function": {"name": n, "arguments": a}} for _, n, a in t[1]]
                out.append({"role": "assistant", "content": "", "tool_calls": calls})
            elif t[0] == "results":
                out.extend({"role": "tool", "content": c, "tool_name": n} for _, n, c in t[1])
        return out

    def send(self, model: str, conv: Conv) -> Reply:
        kw: dict[str, Any] = {"model": model, "messages": self.messages(conv)}
        if conv.tools:
            kw["tools"] = [
                {"type": "function", "function": {"name": n, "parameters": s}} for n, s in conv.tools
            ]
        if conv.thinking:
            kw["think"] = True
        options = {
            "num_predict": conv.max_tokens,
            "stop": conv.stop,
            "temperature": conv.temperature,
            "top_p": conv.top_p,
        }
        if any(v is not None for v in options.values()):
            kw["options"] = {k: v for k, v in options.items() if v is not None}
        assert not conv.tool_choice, "Ollama has no tool choice"
        if conv.json_schema:
            kw["format"] = conv.json_schema
        chunks = (
            list(self.sdk.chat(**kw, stream=True)) if conv.stream else [self.sdk.chat(**kw, stream=False)]
        )
        reply = Reply(headers=self.hdr.last)
        for ch in chunks:
            reply.text += ch.message.content or ""
            reply.text_chunks += 1 if ch.message.content else 0
            reply.thinking += ch.message.thinking or ""
            reply.calls += [
                (None, c.function.name, dict(c.function.arguments)) for c in ch.message.tool_calls or ()
            ]
            if ch.done:
                reply.usage_seen += 1
                reply.stop = ch.done_reason
                reply.usage = Usage(
                    ch.prompt_eval_count,
                    ch.eval_count,
                    None,
                    {"prompt_eval_count": ch.prompt_eval_count, "eval_count": ch.eval_count},
                )
        return reply

    def fail(self, model: str, prompt: str, status: int, stream: bool = False) -> Failure:
        try:
            result = self.sdk.chat(model=model, messages=[{"role": "user", "content": prompt}], stream=stream)
            if stream:
                list(result)  # type: ignore[arg-type]
        except ollama.ResponseError as e:
            assert e.status_code == status, e
            return Failure(e.status_code, self.hdr.last.get("retry-after"), {"error": e.error})
        raise AssertionError("no ollama.ResponseError")

    def cut(self, model: str, prompt: str) -> Failure:
        text = ""
        try:
            for ch in self.sdk.chat(model=model, messages=[{"role": "user", "content": prompt}], stream=True):
                text += ch.message.content or ""
        except ollama.ResponseError as e:  # the SDK raises on a line that carries `error`
            return Failure(None, None, {"error": e.error}, text)
        raise AssertionError(f"the stream ended without an error after {text!r}")


CLIENTS = {
    "openai": OpenAIChat,
    "responses": OpenAIResponses,
    "anthropic": AnthropicMessages,
    "gemini": Gemini,
    "ollama": Ollama,
}
