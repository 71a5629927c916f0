"""Google Gemini (Generative Language API), under `/gemini/v1beta`.

Wire format as generativelanguage.googleapis.com sends it: `?alt=sse` streams are `data:` events
separated by CRLF CRLF; without it the stream is one pretty-printed JSON array whose elements
arrive as they are generated. Every chunk carries cumulative `usageMetadata`; function calls
come whole, without ids; thought parts carry `thought: true` and a `thoughtSignature`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from . import behaviour as bh
from .behaviour import Plan, Turn
from .gemini_checks import body_of, error, get_field, invalid, validate, validate_contents
from .wire import CT_SSE, Frame, Reply, Request, drive, json_reply, rand_id, stream_reply

PREFIX = "/gemini/v1beta"
MODELS_PATH = PREFIX + "/models"

MODEL_LIST = (
    ("gemini-2.5-pro", "Gemini 2.5 Pro", 65536),
    ("gemini-2.5-flash", "Gemini 2.5 Flash", 65536),
    ("gemini-2.0-flash", "Gemini 2.0 Flash", 8192),
    ("gemini-embedding-001", "Gemini Embedding 001", 1),
)
CT_JSON_STREAM = (b"content-type", b"application/json; charset=UTF-8")
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def auth(req: Request) -> Reply | None:
    key = req.headers.get("x-goog-api-key") or req.query.get("key", "")
    if not key:
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else ""
    if not key:
        return error(
            401,
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key "
            "or other form of API consumer identity to call this API.",
        )
    verdict = bh.key_verdict(key)
    if verdict == 401:
        info = {"@type": _ERROR_INFO, "reason": "API_KEY_INVALID", "domain": "googleapis.com"}
        return error(401, "API key not valid. Please pass a valid API key.", details=[info])
    if verdict == 429:
        return error(
            429,
            "You exceeded your current quota, please check your plan and billing details. For more information on "
            "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
        )
    if verdict == 403:
        return error(403, "Permission denied: Consumer has been suspended.")
    return None


def _response_text(response: Any) -> str:
    # A lone string field ({"result": "..."}) is how most callers wrap a plain tool output.
    if isinstance(response, dict) and len(response) == 1:
        (value,) = response.values()
        if isinstance(value, str):
            return value
    return orjson.dumps(response).decode()


def _contents_chars(contents: Any) -> int:
    chars = 0
    for content in contents if isinstance(contents, list) else [contents]:
        if not isinstance(content, dict):
            continue
        parts = content.get("parts") or []
        for part in parts if isinstance(parts, list) else [parts]:
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            if isinstance(text, str):
                chars += len(text)
            fr = get_field(part, "functionResponse")
            if fr is not None:
                chars += len(_response_text(fr.get("response")))
    return chars


def to_turn(body: dict[str, Any]) -> Turn:
    turn = Turn()
    contents = body["contents"]
    if isinstance(contents, dict):
        contents = [contents]
    system = get_field(body, "systemInstruction")
    turn.prompt_chars = _contents_chars(contents) + (_contents_chars(system) if system else 0)
    for content in contents:
        if (content.get("role") or "user") != "user":
            continue
        parts = content["parts"] if isinstance(content["parts"], list) else [content["parts"]]
        texts = [p["text"] for p in parts if isinstance(p.get("text"), str)]
        if texts:
            turn.user_text = " ".join(texts)
    last = contents[-1]
    last_parts = last["parts"] if isinstance(last["parts"], list) else [last["parts"]]
    results = [
        _response_text(fr.get("response"))
        for p in last_parts
        if (fr := get_field(p, "functionResponse")) is not None
    ]
    if results:
        turn.tool_results = results
    tools = body.get("tools") or []
    for tool in tools if isinstance(tools, list) else [tools]:
        decls = get_field(tool, "functionDeclarations") or []
        for decl in decls if isinstance(decls, list) else [decls]:
            schema = decl.get("parameters") or get_field(decl, "parametersJsonSchema") or {}
            turn.tools.append((decl["name"], schema))
    calling = get_field(get_field(body, "toolConfig") or {}, "functionCallingConfig") or {}
    mode = str(calling.get("mode") or "").upper()
    if mode == "NONE":
        turn.tool_choice = "none"
    elif mode == "ANY":
        allowed = get_field(calling, "allowedFunctionNames") or []
        turn.tool_choice = allowed[0] if isinstance(allowed, list) and len(allowed) == 1 else "required"
    config = get_field(body, "generationConfig") or {}
    limit = get_field(config, "maxOutputTokens")
    turn.max_tokens = limit if isinstance(limit, int) else None
    turn.stop = [s for s in get_field(config, "stopSequences") or () if isinstance(s, str)]
    return turn


FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP", "stop_sequence": "STOP"}


def usage(plan: Plan, candidates: int, thoughts: int) -> dict[str, Any]:
    prompt = plan.prompt_tokens
    out: dict[str, Any] = {"promptTokenCount": prompt}
    if candidates:
        out["candidatesTokenCount"] = candidates
    out["totalTokenCount"] = prompt + candidates + thoughts
    if plan.cached_tokens:
        out["cachedContentTokenCount"] = plan.cached_tokens
    out["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if plan.cached_tokens:
        out["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": plan.cached_tokens}]
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    return out


def _candidate(parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
    content: dict[str, Any] = {"parts": parts, "role": "model"} if parts else {"role": "model"}
    cand: dict[str, Any] = {"content": content}
    if finish:
        cand["finishReason"] = finish
    cand["index"] = 0
    return cand


def _call_parts(plan: Plan) -> list[dict[str, Any]]:
    return [{"functionCall": {"name": c.name, "args": c.args}} for c in plan.tool_calls]


def response(plan: Plan, model: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if plan.thinking:
        parts.append({"text": plan.thinking, "thought": True, "thoughtSignature": plan.signature})
    if plan.text:
        parts.append({"text": plan.text})
    parts.extend(_call_parts(plan))
    candidates = plan.output_tokens - plan.reasoning_tokens
    return {
        "candidates": [_candidate(parts, FINISH[plan.stop])],
        "usageMetadata": usage(plan, candidates, plan.reasoning_tokens),
        "modelVersion": model,
        "responseId": rand_id(22),
    }


def stream_chunks(plan: Plan, model: str) -> list[tuple[dict[str, Any], bool]]:
    """The stream's response objects, each flagged when it counts as a content chunk."""
    rid = rand_id(22)
    out: list[tuple[dict[str, Any], bool]] = []

    def add(
        parts: list[dict[str, Any]], finish: str | None, candidates: int, thoughts: int, content: bool
    ) -> None:
        chunk = {
            "candidates": [_candidate(parts, finish)],
            "usageMetadata": usage(plan, candidates, thoughts),
            "modelVersion": model,
            "responseId": rid,
        }
        out.append((chunk, content))

    finish = FINISH[plan.stop]
    last_thought = len(plan.thinking_chunks) - 1
    for k, word in enumerate(plan.thinking_chunks):
        part: dict[str, Any] = {"text": word, "thought": True}
        if k == last_thought:
            part["thoughtSignature"] = plan.signature
        add([part], None, 0, k + 1, True)
    thoughts = plan.reasoning_tokens
    words = len(plan.chunks)
    for k, word in enumerate(plan.chunks):
        done = k == words - 1 and not plan.tool_calls
        add([{"text": word}], finish if done else None, k + 1, thoughts, True)
    if plan.tool_calls:
        add(_call_parts(plan), finish, plan.output_tokens - thoughts, thoughts, True)
    elif not plan.chunks:
        add([{"text": ""}], finish, 0, thoughts, False)
    return out


