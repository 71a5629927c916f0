"""The policy management API and its store, against a stand-in gateway in a temporary data dir."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import orjson
import pytest

from engine.admin import policy_api
from engine.http import Request, Router
from engine.policy_store import PolicyStore

CONFIG_RULES = [{"name": "no-night-gpt", "match": {"field": "model", "glob": "gpt-*"}, "deny": {"message": "later"}}]


def make_gw(data_dir: Path) -> NS:
    keys = {"team-a": NS(name="team-a", models=("coding",), rpm=None, rpd=None, schedule=None)}
    combo = NS(name="coding", strategy="priority", targets=())
    rt = NS(raw_config={"policies": CONFIG_RULES}, keys=keys, aliases={}, combos={"coding": combo}, prefixes={},
            connections={}, model_index={})
    return NS(runtime=rt, policy_store=PolicyStore(data_dir))


def call(gw: Any, method: str, path: str, body: Any = None, query: str = "", client: str = "10.0.0.5") -> tuple[int, Any]:
    router = Router()
    policy_api.register(router, gw)
    handler, params, _ = router.match(method, path)
    assert handler is not None, f"no route {method} {path}"
    raw = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    req = Request({"type": "http", "method": method, "path": path, "headers": [], "query_string": query.encode(),
                   "client": (client, 4711)}, receive)
    req.params = params
    resp = asyncio.run(handler(req))
    return resp.status, orjson.loads(resp.body)


@pytest.fixture
def gw(tmp_path: Path) -> NS:
    return make_gw(tmp_path)


def test_list_shows_every_rule_in_order_with_sources(gw: NS) -> None:
    status, body = call(gw, "GET", "/api/policies")
    assert status == 200
    assert [(p["name"], p["source"], p["readonly"]) for p in body["policies"]] == [
        ("key:team-a:models", "key", True), ("no-night-gpt", "config", True)]


def test_add_list_delete_and_persist(gw: NS, tmp_path: Path) -> None:
    changes: list[int] = []
    gw.policy_store.subscribe(lambda: changes.append(gw.policy_store.version))
    rule = {"name": "cheap-nights", "match": {"schedule": {"hours": "22:00-06:00", "tz": "Europe/Paris"}}, "route": "coding"}
    status, body = call(gw, "POST", "/api/policies", rule)
    assert status == 201 and body["policy"] == {**rule, "source": "api", "readonly": False}
    names = [(p["name"], p["readonly"]) for p in call(gw, "GET", "/api/policies")[1]["policies"]]
    assert names[-1] == ("cheap-nights", False)
    # persisted: a new store (a restart) reads it back
    assert PolicyStore(tmp_path).rules() == [rule]
    assert call(gw, "DELETE", "/api/policies/cheap-nights") == (200, {"deleted": "cheap-nights"})
    assert call(gw, "DELETE", "/api/policies/cheap-nights")[0] == 404
    assert PolicyStore(tmp_path).rules() == []
    assert changes == [1, 2]


def test_delete_by_query_and_read_only_rules(gw: NS) -> None:
    call(gw, "POST", "/api/policies", {"name": "tagger", "tag": ["x"]})
    assert call(gw, "DELETE", "/api/policies", query="name=tagger") == (200, {"deleted": "tagger"})
    status, body = call(gw, "DELETE", "/api/policies/no-night-gpt")
    assert status == 409 and body["error"]["message"] == \
        "rule 'no-night-gpt' is read-only (it comes from the config rules; edit the config file)"
    assert call(gw, "DELETE", "/api/policies/key:team-a:models")[0] == 409
    assert call(gw, "DELETE", "/api/policies")[0] == 400


def test_post_reports_every_located_problem(gw: NS) -> None:
    bad = {"name": "bad", "match": {"all": [{"field": "model", "regex": "(("}, {"field": "ip", "in": ["10.0.0.1/8"]}]},
           "deny": {"status": 200}}
    status, body = call(gw, "POST", "/api/policies", bad)
    assert status == 400
    assert body["error"]["problems"] == [
        "deny.status: must be >= 400",
    ]
    bad["deny"] = {"status": 403}
    status, body = call(gw, "POST", "/api/policies", bad)
    assert status == 400
    assert body["error"]["problems"] == [
        "match.all[0].regex: invalid regular expression '((': missing ), unterminated subpattern at position 1",
        "match.all[1].in[0]: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)",
    ]
    assert body["error"]["message"].startswith("invalid rule: match.all[0].regex: invalid regular expression")
    assert body["error"]["message"].endswith("(and 1 more)")
    assert call(gw, "POST", "/api/policies", {"name": "settings:x", "tag": ["y"]})[1]["error"]["problems"] == [
        "name: rule names starting with key: or settings: are reserved for rules made from keys and settings; rename the rule"]
    assert call(gw, "POST", "/api/policies", [1, 2])[0] == 400
    status, body = call(gw, "POST", "/api/policies", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    assert call(gw, "POST", "/api/policies", b"")[0] == 400
    assert gw.policy_store.rules() == []


def test_post_conflicts_and_unknown_route(gw: NS) -> None:
    status, body = call(gw, "POST", "/api/policies", {"name": "no-night-gpt", "tag": ["x"]})
    assert status == 409 and "already exists (it comes from the config rules)" in body["error"]["message"]
    assert call(gw, "POST", "/api/policies", {"name": "t", "tag": ["x"]})[0] == 201
    status, body = call(gw, "POST", "/api/policies", {"name": "t", "tag": ["y"]})
    assert status == 409 and "it was added through the API" in body["error"]["message"]
    status, body = call(gw, "POST", "/api/policies", {"name": "r", "route": "nowhere"})
    assert status == 400 and body["error"]["problems"][0].startswith("route: unknown model 'nowhere'")


def test_system_prompt_setting_becomes_a_rule(gw: NS, tmp_path: Path) -> None:
    assert call(gw, "GET", "/api/settings/system-prompt") == (200, {"enabled": False, "mode": "prepend", "text": ""})
    status, body = call(gw, "PUT", "/api/settings/system-prompt", {"enabled": True, "text": "Answer in French."})
    assert status == 200 and body == {"enabled": True, "mode": "prepend", "text": "Answer in French."}
    policies = call(gw, "GET", "/api/policies")[1]["policies"]
    assert [(p["name"], p["source"]) for p in policies][:2] == [("key:team-a:models", "key"), ("settings:system-prompt", "settings")]
    assert policies[1]["system_prompt"] == {"mode": "prepend", "text": "Answer in French."}
    assert call(gw, "DELETE", "/api/policies/settings:system-prompt")[0] == 409
    assert PolicyStore(tmp_path).setting("system_prompt")["text"] == "Answer in French."
    status, body = call(gw, "PUT", "/api/settings/system-prompt", {"mode": "sideways"})
    assert status == 400 and body["error"]["problems"] == [
        "mode: 'sideways' is not valid (valid values: prepend, append, replace)"]
    status, body = call(gw, "PUT", "/api/settings/system-prompt", {"txt": "x"})
    assert status == 400 and body["error"]["problems"] == ["txt: unknown key (valid keys: enabled, mode, text)"]
    assert call(gw, "PUT", "/api/settings/system-prompt", {"enabled": "yes"})[1]["error"]["problems"] == [
        "enabled: expected true or false"]
    call(gw, "PUT", "/api/settings/system-prompt", {"enabled": False})
    assert gw.policy_store.settings_rules() == []


def test_thinking_budget_setting(gw: NS) -> None:
    assert call(gw, "GET", "/api/settings/thinking-budget") == (200, {"mode": "passthrough"})
    status, body = call(gw, "PUT", "/api/settings/thinking-budget", {"mode": "tokens"})
    assert status == 400 and body["error"]["problems"] == ["missing required key 'tokens'"]
    assert call(gw, "PUT", "/api/settings/thinking-budget", {"mode": "tokens", "tokens": 0})[1]["error"]["problems"] == [
        "tokens: must be >= 1"]
    assert call(gw, "PUT", "/api/settings/thinking-budget", {"mode": "tokens", "tokens": 2048}) == \
        (200, {"mode": "tokens", "tokens": 2048})
    assert gw.policy_store.settings_rules()[0]["thinking_budget"] == {"mode": "tokens", "tokens": 2048}
    assert call(gw, "PUT", "/api/settings/thinking-budget", {"mode": "off"}) == (200, {"mode": "off"})
    assert call(gw, "PUT", "/api/settings/thinking-budget", {"mode": "effort", "effort": "high"}) == \
        (200, {"mode": "effort", "effort": "high"})
    call(gw, "PUT", "/api/settings/thinking-budget", {"mode": "passthrough"})
    assert gw.policy_store.settings_rules() == []


def test_ip_filter_setting(gw: NS, tmp_path: Path) -> None:
    assert call(gw, "GET", "/api/settings/ip-filter") == (200, {"enabled": False, "allow": [], "block": [], "exempt_loopback": False})
    assert gw.policy_store.ip_filter() is None
    status, body = call(gw, "PUT", "/api/settings/ip-filter", {"enabled": True, "allow": ["10.0.0.0/8", "fd00::/8", "10.0.0.1/8"]})
    assert status == 400 and body["error"]["problems"] == ["allow[2]: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"]
    # a filter that shuts the caller out is refused unless forced
    status, body = call(gw, "PUT", "/api/settings/ip-filter", {"enabled": True, "allow": ["192.168.0.0/16"]}, client="10.0.0.5")
    assert status == 409 and "would refuse your own address 10.0.0.5" in body["error"]["message"]
    status, body = call(gw, "PUT", "/api/settings/ip-filter", {"enabled": True, "allow": ["10.0.0.0/8", "fd00::/8"],
                                                              "block": ["10.9.0.0/16"]})
    assert status == 200 and body["allow"] == ["10.0.0.0/8", "fd00::/8"]
    flt = gw.policy_store.ip_filter()
    assert flt is not None and flt.allows("10.1.1.1") and flt.allows("fd00::5") and not flt.allows("10.9.1.1")
    assert not flt.allows("127.0.0.1")
    restarted = PolicyStore(tmp_path).ip_filter()
    assert restarted is not None and not restarted.allows("192.168.1.1")
    assert call(gw, "PUT", "/api/settings/ip-filter", {"allow": ["192.168.0.0/16"]}, query="force=true")[0] == 200
    assert call(gw, "PUT", "/api/settings/ip-filter", {"enabled": False}, client="10.0.0.5")[0] == 200
    assert gw.policy_store.ip_filter() is None


def test_no_store_is_503(tmp_path: Path) -> None:
    gw = make_gw(tmp_path)
    gw.policy_store = None
    assert call(gw, "GET", "/api/policies")[0] == 503


def test_corrupt_files_are_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "policies.json").write_text("{oops")
    (tmp_path / "policy_settings.json").write_text('{"ip_filter": {"enabled": true, "allow": ["nonsense", "10.0.0.0/8"]}}')
    store = PolicyStore(tmp_path)
    assert store.rules() == []
    assert [p.name.split("-")[0] for p in tmp_path.glob("policies.json.corrupt-*")] == ["policies.json.corrupt"]
    flt = store.ip_filter()  # the valid entries of a hand-edited filter still apply
    assert flt is not None and flt.allows("10.2.3.4") and not flt.allows("11.0.0.1")
    assert PolicyStore(None).rules() == []  # in memory only
