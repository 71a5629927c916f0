"""Policies end to end (issue 8): deny, route, set/cap, system prompts and thinking budgets as each
upstream format receives them, rate limits, concurrency, key shortcuts, schedules, the IP filter,
the policy and settings API, located errors from `omniroute check`, and reload under load.

Most rules of the shared gateway match on a request header (`x-*`), so each test switches on
only the rules it exercises. What an upstream received is read back from the fake's request log.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.support import ROOT, Gateway, demo_providers
from tools.fake_upstream.launch import FakeUpstream

PA = "sk-policy-a-0001"
NO_CACHE = {"x-omniroute-no-cache": "true"}
SYS = "POLICY-SYS"
CLIENT_SYS = "CLIENT-SYS"
UPSTREAMS = {  # connection -> a model of it; one per upstream wire format
    "openai": "openai/gpt-5",
    "anthropic": "anthropic/claude-sonnet-4-5",
    "gemini": "gemini/gemini-2.5-flash",
    "ollama": "ollama/llama3.2",
}
THINKERS = {**UPSTREAMS, "ollama": "ollama/qwen3"}  # models whose spec lists the reasoning capability


def _hours_excluding_now() -> str:
    """A one-hour window that starts two hours from now (UTC): never now."""
    start = (datetime.now(UTC).hour + 2) % 24
    return f"{start:02d}:00-{start + 1:02d}:00"


# Computed once: the config and the assertions must name the same window even when the run
# crosses an hour boundary.
NOT_NOW = _hours_excluding_now()


ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _on(header: str, value: str) -> dict[str, Any]:
    return {"field": f"header.{header}", "eq": value}


def _policies() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {
            "name": "no-gpt4o",
            "match": {"field": "model", "eq": "openai/gpt-4o"},
            "deny": {"status": 403, "message": "model {model} is off limits for key {key}"},
        },
        {
            "name": "deny-400",
            "match": _on("x-deny", "400"),
            "deny": {"status": 400, "message": "refused: bad team"},
        },
        {"name": "reroute", "match": _on("x-team", "blue"), "route": "anthropic/claude-haiku-4-5"},
        {"name": "capper", "match": _on("x-cap", "1"), "cap": {"max_tokens": 7, "temperature": 0.5}},
        {"name": "setter", "match": _on("x-set", "1"), "set": {"max_tokens": 33, "temperature": 0.2}},
        {"name": "rl-a-limit", "match": {"field": "key", "eq": "rl-a"}, "rate_limit": {"rpm": 3}},
        {
            "name": "closed-hours",
            "match": {
                "all": [
                    _on("x-sched", "1"),
                    {"schedule": {"days": ALL_DAYS, "hours": NOT_NOW}},
                ]
            },
            "deny": {"message": "closed at this hour"},
        },
        {
            "name": "open-hours",
            "match": {"all": [_on("x-sched", "2"), {"schedule": {"hours": "00:00-24:00"}}]},
            "deny": {"message": "refused all day long"},
        },
    ]
    for mode in ("prepend", "append", "replace"):
        rules.append(
            {"name": f"sys-{mode}", "match": _on("x-sys", mode), "system_prompt": {"mode": mode, "text": SYS}}
        )
    rules += [
        {"name": "think-off", "match": _on("x-think", "off"), "thinking_budget": {"mode": "off"}},
        {
            "name": "think-tokens",
            "match": _on("x-think", "tokens"),
            "thinking_budget": {"mode": "tokens", "tokens": 2048},
        },
        {
            "name": "think-effort",
            "match": _on("x-think", "effort"),
            "thinking_budget": {"mode": "effort", "effort": "high"},
        },
    ]
    return rules


def _config(fake_url: str) -> dict[str, Any]:
    return {
        "providers": demo_providers(fake_url),
        "keys": [
            {"name": "pa", "key": PA},
            {"name": "rl-a", "key": "sk-rl-a-000001"},
            {"name": "rl-b", "key": "sk-rl-b-000001", "rpm": 2},
            {"name": "mc", "key": "sk-mc-0000001", "max_concurrent": 1},
            {"name": "ml", "key": "sk-ml-0000001", "models": ["openai/gpt-4.1*"]},
            {
                "name": "sched",
                "key": "sk-sched-00001",
                "schedule": {"days": ALL_DAYS, "hours": NOT_NOW},
            },
        ],
        "policies": _policies(),
    }


@pytest.fixture(scope="module")
def gw(launch: Any, fake: FakeUpstream) -> Gateway:
    return launch(_config(fake.base_url))  # type: ignore[no-any-return]


def oai(gw: Gateway, key: str = PA, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0, default_headers={**NO_CACHE, **headers}
    )


def claude(gw: Gateway, key: str = PA, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.base_url, api_key=key, max_retries=0, default_headers={**NO_CACHE, **headers}
    )


def ask(
    gw: Gateway,
    model: str = "openai/gpt-4.1",
    content: str = "hi",
    key: str = PA,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> Any:
    return oai(gw, key, **(headers or {})).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **kw
    )


def received(fake: FakeUpstream, marker: str) -> list[dict[str, Any]]:
    return [r for r in fake.stats()["requests"] if marker in str(r.get("body"))]


def only(fake: FakeUpstream, marker: str) -> dict[str, Any]:
    got = received(fake, marker)
    assert len(got) == 1, got
    return got[0]["body"]  # type: ignore[no-any-return]


def wait_for(pred: Any, timeout: float = 5.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


# ------------------------------------------------------------------ deny, route, set, cap


def test_deny_answers_in_the_openai_format_and_never_reaches_upstream(
    gw: Gateway, fake: FakeUpstream
) -> None:
    before = fake.stats()["total"]
    with pytest.raises(openai.PermissionDeniedError) as e:
        ask(gw, "openai/gpt-4o")
    assert e.value.status_code == 403
    err = e.value.response.json()["error"]
    assert (
        err["message"] == "model openai/gpt-4o is off limits for key pa" and err["type"] == "permission_error"
    )
    with pytest.raises(openai.BadRequestError) as e4:
        ask(gw, headers={"x-deny": "400"})
    assert e4.value.response.json()["error"] == {
        **e4.value.response.json()["error"],
        "message": "refused: bad team",
        "type": "invalid_request_error",
    }
    assert fake.stats()["total"] == before


def test_deny_answers_in_the_anthropic_format(gw: Gateway, fake: FakeUpstream) -> None:
    before = fake.stats()["total"]
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        claude(gw).messages.create(
            model="openai/gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    body = e.value.body
    assert body == {
        "type": "error",
        "error": {"type": "permission_error", "message": "model openai/gpt-4o is off limits for key pa"},
    }
    # Gemini and Ollama routes too
    gem = httpx.post(
        f"{gw.base_url}/v1beta/models/openai/gpt-4o:generateContent",
        headers={"x-goog-api-key": PA},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert gem.status_code == 403 and gem.json()["error"]["status"] == "PERMISSION_DENIED"
    oll = httpx.post(
        f"{gw.base_url}/api/chat",
        headers={"authorization": f"Bearer {PA}"},
        json={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert oll.status_code == 403 and oll.json() == {"error": "model openai/gpt-4o is off limits for key pa"}
    assert fake.stats()["total"] == before


def test_route_rewrites_the_model(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    r = ask(gw, "openai/gpt-4.1", marker, headers={"x-team": "blue"})
    assert r.headers["x-omniroute-model"] == "anthropic/claude-haiku-4-5"
    got = received(fake, marker)
    assert [x["route"] for x in got] == ["anthropic.messages"] and got[0]["body"][
        "model"
    ] == "claude-haiku-4-5"


def test_cap_lowers_and_fills_limits(gw: Gateway, fake: FakeUpstream) -> None:
    m1, m2, m3 = (uuid.uuid4().hex for _ in range(3))
    ask(gw, content=m1, headers={"x-cap": "1"}, max_tokens=100, temperature=1.5)
    body = only(fake, m1)
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 7 and body["temperature"] == 0.5
    ask(gw, content=m2, headers={"x-cap": "1"})  # no max_tokens: the cap is set
    body = only(fake, m2)
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 7 and "temperature" not in body
    ask(gw, content=m3, headers={"x-cap": "1"}, max_tokens=3, temperature=0.1)  # below the caps: unchanged
    body = only(fake, m3)
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 3 and body["temperature"] == 0.1


def test_set_overwrites_parameters_for_every_upstream_format(gw: Gateway, fake: FakeUpstream) -> None:
    marker = uuid.uuid4().hex
    ask(gw, "openai/gpt-4.1", marker, headers={"x-set": "1"}, max_tokens=500, temperature=1.0)
    body = only(fake, marker)
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 33 and body["temperature"] == 0.2
    marker = uuid.uuid4().hex
    ask(gw, "anthropic/claude-haiku-4-5", marker, headers={"x-set": "1"}, max_tokens=500)
    body = only(fake, marker)
    assert body["max_tokens"] == 33 and body["temperature"] == 0.2
    marker = uuid.uuid4().hex
    ask(gw, "gemini/gemini-2.5-flash", marker, headers={"x-set": "1"})
    cfg = only(fake, marker)["generationConfig"]
    assert cfg["maxOutputTokens"] == 33 and cfg["temperature"] == 0.2
    marker = uuid.uuid4().hex
    ask(gw, "ollama/llama3.2", marker, headers={"x-set": "1"})
    opts = only(fake, marker)["options"]
    assert opts["num_predict"] == 33 and opts["temperature"] == 0.2


# ------------------------------------------------------------------ system prompt and thinking, per upstream


def system_received(conn: str, body: dict[str, Any]) -> str | None:
    """The system prompt as each upstream format carries it."""
    if conn in ("openai", "ollama"):
        sys_msgs = [m["content"] for m in body["messages"] if m["role"] in ("system", "developer")]
        assert body["messages"][0]["role"] in ("system", "developer") or not sys_msgs
        return "\n\n".join(sys_msgs) if sys_msgs else None
    if conn == "anthropic":
        s = body.get("system")
        return "\n\n".join(b["text"] for b in s) if isinstance(s, list) else s
    parts = (body.get("systemInstruction") or {}).get("parts") or []
    return "\n\n".join(p["text"] for p in parts) if parts else None


@pytest.mark.parametrize("conn", list(UPSTREAMS))
@pytest.mark.parametrize(
    ("mode", "expected"),
    [("prepend", f"{SYS}\n\n{CLIENT_SYS}"), ("append", f"{CLIENT_SYS}\n\n{SYS}"), ("replace", SYS)],
)
def test_system_prompt_reaches_each_upstream_format(
    gw: Gateway, fake: FakeUpstream, conn: str, mode: str, expected: str
) -> None:
    marker = uuid.uuid4().hex
    oai(gw, **{"x-sys": mode}).chat.completions.create(
        model=UPSTREAMS[conn],
        max_tokens=50,
        messages=[{"role": "system", "content": CLIENT_SYS}, {"role": "user", "content": marker}],
    )
    assert system_received(conn, only(fake, marker)) == expected


def thinking_received(conn: str, body: dict[str, Any]) -> Any:
    """The upstream's own thinking field (a sentinel when absent)."""
    if conn == "openai":
        return body.get("reasoning_effort", "<absent>")
    if conn == "anthropic":
        return body.get("thinking", "<absent>")
    if conn == "gemini":
        return (
            (body.get("generationConfig") or {}).get("thinkingConfig", {}).get("thinkingBudget", "<absent>")
        )
    return body.get("think", "<absent>")


