"""JMESPath compiled to Python statements inside a node's generated function (see expr._Gen).

jmes.py compiles an expression to nested closures: a call per AST node, and format specs filter
messages (`src.messages[?role=='system']`), test types (`type(m.content) == 'string'`) and call
helpers on every request. Here the same AST becomes straight-line statements in the function the
node tree already compiles to: filters are loops, comparisons and boolean operators are inline,
functions are called directly after an exact-type test. Field lookups on the context (the first
step of every expression) read locals the generator bound for `src`, `m`, `p`...: no dict lookup.

Semantics are JMESPath's: truthiness treats 0 as true and empty containers as false, equality is
JSON equality (true is not 1), ordering compares numbers only, a projection drops nulls, `map`
keeps them. Node kinds this module does not cover raise Unsupported and the caller keeps the
closure; tests/unit/test_jmes.py holds both compilers equal to the reference interpreter.

Public surface: JmesSource, Unsupported.
"""

from __future__ import annotations

from typing import Any, Protocol

import jmespath
import jmespath.exceptions
import orjson

from .jmes import _PY_TYPES, Unsupported, _arg_check, _direct, _eq

_ORDER = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_TYPE_NAMES = {str: "string", bool: "boolean", int: "number", float: "number", list: "array", dict: "object", type(None): "null"}


class Gen(Protocol):
    """What this module needs from expr._Gen."""

    booleans: set[str]  # names holding True, False or None only

    def emit(self, indent: int, line: str) -> None: ...
    def local(self) -> str: ...
    def const(self, value: Any) -> str: ...
    def lookup(self, ctx: str, name: str) -> str: ...
    def truthy(self, name: str) -> str: ...


def _map_error(items: Any) -> Exception:
    return jmespath.exceptions.JMESPathTypeError("map", items, type(items).__name__, ["array"])


