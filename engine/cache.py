"""Response cache: what makes two requests the same question, which answers may be reused, and how a
cached answer is replayed as a stream. The storage tiers live in cache_store.py.

Why the key is computed on the canonical request: every client format decodes to the same canonical
shape, so one question asked through the OpenAI, Anthropic, Gemini or Ollama route is one entry.
Only fields that change the answer are hashed (ANSWER_FIELDS), together with the model name after
alias resolution and the caller's scope (API key name), so one key never sees another key's answers.
The digest is blake2b of canonical JSON (orjson, sorted keys): stable under key reordering and a few
microseconds on a typical chat request, because it runs on every cacheable request.

Optional semantic tier: the last user turn is embedded (by an embedding model routed through the
gateway) and compared with earlier questions asked in the same *semantic scope*: same API key, same
model, same parameters and the same conversation before the last turn (see `semantic_scope`). So a
rephrased question can reuse an answer, but never across keys, models, system prompts or histories.
"""

from __future__ import annotations

import hashlib
import operator
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .canonical import clean_usage, merge_usage, normalize_response

# Canonical request fields that change the answer. Not part of the key: model (passed in resolved),
# stream, include_usage, user, metadata.
ANSWER_FIELDS = (
    "system", "messages", "tools", "tool_choice", "temperature", "top_p", "top_k", "max_tokens", "stop",
    "seed", "n", "response_format", "reasoning", "parallel_tool_calls",
)
_FLOAT_FIELDS = ("temperature", "top_p")  # 0 and 0.0 are the same setting
_SORTED = orjson.OPT_SORT_KEYS


def cache_key(req: Mapping[str, Any], model: str, scope: str | None) -> str:
    """Digest of the answer-changing fields of canonical request `req`, the resolved `model` and the
    caller's `scope` (API key name; None or "" for anonymous). Absent, None and empty values are the
    same; an integer temperature or top_p equals the same float."""
    get = req.get
    parts = {f: v for f in ANSWER_FIELDS if (v := get(f)) is not None and v != "" and v != []}
    for f in _FLOAT_FIELDS:
        if type(parts.get(f)) is int:
            parts[f] = float(parts[f])
    blob = orjson.dumps((scope or "", model, parts), option=_SORTED)
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


@dataclass(frozen=True)
class CacheRules:
    """The `cache:` section of config.yaml (schema: engine/schemas/cache.schema.json)."""

    enabled: bool = True
    ttl_s: float = 3600.0
    max_entries: int = 1000
    max_bytes: int = 64 * 1024 * 1024
    persistent_max_entries: int = 100_000
    max_temperature: float = 0.0
    cache_tool_calls: bool = False
    semantic_enabled: bool = False
    semantic_model: str | None = None
    semantic_threshold: float = 0.95
    semantic_max_entries: int = 1000
    idempotency_window_s: float = 5.0

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None) -> CacheRules:
        """Rules from the validated `cache:` mapping; keys left out keep their defaults."""
        raw = raw or {}
        sem = raw.get("semantic") or {}
        idem = raw.get("idempotency") or {}
        d = cls()
        rules = cls(
            enabled=bool(raw.get("enabled", d.enabled)),
            ttl_s=float(raw.get("ttl_s", d.ttl_s)),
            max_entries=int(raw.get("max_entries", d.max_entries)),
            max_bytes=int(raw.get("max_bytes", d.max_bytes)),
            persistent_max_entries=int(raw.get("persistent_max_entries", d.persistent_max_entries)),
            max_temperature=float(raw.get("max_temperature", d.max_temperature)),
            cache_tool_calls=bool(raw.get("cache_tool_calls", d.cache_tool_calls)),
            semantic_enabled=bool(sem.get("enabled", d.semantic_enabled)),
            semantic_model=sem.get("model") or None,
            semantic_threshold=float(sem.get("threshold", d.semantic_threshold)),
            semantic_max_entries=int(sem.get("max_entries", d.semantic_max_entries)),
            idempotency_window_s=float(idem.get("window_s", d.idempotency_window_s)),
        )
        if rules.semantic_enabled and not rules.semantic_model:
            raise ValueError("cache.semantic.model: the semantic cache needs an embedding model name "
                             "(a model routed through the gateway, e.g. openai/text-embedding-3-small)")
        return rules


def deterministic(params: Mapping[str, Any], rules: CacheRules) -> bool:
    """The parameter half of `cacheable`: temperature absent or at most `max_temperature`, one
    choice. `params` may be a format's peek (read before any decode) or the canonical request."""
    if not rules.enabled:
        return False
    t = params.get("temperature")
    if isinstance(t, int | float) and t > rules.max_temperature:
        return False
    n = params.get("n")
    return not (isinstance(n, int) and n > 1)


