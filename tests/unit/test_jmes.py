"""The compiled JMESPath agrees with the reference interpreter (differential test)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.expr import _OPTIONS, ExprError, compile_node
from engine.jmes import compile_jmespath

EXPRESSIONS = [
    "a", "a.b", "a.b.c", "a[0]", "a[-1].b", "a[*].b", "a[].b", "a[?b == `1`].c", "a[?b > `1`]", "a[?b != 'x'].b",
    "a[?b && c]", "a || b", "a && b", "!a", "!(a.b)", "a.*", "a[1:3]", "a[::-1]", "[a, b]", "{x: a, y: b}",
    "length(a)", "join('-', a[*].b)", "type(a)", "to_string(a)", "a | [0]", "a[*].b | [0]", "missing.to_string(@)",
    "`1`", "'s'", "@", "a[?type == 'text'].text", "sum([a, b])", "a[0].b[0]", "map(&b, a)", "max_by(a, &b)",
    "a[?b == `true`]", "a[?b == `1`]", "contains(a, 'x')", "a[*][0]", "a[][]", "a.b[0].c", "a[0].b.c[0]",
    "length(a[?type=='x']) == `0`", "join('-', a)", "starts_with(a, 'x')", "not_null(a, b)", "abs(a)", "keys(a)",
]
leaves = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["x", "text", "", "1"]))
data = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "c", "type", "text"]), inner, max_size=4)),
    max_leaves=12,
)


def agrees_with_reference(run: Callable[[Any], Any], expr: str, doc: Any, error: type[Exception]) -> bool:
    """`run(doc)` equals jmespath's answer, or raises `error` where jmespath raises. True when the
    reference answered (so there was a value to compare)."""
    try:
        want = jmespath.search(expr, doc, _OPTIONS)
    except TypeError:  # the reference orders a string against a number in Python; the spec says null
        run(doc)
        return False
    except jmespath.exceptions.JMESPathError:
        with pytest.raises(error):
            run(doc)
        return False
    assert run(doc) == want
    return True


@pytest.mark.parametrize("expr", EXPRESSIONS)
@settings(max_examples=40, deadline=None)
@given(doc=data)
def test_same_answer_as_reference(expr: str, doc: object) -> None:
    agrees_with_reference(compile_jmespath(expr, _OPTIONS.custom_functions, _OPTIONS), expr, doc, jmespath.exceptions.JMESPathError)


@pytest.mark.parametrize("expr", EXPRESSIONS)
@settings(max_examples=40, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["a", "b", "c", "type", "text"]), data, max_size=4))
def test_generated_source_same_answer_as_reference(expr: str, doc: dict[str, object]) -> None:
    """The same expressions generated as Python source inside a node (engine/jmes_gen.py), at the
    top of a node and as a field of an object, where the context is read from bound locals."""
    top, nested = compile_node(expr), compile_node({"x": expr, "y": {"$each": "a", "$as": "a", "$do": expr}})
    if not agrees_with_reference(top, expr, doc, ExprError):
        return
    want = top(doc)
    items = doc.get("a")
    seq = [] if not items else items if isinstance(items, list) else [items]
    try:  # each item of `a` bound as `a` again: the inner scope wins
        each = [r for item in seq if (r := jmespath.search(expr, {**doc, "a": item}, _OPTIONS)) is not None]
    except (TypeError, jmespath.exceptions.JMESPathError):
        return
    assert nested(doc) == {k: v for k, v in {"x": want, "y": each}.items() if v is not None}
