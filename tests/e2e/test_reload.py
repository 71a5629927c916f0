"""Hot reload against the real server: valid edits swap, invalid edits keep the old runtime,
and a reload under a running stream does not disturb it."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.support import Gateway


def wait_for(pred: Any, timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


@pytest.fixture()
def gw(gateway_factory: Any) -> Gateway:
    return gateway_factory({"aliases": {"fast": "openai/gpt-4.1-mini"}})


def config(gw: Gateway) -> dict[str, Any]:
    return yaml.safe_load(gw.config_path.read_text())  # type: ignore[no-any-return]


def served_model(gw: Gateway) -> str:
    r = httpx.post(f"{gw.base_url}/v1/chat/completions", json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    return r.headers["x-omniroute-model"]


def test_valid_edit_is_live_within_a_second(gw: Gateway) -> None:
    before = gw.health()
    assert served_model(gw) == "openai/gpt-4.1-mini"
    cfg = config(gw)
    cfg["aliases"]["fast"] = "openai/gpt-4.1-nano"
    gw.write_config(cfg)
    took = wait_for(lambda: gw.health()["generation"] == before["generation"] + 1)
    assert took < 1.0
    after = gw.health()
    assert after["fingerprint"] != before["fingerprint"] and after["last_reload_error"] is None
    assert served_model(gw) == "openai/gpt-4.1-nano"


def test_invalid_edit_keeps_serving_and_reports_location(gw: Gateway) -> None:
    before = gw.health()
    text = gw.config_path.read_text() + "combos:\n  broken:\n    strategy: fastest\n    targets: [openai/gpt-4.1]\n"
    gw.write_config(text)
    wait_for(lambda: gw.health()["last_reload_error"] is not None)
    h = gw.health()
    assert h["generation"] == before["generation"] and h["fingerprint"] == before["fingerprint"]
    line = text.splitlines().index("    strategy: fastest") + 1
    assert f"config.yaml:{line}:5: combos.broken.strategy: unknown strategy 'fastest'" in h["last_reload_error"]
    assert f"config.yaml:{line}:5" in gw.log()
    assert served_model(gw) == "openai/gpt-4.1-mini"
    # a broken YAML file, too
    gw.write_config("providers: [unclosed\n")
    wait_for(lambda: "invalid YAML" in (gw.health()["last_reload_error"] or ""))
    assert served_model(gw) == "openai/gpt-4.1-mini"


def test_reload_during_stream_does_not_break_it(gw: Gateway) -> None:
    client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key="x", max_retries=0)
    words: list[str] = []
    gen0 = gw.health()["generation"]

    def consume() -> None:
        stream = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "[[words:10]] [[slow:100]]"}], stream=True)
        for c in stream:
            if c.choices and c.choices[0].delta.content:
                words.append(c.choices[0].delta.content.strip())

    t = threading.Thread(target=consume)
    t.start()
    wait_for(lambda: len(words) >= 2)
    cfg = config(gw)
    cfg["aliases"]["fast"] = "openai/gpt-4.1"
    gw.write_config(cfg)
    wait_for(lambda: gw.health()["generation"] == gen0 + 1)
    t.join(10)
    assert words == [f"word{i}" for i in range(1, 11)]
    assert served_model(gw) == "openai/gpt-4.1"
