"""Deepgram, under `/deepgram`: POST /v1/listen [deepgram.listen], pre-recorded speech-to-text.

As api.deepgram.com: the raw audio is the body (its Content-Type an audio type), options are
query parameters, the key comes as `Authorization: Token <key>`. Errors are
`{"err_code", "err_msg", "request_id"}`. The answer carries `metadata.duration` and
`results.channels[0].alternatives[0].transcript` (with `detected_language` when
`detect_language=true`).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from . import behaviour as bh
from .audio import duration_of, kind_of, transcript
from .wire import Headers, Reply, Request, json_reply

PREFIX = "/deepgram"
MODELS = ("nova-3", "nova-2", "nova", "enhanced", "base", "whisper-large", "whisper-medium")
OPTIONS = frozenset({
    "model", "language", "detect_language", "smart_format", "punctuate", "diarize", "utterances",
    "paragraphs", "numerals", "profanity_filter", "keyterm", "keywords", "tier", "version", "multichannel",
    "filler_words", "channels", "encoding", "sample_rate", "tag", "callback", "mip_opt_out",
})  # fmt: skip
_BOOLEAN = ("detect_language", "smart_format", "punctuate", "diarize", "utterances", "paragraphs", "numerals")
_CODES = {400: "Bad Request", 401: "INVALID_AUTH", 402: "ASR_PAYMENT_REQUIRED", 403: "INSUFFICIENT_PERMISSIONS",
          404: "Not Found", 429: "TOO_MANY_REQUESTS", 500: "INTERNAL_SERVER_ERROR", 503: "SERVICE_UNAVAILABLE"}  # fmt: skip


def error(status: int, message: str | None = None, headers: Headers | None = None) -> Reply:
    extra: Headers = [(b"retry-after", b"1")] if status == 429 else []
    if headers:
        extra.extend(headers)
    body = {
        "err_code": _CODES.get(status, "Error"),
        "err_msg": message or ("Invalid credentials." if status == 401 else f"upstream status {status}"),
        "request_id": str(uuid.uuid4()),
    }
    return json_reply(status, body, extra)


def auth(req: Request) -> Reply | None:
    scheme, _, key = req.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "token" or not key.strip():
        return error(401, "Invalid credentials.")
    verdict = bh.key_verdict(key.strip())
    if verdict == 401:
        return error(401, "Invalid credentials.")
    if verdict == 429:
        return error(402, "Project does not have enough balance to process this request.")
    if verdict == 403:
        return error(403, "Insufficient permissions.")
    return None


async def listen(req: Request) -> Reply:
    for key in req.query:
        if key not in OPTIONS:
            return error(400, f"Unknown query parameter: {key}")
    for key in _BOOLEAN:
        if key in req.query and req.query[key] not in ("true", "false"):
            return error(400, f"Invalid value for {key}: expected true or false")
    model = req.query.get("model", "base")
    if model not in MODELS:
        return error(400, "No such model/language/tier combination found.")
    ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        return error(400, "Invalid JSON: expected {\"url\": ...} (this fake only takes raw audio)")
    if not req.body:
        return error(400, "Bad Request: failed to process audio: corrupt or unsupported data")
    if ctype and not ctype.startswith(("audio/", "video/")) and ctype != "application/octet-stream":
        return error(415, f"Unsupported media type: {ctype}")
    if kind_of(req.body) is None:
        return error(400, "Bad Request: failed to process audio: corrupt or unsupported data")
    duration = duration_of(req.body)
    text = transcript(duration)
    model_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, model))
    words = text.split()
    step = duration / max(1, len(words))
    channel: dict[str, Any] = {
        "alternatives": [
            {
                "transcript": text,
                "confidence": 0.99,
                "words": [
                    {"word": w, "start": round(i * step, 3), "end": round((i + 1) * step, 3), "confidence": 0.99,
                     "punctuated_word": w}
                    for i, w in enumerate(words)
                ],
            }
        ]
    }
    if req.query.get("detect_language") == "true" and "language" not in req.query:
        channel["detected_language"] = "en"
        channel["language_confidence"] = 0.98
    request_id = str(uuid.uuid4())
    body = {
        "metadata": {
            "transaction_key": "deprecated",
            "request_id": request_id,
            "sha256": hashlib.sha256(req.body).hexdigest(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "duration": duration,
            "channels": 1,
            "models": [model_id],
            "model_info": {model_id: {"name": f"general-{model}", "version": "2025-01-01.0", "arch": model}},
        },
        "results": {"channels": [channel]},
    }
    return json_reply(200, body, [(b"dg-request-id", request_id.encode())])


ROUTES = {("POST", PREFIX + "/v1/listen"): ("deepgram.listen", listen)}
