"""The step runner: an upstream exchange of one or more HTTP calls, declared as `steps:` in a
format spec and interpreted here, with nothing provider-specific in Python.

`request.encode` says what the canonical request looks like on the wire (the JSON body, the form
fields, the query parameters); the steps say how it travels, and see its result as `enc`. A format
without `steps` makes one call: POST `enc` as JSON to the provider's endpoint path. A format with
`steps` lists the calls in order; each step is

    name: create                      used in messages (default: step1, step2, ...)
    method: POST                      GET or POST (default POST)
    path: /v2/transcript/{id}         under the connection's base URL; {model} is the upstream
                                      model id, {NAME} a variable extracted by an earlier step
                                      (URL-quoted); absent: the provider's endpoint path
    query: enc                        node -> query parameters (nulls dropped, booleans as true/false)
    send: json | form | audio | none  the body: `body` as JSON; `body` as multipart fields plus the
                                      audio in `file_field`; the raw audio; nothing
                                      (default: json when `body` is given, else none)
    body: {$merge: [enc, {audio_url: vars.upload_url}]}
    file_field: file                  (send: form) the field that carries the audio
    extract: {id: src.id}             nodes over the step's JSON answer -> variables for later steps
    until: "src.status == 'completed'"  poll: repeat the call until this holds
    fail: "src.status == 'error' && (src.error || 'failed')"
                                      checked on every answer: when truthy the job failed, and its
                                      value (text) says why
    interval_s: 1                     first wait between polls; each wait is `backoff` times the
    backoff: 1.5                      last, at most `max_interval_s`, and polling gives up after
    max_interval_s: 5                 `timeout_s` (504)
    timeout_s: 300
    repeat: "req.n || `1`"            make the call this many times, one after another (a node ->
                                      a whole number >= 1; default once); the step's answer is then
                                      the list of the answers in order (`src` in `extract` and in
                                      `response.decode`), and `fail` is checked on each of them.
                                      Not with `until`. For upstreams that make one result per call
                                      (Fireworks' FLUX workflows) where the client asks for n.

Nodes see `req` (the canonical request), `enc` (its request.encode), `meta` ({model}), `vars`
(what earlier steps extracted) and `src`: the canonical request in `body` and `query`, the step's
answer in `extract`, `until` and `fail`. After the last step, `response.decode` sees the last answer as `src`, and vars, req, meta.
Calls go through `exchange(Outgoing) -> answer`, which the caller supplies (auth, HTTP, errors).

Public surface: Step, Outgoing, Exchange, SINGLE_STEP, compile_steps, run_steps.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .errors import ClientError, GatewayError, UpstreamError
from .expr import ExprError, Node, _truthy, compile_node

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
SENDS = ("json", "form", "audio", "none")


@dataclass(frozen=True)
class Step:
    name: str
    method: str = "POST"
    path: str | None = None
    query: Node | None = None
    send: str = "none"
    body: Node | None = None
    file_field: str = "file"
    extract: tuple[tuple[str, Node], ...] = ()
    until: Node | None = None
    fail: Node | None = None
    interval_s: float = 1.0
    backoff: float = 1.5
    max_interval_s: float = 5.0
    timeout_s: float = 300.0
    repeat: Node | None = None


@dataclass(frozen=True)
class Outgoing:
    """One call a step makes: what `exchange` sends."""

    step: str
    method: str
    path: str
    query: dict[str, str]
    send: str
    body: Any
    file_field: str


Exchange = Callable[[Outgoing], Awaitable[Any]]


def compile_steps(raw: Sequence[Mapping[str, Any]], where: str = "steps") -> tuple[Step, ...]:
    """Compile validated `steps:`. Raises ExprError naming the step and field to fix, including a
    path variable that no earlier step extracts."""
    out: list[Step] = []
    known = {"model"}
    for i, s in enumerate(raw):
        at = f"{where}[{i}]"

        def node(key: str, s: Mapping[str, Any] = s, at: str = at) -> Node | None:
            return compile_node(s[key], f"{at}.{key}") if s.get(key) is not None else None

        path = s.get("path")
        for var in _VAR.findall(path or ""):
            if var not in known:
                raise ExprError(f"{at}.path: '{{{var}}}' is not extracted by an earlier step (known: {', '.join(sorted(known))})")
        send = s.get("send") or ("json" if s.get("body") is not None else "none")
        if send not in SENDS:
            raise ExprError(f"{at}.send: '{send}' is not one of {', '.join(SENDS)}")
        if s.get("repeat") is not None and s.get("until") is not None:
            raise ExprError(f"{at}: a step cannot both repeat and poll (until)")
        extract = tuple((k, compile_node(v, f"{at}.extract.{k}")) for k, v in (s.get("extract") or {}).items())
        known |= {k for k, _ in extract}
        out.append(Step(
            name=s.get("name") or f"step{i + 1}", method=s.get("method", "POST"), path=path, query=node("query"),
            send=send, body=node("body"), file_field=s.get("file_field", "file"), extract=extract,
            until=node("until"), fail=node("fail"), interval_s=float(s.get("interval_s", 1.0)),
            backoff=float(s.get("backoff", 1.5)), max_interval_s=float(s.get("max_interval_s", 5.0)),
            timeout_s=float(s.get("timeout_s", 300.0)), repeat=node("repeat"),
        ))
    return tuple(out)


def _enc(ctx: dict[str, Any]) -> Any:
    return ctx.get("enc")


SINGLE_STEP = (Step(name="request", send="json", body=_enc),)  # a format without `steps`


def _render(path: str, meta: Mapping[str, Any], vars_: Mapping[str, Any], step: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        value = meta.get("model") if name == "model" else vars_.get(name)
        if value is None or value == "":
            raise UpstreamError(f"step '{step}': the upstream gave no '{name}' for the path", status=502)
        return quote(str(value), safe="")

    return _VAR.sub(sub, path)


def _query(value: Any, step: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GatewayError(f"step '{step}': query must build an object, not {type(value).__name__}")
    return {k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in value.items() if v is not None}


async def run_steps(
    steps: tuple[Step, ...], req: dict[str, Any], enc: Any, meta: dict[str, Any], exchange: Exchange, *,
    endpoint_path: str, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Any, dict[str, Any]]:
    """Run `steps` in order; return (the last answer, the extracted variables)."""
    vars_: dict[str, Any] = {}
    answer: Any = None
    for step in steps:
        ctx: dict[str, Any] = {"src": req, "req": req, "enc": enc, "meta": meta, "vars": vars_}
        try:
            body = step.body(ctx) if step.body is not None else None
            query = _query(step.query(ctx), step.name) if step.query is not None else {}
        except ExprError as e:
            raise ClientError(f"request cannot be translated for this upstream: {e}") from None
        path = _render(step.path or endpoint_path, meta, vars_, step.name)
        out = Outgoing(step.name, step.method, path, query, step.send, body, step.file_field)
        if step.repeat is None:
            answer = await _call(step, out, req, enc, meta, vars_, exchange, sleep, clock)
        else:
            times = _times(step, ctx)
            answer = [await _call(step, out, req, enc, meta, vars_, exchange, sleep, clock) for _ in range(times)]
        ctx = {"src": answer, "req": req, "enc": enc, "meta": meta, "vars": vars_}
        try:
            for name, node in step.extract:
                vars_[name] = node(ctx)
        except ExprError as e:
            raise UpstreamError(f"step '{step.name}': the upstream answer could not be read: {e}", status=502) from None
    return answer, vars_


def _times(step: Step, ctx: dict[str, Any]) -> int:
    """How many calls a repeating step makes (a ClientError when the node gives no count)."""
    try:
        times = step.repeat(ctx) if step.repeat is not None else 1
    except ExprError as e:
        raise ClientError(f"request cannot be translated for this upstream: {e}") from None
    if isinstance(times, float) and times.is_integer():
        times = int(times)
    if not isinstance(times, int) or isinstance(times, bool) or times < 1:
        raise ClientError(f"step '{step.name}': repeat must give a whole number >= 1, not {times!r}")
    return times


async def _call(
    step: Step, out: Outgoing, req: dict[str, Any], enc: Any, meta: dict[str, Any], vars_: dict[str, Any],
    exchange: Exchange, sleep: Callable[[float], Awaitable[Any]], clock: Callable[[], float],
) -> Any:
    """One call of `step`: polled until `until` holds, each answer checked by `fail`."""
    started, interval = clock(), step.interval_s
    while True:
        answer = await exchange(out)
        ctx = {"src": answer, "req": req, "enc": enc, "meta": meta, "vars": vars_}
        try:
            failed = step.fail(ctx) if step.fail is not None else None
            if _truthy(failed):
                why = failed if isinstance(failed, str) else "the upstream reported a failure"
                raise UpstreamError(f"step '{step.name}' failed: {why}", status=502)
            if step.until is None or _truthy(step.until(ctx)):
                return answer
        except ExprError as e:
            raise UpstreamError(f"step '{step.name}': the upstream answer could not be read: {e}", status=502) from None
        if clock() - started + interval > step.timeout_s:
            raise UpstreamError(f"step '{step.name}' did not finish within {step.timeout_s:g}s", status=504, kind="timeout")
        await sleep(interval)
        interval = min(interval * step.backoff, step.max_interval_s)
