"""Framing parsers: events come out whole however the bytes are split."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.stream import JSONArrayParser, NDJSONParser, SSEParser, Writer

SSE = b'event: a\ndata: {"x":1}\n\n: comment\ndata: {"y":\ndata: 2}\r\n\r\ndata: [DONE]\n\n'


def feed_split(parser, raw: bytes, cuts: list[int]):  # type: ignore[no-untyped-def]
    out, last = [], 0
    for c in sorted(set(cuts)):
        out += list(parser.feed(raw[last:c]))
        last = c
    out += list(parser.feed(raw[last:]))
    return out + list(parser.close())


@settings(max_examples=100)
@given(st.lists(st.integers(0, len(SSE)), max_size=6))
def test_sse_any_split(cuts: list[int]) -> None:
    assert feed_split(SSEParser(), SSE, cuts) == [("a", '{"x":1}'), (None, '{"y":\n2}'), (None, "[DONE]")]


@settings(max_examples=100)
@given(st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=3), max_size=4), st.lists(st.integers(0, 400), max_size=5))
def test_json_array_and_ndjson_round_trip(items: list[dict[str, str]], cuts: list[int]) -> None:
    w = Writer("json-array")
    raw = b"".join(w.write(i) for i in items) + w.end()
    assert orjson.loads(raw) == items
    got = [orjson.loads(d) for _, d in feed_split(JSONArrayParser(), raw, [c for c in cuts if c <= len(raw)])]
    assert got == items
    nd = b"".join(Writer("ndjson").write(i) for i in items)
    assert [orjson.loads(d) for _, d in feed_split(NDJSONParser(), nd, [c for c in cuts if c <= len(nd)])] == items


def test_writer_sse_event_field_and_done() -> None:
    w = Writer("sse", event_field="type", done="[DONE]")
    assert w.write({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert w.end() == b"data: [DONE]\n\n"
