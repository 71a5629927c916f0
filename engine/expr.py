"""The mapping language of format specs, compiled once into Python closures.

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

from .jmes import compile_jmespath

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
    if _IDENT_PATH.match(text):
        # Plain dotted paths are most of every spec: a direct walk is ~10x faster than JMESPath.
        parts = text.split(".")
        if len(parts) == 1:
            key = parts[0]
            return lambda ctx: ctx.get(key)
        if len(parts) == 2:
            a, b = parts

            def get2(ctx: Ctx) -> Any:
                v = ctx.get(a)
                return v.get(b) if isinstance(v, dict) else None

            return get2

        def getn(ctx: Ctx) -> Any:
            v: Any = ctx
            for p in parts:
                if not isinstance(v, dict):
                    return None
                v = v.get(p)
            return v

        return getn
    try:
        compiled = compile_jmespath(text, _OPTIONS.custom_functions, _OPTIONS)
    except jmespath.exceptions.JMESPathError as e:
        raise ExprError(f"invalid JMESPath expression '{text}': {e}") from None
    if getattr(compiled, "cannot_fail", False):  # a plain path walk: no error to name
        return compiled

    def jmes(ctx: Ctx) -> Any:
        try:
            return compiled(ctx)
        except jmespath.exceptions.JMESPathError as e:
            raise ExprError(f"expression '{text}' failed: {e}") from None
        except ExprError:
            raise
        except (TypeError, ValueError) as e:
            raise ExprError(f"expression '{text}' failed: {e}") from None

    return jmes


def compile_node(spec: Any, where: str = "") -> Node:
    """Compile a node (see module docstring). Raises ExprError naming `where` on a bad node."""
    if isinstance(spec, str):
        try:
            return compile_expr(spec)
        except ExprError as e:
            raise ExprError(f"{where}: {e}" if where else str(e)) from None
    if spec is None or isinstance(spec, bool | int | float):
        constant = spec

        def const(ctx: Ctx) -> Any:
            return constant

        return const
    if isinstance(spec, list):
        items = [compile_node(s, f"{where}[{i}]") for i, s in enumerate(spec)]

        def build_list(ctx: Ctx) -> list[Any]:
            out = []
            for item in items:
                v = item(ctx)
                if v is not None:
                    out.append(v)
            return out

        return build_list
    if not isinstance(spec, dict):
        raise ExprError(f"{where}: unsupported node {spec!r}")
    directives = [k for k in spec if isinstance(k, str) and k.startswith("$")]
    if directives:
        unknown = [k for k in directives if k not in _DIRECTIVES]
        if unknown:
            raise ExprError(f"{where}: unknown directive {unknown[0]} (valid: {', '.join(sorted(_DIRECTIVES))})")
        return _compile_directive(spec, where)
    fields = [(k, compile_node(v, f"{where}.{k}" if where else k)) for k, v in spec.items()]

    def build_object(ctx: Ctx) -> dict[str, Any]:
        out = {}
        for k, fn in fields:
            v = fn(ctx)
            if v is not None:
                out[k] = v
        return out

    return build_object


def _compile_directive(spec: dict[str, Any], where: str) -> Node:
    if "$const" in spec:
        value = spec["$const"]
        if isinstance(value, dict | list):
            frozen = orjson.dumps(value)
            return lambda ctx: orjson.loads(frozen)  # fresh copy: callers may mutate results
        return lambda ctx: value
    if "$each" in spec:
        source = compile_node(spec["$each"], f"{where}.$each")
        name = spec.get("$as", "it")
        body = compile_node(spec.get("$do", name), f"{where}.$do")
        flat = bool(spec.get("$flat", False))
        empty: list[Any] | None = None if spec.get("$nonempty") else []

        def each(ctx: Ctx) -> list[Any] | None:
            items = source(ctx)
            if not items:
                return empty
            if not isinstance(items, list):
                items = [items]
            out: list[Any] = []
            child = dict(ctx)
            for item in items:
                child[name] = item
                v = body(child)
                if v is None:
                    continue
                if flat and isinstance(v, list):
                    out.extend(v)
                else:
                    out.append(v)
            return out if out or empty is not None else None

        return each
    if "$if" in spec:
        cond = compile_node(spec["$if"], f"{where}.$if")
        then = compile_node(spec.get("$then"), f"{where}.$then")
        other = compile_node(spec.get("$else"), f"{where}.$else")
        return lambda ctx: then(ctx) if _truthy(cond(ctx)) else other(ctx)
    if "$switch" in spec:
        key = compile_node(spec["$switch"], f"{where}.$switch")
        cases = {str(k): compile_node(v, f"{where}.$cases.{k}") for k, v in (spec.get("$cases") or {}).items()}
        default = compile_node(spec.get("$default"), f"{where}.$default")

        def switch(ctx: Ctx) -> Any:
            fn = cases.get(str(key(ctx)))
            return fn(ctx) if fn is not None else default(ctx)

        return switch
    if "$map" in spec:
        key = compile_node(spec["$map"], f"{where}.$map")
        table = {str(k): v for k, v in (spec.get("$table") or {}).items()}
        if "$default" in spec:
            fallback = spec["$default"]
            return lambda ctx: table.get(str(key(ctx)), fallback)

        def passthrough(ctx: Ctx) -> Any:
            k = key(ctx)
            return table.get(str(k), k)

        return passthrough
    if "$merge" in spec:
        parts = [compile_node(s, f"{where}.$merge[{i}]") for i, s in enumerate(spec["$merge"])]

        def merge(ctx: Ctx) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for p in parts:
                v = p(ctx)
                if isinstance(v, dict):
                    out.update(v)
            return out

        return merge
    if "$first" in spec:
        options = [compile_node(s, f"{where}.$first[{i}]") for i, s in enumerate(spec["$first"])]

        def first(ctx: Ctx) -> Any:
            for o in options:
                v = o(ctx)
                if v is not None:
                    return v
            return None

        return first
    if "$concat" in spec:
        pieces = [compile_node(s, f"{where}.$concat[{i}]") for i, s in enumerate(spec["$concat"])]

        def concat(ctx: Ctx) -> list[Any]:
            out: list[Any] = []
            for p in pieces:
                v = p(ctx)
                if isinstance(v, list):
                    out.extend(v)
                elif v is not None:
                    out.append(v)
            return out

        return concat
    if "$let" in spec:
        binds = [(k, compile_node(v, f"{where}.$let.{k}")) for k, v in spec["$let"].items()]
        body = compile_node(spec.get("$in"), f"{where}.$in")

        def let(ctx: Ctx) -> Any:
            child = dict(ctx)
            for k, fn in binds:
                child[k] = fn(child)
            return body(child)

        return let
    raise ExprError(f"{where}: a directive object needs one of $const, $each, $if, $switch, $map, $merge, $first, $concat, $let")


def _truthy(v: Any) -> bool:
    # JMESPath truthiness: empty containers and empty strings are false.
    return bool(v) or (v == 0 and not isinstance(v, bool) and v is not None)
