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


def test_a_spec_dropped_into_a_spec_dir_is_live_and_data_writes_do_not_reload(gateway_factory: Any, tmp_path: Any) -> None:
    """A user spec directory starts empty; a provider spec dropped into it (here an override of
    the built-in openai spec with one more model) is served within a second. Writes in the data
    directory, which sits beside the config, are not config changes."""
    from engine.compile import BUILTIN_SPECS

    specs = tmp_path / "myspecs"
    specs.mkdir()
    g = gateway_factory({"spec_dirs": [str(specs)]})
    models = lambda: {m["id"] for m in httpx.get(f"{g.base_url}/v1/models").json()["data"]}  # noqa: E731
    assert "openai/gpt-brand-new" not in models()
    before = g.health()["generation"]
    for i in range(50):  # beside the config, as the default data_dir is
        (g.workdir / "data" / f"noise-{i}.yaml").write_text("x: 1\n")
    spec = yaml.safe_load((BUILTIN_SPECS / "providers" / "openai.yaml").read_text())
    spec["models"]["gpt-brand-new"] = {"name": "GPT brand new", "context": 1000, "price": {"input": 1, "output": 2}}
    (specs / "providers").mkdir()
    (specs / "providers" / "openai.yaml").write_text(yaml.safe_dump(spec))
    took = wait_for(lambda: "openai/gpt-brand-new" in models())
    assert took < 2.0
    assert g.health()["generation"] == before + 1  # the spec, once; the data files never
