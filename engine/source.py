"""YAML with line/column marks, `${VAR}` expansion, and JSON Schema validation with located errors.

A loaded file is a `Doc`: plain Python data plus a map from each key path to its position, so any
later stage (schema validation, compile-time cross-reference checks) can report
`FILE:LINE:COL: key.path: message` for any value it finds wrong.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .errors import Problem

Path_ = tuple[str | int, ...]
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# libyaml's composer keeps marks too and parses several times faster than the pure-Python one.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Keys whose values are credentials: never echoed in messages.
SECRET_KEYS = frozenset({"api_key", "key", "token", "password", "secret", "access_token", "refresh_token", "client_secret"})


@dataclass
class Doc:
    file: str
    data: Any
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Iterable[str | int]) -> tuple[int, int]:
        """Position of `path`, or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.marks:
                return self.marks[p]
            p = p[:-1]
        return self.marks.get((), (1, 1))

    def problem(self, path: Iterable[str | int], message: str) -> Problem:
        p = tuple(path)
        line, col = self.locate(p)
        return Problem(self.file, line, col, dotted(p), message)


def dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Builder:
    """Turns a composed YAML node tree into data + marks, expanding `${VAR}` in plain scalars."""

    def __init__(self, file: str, env: Mapping[str, str], expand: bool) -> None:
        self.file = file
        self.env = env
        self.expand = expand
        self.marks: dict[Path_, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.loader = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(self._p(path, key_node, "YAML merge keys ('<<') are not supported"))
                    continue
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    key = str(key)
                if key in out:
                    self.problems.append(self._p((*path, key), key_node, f"duplicate key '{key}'"))
                self.marks[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.build(value_node, (*path, key))
                self.marks[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if not isinstance(node, yaml.ScalarNode):
            raise TypeError(f"unexpected YAML node {node!r}")
        if self.expand and "${" in node.value:
            value = self._expand(node.value, path, node)
            if not node.style:  # plain scalar (None or "" by parser): `port: ${PORT:-8080}` is an int
                tag = self.loader.resolve(yaml.ScalarNode, value, (True, False))
                return self.loader.construct_object(yaml.ScalarNode(tag, value), deep=True)
            return value
        return self.loader.construct_object(node, deep=True)

    def _expand(self, text: str, path: Path_, node: yaml.Node) -> str:
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            value = self.env.get(name)
            if value is None or (value == "" and default is not None):
                if default is not None:
                    return default
                self.problems.append(
                    self._p(path, node, f"environment variable {name} is not set (set it, or write ${{{name}:-default}})")
                )
                return ""
            return value

        return _ENV.sub(sub, text)

    def _p(self, path: Path_, node: yaml.Node, message: str) -> Problem:
        return Problem(self.file, node.start_mark.line + 1, node.start_mark.column + 1, dotted(path), message)


def load_yaml(
    text: str, file: str, *, env: Mapping[str, str] | None = None, expand: bool = False
) -> tuple[Doc, list[Problem]]:
    """Parse one YAML document. Never raises on bad input: problems are returned."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return Doc(file, None), [Problem(file, line, col, "", f"invalid YAML: {e.problem or e.context}")]
    except yaml.YAMLError as e:
        return Doc(file, None), [Problem(file, 1, 1, "", f"invalid YAML: {e}")]
    if node is None:
        return Doc(file, {}, {(): (1, 1)}), []
    builder = _Builder(file, os.environ if env is None else env, expand)
    try:
        data = builder.build(node, ())
    except yaml.YAMLError as e:  # a bad scalar such as an invalid timestamp
        return Doc(file, None), [Problem(file, 1, 1, "", f"invalid YAML value: {e}")]
    except RecursionError:
        return Doc(file, None), [Problem(file, 1, 1, "", "document is nested too deeply")]
    return Doc(file, data, builder.marks), builder.problems


def load_file(path: Path, *, env: Mapping[str, str] | None = None, expand: bool = False) -> tuple[Doc, list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return Doc(str(path), None), [Problem(str(path), 0, 0, "", f"cannot read file: {e.__class__.__name__}")]
    return load_yaml(text, str(path), env=env, expand=expand)


@cache
def _registry() -> Registry:
    """Every schema file, so one can `$ref` another by file name (config -> policy.schema.json)."""
    resources_ = []
    for entry in resources.files("engine").joinpath("schemas").iterdir():
        if entry.name.endswith(".schema.json"):
            raw = json.loads(entry.read_text())
            resources_.append((entry.name, Resource.from_contents(raw, default_specification=DRAFT202012)))
    return Registry().with_resources(resources_)


@cache
def schema(name: str) -> jsonschema.protocols.Validator:
    registry = _registry()
    raw = registry.contents(f"{name}.schema.json")
    cls = jsonschema.validators.validator_for(raw)
    cls.check_schema(raw)
    return cls(raw, registry=registry)


def validate(doc: Doc, schema_name: str) -> list[Problem]:
    """Every schema violation in `doc`, each located and phrased without echoing secret values."""
    validator = schema(schema_name)
    problems: list[Problem] = []
    for err in validator.iter_errors(doc.data):
        for leaf in _leaves(err):
            problems.append(_describe(doc, leaf))
    # one message per location: oneOf/anyOf branches often repeat each other
    seen: set[tuple[int, int, str, str]] = set()
    unique = []
    for p in problems:
        k = (p.line, p.col, p.path, p.message)
        if k not in seen:
            seen.add(k)
            unique.append(p)
    return unique


def _leaves(err: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    if err.validator in ("oneOf", "anyOf") and err.context:
        # The branch that got furthest is the one the author meant.
        best = max(err.context, key=lambda e: (len(e.absolute_path), -len(e.context or [])))
        deeper = [e for e in err.context if len(e.absolute_path) == len(best.absolute_path) and e.validator != "type"]
        if len(best.absolute_path) > len(err.absolute_path):
            return [leaf for e in (deeper or [best]) for leaf in _leaves(e)]
        return [err]
    return [err]


def _describe(doc: Doc, err: jsonschema.ValidationError) -> Problem:
    path = tuple(err.absolute_path)
    secret = any(isinstance(p, str) and p in SECRET_KEYS for p in path)
    v: Any = err.validator
    sv: Any = err.validator_value
    inst: Any = err.instance
    schema_: Any = err.schema
    if v == "additionalProperties" and isinstance(inst, dict):
        props = schema_.get("properties", {})
        extra = [k for k in inst if k not in props]
        key = extra[0] if extra else "?"
        valid = ", ".join(sorted(props)) if props else "none"
        return doc.problem((*path, key), f"unknown key '{key}' (valid keys: {valid})")
    if v == "required":
        missing = [k for k in sv if isinstance(inst, dict) and k not in inst]
        return doc.problem(path, f"missing required key '{missing[0] if missing else sv[0]}'")
    if v == "enum":
        shown = "" if secret or not isinstance(inst, str | int | float | bool) else f"'{inst}' is not valid "
        return doc.problem(path, f"{shown}(valid values: {', '.join(str(x) for x in sv)})".strip())
    if v == "const":
        return doc.problem(path, f"must be {sv!r}")
    if v == "type":
        want = sv if isinstance(sv, str) else " or ".join(sv)
        return doc.problem(path, f"expected {want}, got {_type_name(inst)}")
    if v == "pattern":
        return doc.problem(path, f"does not match the pattern {sv}")
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
        return doc.problem(path, f"must be {words[v]} {sv}")
    if v in ("minLength", "minItems", "minProperties"):
        return doc.problem(path, "must not be empty" if sv == 1 else f"{v} is {sv}")
    if v == "uniqueItems":
        return doc.problem(path, "items must be unique")
    if v == "propertyNames" and isinstance(inst, dict):
        return doc.problem(path, f"invalid key name: {err.message if not secret else 'see pattern'}")
    if secret:
        return doc.problem(path, f"invalid value ({v})")
    return doc.problem(path, err.message)


def _type_name(x: Any) -> str:
    if x is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(x), type(x).__name__
    )
