"""Fireworks AI, under `/fireworks/inference/v1`: the synchronous FLUX.1 image workflows,
POST workflows/accounts/fireworks/models/{model}/text_to_image [fireworks.images], for the models
in MODELS (another model's path is a 404, as an unknown URL).

As api.fireworks.ai ("Generate an image with FLUX.1 [schnell] FP8"): a JSON body with `prompt`
and optionally `aspect_ratio` (one of ASPECT_RATIOS), `guidance_scale`, `num_inference_steps` and
`seed`; Bearer auth. The `Accept` header picks the answer: `application/json` gives
`{id, base64: ["data:image/png;base64,..."], finishReason: "SUCCESS", seed}`, `image/png` (also
the default, for a missing or `*/*` Accept) the raw PNG with `Seed` and `Finish-Reason` headers.
`image/jpeg` is a real option this fake cannot honour (it only has a PNG): 406. One image per
call. Errors are Fireworks' `{"error": {object: "error", type, message}}`.

Stricter than the real service in one way, on purpose: a field the reference does not document
(`n`, `size`, `model`, ...) is refused with a 400, so a gateway sending OpenAI's shape is caught.
A prompt containing `[filtered]` is answered with finishReason CONTENT_FILTERED and no image.
"""

from __future__ import annotations

import hashlib
from typing import Any

from . import behaviour as bh
from .wire import Headers, Reply, Request, json_reply

PREFIX = "/fireworks/inference/v1"
MODELS = ("flux-1-schnell-fp8", "flux-1-dev-fp8")
ASPECT_RATIOS = ("1:1", "21:9", "16:9", "3:2", "5:4", "4:5", "2:3", "9:16", "9:21", "4:3", "3:4")
IMAGE_PARAMS = frozenset({"prompt", "aspect_ratio", "guidance_scale", "num_inference_steps", "seed"})
_TYPES = {400: "invalid_request_error", 401: "unauthorized", 403: "forbidden", 404: "not_found", 406: "invalid_request_error",
          412: "precondition_failed", 429: "rate_limit_exceeded", 500: "internal_server_error", 503: "service_unavailable"}  # fmt: skip


def error(status: int, message: str | None = None, headers: Headers | None = None) -> Reply:
    extra: Headers = [(b"retry-after", b"1")] if status == 429 else []
    if headers:
        extra.extend(headers)
    body = {"error": {"object": "error", "type": _TYPES.get(status, "error"), "message": message or f"upstream status {status}"}}
    return json_reply(status, body, extra)


def auth(req: Request) -> Reply | None:
    scheme, _, key = req.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip() or bh.key_verdict(key.strip()) in (401, 403):
        return error(401, "The API key you provided is invalid.")
    if bh.key_verdict(key.strip()) == 429:
        return error(412, "Account suspended: the account has no remaining credits.")
    return None


def _number(value: Any, integer: bool = False) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def _check(body: Any) -> str | None:
    """The first problem of a text_to_image body; None when it is valid."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for key in body:
        if key not in IMAGE_PARAMS:
            return f"Extra inputs are not permitted: {key}"
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "Field required: prompt"
    if "aspect_ratio" in body and body["aspect_ratio"] not in ASPECT_RATIOS:
        return f"Input should be {', '.join(repr(r) for r in ASPECT_RATIOS)}: aspect_ratio"
    if "guidance_scale" in body and not _number(body["guidance_scale"]):
        return "Input should be a valid number: guidance_scale"
    for key in ("num_inference_steps", "seed"):
        if key in body and not _number(body[key], integer=True):
            return f"Input should be a valid integer: {key}"
    if not 1 <= body.get("num_inference_steps", 4) <= 50:
        return "num_inference_steps must be between 1 and 50"
    return None


async def _text_to_image(req: Request, model: str) -> Reply:
    if req.json_error:
        return error(400, "request body is not valid JSON")
    problem = _check(req.json)
    if problem is not None:
        return error(400, problem)
    body: dict[str, Any] = req.json
    accept = req.headers.get("accept", "").split(",")[0].split(";")[0].strip().lower()
    seed = body.get("seed") or int(hashlib.sha256(f"{model}\n{body['prompt']}".encode()).hexdigest()[:8], 16)
    filtered = "[filtered]" in body["prompt"]
    reason = "CONTENT_FILTERED" if filtered else "SUCCESS"
    if accept == "application/json":
        rid = hashlib.sha256(f"{model}\n{body['prompt']}\n{seed}".encode()).hexdigest()[:24]
        images = [] if filtered else [f"data:image/png;base64,{bh.PNG_B64}"]
        return json_reply(200, {"id": rid, "base64": images, "finishReason": reason, "seed": seed})
    if accept == "image/jpeg":
        return error(406, "fake_upstream has no JPEG to send; ask for image/png or application/json")
    if accept not in ("", "*/*", "image/png", "image/*"):
        return error(406, f"Unsupported Accept: {accept}")
    headers: Headers = [(b"content-type", b"image/png"), (b"content-length", str(len(bh.PNG)).encode()),
                        (b"seed", str(seed).encode()), (b"finish-reason", reason.encode())]  # fmt: skip
    return Reply(200, headers, bh.PNG)


def _route(model: str) -> Any:
    async def handler(req: Request) -> Reply:
        return await _text_to_image(req, model)

    return handler


ROUTES = {
    ("POST", f"{PREFIX}/workflows/accounts/fireworks/models/{m}/text_to_image"): ("fireworks.images", _route(m))
    for m in MODELS
}