THINKING = {  # mode -> what each upstream must receive
    "off": {"openai": "none", "anthropic": "<absent>", "gemini": 0, "ollama": False},
    "tokens": {
        "openai": "low",
        "anthropic": {"type": "enabled", "budget_tokens": 2048},
        "gemini": 2048,
        "ollama": True,
    },
    "effort": {
        "openai": "high",
        "anthropic": {"type": "enabled", "budget_tokens": 16384},
        "gemini": 16384,
        "ollama": True,
    },
}


@pytest.mark.parametrize("conn", list(UPSTREAMS))
@pytest.mark.parametrize("mode", list(THINKING))
def test_thinking_budget_reaches_each_upstream_format(
    gw: Gateway, fake: FakeUpstream, conn: str, mode: str
) -> None:
    marker = uuid.uuid4().hex
    out = oai(gw, **{"x-think": mode}).chat.completions.create(
        model=THINKERS[conn], max_tokens=100, messages=[{"role": "user", "content": marker}]
    )
    assert out.choices[0].message.content
    body = only(fake, marker)
    assert thinking_received(conn, body) == THINKING[mode][conn]
    if conn == "anthropic" and mode != "off":
        assert body["max_tokens"] > THINKING[mode][conn]["budget_tokens"]  # Anthropic's own rule


