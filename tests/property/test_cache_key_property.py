"""The cache key is stable under reordering of JSON object keys, and differs when any answer-changing
field (ANSWER_FIELDS), the resolved model or the scope differs; transport fields never matter."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.cache import ANSWER_FIELDS, cache_key

# JSON values as a decoder produces them (ints within float precision: 0 and 0.0 are one temperature)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=8)
non_empty = json_values.filter(lambda v: v is not None and v != "" and v != [])
parts = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=20)),
    st.builds(lambda i, n, a: {"type": "tool_call", "id": i, "name": n, "arguments": a}, st.text(max_size=6),
              st.text(max_size=6), st.text(max_size=12)),
    st.builds(lambda t, s: {"type": "thinking", "text": t, "signature": s}, st.text(max_size=10), st.text(max_size=6)),
)
messages = st.lists(st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["user", "assistant", "tool"]),
                              st.lists(parts, min_size=1, max_size=3)), min_size=1, max_size=4)
requests = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=8), "messages": messages},
    optional={
        "system": st.text(max_size=20),
        "tools": st.lists(st.fixed_dictionaries({"name": st.text(max_size=6), "parameters": json_values}), max_size=2),
        "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]),
                                 st.builds(lambda n: {"name": n}, st.text(max_size=6))),
        "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "top_k": st.integers(1, 100),
        "max_tokens": st.integers(1, 100_000), "stop": st.lists(st.text(max_size=4), max_size=3),
        "seed": st.integers(0, 2**31), "n": st.integers(1, 4),
        "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema"])},
                                                 optional={"schema": json_values}),
        "reasoning": st.fixed_dictionaries({}, optional={"effort": st.sampled_from(["low", "medium", "high"]),
                                                         "budget_tokens": st.integers(0, 10_000)}),
        "parallel_tool_calls": st.booleans(),
        "stream": st.booleans(), "include_usage": st.booleans(), "user": st.text(max_size=6),
        "metadata": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
    },
)
scopes = st.one_of(st.none(), st.text(min_size=1, max_size=8))


def reorder(value: Any, rnd: random.Random) -> Any:
    """The same JSON with every object's keys in a shuffled order."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: reorder(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [reorder(v, rnd) for v in value]
    return value


@settings(max_examples=100, deadline=None)
@given(requests, scopes, st.randoms(use_true_random=False))
def test_key_is_stable_under_key_reordering(req: dict[str, Any], scope: str | None, rnd: random.Random) -> None:
    assert cache_key(reorder(req, rnd), "openai/gpt-4.1", scope) == cache_key(req, "openai/gpt-4.1", scope)


@settings(max_examples=100, deadline=None)
@given(requests, scopes, st.sampled_from(ANSWER_FIELDS), non_empty)
def test_key_differs_when_an_answer_field_differs(req: dict[str, Any], scope: str | None, field: str, value: Any) -> None:
    assume(req.get(field) != value)
    changed = {**req, field: value}
    assert cache_key(changed, "m", scope) != cache_key(req, "m", scope)


@settings(max_examples=40, deadline=None)
@given(requests, scopes, scopes, st.text(max_size=8), st.text(max_size=8))
def test_key_differs_by_scope_and_model(req: dict[str, Any], a: str | None, b: str | None, m1: str, m2: str) -> None:
    assume((a or "") != (b or "") or m1 != m2)
    assert cache_key(req, m1, a) != cache_key(req, m2, b)


@settings(max_examples=40, deadline=None)
@given(requests, st.booleans(), st.booleans(), st.text(max_size=6), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
def test_transport_fields_never_change_the_key(req: dict[str, Any], stream: bool, usage: bool, user: str,
                                               metadata: dict[str, int]) -> None:
    other = {**req, "stream": stream, "include_usage": usage, "user": user, "metadata": metadata, "model": "alias"}
    assert cache_key(other, "m", "k") == cache_key(req, "m", "k")
