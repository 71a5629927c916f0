"""The canonical model every format spec maps to and from (hub and spoke).

Plain dicts, so JMESPath and Jinja read them directly. Shapes:

Request
    model: str                         what the client asked for (rewritten to the upstream id on encode)
    system: str | None                 system prompt text (all system/developer turns joined)
    messages: [Message]
    tools: [{name, description, parameters (JSON Schema)}]
    tool_choice: "auto" | "none" | "required" | {"name": str}
    max_tokens, temperature, top_p, top_k, seed, stop: [str], n
    response_format: {"type": "text" | "json_object" | "json_schema", "schema", "name"}
    reasoning: {"effort": "low"|"medium"|"high", "budget_tokens": int} | None
    stream: bool, include_usage: bool
    parallel_tool_calls: bool | None, user: str | None

Message
    role: "user" | "assistant" | "tool"
    content: [Part]

Part
    {"type": "text", "text"}
    {"type": "image", "url"} | {"type": "image", "media_type", "data" (base64)}
    {"type": "file", "media_type", "data" (base64) | "url", "filename"?}
                                       a document, audio or video that is not an image
                                       (application/pdf, text/plain as base64 UTF-8, audio/wav,
                                       audio/mpeg, ...); only in user turns
    {"type": "file", "file_id", "filename"?}
                                       a provider-side upload (OpenAI file_id, Anthropic Files
                                       API): meaningful only to the provider account that issued
                                       it, so no encoder sends it; it is reported as lost
    {"type": "tool_call", "id", "name", "arguments" (JSON string)}
    {"type": "tool_result", "tool_call_id", "name"?, "content" (str), "is_error"?}
    {"type": "thinking", "text", "signature"?}

Response
    id, model, content: [Part], stop_reason, usage

Usage (input counts every input token, cached ones included; output counts reasoning tokens)
    input_tokens, output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens

Features (FEATURES, found by features_used) are what a format may be unable to carry; a format
lists the ones it can in `supports:`, and the others are reported (x-omniroute-lossy). Files
also add one `files:<media_type>` entry per media type used, checked against the format's
`file_types:` (absent: any type), so "PDF yes, video no" is reported per type.

Stop reasons: "stop" | "length" | "tool_calls" | "content_filter" | "error"

Stream events (`type` first)
    start {id?, model?}   text {text}   thinking {text?, signature?}
    tool_start {index, id?, name}   tool_args {index, delta}
    usage {input_tokens?, ...}   finish {stop_reason}   error {kind, message}
"""

from __future__ import annotations

from typing import Any

USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
STOP_REASONS = ("stop", "length", "tool_calls", "content_filter", "error")

# Request features a format may not be able to carry; see Format.supports.
FEATURES = (
    "tools", "tool_choice", "images", "image_urls", "files", "file_urls", "file_ids", "thinking", "response_format",
    "stop", "top_k", "seed", "n", "reasoning",
)  # fmt: skip
FILE_TYPE_PREFIX = "files:"  # features_used adds "files:<media_type>" for each file media type


def files_refused(used: set[str], accepted: tuple[str, ...] | None) -> list[str]:
    """The `files:<media_type>` entries of `used` that a format whose `file_types:` is `accepted`
    cannot carry. Entries are exact types or `type/*`; None accepts anything."""
    if accepted is None:
        return []
    return [
        f for f in used
        if f.startswith(FILE_TYPE_PREFIX)
        and (mt := f[len(FILE_TYPE_PREFIX):]) not in accepted and f"{mt.split('/')[0]}/*" not in accepted
    ]  # fmt: skip


def merge_usage(into: dict[str, int], update: dict[str, Any]) -> None:
    """Take the latest value of each counter. Never add: several formats repeat cumulative usage."""
    for k in USAGE_FIELDS:
        v = update.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            into[k] = v


def clean_usage(u: dict[str, Any] | None) -> dict[str, int]:
    out = {k: 0 for k in USAGE_FIELDS}
    if u:
        merge_usage(out, u)
    return out


def normalize_response(resp: dict[str, Any]) -> dict[str, Any]:
    """Invariants the specs need not repeat: tool calls imply stop_reason tool_calls, ids exist."""
    content = resp.get("content") or []
    resp["content"] = [p for p in content if not (p.get("type") == "text" and not p.get("text"))]
    if resp.get("stop_reason") in (None, "stop") and any(p.get("type") == "tool_call" for p in content):
        resp["stop_reason"] = "tool_calls"
    resp.setdefault("stop_reason", "stop")
    resp["usage"] = clean_usage(resp.get("usage"))
    return resp


def features_used(req: dict[str, Any]) -> set[str]:
    used: set[str] = set()
    if req.get("tools"):
        used.add("tools")
        tc = req.get("tool_choice")
        if tc == "required" or isinstance(tc, dict):  # forcing a call; auto/none every format can say
            used.add("tool_choice")
    for k in ("stop", "top_k", "seed", "reasoning"):
        if req.get(k):
            used.add(k)
    if (req.get("n") or 1) > 1:
        used.add("n")
    rf = req.get("response_format")
    if rf and rf.get("type") not in (None, "text"):
        used.add("response_format")
    for m in req.get("messages") or ():
        for p in m.get("content") or ():
            t = p.get("type")
            if t == "image":
                used.add("images")
                if p.get("url"):
                    used.add("image_urls")
            elif t == "file":
                used.add("files")
                if p.get("file_id") and not (p.get("data") or p.get("url")):
                    used.add("file_ids")
                    continue
                if p.get("url"):
                    used.add("file_urls")
                used.add(FILE_TYPE_PREFIX + (p.get("media_type") or "application/octet-stream"))
            elif t == "thinking":
                used.add("thinking")
    return used


def estimate_tokens(req: dict[str, Any]) -> int:
    """A rough input size (4 characters a token) for budgets, routing and count_tokens fallbacks."""
    chars = len(req.get("system") or "")
    for m in req.get("messages") or ():
        for p in m.get("content") or ():
            t = p.get("type")
            if t == "text" or t == "thinking":
                chars += len(p.get("text") or "")
            elif t == "tool_call":
                chars += len(p.get("arguments") or "") + len(p.get("name") or "")
            elif t == "tool_result":
                c = p.get("content")
                chars += len(c) if isinstance(c, str) else 0
            elif t == "image":
                chars += 340 * 4  # a typical image costs some hundreds of tokens
            elif t == "file":
                # rough: its decoded size in bytes counts as characters; a URL as a 1000-token file
                chars += (len(p.get("data") or "") * 3) // 4 or 1000 * 4
    for tool in req.get("tools") or ():
        chars += len(str(tool.get("parameters") or "")) + len(tool.get("description") or "")
    return max(1, chars // 4)