@pytest.mark.parametrize("model", ["openai/gpt-4.1", "anthropic/claude-3-5-haiku-latest", "ollama/llama3.2"])
def test_thinking_budget_spares_models_that_cannot_think(gw: Gateway, fake: FakeUpstream, model: str) -> None:
    marker = uuid.uuid4().hex
    oai(gw, **{"x-think": "effort"}).chat.completions.create(
        model=model, max_tokens=100, messages=[{"role": "user", "content": marker}]
    )
    assert thinking_received(model.split("/")[0], only(fake, marker)) == "<absent>"


@pytest.mark.parametrize(("mode", "expected"), [("off", False), ("tokens", "low"), ("effort", "high")])
def test_thinking_budget_gives_gpt_oss_an_effort_level(
    gw: Gateway, fake: FakeUpstream, mode: str, expected: Any
) -> None:
    marker = uuid.uuid4().hex
    oai(gw, **{"x-think": mode}).chat.completions.create(
        model="ollama/gpt-oss:20b", max_tokens=100, messages=[{"role": "user", "content": marker}]
    )
    assert only(fake, marker)["think"] == expected


# ------------------------------------------------------------------ rate limits, concurrency, key shortcuts


def test_rate_limit_rule_counts_per_key(gw: Gateway, fake: FakeUpstream) -> None:
    for _ in range(3):
        assert ask(gw, key="sk-rl-a-000001").status_code == 200
    before = fake.stats()["total"]
    with pytest.raises(openai.RateLimitError) as e:
        ask(gw, key="sk-rl-a-000001")
    assert fake.stats()["total"] == before  # refused before any upstream call
    assert "rate limit of rule 'rl-a-limit' reached: 3 requests per minute for key 'rl-a'" in str(e.value)
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 61
    with pytest.raises(anthropic.RateLimitError) as ae:  # the same limit, in the Anthropic shape
        claude(gw, "sk-rl-a-000001").messages.create(
            model="openai/gpt-4.1", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert ae.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert ask(gw).status_code == 200  # other keys are not counted


def test_key_rpm_shortcut(gw: Gateway) -> None:
    for _ in range(2):
        assert ask(gw, key="sk-rl-b-000001").status_code == 200
    with pytest.raises(openai.RateLimitError) as e:
        ask(gw, key="sk-rl-b-000001")
    assert "rule 'key:rl-b:limits'" in str(e.value) and e.value.response.headers["retry-after"]


def test_max_concurrent_per_key(gw: Gateway) -> None:
    key = "sk-mc-0000001"
    stream = oai(gw, key).chat.completions.create(
        model="openai/gpt-4.1",
        messages=[{"role": "user", "content": "[[words:4]] [[slow:500]]"}],
        stream=True,
    )
    chunks = iter(stream)
    next(chunks)  # in flight
    with pytest.raises(openai.RateLimitError) as e:
        ask(gw, key=key)
    assert "allows key 'mc' 1 request(s) at once" in str(e.value)
    assert [c for c in chunks if c.choices and c.choices[0].finish_reason] != []
    assert ask(gw, key=key).status_code == 200  # the slot is free again once the stream ended


def test_key_models_allow_list(gw: Gateway, fake: FakeUpstream) -> None:
    key = "sk-ml-0000001"
    assert ask(gw, "openai/gpt-4.1-mini", key=key).headers["x-omniroute-model"] == "openai/gpt-4.1-mini"
    before = fake.stats()["total"]
    with pytest.raises(openai.PermissionDeniedError) as e:
        ask(gw, "anthropic/claude-haiku-4-5", key=key)
    assert "key 'ml' may not use model 'anthropic/claude-haiku-4-5' (allowed: openai/gpt-4.1*)" in str(
        e.value
    )
    assert fake.stats()["total"] == before


def test_schedules(gw: Gateway) -> None:
    # a deny rule whose schedule excludes now does not apply; one that includes now does
    assert ask(gw, headers={"x-sched": "1"}).status_code == 200
    with pytest.raises(openai.PermissionDeniedError) as e:
        ask(gw, headers={"x-sched": "2"})
    assert "refused all day long" in str(e.value)
    # a key whose schedule excludes now is refused, saying when it may be used
    with pytest.raises(openai.PermissionDeniedError) as e:
        ask(gw, key="sk-sched-00001")
    assert f"key 'sched' may be used only {','.join(ALL_DAYS)} {NOT_NOW} (UTC)" in str(e.value)


# ------------------------------------------------------------------ settings API


def test_global_system_prompt_setting_applies(gw: Gateway, fake: FakeUpstream) -> None:
    url = f"{gw.base_url}/api/settings/system-prompt"
    r = httpx.put(url, json={"enabled": True, "mode": "append", "text": "GLOBAL-SYS"})
    try:
        assert r.status_code == 200 and r.json() == {"enabled": True, "mode": "append", "text": "GLOBAL-SYS"}
        listing = httpx.get(f"{gw.base_url}/api/policies").json()["policies"]
        assert any(p["name"] == "settings:system-prompt" and p["readonly"] for p in listing)
        for conn in ("openai", "anthropic"):
            marker = uuid.uuid4().hex
            oai(gw).chat.completions.create(
                model=UPSTREAMS[conn],
                max_tokens=20,
                messages=[{"role": "system", "content": CLIENT_SYS}, {"role": "user", "content": marker}],
            )
            assert system_received(conn, only(fake, marker)) == f"{CLIENT_SYS}\n\nGLOBAL-SYS"
        bad = httpx.put(url, json={"mode": "sideways"})
        assert bad.status_code == 400 and "mode" in bad.json()["error"]["message"]
    finally:
        assert httpx.put(url, json={"enabled": False}).status_code == 200
    marker = uuid.uuid4().hex
    oai(gw).chat.completions.create(model="openai/gpt-4.1", messages=[{"role": "user", "content": marker}])
    assert system_received("openai", only(fake, marker)) is None


def test_global_thinking_budget_setting_applies(gw: Gateway, fake: FakeUpstream) -> None:
    url = f"{gw.base_url}/api/settings/thinking-budget"
    r = httpx.put(url, json={"mode": "tokens", "tokens": 3000})
    try:
        assert r.status_code == 200 and r.json() == {"mode": "tokens", "tokens": 3000}
        marker = uuid.uuid4().hex
        claude(gw).messages.create(
            model="anthropic/claude-sonnet-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": marker}],
        )
        assert only(fake, marker)["thinking"] == {"type": "enabled", "budget_tokens": 3000}
        # a config rule placed after the settings rules wins for its requests
        marker = uuid.uuid4().hex
        oai(gw, **{"x-think": "effort"}).chat.completions.create(
            model="openai/gpt-5", messages=[{"role": "user", "content": marker}]
        )
        assert only(fake, marker)["reasoning_effort"] == "high"
        bad = httpx.put(url, json={"mode": "tokens", "tokens": 0})
        assert bad.status_code == 400
    finally:
        assert httpx.put(url, json={"mode": "passthrough"}).json() == {"mode": "passthrough"}
    marker = uuid.uuid4().hex
    claude(gw).messages.create(
        model="anthropic/claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": marker}]
    )
    assert "thinking" not in only(fake, marker)


