"""The mapping language: each node kind, helpers, and compile-time errors."""

from __future__ import annotations

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.expr import HELPERS, ExprError, compile_node, helper_names_used

_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from(["", "x"]))
_DOCS = st.dictionaries(
    st.sampled_from(["a", "b", "a-b"]),
    st.recursive(_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)), max_leaves=10),
    max_size=3,
)


def run(spec, **ctx):  # type: ignore[no-untyped-def]
    return compile_node(spec)(ctx)


def test_paths_jmespath_and_jinja() -> None:
    assert run("a.b", a={"b": 1}) == 1
    assert run("a.b.c", a={"b": None}) is None
    assert run("a[?x > `1`].x", a=[{"x": 1}, {"x": 2}]) == [2]
    assert run("= a + 1", a=2) == 3
    assert run("= 'msg_' ~ id", id="7") == "msg_7"


def test_objects_drop_nulls_lists_drop_nulls() -> None:
    assert run({"a": "x", "b": "missing", "c": [1, "missing"]}, x=0) == {"a": 0, "c": [1]}


def test_directives() -> None:
    assert run({"$const": {"a": "b"}}) == {"a": "b"}
    assert run({"$each": "xs", "$as": "x", "$do": {"v": "x"}}, xs=[1, 2]) == [{"v": 1}, {"v": 2}]
    assert run({"$each": "xs", "$flat": True, "$do": ["it", "it"]}, xs=[1, 2]) == [1, 1, 2, 2]
    assert run({"$each": "xs", "$nonempty": True}, xs=[]) is None
    assert run({"$if": "f", "$then": {"$const": "y"}, "$else": {"$const": "n"}}, f=0) == "y"  # 0 is truthy in JMESPath
    assert run({"$if": "f", "$then": {"$const": "y"}, "$else": {"$const": "n"}}, f="") == "n"
    assert run({"$switch": "t", "$cases": {"a": {"$const": 1}}, "$default": {"$const": 2}}, t="b") == 2
    assert run({"$map": "r", "$table": {"end_turn": "stop"}}, r="end_turn") == "stop"
    assert run({"$map": "r", "$table": {"end_turn": "stop"}}, r="other") == "other"
    assert run({"$map": "r", "$table": {"a": "b"}, "$default": "z"}, r="q") == "z"
    assert run({"$merge": [{"a": "x"}, {"b": "y"}]}, x=1, y=2) == {"a": 1, "b": 2}
    assert run({"$first": ["a", "b"]}, b=3) == 3
    assert run({"$concat": ["xs", "y", "missing"]}, xs=[1], y=2) == [1, 2]
    assert run({"$let": {"d": "a.b"}, "$in": "d.c"}, a={"b": {"c": 5}}) == 5


def test_const_results_are_fresh_copies() -> None:
    fn = compile_node({"$const": {"a": []}})
    fn({})["a"].append(1)
    assert fn({}) == {"a": []}


def test_helpers() -> None:
    assert run("from_json(s)", s='{"a": 1}') == {"a": 1}
    assert run("to_json(o)", o={"a": 1}) == '{"a":1}'
    assert run("data_url(u)", u="data:image/png;base64,AAA=") == {"media_type": "image/png", "data": "AAA="}
    assert run("data_url(u)", u="https://x/y.png") is None
    assert run("coalesce_roles(m)", m=[{"role": "user", "content": [1]}, {"role": "user", "content": [2]}]) == [{"role": "user", "content": [1, 2]}]
    assert run("= x | from_json", x="[1]") == [1]
    with pytest.raises(ExprError, match="not valid JSON"):
        run("from_json(s)", s="{bad")


def test_compile_errors_name_the_place() -> None:
    with pytest.raises(ExprError, match=r"req\.x: invalid JMESPath"):
        compile_node({"x": "a[?"}, "req")
    with pytest.raises(ExprError, match="invalid Jinja"):
        compile_node("= a +", "n")
    with pytest.raises(ExprError, match="unknown directive"):
        compile_node({"$eachh": "x"}, "n")


def test_jinja_is_sandboxed_and_strict() -> None:
    with pytest.raises(ExprError):
        run("= x.__class__.__mro__", x=1)
    with pytest.raises(ExprError):
        run("= missing + 1")


def test_helper_count_stays_small() -> None:
    from engine.compile import BUILTIN_SPECS

    used: dict[str, int] = dict.fromkeys(HELPERS, 0)
    import yaml

    for f in (BUILTIN_SPECS / "formats").glob("*.yaml"):
        for name in helper_names_used(yaml.safe_load(f.read_text())):
            used[name] += 1
    print(f"\n{len(HELPERS)} helpers; format specs using each: {used}")
    assert len(HELPERS) <= 10, "the escape hatch is growing: express it in the spec language instead"


@pytest.mark.parametrize("expr", ["a[0]", "a[-1].b", "a.b[2].c", "a[1][0]", "a.b[-2]", '"a-b".c[0]'])
@settings(max_examples=60, deadline=None)
@given(doc=_DOCS)
def test_inlined_paths_agree_with_jmespath(expr: str, doc: dict[str, object]) -> None:
    """Paths of fields and indexes are generated inline inside objects; JMESPath is the reference."""
    want = jmespath.search(expr, doc)
    got = compile_node({"x": expr})(doc)
    assert got == ({"x": want} if want is not None else {})