def sse_frames(chunks: list[tuple[dict[str, Any], bool]]) -> list[Frame]:
    return [(b"data: " + orjson.dumps(c) + b"\r\n\r\n", content) for c, content in chunks]


def array_frames(chunks: list[tuple[dict[str, Any], bool]]) -> list[Frame]:
    frames: list[Frame] = []
    for i, (c, content) in enumerate(chunks):
        lead = b"[" if i == 0 else b",\r\n"
        frames.append((lead + orjson.dumps(c, option=orjson.OPT_INDENT_2) + b"\n", content))
    frames.append((b"]", False))
    return frames


async def generate(req: Request) -> Reply:
    body = body_of(req, "GenerateContentRequest")
    if isinstance(body, Reply):
        return body
    problem = validate(body)
    if problem:
        return problem
    model = req.params["model"]
    plan = bh.make_plan(to_turn(body), model)
    if plan.error:
        return error(plan.error)
    if plan.slow_ms:
        await asyncio.sleep(plan.slow_ms / 1000)
    if req.params["action"] == "generateContent":
        return json_reply(200, response(plan, model))
    chunks = stream_chunks(plan, model)
    if req.query.get("alt") == "sse":
        return stream_reply(drive(sse_frames(chunks), plan.slow_ms, plan.cut), CT_SSE)
    return stream_reply(drive(array_frames(chunks), plan.slow_ms, plan.cut), CT_JSON_STREAM)


