"""The mapping language of format specs, compiled once into Python functions.

A *node* describes a value to build from a context (a dict of named variables such as `src`,
`meta`, `ev`, `st`):

    "src.messages"            a JMESPath expression, evaluated against the context
    "= x | tojson"            a Jinja expression (sandboxed, StrictUndefined)
    42, true, null            a constant
    [node, ...]               a list; nulls are dropped
    {key: node, ...}          an object; keys whose value is null are dropped
    {$const: value}           a literal value (use it for strings and objects taken as they are)
    {$each: expr, $as: name, $do: node, $flat: bool, $nonempty: bool}
                              map over a list; `$as` names the item (default `it`), `$flat`
                              splices list results; null results are dropped; `$nonempty`
                              gives null instead of an empty list (for fields that reject [])
    {$if: cond, $then: node, $else: node}
    {$switch: expr, $cases: {value: node}, $default: node}
    {$map: expr, $table: {from: to}, $default: value}
                              table lookup (stop reasons, roles); without $default a value
                              missing from the table passes through unchanged
    {$merge: [node, ...]}     merge objects, later wins
    {$first: [node, ...]}     the first non-null value
    {$concat: [node, ...]}    concatenate lists (a non-list value is appended, null skipped)
    {$let: {name: node}, $in: node}

Helpers (the escape hatch for what expressions cannot say) are registered in HELPERS and callable
from both languages: JMESPath `from_json(x)`, Jinja `x | from_json` or `from_json(x)`. The list is
deliberately short and counted by a test.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.functions
import orjson
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import jmes_gen
from .jmes import compile_jmespath, path_of

Ctx = dict[str, Any]
Node = Callable[[Ctx], Any]


class ExprError(Exception):
    """A node failed to compile (at load) or to evaluate (at request time)."""


# ---------------------------------------------------------------- helpers


def _from_json(s: Any) -> Any:
    if not isinstance(s, str):
        return s
    if not s.strip():
        return {}
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError as e:
        raise ExprError(f"tool arguments are not valid JSON: {e}") from None


def _to_json(x: Any) -> str:
    if isinstance(x, str):
        return x
    return orjson.dumps(x).decode()


_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[^,]*)?;base64,(.*)$", re.S)


def _data_url(url: Any) -> dict[str, str] | None:
    """`data:image/png;base64,XXX` -> {media_type, data}; anything else -> null."""
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    m = _DATA_URL.match(url)
    if not m:
        return None
    return {"media_type": m.group(1) or "application/octet-stream", "data": m.group(3)}


def _gen_id(prefix: Any = "") -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _now() -> int:
    return int(time.time())


def _coalesce_roles(messages: Any) -> list[Any]:
    """Merge adjacent messages of the same role (Anthropic and Gemini demand alternation)."""
    out: list[dict[str, Any]] = []
    for m in messages or []:
        if out and out[-1].get("role") == m.get("role") and isinstance(m.get("content"), list):
            prev = out[-1]
            if isinstance(prev.get("content"), list):
                prev["content"] = prev["content"] + m["content"]
                continue
        out.append(dict(m))
    return out


def _text_of(content: Any) -> str:
    """Plain text of a string or a list of canonical/wire parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return str(content)


def _b64_len(data: Any) -> int:
    return len(base64.b64decode(data or "", validate=False)) if isinstance(data, str) else 0


def _base64(value: Any, how: str) -> str | None:
    """`base64(text, 'encode')` -> base64 of its UTF-8; `base64(b64, 'decode')` -> the text (bytes
    that are not UTF-8 replaced). A plain-text document travels as text on some wires (Anthropic's
    text source) and as base64 on others."""
    if not isinstance(value, str):
        return None
    if how == "encode":
        return base64.b64encode(value.encode()).decode()
    if how == "decode":
        return base64.b64decode(value, validate=False).decode(errors="replace")
    raise ExprError(f"base64(): the second argument is 'encode' or 'decode', not {how!r}")


HELPERS: dict[str, tuple[Callable[..., Any], list[list[str]]]] = {}


def register_helper(name: str, fn: Callable[..., Any], *arg_types: list[str]) -> None:
    """Register `fn` for both languages; `arg_types` are JMESPath type lists, one per argument."""
    HELPERS[name] = (fn, list(arg_types))


