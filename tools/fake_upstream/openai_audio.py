"""OpenAI speech-to-text, under `/openai/v1`: POST audio/transcriptions [openai.transcriptions].

As api.openai.com (and Groq's OpenAI-compatible API): a multipart/form-data body with the audio
in `file` (its name must carry a supported extension) and text fields `model`, `language`,
`prompt`, `response_format`, `temperature`. Answers `{text, usage}` for json, adds `task`,
`language` (a language name), `duration` and `segments` for verbose_json, plain text for text.
The gpt-4o transcribe models answer json or text only. The form is parsed with the standard
library's email parser, independently of the gateway's own multipart code.
"""

from __future__ import annotations

import math
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from .audio import duration_of, kind_of, transcript
from .openai_checks import invalid
from .wire import Reply, Request, json_reply

PREFIX = "/openai/v1"
FIELDS = frozenset({"file", "model", "language", "prompt", "response_format", "temperature",
                    "timestamp_granularities[]", "include[]", "chunking_strategy", "stream"})  # fmt: skip
EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
LANGUAGES = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian", "ja": "japanese"}


def _form(req: Request) -> tuple[dict[str, str], tuple[str, bytes] | None] | Reply:
    ctype = req.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data") or "boundary=" not in ctype:
        return invalid("Invalid Content-Type header (expected multipart/form-data with a boundary).")
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + req.body)
    if not msg.is_multipart() or msg.defects:
        return invalid("Could not parse multipart form.")
    fields: dict[str, str] = {}
    upload = None
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            return invalid("Could not parse multipart form: a part has no name.")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name not in FIELDS:
            return invalid(f"Unrecognized request argument supplied: {name}")
        filename = part.get_filename()
        if name == "file":
            if filename is None:
                return invalid("'file' must be a file upload, not a text field.", "file")
            upload = (filename, data)
        else:
            fields[name] = data.decode("utf-8", "replace")
    return fields, upload


async def transcriptions(req: Request) -> Reply:
    parsed = _form(req)
    if isinstance(parsed, Reply):
        return parsed
    fields, upload = parsed
    model = fields.get("model")
    if not model:
        return invalid("you must provide a model parameter", "model")
    if upload is None:
        return invalid("Missing required parameter: 'file'.", "file", "missing_required_parameter")
    filename, data = upload
    if filename.rpartition(".")[2].lower() not in EXTENSIONS:
        return invalid(f"Invalid file format. Supported formats: {list(EXTENSIONS)}", "file", "invalid_value")
    if kind_of(data) is None:
        return invalid("Audio file might be corrupted or unsupported", "file", "invalid_value")
    fmt = fields.get("response_format", "json")
    if fmt not in ("json", "text", "srt", "verbose_json", "vtt"):
        return invalid(f"Invalid value: '{fmt}'. Supported values are: 'json', 'text', 'srt', 'verbose_json', and 'vtt'.",
                       "response_format", "invalid_value")  # fmt: skip
    if "transcribe" in model and fmt not in ("json", "text"):
        return invalid(f"response_format '{fmt}' is not compatible with model '{model}'. Use 'json' or 'text'.",
                       "response_format", "unsupported_value")  # fmt: skip
    language = fields.get("language")
    if language is not None and not (2 <= len(language) <= 3 and language.isalpha()):
        return invalid(f"Invalid language '{language}'. Language parameter must be specified in ISO-639-1 format.",
                       "language", "invalid_language_format")  # fmt: skip
    duration = duration_of(data)
    text = transcript(duration)
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if fmt == "text":
        return Reply(200, [(b"content-type", b"text/plain; charset=utf-8")], (text + "\n").encode())
    if fmt != "verbose_json":
        return json_reply(200, {"text": text, "usage": usage})
    body: dict[str, Any] = {
        "task": "transcribe", "language": LANGUAGES.get(language or "en", language or "english"),
        "duration": duration, "text": text, "usage": usage,
        "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": " " + text, "tokens": [],
                      "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.01}],
    }  # fmt: skip
    return json_reply(200, body)


ROUTES = {("POST", PREFIX + "/audio/transcriptions"): ("openai.transcriptions", transcriptions)}