async def count_tokens(req: Request) -> Reply:
    body = body_of(req, "CountTokensRequest")
    if isinstance(body, Reply):
        return body
    inner = get_field(body, "generateContentRequest")
    contents = inner.get("contents") if isinstance(inner, dict) else body.get("contents")
    problem = validate_contents(contents, "CountTokensRequest")
    if problem:
        return problem
    chars = _contents_chars(contents)
    if isinstance(inner, dict) and get_field(inner, "systemInstruction"):
        chars += _contents_chars(get_field(inner, "systemInstruction"))
    tokens = bh.tokens_for_chars(chars)
    return json_reply(
        200, {"totalTokens": tokens, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}]}
    )


def _embed_one(request: dict[str, Any], model: str, where: str) -> dict[str, Any] | Reply:
    content = request.get("content")
    if not content:
        return invalid(f"* {where}.content: content is not specified\n")
    parts = content.get("parts") or []
    text = " ".join(p.get("text", "") for p in (parts if isinstance(parts, list) else [parts]))
    dims = get_field(request, "outputDimensionality") or (3072 if "gemini-embedding" in model else 768)
    return {"values": bh.embedding(text, dims)}


async def embed(req: Request) -> Reply:
    body = body_of(req, "EmbedContentRequest")
    if isinstance(body, Reply):
        return body
    result = _embed_one(body, req.params["model"], "EmbedContentRequest")
    if isinstance(result, Reply):
        return result
    return json_reply(200, {"embedding": result})


async def batch_embed(req: Request) -> Reply:
    body = body_of(req, "BatchEmbedContentsRequest")
    if isinstance(body, Reply):
        return body
    requests = body.get("requests")
    if not requests:
        return invalid("* BatchEmbedContentsRequest.requests: requests is not specified\n")
    out = []
    for i, item in enumerate(requests if isinstance(requests, list) else [requests]):
        result = _embed_one(item, req.params["model"], f"BatchEmbedContentsRequest.requests[{i}]")
        if isinstance(result, Reply):
            return result
        out.append(result)
    return json_reply(200, {"embeddings": out})


def _model_info(mid: str, name: str, out_limit: int) -> dict[str, Any]:
    embedding = "embedding" in mid
    methods = (
        ["embedContent", "batchEmbedContents"]
        if embedding
        else ["generateContent", "countTokens", "createCachedContent"]
    )
    info: dict[str, Any] = {
        "name": f"models/{mid}",
        "version": "001",
        "displayName": name,
        "description": f"{name} (fake upstream)",
        "inputTokenLimit": 2048 if embedding else 1048576,
        "outputTokenLimit": out_limit,
        "supportedGenerationMethods": methods,
    }
    if not embedding:
        info.update(
            temperature=1, topP=0.95, topK=64, maxTemperature=2, thinking=mid.startswith("gemini-2.5")
        )
    return info


async def list_models(req: Request) -> Reply:
    return json_reply(200, {"models": [_model_info(*m) for m in MODEL_LIST]})


async def get_model(req: Request) -> Reply:
    mid = req.params["model"]
    known = next((m for m in MODEL_LIST if m[0] == mid), (mid, mid, 8192))
    return json_reply(200, _model_info(*known))


ACTIONS = {
    "generateContent": ("gemini.generate", generate),
    "streamGenerateContent": ("gemini.stream", generate),
    "countTokens": ("gemini.count_tokens", count_tokens),
    "embedContent": ("gemini.embed", embed),
    "batchEmbedContents": ("gemini.batch_embed", batch_embed),
}

ROUTES = {("GET", MODELS_PATH): ("gemini.models", list_models)}


def match(method: str, path: str) -> tuple[str, Any, dict[str, str]] | None:
    """Route `models/{model}:{action}` and `models/{model}`, which a static table cannot."""
    if not path.startswith(MODELS_PATH + "/"):
        return None
    rest = path[len(MODELS_PATH) + 1 :]
    model, sep, action = rest.rpartition(":")
    if not sep:
        if method == "GET" and rest:
            return "gemini.model", get_model, {"model": rest}
        return None
    entry = ACTIONS.get(action)
    if entry is None or method != "POST" or not model:
        return None
    return entry[0], entry[1], {"model": model, "action": action}