register_helper("from_json", _from_json, ["string", "object", "array", "null"])
register_helper("to_json", _to_json, ["string", "object", "array", "number", "boolean", "null"])
register_helper("data_url", _data_url, ["string", "null"])
register_helper("gen_id", _gen_id, ["string"])
register_helper("now", _now)
register_helper("coalesce_roles", _coalesce_roles, ["array", "null"])
register_helper("text_of", _text_of, ["string", "array", "null", "object"])
register_helper("b64_len", _b64_len, ["string", "null"])
register_helper("base64", _base64, ["string", "null"], ["string"])


def _jmespath_options() -> jmespath.Options:
    attrs: dict[str, Any] = {}
    for name, (fn, types) in HELPERS.items():

        def method(self: Any, *args: Any, _fn: Callable[..., Any] = fn) -> Any:
            return _fn(*args)

        method.signature = [{"types": t} for t in types]  # type: ignore[attr-defined]
        attrs[f"_func_{name}"] = method
    functions_cls = type("OmniFunctions", (jmespath.functions.Functions,), attrs)
    return jmespath.Options(custom_functions=functions_cls(), dict_cls=dict)


_OPTIONS = _jmespath_options()
_JINJA = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
for _name, (_fn, _) in HELPERS.items():
    _JINJA.filters[_name] = _fn
    _JINJA.globals[_name] = _fn
_JINJA.filters["tojson"] = _to_json
_IDENT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_DIRECTIVES = {"$const", "$each", "$as", "$do", "$flat", "$if", "$then", "$else", "$switch", "$cases",
               "$default", "$map", "$table", "$merge", "$first", "$let", "$in", "$concat", "$nonempty"}


def helper_names_used(spec: Any) -> set[str]:
    """Helpers a spec document calls, found by scanning its expressions."""
    found: set[str] = set()
    if isinstance(spec, str):
        for name in HELPERS:
            if re.search(rf"\b{name}\b", spec):
                found.add(name)
    elif isinstance(spec, dict):
        for v in spec.values():
            found |= helper_names_used(v)
    elif isinstance(spec, list):
        for v in spec:
            found |= helper_names_used(v)
    return found


def compile_expr(text: str) -> Node:
    """A string node: Jinja when it starts with '=', else JMESPath."""
    if text.startswith("="):
        source = text[1:].strip()
        try:
            fn = _JINJA.compile_expression(source, undefined_to_none=False)
        except TemplateError as e:
            raise ExprError(f"invalid Jinja expression '{source}': {e}") from None

        def jinja(ctx: Ctx) -> Any:
            try:
                value = fn(**ctx)
            except TemplateError as e:
                raise ExprError(f"expression '{source}' failed: {e}") from None
            except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError) as e:
                raise ExprError(f"expression '{source}' failed: {e}") from None
            return None if isinstance(value, StrictUndefined) else value

        return jinja
    compiled = _jmespath(text)
    if getattr(compiled, "cannot_fail", False):  # a plain path walk: no error to name
        return compiled

    def jmes(ctx: Ctx) -> Any:
        try:
            return compiled(ctx)
        except _EVAL_ERRORS as e:
            raise _failed(text, e) from None

    return jmes


# What a JMESPath evaluation may raise, and the ExprError that names the expression instead.
_EVAL_ERRORS = (jmespath.exceptions.JMESPathError, TypeError, ValueError)


def _failed(text: str, e: Exception) -> ExprError:
    return ExprError(f"expression '{text}' failed: {e}")


def _jmespath(text: str) -> Callable[[Any], Any]:
    try:
        return compile_jmespath(text, _OPTIONS.custom_functions, _OPTIONS)
    except jmespath.exceptions.JMESPathError as e:
        raise ExprError(f"invalid JMESPath expression '{text}': {e}") from None


