"""Together AI, under `/together/v1`: POST images/generations [together.images].

As api.together.xyz (OpenAPI "Create image"): a JSON body with `model` and `prompt`, the size as
`width` and `height` in pixels (no `size`), `n` images (1 to 4), `steps`, `seed`,
`response_format` "url" (the default here) or "base64" (not OpenAI's "b64_json"), and the other
documented fields below. The answer is `{id, model, object: "list", data: [{index, type: "url",
url} | {index, type: "b64_json", b64_json}]}`, without `created`. Bearer auth. Errors are
`{"error": {message, type, param, code}}` (Together's ErrorData).

Stricter than the real service in one way, on purpose: a field the reference does not document
is refused with a 400, so a gateway that sends OpenAI's `size` or `quality` is caught.
"""

from __future__ import annotations

import hashlib
from typing import Any

from . import behaviour as bh
from .wire import Headers, Reply, Request, json_reply

PREFIX = "/together/v1"
MODELS = (
    "black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.1-schnell-Free", "black-forest-labs/FLUX.1.1-pro",
    "black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.2-dev",
)  # fmt: skip
_STRING = ("prompt", "model", "negative_prompt", "image_url", "output_format", "response_format")
_INTEGER = ("n", "width", "height", "steps", "seed")
IMAGE_PARAMS = frozenset({
    *_STRING, *_INTEGER, "guidance_scale", "image_loras", "reference_images", "disable_safety_checker",
})  # fmt: skip
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "payment_required", 403: "permission_denied",
          404: "not_found", 429: "rate_limit_exceeded", 500: "server_error", 503: "service_unavailable"}  # fmt: skip


def error(status: int, message: str | None = None, headers: Headers | None = None, *, param: str | None = None) -> Reply:
    extra: Headers = [(b"retry-after", b"1")] if status == 429 else []
    if headers:
        extra.extend(headers)
    body = {"error": {"message": message or f"upstream status {status}", "type": _TYPES.get(status, "server_error"),
                      "param": param, "code": None}}  # fmt: skip
    return json_reply(status, body, extra)


def auth(req: Request) -> Reply | None:
    scheme, _, key = req.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return error(401, "Invalid API key provided. You can find your API key at https://api.together.xyz/settings/api-keys.")
    verdict = bh.key_verdict(key.strip())
    if verdict in (401, 403):
        return error(401, "Invalid API key provided. You can find your API key at https://api.together.xyz/settings/api-keys.")
    if verdict == 429:
        return error(402, "Credit limit exceeded. Please add credits to your account.")
    return None


def _invalid(message: str, param: str | None = None) -> Reply:
    return error(400, message, param=param)


def _check(body: Any) -> Reply | None:
    """The first problem of an image request, as Together words it; None when it is valid."""
    if not isinstance(body, dict):
        return _invalid("Request body must be a JSON object")
    for key in body:
        if key not in IMAGE_PARAMS:
            return _invalid(f"Unrecognized request argument supplied: {key}", key)
    for key in ("model", "prompt"):
        if not isinstance(body.get(key), str) or not body[key]:
            return _invalid(f"Field required: {key}", key)
    for key in _STRING:
        if key in body and not isinstance(body[key], str):
            return _invalid(f"Input should be a valid string: {key}", key)
    for key in _INTEGER:
        if key in body and (not isinstance(body[key], int) or isinstance(body[key], bool)):
            return _invalid(f"Input should be a valid integer: {key}", key)
    if "guidance_scale" in body and (not isinstance(body["guidance_scale"], int | float) or isinstance(body["guidance_scale"], bool)):
        return _invalid("Input should be a valid number: guidance_scale", "guidance_scale")
    if body["model"] not in MODELS:
        return error(404, f"Unable to access model {body['model']}. Please visit https://api.together.ai/models to view the "
                          "list of supported models.", param="model")  # fmt: skip
    n = body.get("n", 1)
    if not 1 <= n <= 4:
        return _invalid("n must be between 1 and 4", "n")
    for key in ("width", "height"):
        if key in body and not 64 <= body[key] <= 1792:
            return _invalid(f"{key} must be between 64 and 1792", key)
    if body.get("response_format", "url") not in ("url", "base64"):
        return _invalid(f"Invalid response_format '{body['response_format']}': must be one of 'base64', 'url'", "response_format")
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        return _invalid("output_format must be one of 'jpeg', 'png'", "output_format")
    return None


async def images(req: Request) -> Reply:
    if req.json_error:
        return _invalid("Request body is not valid JSON")
    body = req.json
    problem = _check(body)
    if problem is not None:
        return problem
    host = req.headers.get("host", "127.0.0.1")
    base64 = body.get("response_format") == "base64"
    data: list[dict[str, Any]] = [
        {"index": i, "type": "b64_json", "b64_json": bh.PNG_B64} if base64
        else {"index": i, "type": "url", "url": f"http://{host}/_files/image.png"}
        for i in range(body.get("n", 1))
    ]  # fmt: skip
    rid = hashlib.sha256(f"{body['model']}\n{body['prompt']}".encode()).hexdigest()[:20]
    return json_reply(200, {"id": rid, "model": body["model"], "object": "list", "data": data})


ROUTES = {("POST", PREFIX + "/images/generations"): ("together.images", images)}