# ------------------------------------------------------------------ located errors, reload


def test_check_reports_bad_rules_with_their_location(tmp_path: Path) -> None:
    text = (
        "providers:\n"
        "  openai: {api_key: sk-check-0001}\n"
        "policies:\n"
        "  - name: bad-regex\n"
        "    match: {field: model, regex: 'gpt-(4'}\n"
        "    deny: {}\n"
        "  - name: bad-cidr\n"
        "    match: {field: ip, in: [10.0.0.1/8]}\n"
        "    deny: {status: 403}\n"
        "  - name: 'key:mine'\n"
        "    deny: {}\n"
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "check", "-c", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stdout == "", out
    assert out.stderr.splitlines() == [
        "3 problem(s) in the configuration:",
        f"  {cfg}:5:27: policies[0].match.regex: invalid regular expression 'gpt-(4': missing ), "
        "unterminated subpattern at position 4",
        f"  {cfg}:8:29: policies[1].match.in[0]: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)",
        f"  {cfg}:10:5: policies[2].name: rule names starting with key: or settings: are reserved for rules made "
        "from keys and settings; rename the rule",
    ]


def test_policy_reload_while_a_stream_runs(gw: Gateway) -> None:
    words: list[str] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for c in oai(gw).chat.completions.create(
                model="openai/gpt-4.1-nano",
                messages=[{"role": "user", "content": "[[words:25]] [[slow:200]]"}],
                stream=True,
            ):
                if c.choices and c.choices[0].delta.content:
                    words.append(c.choices[0].delta.content.strip())
        except BaseException as e:  # reported below
            errors.append(e)

    original = gw.config_path.read_text()
    t = threading.Thread(target=consume)
    t.start()
    wait_for(lambda: len(words) >= 2)
    gen = gw.health()["generation"]
    cfg = yaml.safe_load(original)
    cfg["policies"].append(
        {
            "name": "no-nano",
            "match": {"field": "model", "eq": "openai/gpt-4.1-nano"},
            "deny": {"message": "nano is switched off"},
        }
    )
    gw.write_config(cfg)
    try:
        wait_for(lambda: gw.health()["generation"] == gen + 1)
        at_reload = len(words)
        with pytest.raises(openai.PermissionDeniedError) as e:
            ask(gw, "openai/gpt-4.1-nano")
        assert "nano is switched off" in str(e.value)
        t.join(15)
        assert at_reload < 25  # the new rule arrived while the stream ran ...
        assert not errors and words == [f"word{i}" for i in range(1, 26)]  # ... which finished untouched
    finally:
        gw.write_config(original)
        wait_for(lambda: gw.health()["generation"] == gen + 2)
    assert ask(gw, "openai/gpt-4.1-nano").status_code == 200


# ------------------------------------------------------------------ policy API, restart, IPv6 filter


@pytest.fixture(scope="module")
def gw6(launch: Any, fake: FakeUpstream) -> Gateway:
    """A gateway of its own on the IPv6 loopback: the policy API test restarts it and the IP filter
    test ends by locking every client out."""
    config = {
        "providers": demo_providers(fake.base_url),
        "keys": [{"name": "pa", "key": PA}],
        "policies": _policies()[:1],
    }
    return launch(config, ipv6=True)  # type: ignore[no-any-return]


def test_policy_api_rules_persist_across_a_restart(gw6: Gateway) -> None:
    base = gw6.base_url
    listing = httpx.get(f"{base}/api/policies").json()["policies"]
    cfg_rule = next(p for p in listing if p["name"] == "no-gpt4o")
    assert cfg_rule["readonly"] is True and cfg_rule["source"] == "config"
    r = httpx.delete(f"{base}/api/policies/no-gpt4o")
    assert r.status_code == 409 and "read-only" in r.json()["error"]["message"]

    rule = {
        "name": "api-deny",
        "match": {"field": "header.x-api-rule", "eq": "1"},
        "deny": {"status": 403, "message": "blocked by an API rule"},
    }
    r = httpx.post(f"{base}/api/policies", json=rule)
    assert r.status_code == 201 and r.json()["policy"]["readonly"] is False
    assert httpx.post(f"{base}/api/policies", json=rule).status_code == 409
    bad = httpx.post(f"{base}/api/policies", json={"name": "broken", "deny": {"status": 99}})
    assert bad.status_code == 400 and bad.json()["error"]["problems"][0].startswith("deny.status")
    missing_target = httpx.post(f"{base}/api/policies", json={"name": "nowhere", "route": "nosuch/model"})
    assert (
        missing_target.status_code == 400
        and "no provider 'nosuch'" in missing_target.json()["error"]["message"]
    )

    def refused() -> bool:
        r = httpx.post(
            f"{base}/v1/chat/completions",
            headers={"x-api-rule": "1", **NO_CACHE},
            json={"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
        )
        if r.status_code == 403:
            assert r.json()["error"]["message"] == "blocked by an API rule"
            return True
        assert r.status_code == 200, r.text
        return False

    assert refused()
    gw6.stop()
    gw6.start()
    names = [p["name"] for p in httpx.get(f"{base}/api/policies").json()["policies"]]
    assert names.index("no-gpt4o") < names.index("api-deny")  # config rules first, then API rules
    assert refused()
    assert httpx.delete(f"{base}/api/policies/api-deny").json() == {"deleted": "api-deny"}
    assert httpx.delete(f"{base}/api/policies/api-deny").status_code == 404
    assert not refused()


def test_ip_filter_on_ipv6_loopback(gw6: Gateway) -> None:
    base = gw6.base_url
    url = f"{base}/api/settings/ip-filter"
    # an allow list that names the caller passes; one that does not would lock the caller out
    ok = httpx.put(url, json={"enabled": True, "allow": ["::1/128", "10.0.0.0/8"], "block": []})
    assert ok.status_code == 200 and ok.json()["allow"] == ["::1/128", "10.0.0.0/8"]
    assert httpx.get(f"{base}/api/policies").status_code == 200
    r = httpx.put(url, json={"allow": ["2001:db8::/32"]})
    assert r.status_code == 409 and "::1" in r.json()["error"]["message"]
    exempt = httpx.put(url, json={"allow": ["2001:db8::/32"], "exempt_loopback": True})
    assert exempt.status_code == 200  # loopback exempt: no lockout
    assert httpx.get(f"{base}/api/policies").status_code == 200
    bad = httpx.put(url, json={"block": ["::1/64"]})
    assert bad.status_code == 400 and "host bits" in bad.json()["error"]["message"]
    # block ::1 itself, forced: every route refuses
    r = httpx.put(url, json={"allow": [], "block": ["::1/128"], "exempt_loopback": False})
    assert r.status_code == 409
    r = httpx.put(
        url, params={"force": "true"}, json={"allow": [], "block": ["::1/128"], "exempt_loopback": False}
    )
    assert r.status_code == 200
    for method, path in (
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/messages"),
        ("GET", "/v1/models"),
        ("GET", "/api/policies"),
        ("GET", "/health"),
        ("PUT", "/api/settings/ip-filter"),
    ):
        r = httpx.request(method, f"{base}{path}", json={})
        assert r.status_code == 403, (path, r.status_code)
        assert "::1 is not allowed by the IP filter" in r.json()["error"]["message"]


# ------------------------------------------------------------------ IPv4 lockout: keep it last (the shared gateway stays locked)


def test_ip_filter_blocks_ipv4_loopback_everywhere(gw: Gateway, fake: FakeUpstream) -> None:
    url = f"{gw.base_url}/api/settings/ip-filter"
    body = {"enabled": True, "block": ["127.0.0.0/8"], "exempt_loopback": False}
    r = httpx.put(url, json=body)
    assert r.status_code == 409 and "127.0.0.1" in r.json()["error"]["message"]
    assert ask(gw).status_code == 200  # nothing changed
    before = fake.stats()["total"]
    assert httpx.put(url, params={"force": "true"}, json=body).status_code == 200
    for method, path in (
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/messages"),
        ("POST", "/api/chat"),
        ("GET", "/v1/models"),
        ("GET", "/api/policies"),
        ("GET", "/health"),
        ("PUT", "/api/settings/ip-filter"),
    ):
        r = httpx.request(method, f"{gw.base_url}{path}", json={})
        assert r.status_code == 403, (path, r.status_code)
    with pytest.raises(openai.PermissionDeniedError):
        ask(gw)
    assert fake.stats()["total"] == before