def compile_node(spec: Any, where: str = "") -> Node:
    """Compile a node (see module docstring). Raises ExprError naming `where` on a bad node.

    A node tree becomes the source of one Python function, statements in the order the closures
    would have run: an object, a list, a path walk, a filter or a branch costs no call of its own.
    Format specs run a few hundred nodes per request, and a call per node was most of their cost.
    Jinja, and the rare JMESPath forms jmes_gen does not cover, stay closures called from it."""
    if isinstance(spec, str) and spec.startswith("="):
        try:
            return compile_expr(spec)  # one Jinja expression: its closure is the node
        except ExprError as e:
            raise ExprError(f"{where}: {e}" if where else str(e)) from None
    gen = _Gen()
    result = gen.node(spec, "ctx", 1, where)
    source = "def _node(ctx):\n" + "\n".join(gen.hoisted + gen.lines) + f"\n    return {result}\n"
    namespace = dict(gen.consts)
    exec(compile(source, f"<node {where or 'spec'}>", "exec"), namespace)
    fn: Node = namespace["_node"]
    return fn


class _Gen:
    """Python source for one node tree. `node` emits the statements that compute a node into a
    fresh local and returns that local's name (or the name of a constant)."""

    def __init__(self) -> None:
        self.consts: dict[str, Any] = {"_loads": orjson.loads, "_EVAL_ERRORS": _EVAL_ERRORS, "_failed": _failed}
        self.lines: list[str] = []
        self.count = 0
        # Context dicts in scope: name -> (parent, the locals bound into it by $each/$let). A
        # variable is read from its local, not looked up in the dict (which the closures still get).
        self.scopes: dict[str, tuple[str | None, dict[str, str]]] = {"ctx": (None, {})}
        self.hoisted: list[str] = []  # the root context's variables, read once at the top
        self.booleans: set[str] = set()  # locals holding True/False/None: `if x:` is their truthiness
        self.built: set[str] = set()  # locals holding a dict or list built here: never None

    def const(self, value: Any) -> str:
        name = f"_k{len(self.consts)}"
        self.consts[name] = value
        return name

    def local(self) -> str:
        self.count += 1
        return f"_v{self.count}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def lookup(self, ctx: str, name: str) -> str:
        """The local holding variable `name` of context `ctx`."""
        scope: str | None = ctx
        while scope is not None:
            parent, bound = self.scopes[scope]
            if name in bound:
                return bound[name]
            scope = parent
        v = self.local()
        self.hoisted.append(f"    {v} = ctx.get({name!r})")
        self.scopes["ctx"][1][name] = v
        return v

    def child(self, ctx: str, ind: int) -> str:
        """A new context dict inheriting `ctx`'s variables."""
        c = self.local()
        self.emit(ind, f"{c} = dict({ctx})")
        self.scopes[c] = (ctx, {})
        return c

    def bind(self, ctx: str, name: str, value: str, ind: int) -> None:
        self.emit(ind, f"{ctx}[{self.const(name)}] = {value}")
        self.scopes[ctx][1][name] = value

    def never_none(self, v: str) -> bool:
        return v in self.built or (v in self.consts and self.consts[v] is not None)

    def truthy(self, v: str) -> str:
        """JMESPath truthiness of local `v` as a Python condition (0 is true, empty is false)."""
        return v if v in self.booleans else f"({v} or ({v} == 0 and {v} is not False))"

    def node(self, spec: Any, ctx: str, ind: int, where: str) -> str:
        if isinstance(spec, str):
            return self.string(spec, ctx, ind, where)
        if spec is None or isinstance(spec, bool | int | float):
            return self.const(spec)
        if isinstance(spec, list):
            out = self.local()
            self.emit(ind, f"{out} = []")
            for i, item in enumerate(spec):
                v = self.node(item, ctx, ind, f"{where}[{i}]")
                self.emit(ind, f"{out}.append({v})" if self.never_none(v) else f"if {v} is not None: {out}.append({v})")
            self.built.add(out)
            return out
        if not isinstance(spec, dict):
            raise ExprError(f"{where}: unsupported node {spec!r}")
        directives = [k for k in spec if isinstance(k, str) and k.startswith("$")]
        if directives:
            unknown = [k for k in directives if k not in _DIRECTIVES]
            if unknown:
                raise ExprError(f"{where}: unknown directive {unknown[0]} (valid: {', '.join(sorted(_DIRECTIVES))})")
            return self.directive(spec, ctx, ind, where)
        out = self.local()
        items = list(spec.items())
        fixed = []  # leading constants go in the dict display
        while items and _is_const(items[0][1]):
            k, sub = items.pop(0)
            v = self.node(sub, ctx, ind, f"{where}.{k}")
            if self.consts[v] is not None:
                fixed.append(f"{self.const(k)}: {v}")
        self.emit(ind, f"{out} = {{{', '.join(fixed)}}}")
        for k, sub in items:
            v = self.node(sub, ctx, ind, f"{where}.{k}" if where else str(k))
            if self.never_none(v):
                self.emit(ind, f"{out}[{self.const(k)}] = {v}")
            else:
                self.emit(ind, f"if {v} is not None: {out}[{self.const(k)}] = {v}")
        self.built.add(out)
        return out

    def string(self, text: str, ctx: str, ind: int, where: str) -> str:
        if text.startswith("="):
            try:
                fn = compile_expr(text)
            except ExprError as e:
                raise ExprError(f"{where}: {e}" if where else str(e)) from None
            return self._emit_value(ind, self.local(), f"{self.const(fn)}({ctx})")
        path = text.split(".") if _IDENT_PATH.match(text) else path_of(text)
        if path and isinstance(path[0], str):  # plain paths are most of every spec: walked inline
            v = self.lookup(ctx, path[0])
            if len(path) == 1:
                return v
            at, v = v, self.local()
            for step in path[1:]:
                if isinstance(step, str):
                    self.emit(ind, f"{v} = {at}.get({step!r}) if isinstance({at}, dict) else None")
                else:  # JMESPath indexes: out of range is null, negative counts from the end
                    bound = f"len({at}) > {step}" if step >= 0 else f"len({at}) >= {-step}"
                    self.emit(ind, f"{v} = {at}[{step}] if isinstance({at}, list) and {bound} else None")
                at = v
            return v
        try:
            parsed = jmes_gen.parse(text)
        except jmespath.exceptions.JMESPathError as e:
            raise ExprError(f"{where}: invalid JMESPath expression '{text}': {e}" if where else f"invalid JMESPath expression '{text}': {e}") from None
        mark = len(self.lines)
        self.emit(ind, "try:")  # free in 3.11 when nothing is raised, unlike a wrapper call
        src = jmes_gen.JmesSource(self, _OPTIONS.custom_functions)
        try:
            v = src.value(parsed, ctx, ind + 1)
        except jmes_gen.Unsupported:
            del self.lines[mark:]
            v = self._emit_value(ind + 1, self.local(), f"{self.const(_jmespath(text))}({ctx})")
            self.lines.insert(mark, "    " * ind + "try:")
            src.may_raise = True
        if not src.may_raise:
            del self.lines[mark]
            self.lines[mark:] = [line[4:] for line in self.lines[mark:]]
            return v
        if len(self.lines) == mark + 1:
            self.emit(ind + 1, "pass")
        self.emit(ind, "except _EVAL_ERRORS as _e:")
        self.emit(ind + 1, f"raise _failed({self.const(text)}, _e) from None")
        return v

    def branch(self, spec: Any, ctx: str, ind: int, where: str, into: str) -> None:
        self.emit(ind, f"{into} = {self.node(spec, ctx, ind, where)}")

    def directive(self, spec: dict[str, Any], ctx: str, ind: int, where: str) -> str:
        v = self.local()
        if "$const" in spec:
            value = spec["$const"]
            if isinstance(value, dict | list):  # a fresh copy each time: callers may mutate results
                return self._emit_value(ind, v, f"_loads({self.const(orjson.dumps(value))})")
            return self.const(value)
        if "$each" in spec:
            items = self.node(spec["$each"], ctx, ind, f"{where}.$each")
            name = spec.get("$as", "it")
            flat = bool(spec.get("$flat", False))
            self.emit(ind, f"{v} = {'None' if spec.get('$nonempty') else '[]'}")
            self.emit(ind, f"if {items}:")
            out, item = self.local(), self.local()
            self.emit(ind + 1, f"{out} = []")
            child = self.child(ctx, ind + 1)
            self.emit(ind + 1, f"for {item} in ({items} if isinstance({items}, list) else [{items}]):")
            self.bind(child, name, item, ind + 2)
            r = self.node(spec.get("$do", name), child, ind + 2, f"{where}.$do")
            if flat:
                self.emit(ind + 2, f"if isinstance({r}, list): {out}.extend({r})")
                self.emit(ind + 2, f"elif {r} is not None: {out}.append({r})")
            else:
                self.emit(ind + 2, f"{out}.append({r})" if self.never_none(r) else f"if {r} is not None: {out}.append({r})")
            self.emit(ind + 1, f"{v} = {out} if {out} or not {bool(spec.get('$nonempty'))} else None")
            return v
        if "$if" in spec:
            c = self.node(spec["$if"], ctx, ind, f"{where}.$if")
            self.emit(ind, f"if {self.truthy(c)}:")
            self.branch(spec.get("$then"), ctx, ind + 1, f"{where}.$then", v)
            self.emit(ind, "else:")
            self.branch(spec.get("$else"), ctx, ind + 1, f"{where}.$else", v)
            return v
        if "$switch" in spec:
            key = self.local()
            self.emit(ind, f"{key} = str({self.node(spec['$switch'], ctx, ind, f'{where}.$switch')})")
            cases = list((spec.get("$cases") or {}).items())
            for i, (k, sub) in enumerate(cases):
                self.emit(ind, f"{'if' if i == 0 else 'elif'} {key} == {self.const(str(k))}:")
                self.branch(sub, ctx, ind + 1, f"{where}.$cases.{k}", v)
            if cases:
                self.emit(ind, "else:")
            self.branch(spec.get("$default"), ctx, ind + 1 if cases else ind, f"{where}.$default", v)
            return v
        if "$map" in spec:
            k = self.node(spec["$map"], ctx, ind, f"{where}.$map")
            table = self.const({str(a): b for a, b in (spec.get("$table") or {}).items()})
            fallback = self.const(spec["$default"]) if "$default" in spec else k
            return self._emit_value(ind, v, f"{table}.get(str({k}), {fallback})")
        if "$merge" in spec:
            self.emit(ind, f"{v} = {{}}")
            for i, part in enumerate(spec["$merge"]):
                r = self.node(part, ctx, ind, f"{where}.$merge[{i}]")
                self.emit(ind, f"if isinstance({r}, dict): {v}.update({r})")
            return v
        if "$first" in spec:
            self.emit(ind, f"{v} = None")
            depth = ind
            for i, option in enumerate(spec["$first"]):  # later options run only when needed
                r = self.node(option, ctx, depth, f"{where}.$first[{i}]")
                self.emit(depth, f"if {r} is not None: {v} = {r}")
                self.emit(depth, "else:")
                depth += 1
            self.emit(depth, "pass")
            return v
        if "$concat" in spec:
            self.emit(ind, f"{v} = []")
            for i, piece in enumerate(spec["$concat"]):
                r = self.node(piece, ctx, ind, f"{where}.$concat[{i}]")
                self.emit(ind, f"if isinstance({r}, list): {v}.extend({r})")
                self.emit(ind, f"elif {r} is not None: {v}.append({r})")
            return v
        if "$let" in spec:
            child = self.child(ctx, ind)
            for k, sub in spec["$let"].items():
                self.bind(child, k, self.node(sub, child, ind, f"{where}.$let.{k}"), ind)
            return self.node(spec.get("$in"), child, ind, f"{where}.$in")
        raise ExprError(f"{where}: a directive object needs one of $const, $each, $if, $switch, $map, $merge, $first, $concat, $let")

    def _emit_value(self, ind: int, v: str, expr: str) -> str:
        self.emit(ind, f"{v} = {expr}")
        return v


def _is_const(spec: Any) -> bool:
    """A node whose value is a scalar fixed at compile time (no statements, a constant name)."""
    if isinstance(spec, dict):
        return set(spec) == {"$const"} and not isinstance(spec["$const"], dict | list)
    return spec is None or isinstance(spec, bool | int | float)


def _truthy(v: Any) -> bool:
    # JMESPath truthiness: empty containers and empty strings are false.
    return bool(v) or (v == 0 and not isinstance(v, bool) and v is not None)
