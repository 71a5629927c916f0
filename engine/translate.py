"""The interpreter for format specs: requests, responses, errors and streams.

A `Format` is one compiled `specs/formats/<id>.yaml`. Its nodes (see expr.py) say how each wire
shape maps to and from the canonical model (canonical.py). The interpreter owns everything that is
state rather than mapping: which content block is open and its index, the tool-call numbering, the
partial tool arguments, usage seen so far (latest value wins, never summed), the final stop reason,
and the canonical response assembled from the stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fastjsonschema
import jsonschema
import orjson

from .canonical import FEATURES, clean_usage, files_refused, merge_usage, normalize_response
from .errors import ClientError, GatewayError, UpstreamError
from .expr import Ctx, ExprError, Node, _gen_id, _truthy, compile_node
from .stream import Writer, parser_for

_EMPTY: Node = lambda ctx: None  # noqa: E731


@dataclass(frozen=True)
class Rule:
    when: Node | None
    each: Node | None
    emit: Node
    sets: tuple[tuple[str, Node], ...]


@dataclass(frozen=True)
class Format:
    id: str
    name: str
    supports: frozenset[str]
    framing: str
    progress_style: str
    progress_event: Node | None
    usage_hint: str
    stream_defaults: dict[str, Any]
    done: str | None
    event_field: str | None
    sequence_field: str | None
    validator: Any
    req_peek: Node | None
    req_decode: Node | None
    req_encode: Node | None
    resp_decode: Node | None
    resp_usage: Node | None
    resp_probe: Node | None
    resp_encode: Node | None
    err_encode: Node | None
    err_decode: Node | None
    decode_rules: tuple[Rule, ...]
    enc_start: Node
    enc_events: dict[str, Node]
    enc_open: dict[str, Node]
    enc_close: dict[str, Node]
    enc_end: Node
    enc_error: Node | None
    buffer_tools: bool
    count_encode: Node | None
    count_decode: Node | None
    count_answer: Node | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    file_types: tuple[str, ...] | None = None  # media types of file parts it carries (None: any)

    # ---------------------------------------------------------------- requests

    def validate(self, body: Any) -> None:
        """Raise ClientError naming the first bad field; nothing else happens to a bad request."""
        if not isinstance(body, dict):
            raise ClientError("request body must be a JSON object")
        if self.validator is not None:
            try:
                self.validator(body)
            except fastjsonschema.JsonSchemaValueException as e:
                message, param = _schema_message(e)
                raise ClientError(message, param=param) from None

    def peek(self, body: Any, meta: dict[str, Any]) -> dict[str, Any]:
        """Validate, then read only what routing needs (model, stream, include_usage). The full
        decode waits until an attempt needs the canonical form: the same-format fast path never does."""
        self.validate(body)
        if self.req_peek is None:
            return self.decode_request(body, meta, validated=True)
        head = self.req_peek({"src": body, "meta": meta})
        if not isinstance(head.get("model"), str) or not head["model"]:
            raise ClientError("missing required field 'model'", param="model")
        return head

    def decode_request(self, body: Any, meta: dict[str, Any] | None = None, *, validated: bool = False) -> dict[str, Any]:
        """Client wire body -> canonical request. Raises ClientError naming the bad field.
        `meta` carries what the route knows beyond the body (Gemini's model and stream)."""
        if not validated:
            self.validate(body)
        if self.req_decode is None:
            raise ClientError(f"the {self.id} format cannot be used by clients")
        try:
            req = self.req_decode({"src": body, "meta": meta or {}})
        except ExprError as e:
            raise ClientError(f"request could not be read: {e}") from None
        return _clean_request(req)

    def encode_request(self, req: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        if self.req_encode is None:
            raise GatewayError(f"the {self.id} format cannot be sent upstream")
        try:
            return self.req_encode({"src": req, "meta": meta})
        except ExprError as e:
            raise ClientError(f"request cannot be translated to {self.id}: {e}") from None

    def lossy(self, used: set[str]) -> list[str]:
        out = [f for f in used if f in FEATURES and f not in self.supports]
        if "files" in self.supports:  # and each file media type it cannot take, by name
            out += files_refused(used, self.file_types)
        return sorted(out)

    # ---------------------------------------------------------------- responses

    def decode_response(self, body: Any) -> dict[str, Any]:
        if self.resp_decode is None or not isinstance(body, dict):
            raise UpstreamError(f"upstream answer is not a {self.id} response", status=502)
        try:
            return normalize_response(self.resp_decode({"src": body}))
        except ExprError as e:
            raise UpstreamError(f"upstream {self.id} response could not be read: {e}", status=502) from None

    def response_usage(self, body: Any) -> dict[str, Any]:
        """Usage of a wire response without decoding all of it (the fast path records usage too)."""
        if self.resp_usage is not None and isinstance(body, dict):
            try:
                return self.resp_usage({"src": body}) or {}
            except ExprError:
                return {}
        try:
            return self.decode_response(body)["usage"]
        except UpstreamError:
            return {}

    def response_probe(self, body: Any) -> dict[str, Any] | None:
        """What the response cache needs to know of a wire response (content, tool_calls,
        error: see cache.storable_probe) without decoding it; None when the spec has no probe."""
        if self.resp_probe is None or not isinstance(body, dict):
            return None
        try:
            return self.resp_probe({"src": body}) or {}
        except ExprError:
            return None

    def encode_response(self, resp: dict[str, Any], meta: dict[str, Any]) -> Any:
        if self.resp_encode is None:
            raise GatewayError(f"the {self.id} format has no response encoder")
        return self.resp_encode({"src": resp, "meta": meta})

    # ---------------------------------------------------------------- errors

    def encode_error(self, err: GatewayError) -> bytes:
        e = {"status": err.status, "kind": err.kind, "message": err.message, "param": err.param}
        if self.err_encode is None:
            return orjson.dumps({"error": {"message": err.message, "type": err.kind}})
        return orjson.dumps(self.err_encode({"err": e}))

    def decode_error(self, status: int, body: bytes) -> str:
        """A readable message from an upstream error body (never the raw bytes when unparseable)."""
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            return body[:300].decode("utf-8", "replace") if body else f"upstream status {status}"
        if self.err_decode is not None and parsed is not None:
            try:
                msg = self.err_decode({"src": parsed, "status": status})
            except ExprError:
                msg = None
            if isinstance(msg, str) and msg:
                return msg
        return f"upstream status {status}"

    # ---------------------------------------------------------------- streams

    def decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def encoder(self, meta: dict[str, Any]) -> StreamEncoder:
        return StreamEncoder(self, meta)

    def writer(self, framing: str | None = None) -> Writer:
        return Writer(framing or self.framing, self.event_field, self.done)


def _clean_request(req: dict[str, Any]) -> dict[str, Any]:
    """Invariants every decoder gets for free: no empty values, no empty text parts, known roles."""
    for k in [k for k, v in req.items() if v == "" or v == [] or v is None]:
        del req[k]
    if not isinstance(req.get("model"), str) or not req["model"]:
        raise ClientError("missing required field 'model'", param="model")
    for m in req.get("messages") or ():
        if m.get("role") not in ("user", "assistant", "tool"):
            raise ClientError(f"unsupported message role '{m.get('role')}'", param="messages")
        content = m.get("content") or []
        m["content"] = [p for p in content if not (p.get("type") == "text" and not p.get("text"))]
    return req


def _schema_message(e: fastjsonschema.JsonSchemaValueException) -> tuple[str, str | None]:
    """A message naming the field, in the client's terms (`messages[0].role`, not `data...`)."""
    path = (e.name or "data").removeprefix("data").lstrip(".")
    rule, definition = e.rule, e.rule_definition
    if rule == "required":
        missing = [k for k in definition if isinstance(e.value, dict) and k not in e.value]
        name = ".".join(filter(None, [path, missing[0] if missing else ""]))
        return f"missing required field '{name}'", name or None
    if rule == "type":
        want = definition if isinstance(definition, str) else " or ".join(definition)
        return f"field '{path}' must be of type {want}", path or None
    if rule == "enum":
        return f"field '{path}' must be one of: {', '.join(map(str, definition))}", path or None
    if rule in ("minItems", "minLength"):
        return f"field '{path}' must not be empty", path or None
    if rule in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[rule]
        return f"field '{path}' must be {op} {definition}", path or None
    return f"field '{path}' is invalid ({rule})", path or None


def _emit(out: list[dict[str, Any]], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, list):
        out.extend(v for v in value if v)
    elif value:
        out.append(value)


class StreamDecoder:
    """Upstream wire bytes -> canonical events. Ids are invented where the upstream has none."""

    __slots__ = ("fmt", "parser", "st")

    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt
        self.parser = parser_for(fmt.framing)
        self.st: dict[str, Any] = {}

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event, data in self.parser.feed(chunk):
            self._event(event, data, out)
        return out

    def close(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event, data in self.parser.close():
            self._event(event, data, out)
        return out

    def decode_data(self, event: str | None, data: str) -> list[dict[str, Any]]:
        """Decode one already-framed event (the fast path frames events itself)."""
        out: list[dict[str, Any]] = []
        self._event(event, data, out)
        return out

    def _event(self, event: str | None, data: str, out: list[dict[str, Any]]) -> None:
        if data == self.fmt.done:
            return
        try:
            ev = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream sent a malformed stream event", status=502) from None
        ctx: Ctx = {"ev": ev, "event": event, "st": self.st}
        start = len(out)
        try:
            for rule in self.fmt.decode_rules:
                if rule.when is not None and not _truthy(rule.when(ctx)):
                    continue
                if rule.each is not None:
                    child = dict(ctx)
                    for item in rule.each(ctx) or ():
                        child["it"] = item
                        _emit(out, rule.emit(child))
                else:
                    _emit(out, rule.emit(ctx))
                for name, node in rule.sets:
                    self.st[name] = node(ctx)
        except ExprError as e:
            raise UpstreamError(f"upstream {self.fmt.id} stream event could not be read: {e}", status=502) from None
        for ev_out in out[start:]:
            if ev_out.get("type") == "tool_start" and not ev_out.get("id"):
                ev_out["id"] = _gen_id("call_")


class StreamEncoder:
    """Canonical events -> client wire bytes, with the block and tool state the format needs.

    Also assembles the canonical response (`response`) so the end of a stream can carry it whole
    (Responses API) and so usage, cache and analytics see what the client saw."""

    def __init__(self, fmt: Format, meta: dict[str, Any]) -> None:
        self.fmt = fmt
        self.writer = fmt.writer(meta.get("framing"))  # Gemini clients choose SSE or a JSON array
        self.st: dict[str, Any] = {
            "id": meta.get("id") or _gen_id("chatcmpl-"),
            "model": meta.get("model"),
            "created": int(time.time()),
            "block": None,
            "block_key": None,
            "block_index": -1,
            "tool_index": -1,
            "usage": clean_usage(None),
            "stop_reason": None,
            "text": "",
            "args": "",
            "seq": 0,
        }
        self.meta = meta
        self.started = False
        self.content: list[dict[str, Any]] = []
        self.tool_map: dict[Any, int] = {}
        self.tools: dict[int, dict[str, Any]] = {}
        self.out_tokens = 0  # text deltas seen, for progress reporting

    def _ctx(self, ev: dict[str, Any] | None) -> Ctx:
        return {"ev": ev, "st": self.st, "meta": self.meta}

    def _write(self, value: Any, buf: list[bytes]) -> None:
        items: list[dict[str, Any]] = []
        _emit(items, value)
        seq = self.fmt.sequence_field
        for item in items:
            if seq:
                item[seq] = self.st["seq"]
                self.st["seq"] += 1
            buf.append(self.writer.write(item))

    def push(self, ev: dict[str, Any]) -> bytes:
        buf: list[bytes] = []
        st = self.st
        if not self.started:
            self.started = True
            self._write(self.fmt.enc_start(self._ctx(ev)), buf)
        t = ev.get("type")
        if t == "text" or t == "thinking":
            self._ensure_block(t, t, ev, buf)
            text = ev.get("text") or ""
            st["text"] += text
            if t == "thinking" and ev.get("signature"):
                st["signature"] = ev["signature"]
            self.out_tokens += 1 if text else 0
            node = self.fmt.enc_events.get(t)
            if node is not None and (text or ev.get("signature")):
                self._write(node(self._ctx(ev)), buf)
        elif t == "tool_start":
            self._close_block(buf)
            st["tool_index"] += 1
            self.tool_map[ev.get("index")] = st["tool_index"]
            self.tools[st["tool_index"]] = {"id": ev.get("id"), "name": ev.get("name"), "args": ""}
            st["tool_id"], st["tool_name"] = ev.get("id"), ev.get("name")  # close nodes repeat them
            self._open_block("tool", ev.get("index"), ev, buf)
            node = self.fmt.enc_events.get("tool_start")
            if node is not None and not self.fmt.buffer_tools:
                self._write(node(self._ctx(ev)), buf)
        elif t == "tool_args":
            ti = self.tool_map.get(ev.get("index"))
            if ti is None:
                return b"".join(buf)
            delta = ev.get("delta") or ""
            self.tools[ti]["args"] += delta
            if st["block_key"] == ev.get("index"):
                st["args"] += delta
            node = self.fmt.enc_events.get("tool_args")
            if node is not None and not self.fmt.buffer_tools and delta:
                ctx = self._ctx(ev)
                ctx["tool_index"] = ti
                self._write(node(ctx), buf)
        elif t == "usage":
            merge_usage(st["usage"], ev)
        elif t == "finish":
            st["stop_reason"] = ev.get("stop_reason") or "stop"
        elif t == "start" and ev.get("id"):
            st["upstream_id"] = ev["id"]
        return b"".join(buf)

    def _ensure_block(self, kind: str, key: Any, ev: dict[str, Any], buf: list[bytes]) -> None:
        if self.st["block"] == kind and self.st["block_key"] == key:
            return
        self._close_block(buf)
        self._open_block(kind, key, ev, buf)

    def _open_block(self, kind: str, key: Any, ev: dict[str, Any], buf: list[bytes]) -> None:
        st = self.st
        st["block"], st["block_key"] = kind, key
        st["block_index"] += 1
        st["text"], st["args"] = "", ""
        st.pop("signature", None)
        node = self.fmt.enc_open.get(kind)
        if node is not None:
            self._write(node(self._ctx(ev)), buf)

    def _close_block(self, buf: list[bytes]) -> None:
        st = self.st
        kind = st["block"]
        if kind is None:
            return
        if kind == "tool":
            tool = self.tools[st["tool_index"]]
            part = {"type": "tool_call", "id": tool["id"], "name": tool["name"], "arguments": tool["args"]}
            self.content.append(part)
            if self.fmt.buffer_tools:
                node = self.fmt.enc_events.get("tool_call")
                if node is not None:
                    self._write(node(self._ctx({"type": "tool_call", **part, "index": st["tool_index"]})), buf)
        elif kind == "thinking":
            self.content.append({"type": "thinking", "text": st["text"], "signature": st.get("signature")})
        else:
            self.content.append({"type": "text", "text": st["text"]})
        node = self.fmt.enc_close.get(kind)
        if node is not None:
            self._write(node(self._ctx(None)), buf)
        st["block"], st["block_key"] = None, None

    def response(self) -> dict[str, Any]:
        """The canonical response the stream carried (complete once `end` ran)."""
        return {
            "id": self.st["id"],
            "model": self.st["model"],
            "content": list(self.content),
            "stop_reason": self.st["stop_reason"] or "stop",
            "usage": dict(self.st["usage"]),
        }

    def end(self) -> bytes:
        buf: list[bytes] = []
        if not self.started:
            self.started = True
            self._write(self.fmt.enc_start(self._ctx(None)), buf)
        self._close_block(buf)
        st = self.st
        if st["stop_reason"] in (None, "stop") and self.tools:
            st["stop_reason"] = "tool_calls"
        st["stop_reason"] = st["stop_reason"] or "stop"
        ctx = self._ctx(None)
        ctx["response"] = self.response()
        self._write(self.fmt.enc_end(ctx), buf)
        buf.append(self.writer.end())
        return b"".join(buf)

    def progress(self, p: dict[str, Any]) -> bytes:
        """A liveness event (X-OmniRoute-Progress) in the form this client format tolerates."""
        style = self.fmt.progress_style
        if style == "none" or (style == "comment" and self.writer.framing != "sse"):
            return b""
        if style == "comment" or self.fmt.progress_event is None:
            return b": progress " + orjson.dumps(p) + b"\n\n"
        buf: list[bytes] = []
        self._write(self.fmt.progress_event({"p": p, "st": self.st, "meta": self.meta}), buf)
        return b"".join(buf)

    def error(self, err: GatewayError) -> bytes:
        """A stream that fails after bytes reached the client ends with the format's error event."""
        e = {"status": err.status, "kind": err.kind, "message": err.message}
        buf: list[bytes] = []
        if self.fmt.enc_error is not None:
            self._write(self.fmt.enc_error({"err": e, "st": self.st, "meta": self.meta}), buf)
        if self.writer.framing == "json-array":
            buf.append(self.writer.end())
        return b"".join(buf)


def compile_format(fid: str, raw: dict[str, Any], problem: Callable[[tuple[Any, ...], str], None]) -> Format | None:
    """Compile a validated format spec; report bad expressions through `problem(path, msg)`."""
    ok = True

    def node(path: tuple[Any, ...], spec: Any, default: Node | None = None) -> Node | None:
        nonlocal ok
        if spec is None:
            return default
        try:
            return compile_node(spec, ".".join(map(str, path)))
        except ExprError as e:
            ok = False
            problem(path, str(e))
            return default

    req, resp = raw.get("request") or {}, raw.get("response") or {}
    stream, errors = raw.get("stream") or {}, raw.get("errors") or {}
    enc = stream.get("encode") or {}
    count = raw.get("count_tokens") or {}
    rules = []
    for i, r in enumerate(stream.get("decode") or []):
        base = ("stream", "decode", i)
        rules.append(
            Rule(
                when=node((*base, "when"), r.get("when")),
                each=node((*base, "each"), r.get("each")),
                emit=node((*base, "emit"), r.get("emit"), _EMPTY) or _EMPTY,
                sets=tuple((k, node((*base, "set", k), v, _EMPTY) or _EMPTY) for k, v in (r.get("set") or {}).items()),
            )
        )
    validator = None
    if req.get("validate") is not None:
        try:
            jsonschema.validators.validator_for(req["validate"]).check_schema(req["validate"])
            # fastjsonschema generates Python for the schema: ~20x faster than interpreting it.
            validator = fastjsonschema.compile(req["validate"])
        except (jsonschema.SchemaError, fastjsonschema.JsonSchemaDefinitionException) as e:
            ok = False
            problem(("request", "validate"), f"invalid JSON Schema: {getattr(e, 'message', e)}")
    blocks = enc.get("blocks") or {}
    fmt = Format(
        id=fid,
        name=raw.get("name", fid),
        supports=frozenset(raw.get("supports") or ()),
        framing=stream.get("framing", "sse"),
        usage_hint=stream.get("usage_hint", "usage"),
        progress_style=(stream.get("progress") or {}).get("style", "comment" if stream.get("framing", "sse") == "sse" else "none"),
        progress_event=node(("stream", "progress", "event"), (stream.get("progress") or {}).get("event")),
        stream_defaults=dict(req.get("stream_defaults") or {}),
        done=stream.get("done"),
        event_field=stream.get("event_field"),
        sequence_field=stream.get("sequence_field"),
        validator=validator,
        req_peek=node(("request", "peek"), req.get("peek")),
        req_decode=node(("request", "decode"), req.get("decode")),
        req_encode=node(("request", "encode"), req.get("encode")),
        resp_decode=node(("response", "decode"), resp.get("decode")),
        resp_usage=node(("response", "usage"), resp.get("usage")),
        resp_probe=node(("response", "probe"), resp.get("probe")),
        resp_encode=node(("response", "encode"), resp.get("encode")),
        err_encode=node(("errors", "encode"), errors.get("encode")),
        err_decode=node(("errors", "decode"), errors.get("decode")),
        decode_rules=tuple(rules),
        enc_start=node(("stream", "encode", "start"), enc.get("start"), _EMPTY) or _EMPTY,
        enc_events={k: n for k, v in (enc.get("events") or {}).items() if (n := node(("stream", "encode", "events", k), v))},
        enc_open={k: n for k, v in blocks.items() if (n := node(("stream", "encode", "blocks", k, "open"), v.get("open")))},
        enc_close={k: n for k, v in blocks.items() if (n := node(("stream", "encode", "blocks", k, "close"), v.get("close")))},
        enc_end=node(("stream", "encode", "end"), enc.get("end"), _EMPTY) or _EMPTY,
        enc_error=node(("stream", "encode", "error"), enc.get("error")),
        buffer_tools=bool(enc.get("buffer_tools", False)),
        count_encode=node(("count_tokens", "encode"), count.get("encode")),
        count_decode=node(("count_tokens", "decode"), count.get("decode")),
        count_answer=node(("count_tokens", "answer"), count.get("answer")),
        raw=raw,
        file_types=tuple(raw["file_types"]) if raw.get("file_types") is not None else None,
    )
    return fmt if ok else None
