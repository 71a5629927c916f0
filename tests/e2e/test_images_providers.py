"""Image generation through upstreams that do not speak OpenAI's images API: Together
(width/height, response_format base64|url) and Fireworks (FLUX.1 text_to_image workflows,
aspect_ratio, one image per call, JSON answers with base64 PNGs). Real gateway, official openai
SDK, the fake upstreams' Together and Fireworks endpoints (which refuse OpenAI's fields).
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.support import Gateway
from tools.fake_upstream import behaviour as bh
from tools.fake_upstream.launch import FakeUpstream

TG_MODEL = "together/black-forest-labs/FLUX.1-schnell"
FW_MODEL = "fireworks/accounts/fireworks/models/flux-1-schnell-fp8"
FW_DEV = "fireworks/accounts/fireworks/models/flux-1-dev-fp8"
FW_PATH = "/fireworks/inference/v1/workflows/accounts/fireworks/models/flux-1-schnell-fp8/text_to_image"


@pytest.fixture(scope="module")
def gw(gateway_factory: Any, fake: FakeUpstream) -> Gateway:
    return gateway_factory(
        {
            "providers": {
                "together": {"base_url": fake.url("together"), "api_key": "tg-fake"},
                "fireworks": {"base_url": fake.url("fireworks"), "api_key": "fw-fake"},
                "openai": {"base_url": fake.url("openai"), "api_key": "sk-fake-openai"},
            },
            "combos": {"pictures": {"strategy": "priority", "targets": [FW_MODEL, TG_MODEL]}},
        }
    )


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key="anything", max_retries=0)


def sent(fake: FakeUpstream, route: str, marker: str) -> list[dict[str, Any]]:
    """What the fake received on `route` for prompts containing `marker`, oldest first."""
    return [r for r in fake.stats()["requests"] if r["route"] == route and marker in str(r.get("body"))]


def png_of_data_url(url: str) -> bytes:
    head, _, data = url.partition(",")
    assert head == "data:image/png;base64", url[:40]
    return base64.b64decode(data)


def usage_rows(gw: Gateway, model: str, want: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's image usage rows, polled until `want` is among them (records are flushed
    asynchronously, and other tests' rows for the same model may already be there)."""
    sql = ("SELECT provider, status, images, cost_micro_usd FROM usage "
           f"WHERE modality = 'image' AND model_requested = '{model}' AND final ORDER BY ts")
    deadline = time.monotonic() + 10
    while True:
        body = httpx.post(f"{gw.base_url}/api/usage/query", json={"sql": sql}, timeout=10).json()
        rows = [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]
        if want in rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


# ---------------------------------------------------------------- Together


def test_together_url_and_b64_json(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    c = client(gw)
    url = c.images.with_raw_response.generate(model=TG_MODEL, prompt=f"a red square {marker}", n=2, size="1024x768",
                                              response_format="url")
    assert url.headers["x-omniroute-provider"] == "together"
    data = url.parse().data or []
    assert len(data) == 2 and all(httpx.get(d.url or "").content == bh.PNG for d in data)
    b64 = c.images.generate(model=TG_MODEL, prompt=f"a blue square {marker}", size="512x512", response_format="b64_json")
    assert [base64.b64decode(d.b64_json or "") for d in b64.data or []] == [bh.PNG]
    first, second = (r["body"] for r in sent(fake, "together.images", marker))
    # OpenAI's size and b64_json became Together's width/height and "base64"
    assert first == {"model": "black-forest-labs/FLUX.1-schnell", "prompt": f"a red square {marker}", "n": 2,
                     "width": 1024, "height": 768, "response_format": "url"}
    assert second["width"] == second["height"] == 512 and second["response_format"] == "base64" and "size" not in second


def test_together_refusal_keeps_its_status_and_message(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).images.generate(model=TG_MODEL, prompt=f"too many {marker}", n=5)
    assert e.value.status_code == 400
    body: Any = e.value.body
    assert "n must be between 1 and 4" in body["message"] and body["type"] == "invalid_request_error"
    assert [r["body"]["n"] for r in sent(fake, "together.images", marker)] == [5]


# ---------------------------------------------------------------- Fireworks


def test_fireworks_b64_json_and_url(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    c = client(gw)
    b64 = c.images.with_raw_response.generate(model=FW_MODEL, prompt=f"a cat {marker}", size="1024x768",
                                              response_format="b64_json")
    assert b64.headers["x-omniroute-provider"] == "fireworks"
    assert [base64.b64decode(d.b64_json or "") for d in b64.parse().data or []] == [bh.PNG]
    url = c.images.generate(model=FW_MODEL, prompt=f"a dog {marker}", size="1792x1024", response_format="url")
    assert [png_of_data_url(d.url or "") for d in url.data or []] == [bh.PNG]  # base64 -> data: URL
    cat, dog = sent(fake, "fireworks.images", marker)
    assert cat["path"] == FW_PATH and cat["headers"]["accept"] == "application/json"
    assert cat["body"] == {"prompt": f"a cat {marker}", "aspect_ratio": "4:3"}  # 1024x768 -> 4:3, no size/n/model
    assert dog["body"]["aspect_ratio"] == "16:9"


def test_fireworks_n_images_are_n_calls_and_priced_per_image(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    data = client(gw).images.generate(model=FW_MODEL, prompt=f"three {marker}", n=3, response_format="b64_json").data or []
    assert [base64.b64decode(d.b64_json or "") for d in data] == [bh.PNG] * 3
    calls = sent(fake, "fireworks.images", marker)
    assert [r["body"] for r in calls] == [{"prompt": f"three {marker}"}] * 3
    want = {"provider": "fireworks", "status": 200, "images": 3, "cost_micro_usd": 4200}  # 3 x $0.0014
    assert want in usage_rows(gw, FW_MODEL, want)


def test_fireworks_filtered_image_is_an_error_not_an_empty_answer(gw: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).images.generate(model=FW_MODEL, prompt="[filtered] please", response_format="b64_json")
    assert e.value.status_code == 502 and "CONTENT_FILTERED" in str(e.value)


def test_a_combo_falls_back_from_fireworks_to_together(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    fake.script(503, route="fireworks.images")
    r = client(gw).images.with_raw_response.generate(model="pictures", prompt=f"fallback {marker}",
                                                     response_format="b64_json")
    assert r.headers["x-omniroute-model"] == TG_MODEL and r.headers["x-omniroute-fallbacks"] == "1"
    assert [base64.b64decode(d.b64_json or "") for d in r.parse().data or []] == [bh.PNG]
    assert len(sent(fake, "fireworks.images", marker)) == 1 and len(sent(fake, "together.images", marker)) == 1


def test_image_model_lists_include_both(gw: Gateway) -> None:
    ids = {m["id"] for m in httpx.get(f"{gw.base_url}/v1/images/generations").json()["data"]}
    assert {TG_MODEL, FW_MODEL, FW_DEV} <= ids


def test_fireworks_upstream_error_keeps_status_in_openai_shape(gw: Gateway, fake: FakeUpstream) -> None:
    # FLUX.1 [dev]: schnell may be backing off after the 5xx answers above.
    fake.script(429, route="fireworks.images")
    with pytest.raises(openai.RateLimitError) as e:
        client(gw).images.generate(model=FW_DEV, prompt="rate limited", response_format="b64_json")
    assert e.value.status_code == 429
    body: Any = e.value.body
    assert set(body) >= {"message", "type"} and "fireworks" in body["message"]
    assert "upstream status 429" in body["message"]  # the error body Fireworks sent, decoded