def cacheable(req: Mapping[str, Any], rules: CacheRules) -> bool:
    """Whether this request's answer may be looked up and stored. Only answers that are deterministic
    enough: temperature absent or at most `max_temperature`; one choice (n > 1 asks for variety);
    no remote content (an image URL can change behind an unchanged key; inline images are fine)."""
    if not deterministic(req, rules):
        return False
    messages = req.get("messages")
    if not messages:
        return False
    for m in messages:
        for p in m.get("content") or ():
            if p.get("type") == "image":
                url = p.get("url")
                if url and not url.startswith("data:"):
                    return False
    return True


def storable(resp: Mapping[str, Any], rules: CacheRules) -> bool:
    """Whether a canonical response may be stored: never an error or an empty answer; tool calls
    only when `cache_tool_calls` (the tools' world may have changed since)."""
    if resp.get("stop_reason") == "error":
        return False
    content = resp.get("content")
    if not content:
        return False
    if not rules.cache_tool_calls:
        for p in content:
            if p.get("type") == "tool_call":
                return False
    return True


def storable_probe(probe: Mapping[str, Any] | None, rules: CacheRules) -> bool:
    """`storable` for a wire answer read through its format's probe (Format.response_probe)."""
    if not probe or probe.get("error") or not probe.get("content"):
        return False
    return rules.cache_tool_calls or not probe.get("tool_calls")


def wire_entry(raw: bytes, fmt_id: str, served_by: str) -> bytes:
    """A stored wire answer: `raw` (a JSON object, as upstream sent it) wrapped with its format, so
    the miss that stores it decodes nothing; `from_entry` decodes it when a hit is served."""
    return b'{"wire":' + orjson.dumps(fmt_id) + b',"served_by":' + orjson.dumps(served_by) + b',"body":' + raw + b"}"


def from_entry(entry: dict[str, Any], decode: Callable[[str, Any], dict[str, Any] | None]) -> dict[str, Any] | None:
    """The canonical response of a stored entry: as stored, or decoded by `decode(format id, wire
    body)` for a wire entry (None when that format is gone or the answer does not decode)."""
    if "wire" not in entry:
        return entry
    resp = decode(entry["wire"], entry.get("body"))
    return None if resp is None else {**resp, "served_by": entry.get("served_by")}


