"""Compile: the whole config + specs into a Runtime, or every located problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.compile import build
from engine.errors import SpecError


def write(tmp: Path, text: str) -> Path:
    p = tmp / "config.yaml"
    p.write_text(text)
    return p


def problems(tmp: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as e:
        build(write(tmp, text), env=env or {})
    return [str(p) for p in e.value.problems if "config.yaml" in p.file]


def test_valid_config_compiles(tmp_path: Path) -> None:
    rt = build(write(tmp_path, "providers:\n  openai: {api_key: sk-1}\naliases: {fast: openai/gpt-4.1-mini}\n"), env={})
    assert rt.connections["openai"].accounts[0].api_key == "sk-1"
    assert "sk-1" not in repr(rt.connections["openai"])
    assert rt.aliases["fast"] == "openai/gpt-4.1-mini"
    assert rt.prefixes["oai"] == "openai"  # the spec's short alias
    assert rt.prices["openai/gpt-4.1"].input is not None


def test_unknown_provider_spec_lists_choices(tmp_path: Path) -> None:
    [p] = problems(tmp_path, "providers:\n  mine: {spec: opnai, api_key: k}\n")
    assert p.startswith(f"{tmp_path}/config.yaml:2:10: providers.mine.spec: unknown provider 'opnai' (valid values: ")
    assert "openai" in p


def test_unknown_strategy_and_unknown_target(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "providers:\n  openai: {api_key: k}\ncombos:\n  c:\n    strategy: fastest\n    targets: [openai/gpt-4.1, openai/gpt-9]\n",
    )
    assert any(":5:5: combos.c.strategy: unknown strategy 'fastest' (valid values: " in p for p in found)
    assert any(":6:31: combos.c.targets[1]: unknown model 'gpt-9' for provider 'openai'" in p for p in found)


def test_combo_cycles_and_depth(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "providers:\n  openai: {api_key: k}\ncombos:\n  a: {targets: [b]}\n  b: {targets: [a]}\n",
    )
    assert any("cycle: a -> b -> a" in p for p in found)
    deep = "providers:\n  openai: {api_key: k}\ncombos:\n" + "".join(
        f"  c{i}: {{targets: [c{i + 1}]}}\n" for i in range(4)
    ) + "  c4: {targets: [openai/gpt-4.1]}\n"
    assert any("nest 5 deep" in p for p in problems(tmp_path, deep))


def test_missing_key_and_env(tmp_path: Path) -> None:
    found = problems(tmp_path, "providers:\n  openai: {}\n  anthropic: {api_key: '${ANTHROPIC_KEY}'}\n")
    assert any("providers.openai: missing api_key" in p for p in found)
    assert any("environment variable ANTHROPIC_KEY is not set" in p for p in found)


def test_require_api_key_from_env(tmp_path: Path) -> None:
    rt = build(write(tmp_path, "providers: {}\n"), env={"REQUIRE_API_KEY": "true"})
    assert rt.server.require_api_key is True


def test_keys_are_hashed(tmp_path: Path) -> None:
    rt = build(write(tmp_path, "keys:\n  - {name: a, key: sk-secret-123}\n"), env={})
    assert "sk-secret-123" not in repr(rt.keys) and len(rt.keys["a"].sha256) == 64


def test_fingerprint_changes_with_config(tmp_path: Path) -> None:
    a = build(write(tmp_path, "aliases: {}\n"), env={})
    b = build(write(tmp_path, "aliases: {}\nsettings: {strict_translation: true}\n"), env={})
    assert a.fingerprint != b.fingerprint and b.strict


def test_explain_cli_shows_policies_order_and_skips(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = write(
        tmp_path,
        "providers:\n  openai: {api_key: k}\n  anthropic: {api_key: k}\n"
        "combos:\n  c: {strategy: cost-optimized, targets: [anthropic/claude-sonnet-4-5, openai/gpt-4.1-nano, openai/gpt-4.1]}\n"
        "policies:\n  - {name: cap, match: {field: model, eq: c}, cap: {max_tokens: 100}}\n",
    )
    out = subprocess.run([sys.executable, "-m", "engine.cli", "explain", "-c", str(cfg), "c"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "c: combo c (cost-optimized)"
    assert "policy 'cap' matched: cap {\"max_tokens\": 100}" in out
    order = [line.split()[1] for line in lines if line.strip()[:2] in ("1.", "2.", "3.")]
    assert order == ["openai/gpt-4.1-nano", "openai/gpt-4.1", "anthropic/claude-sonnet-4-5"]  # cheapest first


def test_upstream_urls_keep_path_queries_and_add_auth_params(tmp_path: Path) -> None:
    from engine.upstream import Upstream

    specs = tmp_path / "specs" / "providers"
    specs.mkdir(parents=True)
    (specs / "qgem.yaml").write_text(
        "name: Q\nformat: gemini\nbase_url: http://up.test/v1beta\nauth: {kind: query, param: key}\n"
        "endpoints: {chat: {path: '/models/{model}:generateContent', stream_path: '/models/{model}:streamGenerateContent?alt=sse'}}\n"
        "models: {m: {}}\n"
    )
    rt = build(write(tmp_path, "spec_dirs: [specs]\nproviders:\n  qgem: {api_key: k1}\n  gemini: {api_key: k2}\n"), env={})
    up = Upstream()
    q = rt.connections["qgem"]
    assert str(up.build(q, q.accounts[0], "chat", q.models["m"], stream=True, body=b"{}").url) == (
        "http://up.test/v1beta/models/m:streamGenerateContent?alt=sse&key=k1"
    )
    g = rt.connections["gemini"]
    r = up.build(g, g.accounts[0], "chat", g.model("gemini-2.5-flash"), stream=True, body=b"{}")
    assert r.url.params["alt"] == "sse" and r.headers["x-goog-api-key"] == "k2"
    assert up.build(g, g.accounts[0], "chat", g.model("gemini-2.5-flash"), stream=False, body=b"{}").url.query == b""


def test_example_config_passes_check_and_documents_every_top_level_key() -> None:
    import json

    from engine.compile import BUILTIN_SPECS

    root = BUILTIN_SPECS.parent
    example = root / "config.example.yaml"
    rt = build(example, env={})
    assert rt.combos["coding"].strategy == "priority" and rt.keys["team-a"].budget is not None
    schema = json.loads((root / "engine" / "schemas" / "config.schema.json").read_text())
    text = example.read_text()
    for key in schema["properties"]:
        assert f"\n{key}:" in text, f"config.example.yaml does not document '{key}'"


def test_public_surface_resolves() -> None:
    import engine

    assert engine.__all__ == ["GatewayError", "SpecError", "__version__", "build", "check", "create_app"]
    for name in engine.__all__:
        assert getattr(engine, name) is not None


def test_timeouts_are_defaults_then_spec_then_config(tmp_path: Path) -> None:
    from engine.runtime import DEFAULT_TIMEOUTS

    rt = build(write(tmp_path, "providers:\n  openai: {api_key: k, timeouts: {idle: 5}}\n  together: {api_key: k}\n"), env={})
    openai, together = rt.connections["openai"].timeouts, rt.connections["together"].timeouts
    assert openai["idle"] == 5 and set(openai) == set(DEFAULT_TIMEOUTS)  # every key, for the transport
    assert together["first_byte"] == 180  # specs/providers/together.yaml
    assert together["connect"] == 10 and together["total"] == 900
