"""JMESPath compiled to Python closures.

jmespath.py interprets its AST with a visitor (a method lookup and several calls per node), which
costs more than the whole rest of a translation. Format specs evaluate a few hundred expressions
per request, so we compile each parsed AST once into nested closures. Semantics follow the
JMESPath spec; anything unusual (expression references for `sort_by`/`map`, ...) falls back to
the reference interpreter, and a differential test holds the two equal.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jmespath
import jmespath.exceptions
from jmespath import functions as jfunctions

Fn = Callable[[Any], Any]


class Unsupported(Exception):
    pass


def truthy(v: Any) -> bool:
    return not (v is None or v is False or v == "" or v == [] or v == {})


def _eq(a: Any, b: Any) -> bool:
    # JMESPath equality is JSON equality: true is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


_ORDER = {
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
}


def compile_jmespath(text: str, functions: jfunctions.Functions, options: jmespath.Options) -> Fn:
    parsed = jmespath.compile(text)
    try:
        return _compile(parsed.parsed, functions)
    except Unsupported:
        return lambda data: parsed.search(data, options)


def _compile(node: dict[str, Any], fns: jfunctions.Functions) -> Fn:
    t = node["type"]
    ch = node.get("children", [])
    if t == "field":
        key = node["value"]
        return lambda d: d.get(key) if isinstance(d, dict) else None
    if t in ("current", "identity"):
        return lambda d: d
    if t == "literal":
        value = node["value"]
        return lambda d: value
    if t == "subexpression" or t == "index_expression" or t == "pipe":
        path = _path(node)
        if path is not None:
            return _walker(path)
        steps = [_compile(c, fns) for c in ch]  # the parser makes subexpressions n-ary
        if len(steps) == 2:
            left, right = steps
            return lambda d: right(left(d))

        def chain(d: Any) -> Any:
            for step in steps:
                d = step(d)
            return d

        return chain
    if t == "index":
        i = node["value"]

        def index(d: Any) -> Any:
            if not isinstance(d, list):
                return None
            try:
                return d[i]
            except IndexError:
                return None

        return index
    if t == "slice":
        start, stop, step = ch
        if step == 0:
            raise Unsupported
        s = slice(start, stop, step)
        return lambda d: d[s] if isinstance(d, list) else None
    if t == "flatten":
        inner = _compile(ch[0], fns)

        def flatten(d: Any) -> Any:
            v = inner(d)
            if not isinstance(v, list):
                return None
            out: list[Any] = []
            for x in v:
                if isinstance(x, list):
                    out.extend(x)
                else:
                    out.append(x)
            return out

        return flatten
    if t == "projection" or t == "value_projection":
        left, right = _compile(ch[0], fns), _compile(ch[1], fns)
        values = t == "value_projection"

        def project(d: Any) -> Any:
            base = left(d)
            if values:
                if not isinstance(base, dict):
                    return None
                base = list(base.values())
            elif not isinstance(base, list):
                return None
            out = []
            for x in base:
                v = right(x)
                if v is not None:
                    out.append(v)
            return out

        return project
    if t == "filter_projection":
        left, right, cond = _compile(ch[0], fns), _compile(ch[1], fns), _compile(ch[2], fns)

        def filt(d: Any) -> Any:
            base = left(d)
            if not isinstance(base, list):
                return None
            out = []
            for x in base:
                if truthy(cond(x)):
                    v = right(x)
                    if v is not None:
                        out.append(v)
            return out

        return filt
    if t == "comparator":
        name = node["value"]
        a, b = _compile(ch[0], fns), _compile(ch[1], fns)
        text = next((c["value"] for c in ch if c["type"] == "literal" and isinstance(c["value"], str)), None)
        if name in ("eq", "ne") and text is not None:
            # Against a string, JSON equality is Python's (no true == 1 to guard): one call, not four.
            other = b if ch[0]["type"] == "literal" and ch[0]["value"] == text else a
            if name == "eq":
                return lambda d: other(d) == text
            return lambda d: other(d) != text
        if name == "eq":
            return lambda d: _eq(a(d), b(d))
        if name == "ne":
            return lambda d: not _eq(a(d), b(d))
        op = _ORDER[name]

        def order(d: Any) -> Any:
            x, y = a(d), b(d)
            return op(x, y) if _num(x) and _num(y) else None

        return order
    if t == "and_expression":
        a, b = _compile(ch[0], fns), _compile(ch[1], fns)

        def and_(d: Any) -> Any:
            x = a(d)
            return b(d) if truthy(x) else x

        return and_
    if t == "or_expression":
        a, b = _compile(ch[0], fns), _compile(ch[1], fns)

        def or_(d: Any) -> Any:
            x = a(d)
            return x if truthy(x) else b(d)

        return or_
    if t == "not_expression":
        a = _compile(ch[0], fns)
        return lambda d: not truthy(a(d))
    if t == "multi_select_list":
        items = [_compile(c, fns) for c in ch]
        return lambda d: None if d is None else [f(d) for f in items]
    if t == "multi_select_hash":
        pairs = [(c["value"], _compile(c["children"][0], fns)) for c in ch]
        return lambda d: None if d is None else {k: f(d) for k, f in pairs}
    if t == "function_expression":
        if node["value"] == "map" and len(ch) == 2 and ch[0]["type"] == "expref":
            each, over = _compile(ch[0]["children"][0], fns), _compile(ch[1], fns)

            def map_(d: Any) -> Any:
                items = over(d)
                if not isinstance(items, list):
                    raise jmespath.exceptions.JMESPathTypeError("map", items, type(items).__name__, ["array"])
                return [each(x) for x in items]

            return map_
        if any(c["type"] == "expref" for c in ch):
            raise Unsupported
        name = node["value"]
        args = [_compile(c, fns) for c in ch]
        call = fns.call_function
        direct = _direct(fns, name, len(args))
        if direct is None:
            return lambda d: call(name, [f(d) for f in args])
        fn, checks = direct

        def call_checked(d: Any) -> Any:
            values = [f(d) for f in args]
            for v, ok in zip(values, checks, strict=True):
                if not ok(v):  # jmespath's own check raises the exact error
                    return call(name, values)
            return fn(*values)

        return call_checked
    raise Unsupported


def path_of(text: str) -> list[str | int] | None:
    """The steps of `text` when it is a plain path of fields and indexes, else None."""
    try:
        return _path(jmespath.compile(text).parsed)
    except jmespath.exceptions.JMESPathError:
        return None


def _path(node: dict[str, Any]) -> list[str | int] | None:
    """`choices[0].delta.content` as ["choices", 0, "delta", "content"]; None unless every step is
    a field or an index (projections and functions change what the next step applies to)."""
    t = node["type"]
    if t == "field":
        return [node["value"]]
    if t == "index":
        return [node["value"]]
    if t == "subexpression" or t == "index_expression":
        out: list[str | int] = []
        for c in node["children"]:
            p = _path(c)
            if p is None:
                return None
            out += p
        return out
    return None


def _walker(path: list[str | int]) -> Fn:
    """One loop for a whole path: stream events are decoded through dozens of these per chunk,
    and a closure per step cost more than the lookups."""

    def walk(d: Any) -> Any:
        for key in path:
            if isinstance(key, str):
                if not isinstance(d, dict):
                    return None
                d = d.get(key)
            else:
                if not isinstance(d, list):
                    return None
                try:
                    d = d[key]
                except IndexError:
                    return None
        return d

    walk.cannot_fail = True  # type: ignore[attr-defined]
    return walk


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "boolean": (bool,), "array": (list,), "object": (dict,),
    "null": (type(None),),
}


def _arg_check(types: list[str]) -> Callable[[Any], bool] | None:
    """An exact-type test for one argument of a jmespath signature ([] means any type)."""
    if not types:
        return lambda v: True
    plain: set[type] = set()
    elements: set[type] = set()
    for t in types:
        if t in _PY_TYPES:
            plain.update(_PY_TYPES[t])
        elif t.startswith("array-") and t[6:] in _PY_TYPES:
            elements.update(_PY_TYPES[t[6:]])
        else:
            return None
    if not elements:
        return lambda v: type(v) in plain
    return lambda v: type(v) in plain or (type(v) is list and all(type(x) in elements for x in v))


def _direct(fns: jfunctions.Functions, name: str, arity: int) -> tuple[Callable[..., Any], list[Callable[[Any], bool]]] | None:
    """The function and a type test per argument, when each test is an exact-type check: jmespath
    validates every call through several generic layers, which cost more than most functions
    themselves. Expression references and variadics keep the generic path."""
    entry = fns.FUNCTION_TABLE.get(name)
    if entry is None:
        return None
    sig = entry["signature"]
    if len(sig) != arity or any(a.get("variadic") for a in sig):
        return None
    checks = []
    for arg in sig:
        check = _arg_check(arg["types"])
        if check is None:
            return None
        checks.append(check)
    return functools.partial(entry["function"], fns), checks