def events_from_response(resp: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Canonical stream events that replay canonical response `resp`; feed them to the client
    format's StreamEncoder (then `end()`) to answer a cached hit on a streaming request.
    Consecutive parts of one type (two text parts) come out as one block, as a live stream would."""
    events: list[dict[str, Any]] = [{"type": "start", "id": resp.get("id"), "model": resp.get("model")}]
    tools = 0
    for p in resp.get("content") or ():
        t = p.get("type")
        if t == "text":
            events.append({"type": "text", "text": p.get("text") or ""})
        elif t == "thinking":
            ev = {"type": "thinking", "text": p.get("text") or ""}
            if p.get("signature"):
                ev["signature"] = p["signature"]
            events.append(ev)
        elif t == "tool_call":
            events.append({"type": "tool_start", "index": tools, "id": p.get("id"), "name": p.get("name")})
            events.append({"type": "tool_args", "index": tools, "delta": p.get("arguments") or ""})
            tools += 1
    usage = resp.get("usage")
    if usage:
        events.append({"type": "usage", **usage})
    events.append({"type": "finish", "stop_reason": resp.get("stop_reason") or "stop"})
    return events


class ResponseAssembler:
    """Canonical stream events -> the canonical response they carried, for storing a stream that
    was relayed untranslated (the fast path has no encoder that assembles it). `response()` is
    None unless the stream finished cleanly: a partial or failed stream is never cached."""

    __slots__ = ("_tools", "content", "failed", "id", "model", "stop_reason", "usage")

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.content: list[dict[str, Any]] = []
        self.usage = clean_usage(None)
        self.stop_reason: str | None = None
        self.failed = False
        self._tools: dict[Any, dict[str, Any]] = {}

    def push(self, ev: dict[str, Any]) -> None:
        t = ev.get("type")
        if t == "text" or t == "thinking":
            last = self.content[-1] if self.content else None
            if last is None or last["type"] != t or (t == "thinking" and last.get("signature")):
                last = {"type": t, "text": ""}
                self.content.append(last)
            last["text"] += ev.get("text") or ""
            if t == "thinking" and ev.get("signature"):
                last["signature"] = ev["signature"]
        elif t == "tool_start":
            part: dict[str, Any] = {"type": "tool_call", "id": ev.get("id"), "name": ev.get("name"), "arguments": ""}
            self._tools[ev.get("index")] = part
            self.content.append(part)
        elif t == "tool_args":
            tool = self._tools.get(ev.get("index"))
            if tool is not None:
                tool["arguments"] += ev.get("delta") or ""
        elif t == "usage":
            merge_usage(self.usage, ev)
        elif t == "finish":
            self.stop_reason = ev.get("stop_reason") or "stop"
        elif t == "error":
            self.failed = True
        elif t == "start":
            self.id = ev.get("id") or self.id
            self.model = ev.get("model") or self.model

    def response(self) -> dict[str, Any] | None:
        if self.failed or self.stop_reason is None or self.stop_reason == "error":
            return None
        return normalize_response({"id": self.id, "model": self.model, "content": [dict(p) for p in self.content],
                                   "stop_reason": self.stop_reason, "usage": dict(self.usage)})


# ------------------------------------------------------------------ semantic tier


def last_user_text(req: Mapping[str, Any]) -> str | None:
    """The text of the last turn when it is the user's: what the semantic tier embeds."""
    messages = req.get("messages") or ()
    if not messages or messages[-1].get("role") != "user":
        return None
    text = "\n".join(p.get("text") or "" for p in messages[-1].get("content") or () if p.get("type") == "text")
    return text or None


def semantic_scope(req: Mapping[str, Any], model: str, scope: str | None) -> str:
    """The partition a semantic lookup searches: everything in the exact key except the last user
    turn's text. Two questions are only compared when all else (key, model, system prompt, tools,
    parameters, earlier turns, non-text parts of the last turn) is the same."""
    messages = list(req.get("messages") or ())
    if messages:
        last = messages[-1]
        rest = [p for p in last.get("content") or () if p.get("type") != "text"]
        messages[-1] = {"role": last.get("role"), "content": rest, "semantic": True}
    return cache_key({**req, "messages": messages}, model, scope)


def _unit(vector: list[float]) -> list[float] | None:
    norm = sum(x * x for x in vector) ** 0.5
    if not norm or norm != norm:  # zero or NaN: no direction to compare
        return None
    return [x / norm for x in vector]


class SemanticIndex:
    """Unit vectors per scope, bounded by `max_entries` overall (oldest out first) and by `ttl_s`.

    Plain Python cosine (numpy is not a dependency): a lookup compares only the entries of one
    semantic scope, which stays small because the scope fixes the model, key and conversation."""

    def __init__(self, max_entries: int = 1000, *, ttl_s: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._order: OrderedDict[str, tuple[str, float, str | None]] = OrderedDict()  # key -> (scope, expires, model)
        self._scopes: dict[str, dict[str, list[float]]] = {}

    def __len__(self) -> int:
        return len(self._order)

    def add(self, scope: str, vector: list[float], key: str, model: str | None = None) -> None:
        unit = _unit(vector)
        if unit is None:
            return
        self._remove(key)
        expires = self._clock() + self.ttl_s if self.ttl_s is not None else float("inf")
        self._order[key] = (scope, expires, model)
        self._scopes.setdefault(scope, {})[key] = unit
        while len(self._order) > self.max_entries:
            self._remove(next(iter(self._order)))

    def find(self, scope: str, vector: list[float], threshold: float) -> str | None:
        """The key of the most similar fresh entry of `scope` with cosine similarity >= threshold."""
        entries = self._scopes.get(scope)
        if not entries:
            return None
        q = _unit(vector)
        if q is None:
            return None
        now = self._clock()
        best, best_key, expired = threshold, None, []
        mul = operator.mul
        for key, v in entries.items():
            if self._order[key][1] <= now:
                expired.append(key)
                continue
            if len(v) != len(q):
                continue
            sim = sum(map(mul, q, v))
            if sim >= best:
                best, best_key = sim, key
        for key in expired:
            self._remove(key)
        return best_key

    def clear(self, model: str | None = None) -> int:
        keys = [k for k, (_, _, m) in self._order.items() if model is None or m == model]
        for k in keys:
            self._remove(k)
        return len(keys)

    def _remove(self, key: str) -> None:
        entry = self._order.pop(key, None)
        if entry is None:
            return
        bucket = self._scopes.get(entry[0])
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:
                del self._scopes[entry[0]]


if TYPE_CHECKING:
    from .cache_store import ResponseCache


def __getattr__(name: str) -> Any:
    """`from engine.cache import ResponseCache` works too (the store imports this module, so the
    re-export is resolved on first use rather than at import)."""
    if name == "ResponseCache":
        from .cache_store import ResponseCache

        return ResponseCache
    raise AttributeError(f"module 'engine.cache' has no attribute '{name}'")

__all__ = [
    "ANSWER_FIELDS", "CacheRules", "ResponseAssembler", "ResponseCache", "SemanticIndex", "cache_key", "cacheable",
    "deterministic", "events_from_response", "from_entry", "last_user_text", "semantic_scope", "storable", "storable_probe", "wire_entry",
]
