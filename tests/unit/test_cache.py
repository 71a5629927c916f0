"""Response cache: keys, rules, tiers (TTL, LRU bounds, restart), clear, stats, stream replay in every
client format, and the semantic index with the fake upstream's deterministic embeddings."""

from __future__ import annotations

import copy
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cache import (
    CacheRules,
    ResponseAssembler,
    ResponseCache,
    SemanticIndex,
    cache_key,
    cacheable,
    events_from_response,
    from_entry,
    last_user_text,
    semantic_scope,
    storable,
    storable_probe,
    wire_entry,
)
from engine.cache_store import CATCH_UP_S
from engine.canonical import clean_usage
from engine.compile import BUILTIN_SPECS
from engine.source import load_file, schema, validate
from engine.stream import parser_for
from engine.translate import Format, compile_format
from tools.fake_upstream.behaviour import embedding

MODEL = "openai/gpt-4.1"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def req(text: str = "What is the capital of France?", **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"model": "fast", "system": "Be terse.",
                         "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}], "max_tokens": 100}
    r.update(kw)
    return r


def resp(text: str = "Paris.", **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"id": "up-1", "model": "gpt-4.1", "content": [{"type": "text", "text": text}], "stop_reason": "stop",
                         "usage": {"input_tokens": 12, "output_tokens": 3, "cached_tokens": 0, "cache_write_tokens": 0,
                                   "reasoning_tokens": 0}}
    r.update(kw)
    return r


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(tmp_path: Path, clock: Clock) -> Any:
    made: list[ResponseCache] = []

    def factory(data_dir: Path | None = tmp_path, **rules: Any) -> ResponseCache:
        c = ResponseCache(data_dir, CacheRules(**rules), clock)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


# ------------------------------------------------------------------ key and rules


def test_key_ignores_transport_fields_and_number_spelling() -> None:
    base = cache_key(req(temperature=0), MODEL, "team-a")
    assert cache_key(req(temperature=0.0, stream=True, include_usage=True, user="u1", metadata={"a": 1}), MODEL, "team-a") == base
    assert cache_key(req(temperature=0, tools=[], stop=None), MODEL, "team-a") == base
    assert cache_key(req(temperature=0, model="other-alias"), MODEL, "team-a") == base  # the resolved model counts
    assert cache_key(req(temperature=0), "anthropic/claude-sonnet-4-5", "team-a") != base
    assert cache_key(req(temperature=0, max_tokens=101), MODEL, "team-a") != base
    assert len(base) == 32


def test_key_isolation_per_api_key() -> None:
    a, b = cache_key(req(), MODEL, "team-a"), cache_key(req(), MODEL, "team-b")
    assert a != b
    assert cache_key(req(), MODEL, None) == cache_key(req(), MODEL, "") != a


def test_scoped_entries_never_cross_keys(make: Any) -> None:
    cache = make(None)
    cache.put(cache_key(req(), MODEL, "team-a"), resp(), MODEL)
    assert cache.get(cache_key(req(), MODEL, "team-a")) == resp()
    assert cache.get(cache_key(req(), MODEL, "team-b")) is None
    assert cache.get(cache_key(req(), MODEL, None)) is None


def test_temperature_rule() -> None:
    rules = CacheRules()
    assert cacheable(req(), rules)
    assert cacheable(req(temperature=0), rules)
    assert not cacheable(req(temperature=0.7), rules)
    assert cacheable(req(temperature=0.3), CacheRules(max_temperature=0.5))
    assert not cacheable(req(temperature=0.7), CacheRules(max_temperature=0.5))
    assert not cacheable(req(), CacheRules(enabled=False))


def test_nondeterministic_requests_are_not_cacheable() -> None:
    rules = CacheRules()
    assert not cacheable(req(n=2), rules)
    assert cacheable(req(n=1), rules)
    assert not cacheable({"model": "m"}, rules)
    remote = req()
    remote["messages"][0]["content"].append({"type": "image", "url": "https://example.com/cat.png"})
    assert not cacheable(remote, rules)
    inline = req()
    inline["messages"][0]["content"].append({"type": "image", "media_type": "image/png", "data": "iVBORw0KGgo="})
    assert cacheable(inline, rules)


def test_errors_empty_answers_and_tool_calls_are_not_stored(make: Any) -> None:
    cache = make(None)
    tool = resp(content=[{"type": "tool_call", "id": "c1", "name": "f", "arguments": "{}"}], stop_reason="tool_calls")
    assert not cache.put("k1", resp(stop_reason="error"), MODEL)
    assert not cache.put("k2", resp(content=[]), MODEL)
    assert not cache.put("k3", tool, MODEL)
    assert cache.get("k1") is None and cache.get("k3") is None
    allowing = make(None, cache_tool_calls=True)
    assert allowing.put("k3", tool, MODEL) and allowing.get("k3") == tool


def test_rules_from_config_and_schema() -> None:
    rules = CacheRules.from_config({"ttl_s": 60, "max_temperature": 0.2, "semantic": {"enabled": True, "model": "emb"},
                                    "idempotency": {"window_s": 2}})
    assert (rules.ttl_s, rules.max_temperature, rules.semantic_model, rules.idempotency_window_s) == (60.0, 0.2, "emb", 2.0)
    assert CacheRules.from_config(None) == CacheRules()
    with pytest.raises(ValueError, match=r"cache\.semantic\.model"):
        CacheRules.from_config({"semantic": {"enabled": True}})
    v = schema("cache")
    assert not list(v.iter_errors({"ttl_s": 10, "semantic": {"enabled": False}, "idempotency": {"window_s": 0}}))
    assert list(v.iter_errors({"tll_s": 10}))
    assert list(v.iter_errors({"semantic": {"enabled": True}}))
    assert list(v.iter_errors({"ttl_s": 0}))


def test_schema_errors_are_located(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text("ttl_s: 10\nmax_temprature: 0\n")
    doc, problems = load_file(path)
    found = problems + validate(doc, "cache")
    assert len(found) == 1 and "unknown key 'max_temprature'" in str(found[0]) and ":2:" in str(found[0])


# ------------------------------------------------------------------ tiers


def test_ttl_expiry_in_both_tiers(make: Any, clock: Clock) -> None:
    cache = make(ttl_s=60)
    cache.put("k", resp(), MODEL)
    clock.t += 59
    assert cache.get("k") == resp()
    cache.flush()
    restarted = make()
    assert restarted.get("k") == resp()
    clock.t += 2
    assert cache.get("k") is None
    assert restarted.get("k") is None
    assert cache.stats()["dbSize"] == 0


def test_lru_bound_by_entries(make: Any) -> None:
    cache = make(None, max_entries=3)
    for k in "abc":
        cache.put(k, resp(k), MODEL)
    assert cache.get("a") is not None  # a is now the most recent: b leaves first
    cache.put("d", resp("d"), MODEL)
    assert [cache.get(k) is not None for k in "abcd"] == [True, False, True, True]
    assert cache.stats()["memorySize"] == 3


def test_lru_bound_by_bytes(make: Any) -> None:
    size = len(orjson.dumps(resp("x" * 1000))) + 1 + 96
    cache = make(None, max_bytes=size * 2 + 10)
    for k in "abc":
        cache.put(k, resp("x" * 1000), MODEL)
    assert [cache.get(k) is not None for k in "abc"] == [False, True, True]
    assert cache.stats()["memoryBytes"] <= size * 2 + 10
    cache.put("big", resp("y" * 10_000), MODEL)  # larger than the whole memory tier, and no disk
    assert cache.get("big") is None and cache.get("c") is not None


def test_oversized_answer_lives_on_disk_only(make: Any) -> None:
    cache = make(max_bytes=500)
    cache.put("big", resp("y" * 2000), MODEL)
    cache.flush()
    assert cache.stats()["memorySize"] == 0
    assert cache.get("big") == resp("y" * 2000)
    assert cache.stats()["memorySize"] == 0


def test_restart_keeps_the_persistent_tier(make: Any) -> None:
    first = make()
    for i in range(5):
        first.put(f"k{i}", resp(f"answer {i}"), MODEL)
    first.close()
    second = make()
    assert second.stats()["dbSize"] == 5 and second.stats()["memorySize"] == 0
    assert second.get("k3") == resp("answer 3")
    assert second.stats()["memorySize"] == 1  # promoted into memory


def test_memory_miss_reads_what_another_worker_wrote(make: Any) -> None:
    """b learns of a's rows within CATCH_UP_S of a's commit (PRAGMA data_version), by rowid."""
    a, b = make(), make()
    a.put("shared", resp(), MODEL)
    a.flush()
    deadline = time.monotonic() + CATCH_UP_S + 5  # a loaded machine may run the writer late
    got = b.get("shared")
    while got is None and time.monotonic() < deadline:
        time.sleep(0.02)
        got = b.get("shared")
    assert got == resp()


def test_a_miss_queries_the_file_only_for_keys_it_holds(make: Any) -> None:
    cache = make(max_entries=0)  # no memory tier: every get goes to the persistent tier
    cache.put("held", resp(), MODEL)
    cache.flush()
    queries: list[str] = []
    assert cache._disk is not None
    cache._disk._reader.set_trace_callback(queries.append)
    for i in range(50):
        assert cache.get(f"absent-{i}") is None
    assert queries == []
    assert cache.get("held") == resp() and len(queries) == 1


def test_persistent_tier_keeps_at_most_its_bound(tmp_path: Path, clock: Clock) -> None:
    cache = ResponseCache(tmp_path, CacheRules(persistent_max_entries=10, max_entries=0), clock, purge_every_s=0.02)
    try:
        for i in range(30):
            clock.t += 1  # later puts expire later: the first 20 are closest to expiry
            cache.put(f"k{i}", resp(f"answer {i}"), MODEL)
        cache.flush()
        deadline = time.monotonic() + 5
        while _rows(tmp_path) > 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _rows(tmp_path) == 10
        assert cache.get("k29") == resp("answer 29") and cache.get("k5") is None
    finally:
        cache.close()


def test_concurrent_writers_share_one_file(make: Any) -> None:
    caches = [make(), make()]

    def fill(c: ResponseCache, tag: str) -> None:
        for i in range(200):
            c.put(f"{tag}{i}", resp(f"{tag}{i}"), MODEL)

    threads = [threading.Thread(target=fill, args=(c, tag)) for c, tag in zip(caches, "ab", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in caches:
        c.flush()
    assert caches[0].stats()["dbSize"] == 400
    assert make(max_entries=0).get("b150") == resp("b150")


def test_expired_rows_are_purged_in_the_background(tmp_path: Path, clock: Clock) -> None:
    cache = ResponseCache(tmp_path, CacheRules(ttl_s=10), clock, purge_every_s=0.02)
    try:
        cache.put("old", resp(), MODEL)
        cache.flush()
        clock.t += 11
        deadline = time.monotonic() + 5
        while _rows(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _rows(tmp_path) == 0
    finally:
        cache.close()


def _rows(data_dir: Path) -> int:
    conn = sqlite3.connect(data_dir / "cache.sqlite3")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
    finally:
        conn.close()


def test_hits_return_fresh_copies(make: Any) -> None:
    cache = make(None)
    cache.put("k", resp(), MODEL)
    got = cache.get("k")
    assert got is not None
    got["content"].clear()
    assert cache.get("k") == resp()


def test_clear_all_and_by_model(make: Any) -> None:
    cache = make()
    cache.put("a", resp(), MODEL)
    cache.put("b", resp(), "anthropic/claude-sonnet-4-5")
    cache.put("c", resp(), MODEL)
    assert cache.clear(MODEL) == 2
    assert cache.get("a") is None and cache.get("b") is not None
    assert cache.clear() == 1
    assert cache.stats()["dbSize"] == 0 and cache.stats()["memorySize"] == 0
    assert make().get("b") is None


def test_stats_counts_hits_and_sizes(make: Any) -> None:
    cache = make(max_entries=10)
    cache.put("a", resp(), MODEL)
    cache.get("a")
    cache.get("a")
    cache.get("missing")
    cache.flush()
    s = cache.stats()
    assert {k: s[k] for k in ("memorySize", "memoryMaxSize", "dbSize", "hitRate")} == {
        "memorySize": 1, "memoryMaxSize": 10, "dbSize": 1, "hitRate": round(2 / 3, 4)}


def test_unusable_data_dir_falls_back_to_memory(tmp_path: Path, make: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = make(blocker)
    assert not cache.persistent
    cache.put("k", resp(), MODEL)
    assert cache.get("k") == resp()


def test_configure_shrinks_bounds(make: Any) -> None:
    cache = make(None, max_entries=5)
    for k in "abcde":
        cache.put(k, resp(), MODEL)
    cache.configure(CacheRules(max_entries=2, semantic_enabled=True, semantic_model="emb"))
    assert cache.stats()["memorySize"] == 2 and cache.semantic is not None


# ------------------------------------------------------------------ stream replay


def _formats() -> dict[str, Format]:
    out = {}
    for path in sorted((BUILTIN_SPECS / "formats").glob("*.yaml")):
        doc, _ = load_file(path)
        fmt = compile_format(path.stem, doc.data, lambda p, m: pytest.fail(f"{p}: {m}"))
        assert fmt is not None
        if fmt.enc_events:  # chat formats: the ones that stream answers (not embeddings, images)
            out[path.stem] = fmt
    return out


FORMATS = _formats()
ANSWER = resp(
    content=[{"type": "thinking", "text": "Think.", "signature": "sig-1"}, {"type": "text", "text": "Paris is the capital."},
             {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'}],
    stop_reason="tool_calls", usage={"input_tokens": 12, "output_tokens": 34, "cached_tokens": 0, "cache_write_tokens": 0,
                                     "reasoning_tokens": 5})


def _carried(r: dict[str, Any], fid: str) -> dict[str, Any]:
    """What a format's stream can carry back: Gemini and Ollama invent tool ids, OpenAI-style formats
    have no thinking signatures, Ollama has no reasoning token count."""
    r = copy.deepcopy(r)
    for p in r["content"]:
        if p["type"] == "tool_call" and fid in ("gemini", "ollama"):
            p["id"] = "*"
        if p["type"] == "thinking" and fid in ("openai-chat", "ollama"):
            del p["signature"]
    if fid == "ollama":
        r["usage"]["reasoning_tokens"] = 0
    return r


@pytest.mark.parametrize("fid", sorted(FORMATS))
def test_replayed_stream_parses_back_to_the_same_answer(fid: str) -> None:
    fmt = FORMATS[fid]
    enc = fmt.encoder({"id": "r1", "model": "gpt-4.1", "stream": True, "include_usage": True})
    raw = b"".join(enc.push(ev) for ev in events_from_response(ANSWER)) + enc.end()
    assert enc.response() == {**ANSWER, "id": "r1"}
    parser = parser_for(fmt.framing)
    frames = [*parser.feed(raw), *parser.close()]
    assert frames and all(d == fmt.done or isinstance(orjson.loads(d), dict) for _, d in frames)
    if not fmt.decode_rules:  # a client-only format: its final event carries the whole response
        assert any(e == "response.completed" for e, _ in frames)
        return
    dec = fmt.decoder()
    back = ResponseAssembler()
    for ev in dec.feed(raw) + dec.close():
        back.push(ev)
    got = back.response()
    assert got is not None
    got["id"] = "r1"  # the wire id carries a format prefix (chatcmpl-, msg_)
    for p in got["content"]:
        if p["type"] == "tool_call" and fid in ("gemini", "ollama"):
            p["id"] = "*"
    assert got == _carried({**ANSWER, "id": "r1"}, fid)


def test_replay_events_of_a_plain_answer() -> None:
    evs = events_from_response(resp())
    assert [e["type"] for e in evs] == ["start", "text", "usage", "finish"]
    assert evs[-1] == {"type": "finish", "stop_reason": "stop"}


def test_assembler_rebuilds_the_answer_and_refuses_partial_streams() -> None:
    whole = ResponseAssembler()
    for ev in events_from_response(ANSWER):
        whole.push(ev)
    assert whole.response() == ANSWER
    split = ResponseAssembler()
    for ev in [{"type": "start", "id": "x"}, {"type": "text", "text": "Par"}, {"type": "text", "text": "is."},
               {"type": "tool_start", "index": 0, "id": "c", "name": "f"}, {"type": "tool_args", "index": 0, "delta": '{"a"'},
               {"type": "tool_args", "index": 0, "delta": ":1}"}]:
        split.push(ev)
    assert split.response() is None  # no finish yet: a partial stream
    split.push({"type": "finish", "stop_reason": "stop"})
    got = split.response()
    assert got is not None and got["stop_reason"] == "tool_calls"
    assert got["content"] == [{"type": "text", "text": "Paris."}, {"type": "tool_call", "id": "c", "name": "f", "arguments": '{"a":1}'}]
    failed = ResponseAssembler()
    for ev in [{"type": "text", "text": "x"}, {"type": "error", "kind": "server", "message": "boom"}, {"type": "finish"}]:
        failed.push(ev)
    assert failed.response() is None


# ------------------------------------------------------------------ semantic tier


def test_semantic_index_finds_near_questions_in_scope_only() -> None:
    clock = Clock()
    idx = SemanticIndex(max_entries=3, ttl_s=60, clock=clock)
    q = embedding("What is the capital of France?", 64)
    idx.add("s1", q, "k1", model=MODEL)
    near = [x + 0.01 for x in q]
    assert idx.find("s1", near, 0.95) == "k1"
    assert idx.find("s2", q, 0.5) is None
    assert idx.find("s1", embedding("Something else entirely", 64), 0.95) is None
    assert idx.find("s1", [0.0] * 64, 0.1) is None
    clock.t += 61
    assert idx.find("s1", q, 0.95) is None and len(idx) == 0


def test_semantic_index_is_bounded_and_clears_by_model() -> None:
    idx = SemanticIndex(max_entries=2)
    for i in range(3):
        idx.add("s", embedding(f"q{i}", 16), f"k{i}", model="a" if i else "b")
    assert len(idx) == 2 and idx.find("s", embedding("q0", 16), 0.99) is None
    assert idx.clear("a") == 2 and len(idx) == 0


def test_semantic_scope_fixes_everything_but_the_last_question() -> None:
    a = semantic_scope(req("capital of France?"), MODEL, "team-a")
    assert a == semantic_scope(req("France's capital city?"), MODEL, "team-a")
    assert a != semantic_scope(req("capital of France?"), MODEL, "team-b")
    assert a != semantic_scope(req("capital of France?", system="Be verbose."), MODEL, "team-a")
    assert last_user_text(req("hello")) == "hello"
    assert last_user_text({"messages": [{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]}) is None


# ------------------------------------------------------------------ wire entries (fast path)

_MAYBE_TEXT = st.one_of(st.none(), st.just(""), st.text(max_size=5))
_TOOL_CALLS = st.one_of(st.none(), st.just([]), st.lists(st.fixed_dictionaries(
    {"id": st.just("call_1"), "type": st.just("function"), "function": st.fixed_dictionaries({"name": st.just("f"), "arguments": st.just("{}")})}),
    min_size=1, max_size=2))


@settings(max_examples=150, deadline=None)
@given(content=_MAYBE_TEXT, reasoning=_MAYBE_TEXT, tool_calls=_TOOL_CALLS, tools_ok=st.booleans(),
       finish=st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
def test_probe_agrees_with_the_decoded_answer(content: Any, reasoning: Any, tool_calls: Any, tools_ok: bool, finish: str) -> None:
    """openai-chat's probe: storable_probe(wire) == storable(decode(wire)), so a fast-path answer
    stored undecoded is exactly one the canonical check would have stored."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    wire = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    rules = CacheRules(cache_tool_calls=tools_ok)
    fmt = FORMATS["openai-chat"]
    assert storable_probe(fmt.response_probe(wire), rules) == storable(fmt.decode_response(wire), rules)


def test_wire_entry_round_trip() -> None:
    fmt = FORMATS["openai-chat"]
    raw = orjson.dumps({"id": "chatcmpl-9", "model": "gpt-4.1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                                                                        "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    entry = orjson.loads(wire_entry(raw, "openai-chat", "openai/gpt-4.1"))
    got = from_entry(entry, lambda fid, body: FORMATS[fid].decode_response(body))
    assert got == {**fmt.decode_response(orjson.loads(raw)), "served_by": "openai/gpt-4.1"}
    assert from_entry(entry, lambda fid, body: None) is None  # its format is gone after a reload
    assert from_entry(resp(), lambda fid, body: pytest.fail("a canonical entry is not decoded")) == resp()


_BLOCK = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.sampled_from(["", "Paris."])}),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": st.sampled_from(["", "hmm"]), "signature": st.just("sig")}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": st.just("toolu_1"), "name": st.just("f"), "input": st.just({})}),
    st.fixed_dictionaries({"type": st.sampled_from(["image", "document"]),
                           "source": st.fixed_dictionaries({"type": st.sampled_from(["base64", "url", "text", "file", "other"])})}),
    st.fixed_dictionaries({"type": st.sampled_from(["redacted_thinking", "server_tool_use"])}),
)


@settings(max_examples=150, deadline=None)
@given(blocks=st.lists(_BLOCK, max_size=3), tools_ok=st.booleans(),
       stop=st.sampled_from(["end_turn", "max_tokens", "tool_use", "refusal", "pause_turn"]))
def test_anthropic_probe_agrees_with_the_decoded_answer(blocks: list[dict[str, Any]], tools_ok: bool, stop: str) -> None:
    wire = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": blocks,
            "stop_reason": stop, "usage": {"input_tokens": 3, "output_tokens": 2}}
    rules = CacheRules(cache_tool_calls=tools_ok)
    fmt = FORMATS["anthropic-messages"]
    assert storable_probe(fmt.response_probe(wire), rules) == storable(fmt.decode_response(wire), rules)
    assert clean_usage(fmt.response_usage(wire)) == fmt.decode_response(wire)["usage"]  # the fast path's usage read


@settings(max_examples=150, deadline=None)
@given(content=_MAYBE_TEXT, thinking=_MAYBE_TEXT, tool_calls=st.one_of(st.none(), st.just([]), st.lists(
    st.fixed_dictionaries({"function": st.fixed_dictionaries({"name": st.just("f"), "arguments": st.just({})})}), min_size=1, max_size=2)),
    tools_ok=st.booleans(), done=st.sampled_from(["stop", "length", "load"]))
def test_ollama_probe_agrees_with_the_decoded_answer(content: Any, thinking: Any, tool_calls: Any, tools_ok: bool, done: str) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking is not None:
        message["thinking"] = thinking
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    wire = {"model": "llama3.2", "created_at": "2026-11-29T00:00:00Z", "message": message, "done": True, "done_reason": done,
            "prompt_eval_count": 4, "eval_count": 2}
    rules = CacheRules(cache_tool_calls=tools_ok)
    fmt = FORMATS["ollama"]
    assert storable_probe(fmt.response_probe(wire), rules) == storable(fmt.decode_response(wire), rules)
    assert clean_usage(fmt.response_usage(wire)) == fmt.decode_response(wire)["usage"]


@settings(max_examples=60, deadline=None)
@given(counts=st.fixed_dictionaries({}, optional={k: st.integers(0, 500) for k in (
    "promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "cachedContentTokenCount", "toolUsePromptTokenCount")}))
def test_gemini_usage_node_reads_what_the_decode_reads(counts: dict[str, int]) -> None:
    """The same-format fast path reads Gemini usage through response.usage, without a decode."""
    wire = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Paris."}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": counts, "modelVersion": "gemini-2.5-flash", "responseId": "r1"}
    fmt = FORMATS["gemini"]
    assert fmt.resp_usage is not None
    assert clean_usage(fmt.response_usage(wire)) == fmt.decode_response(wire)["usage"]


_GEMINI_PART = st.fixed_dictionaries({}, optional={
    "text": st.sampled_from(["", "Paris."]),
    "thought": st.booleans(),
    "thoughtSignature": st.sampled_from(["c2ln", "skip_thought_signature_validator"]),
    "functionCall": st.sampled_from([{}, {"name": "f", "args": {}}]),
    "inlineData": st.sampled_from([{}, {"mimeType": "image/png", "data": "aGk="}]),
    "fileData": st.sampled_from([{}, {"mimeType": "application/pdf", "fileUri": "gs://b/f.pdf"}]),
})


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(_GEMINI_PART, max_size=3), tools_ok=st.booleans(),
       finish=st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", None]))
def test_gemini_probe_agrees_with_the_decoded_answer(parts: list[dict[str, Any]], tools_ok: bool, finish: str | None) -> None:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    wire = {"candidates": [candidate], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}, "modelVersion": "gemini-2.5-flash"}
    rules = CacheRules(cache_tool_calls=tools_ok)
    fmt = FORMATS["gemini"]
    assert storable_probe(fmt.response_probe(wire), rules) == storable(fmt.decode_response(wire), rules)