class JmesSource:
    """Emits one parsed expression (`jmespath.compile(text).parsed`) evaluated on context `ctx`.
    `value(...)` returns the name holding the result; `may_raise` tells whether any emitted step
    can raise (a function call), so the caller wraps it in try/except only then."""

    def __init__(self, gen: Gen, functions: Any) -> None:
        self.g = gen
        self.fns = functions
        self.may_raise = False

    def value(self, node: dict[str, Any], ctx: str, ind: int) -> str:
        return self._x(node, ctx, True, ind)

    # ------------------------------------------------------------ node kinds

    def _x(self, n: dict[str, Any], cur: str, root: bool, ind: int) -> str:
        """Emit `n` applied to the value named `cur` (the context dict itself when `root`)."""
        g = self.g
        t = n["type"]
        ch = n.get("children", [])
        if t == "field":
            if root:
                return g.lookup(cur, n["value"])
            v = g.local()
            g.emit(ind, f"{v} = {cur}.get({n['value']!r}) if isinstance({cur}, dict) else None")
            return v
        if t in ("current", "identity"):
            if root:  # the context itself: a snapshot, since $each rebinds it in place
                v = g.local()
                g.emit(ind, f"{v} = dict({cur})")
                return v
            return cur
        if t == "literal":
            value = n["value"]
            if isinstance(value, dict | list):  # a fresh copy: callers may mutate results
                v = g.local()
                g.emit(ind, f"{v} = _loads({g.const(orjson.dumps(value))})")
                return v
            return g.const(value)
        if t in ("subexpression", "index_expression", "pipe"):
            for c in ch:
                cur = self._x(c, cur, root, ind)
                root = False
            return cur
        if t == "index":
            i = n["value"]
            bound = f"len({cur}) > {i}" if i >= 0 else f"len({cur}) >= {-i}"
            v = g.local()
            g.emit(ind, f"{v} = {cur}[{i}] if isinstance({cur}, list) and {bound} else None")
            return v
        if t in ("projection", "value_projection", "filter_projection"):
            return self._projection(t, ch, cur, root, ind)
        if t == "flatten":
            base = self._x(ch[0], cur, root, ind)
            v, item = g.local(), g.local()
            g.emit(ind, f"{v} = None")
            g.emit(ind, f"if isinstance({base}, list):")
            g.emit(ind + 1, f"{v} = []")
            g.emit(ind + 1, f"for {item} in {base}:")
            g.emit(ind + 2, f"if isinstance({item}, list): {v}.extend({item})")
            g.emit(ind + 2, f"else: {v}.append({item})")
            return v
        if t == "comparator":
            return self._comparator(n["value"], ch, cur, root, ind)
        if t in ("and_expression", "or_expression"):
            a = self._x(ch[0], cur, root, ind)
            v = g.local()
            g.emit(ind, f"{v} = {a}")
            test = g.truthy(a)
            g.emit(ind, f"if {test}:" if t == "and_expression" else f"if not {test}:")
            b = self._x(ch[1], cur, root, ind + 1)
            g.emit(ind + 1, f"{v} = {b}")
            if a in g.booleans and b in g.booleans:
                g.booleans.add(v)
            return v
        if t == "not_expression":
            a = self._x(ch[0], cur, root, ind)
            v = g.local()
            g.emit(ind, f"{v} = not {g.truthy(a)}")
            g.booleans.add(v)
            return v
        if t in ("multi_select_list", "multi_select_hash"):
            v = g.local()
            g.emit(ind, f"{v} = None")
            g.emit(ind, f"if {cur} is not None:")
            if t == "multi_select_list":
                items = [self._x(c, cur, root, ind + 1) for c in ch]
                g.emit(ind + 1, f"{v} = [{', '.join(items)}]")
            else:
                pairs = [(c["value"], self._x(c["children"][0], cur, root, ind + 1)) for c in ch]
                g.emit(ind + 1, f"{v} = {{{', '.join(f'{k!r}: {x}' for k, x in pairs)}}}")
            return v
        if t == "function_expression":
            return self._function(n["value"], ch, cur, root, ind)
        raise Unsupported(t)

    def _projection(self, t: str, ch: list[dict[str, Any]], cur: str, root: bool, ind: int) -> str:
        g = self.g
        base = self._x(ch[0], cur, root, ind)
        v, item = g.local(), g.local()
        g.emit(ind, f"{v} = None")
        if t == "value_projection":
            g.emit(ind, f"if isinstance({base}, dict):")
            source = f"{base}.values()"
        else:
            g.emit(ind, f"if isinstance({base}, list):")
            source = base
        g.emit(ind + 1, f"{v} = []")
        g.emit(ind + 1, f"for {item} in {source}:")
        body = ind + 2
        if t == "filter_projection":
            cond = self._x(ch[2], item, False, body)
            g.emit(body, f"if {g.truthy(cond)}:")
            body += 1
        r = self._x(ch[1], item, False, body)
        g.emit(body, f"if {r} is not None: {v}.append({r})")
        return v

    def _comparator(self, name: str, ch: list[dict[str, Any]], cur: str, root: bool, ind: int) -> str:
        g = self.g
        a = self._x(ch[0], cur, root, ind)
        b = self._x(ch[1], cur, root, ind)
        v = g.local()
        g.booleans.add(v)
        if name in ("eq", "ne"):
            text = any(c["type"] == "literal" and isinstance(c["value"], str) for c in ch)
            # Against a string, JSON equality is Python's: no true == 1 to guard.
            test = f"{a} == {b}" if text else f"{g.const(_eq)}({a}, {b})"
            g.emit(ind, f"{v} = {test}" if name == "eq" else f"{v} = not ({test})")
            return v
        nums = g.const((int, float))  # exact types: a bool is not a number here
        g.emit(ind, f"{v} = ({a} {_ORDER[name]} {b}) if type({a}) in {nums} and type({b}) in {nums} else None")
        return v

    def _function(self, name: str, ch: list[dict[str, Any]], cur: str, root: bool, ind: int) -> str:
        g = self.g
        if name == "map" and len(ch) == 2 and ch[0]["type"] == "expref":
            items = self._x(ch[1], cur, root, ind)
            v, item = g.local(), g.local()
            self.may_raise = True
            g.emit(ind, f"if not isinstance({items}, list): raise {g.const(_map_error)}({items})")
            g.emit(ind, f"{v} = []")
            g.emit(ind, f"for {item} in {items}:")
            r = self._x(ch[0]["children"][0], item, False, ind + 1)
            g.emit(ind + 1, f"{v}.append({r})")
            return v
        if any(c["type"] == "expref" for c in ch):
            raise Unsupported(name)
        args = [self._x(c, cur, root, ind) for c in ch]
        v = g.local()
        if name == "type" and len(args) == 1:
            names = g.const(_TYPE_NAMES)
            g.emit(ind, f"{v} = {names}.get(type({args[0]}))")
            g.emit(ind, f"if {v} is None: {v} = {g.const(self.fns.call_function)}('type', [{args[0]}])")
            self.may_raise = True
            return v
        self.may_raise = True
        generic = f"{g.const(self.fns.call_function)}({name!r}, [{', '.join(args)}])"
        direct = _direct(self.fns, name, len(args))
        if direct is None:
            g.emit(ind, f"{v} = {generic}")
            return v
        fn, _ = direct
        checks = [self._check(types, a) for types, a in zip(self._signature(name), args, strict=True)]
        checks = [c for c in checks if c != "True"]
        call = f"{g.const(fn)}({', '.join(args)})"
        if not checks:
            g.emit(ind, f"{v} = {call}")
        else:  # jmespath's own validation raises the exact error on a wrong type
            g.emit(ind, f"{v} = {call} if {' and '.join(checks)} else {generic}")
        return v

    def _signature(self, name: str) -> list[list[str]]:
        return [a["types"] for a in self.fns.FUNCTION_TABLE[name]["signature"]]

    def _check(self, types: list[str], arg: str) -> str:
        """A condition that `arg` matches JMESPath type list `types` exactly."""
        if not types:
            return "True"
        if all(t in _PY_TYPES for t in types):
            allowed = tuple(dict.fromkeys(p for t in types for p in _PY_TYPES[t]))
            return f"type({arg}) in {self.g.const(allowed)}"
        check = _arg_check(types)
        if check is None:  # _direct returned a function, so every list is checkable
            raise Unsupported(str(types))
        return f"{self.g.const(check)}({arg})"


def parse(text: str) -> dict[str, Any]:
    """The AST of `text` (raises jmespath's ParseError)."""
    return jmespath.compile(text).parsed
