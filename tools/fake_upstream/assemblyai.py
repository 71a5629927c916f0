"""AssemblyAI, under `/assemblyai`: POST /v2/upload [assemblyai.upload], POST /v2/transcript
[assemblyai.transcript], GET /v2/transcript/{id} [assemblyai.poll].

As api.assemblyai.com: the key is the raw `authorization` header (no scheme). An upload takes the
raw bytes and answers `{upload_url}`; a transcript request names that `audio_url` and its
`speech_models` and answers `{id, status: "queued", ...}`; polling it answers "processing" once,
then "completed" with `text`, `audio_duration` and `language_code`, or "error" with `error` when
the audio could not be downloaded or is not audio. Errors are `{"error": message}`.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Any

from . import behaviour as bh
from .audio import duration_of, kind_of, transcript
from .wire import Headers, Reply, Request, json_reply

PREFIX = "/assemblyai"
UPLOAD_HOST = "https://cdn.assemblyai.com/upload/"
SPEECH_MODELS = frozenset({"universal-3-pro", "universal-2", "universal-3-5-pro", "universal", "slam-1", "best", "nano"})
TRANSCRIPT_PARAMS = frozenset({
    "audio_url", "speech_models", "speech_model", "language_code", "language_detection", "prompt", "punctuate",
    "format_text", "speaker_labels", "keyterms_prompt", "webhook_url", "multichannel", "disfluencies",
    "audio_start_from", "audio_end_at", "language_confidence_threshold",
})  # fmt: skip
_KEEP = 64  # uploads and transcripts kept; older ones are forgotten
UPLOADS: OrderedDict[str, bytes] = OrderedDict()
TRANSCRIPTS: OrderedDict[str, dict[str, Any]] = OrderedDict()


def _keep(store: OrderedDict[str, Any], key: str, value: Any) -> None:
    store[key] = value
    while len(store) > _KEEP:
        store.popitem(last=False)


def error(status: int, message: str | None = None, headers: Headers | None = None) -> Reply:
    extra: Headers = [(b"retry-after", b"1")] if status == 429 else []
    if headers:
        extra.extend(headers)
    return json_reply(status, {"error": message or f"upstream status {status}"}, extra)


def auth(req: Request) -> Reply | None:
    key = req.headers.get("authorization", "").strip()
    if not key:
        return error(401, "Authentication error, API token missing/invalid")
    if " " in key or bh.key_verdict(key) in (401, 403):  # "Bearer x" is not a token here
        return error(401, "Authentication error, API token missing/invalid")
    if bh.key_verdict(key) == 429:
        return error(429, "Your account has run out of credits")
    return None


async def upload(req: Request) -> Reply:
    if not req.body:
        return error(400, "Upload failed: the request body is empty")
    uid = str(uuid.uuid4())
    _keep(UPLOADS, uid, req.body)
    return json_reply(200, {"upload_url": UPLOAD_HOST + uid})


async def create(req: Request) -> Reply:
    body = req.json
    if req.json_error or not isinstance(body, dict):
        return error(400, "Invalid JSON body")
    for key in body:
        if key not in TRANSCRIPT_PARAMS:
            return error(400, f"Invalid request: unknown parameter '{key}'")
    audio_url = body.get("audio_url")
    if not isinstance(audio_url, str) or not audio_url:
        return error(400, "audio_url is required")
    models = body.get("speech_models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        return error(400, "speech_models is required: a list of speech model names")
    unknown = [m for m in models if m not in SPEECH_MODELS]
    if unknown:
        return error(400, f"Invalid speech model: {unknown[0]}")
    if "language_detection" in body and not isinstance(body["language_detection"], bool):
        return error(400, "language_detection must be a boolean")
    if "language_code" in body and body.get("language_detection"):
        return error(400, "Specify either language_code or language_detection, not both")
    tid = str(uuid.uuid4())
    record = {
        "id": tid, "status": "queued", "audio_url": audio_url, "speech_models": models,
        "language_code": body.get("language_code"), "language_detection": bool(body.get("language_detection")),
        "text": None, "words": None, "audio_duration": None, "confidence": None, "polls": 0,
    }  # fmt: skip
    _keep(TRANSCRIPTS, tid, record)
    return json_reply(200, _public(record))


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "polls"}


async def poll(req: Request) -> Reply:
    record = TRANSCRIPTS.get(req.params.get("id", ""))
    if record is None:
        return error(400, "Transcript lookup error, transcript id not found")
    record["polls"] += 1
    if record["status"] in ("queued", "processing") and record["polls"] < 2:
        record["status"] = "processing"
    elif record["status"] in ("queued", "processing"):
        url = record["audio_url"]
        data = UPLOADS.get(url[len(UPLOAD_HOST):]) if url.startswith(UPLOAD_HOST) else None
        if data is None:
            record.update(status="error", error=f"Download error, unable to download {url}.")
        elif kind_of(data) is None:
            record.update(status="error", error="File does not appear to contain audio.")
        else:
            duration = duration_of(data)
            text = transcript(duration)
            record.update(
                status="completed", text=text, audio_duration=duration, confidence=0.98,
                language_code=record["language_code"] or "en", speech_model_used=record["speech_models"][0],
                words=[{"text": w, "start": i * 100, "end": i * 100 + 90, "confidence": 0.98, "speaker": None}
                       for i, w in enumerate(text.split())],
            )  # fmt: skip
    return json_reply(200, _public(record))


ROUTES = {
    ("POST", PREFIX + "/v2/upload"): ("assemblyai.upload", upload),
    ("POST", PREFIX + "/v2/transcript"): ("assemblyai.transcript", create),
}


def match(method: str, path: str) -> tuple[str, Any, dict[str, str]] | None:
    """GET /v2/transcript/{id}, which a static table cannot route."""
    base = PREFIX + "/v2/transcript/"
    if method == "GET" and path.startswith(base) and "/" not in path[len(base):] and path[len(base):]:
        return "assemblyai.poll", poll, {"id": path[len(base):]}
    return None
