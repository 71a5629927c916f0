"""Runs the test cases each format spec carries (`tests:` in specs/formats/*.yaml), one id each.

An expected value of "*" matches anything (ids the interpreter invents, timestamps). A modality
format's (embeddings, images, transcriptions) response.decode case may give the canonical request
as `req`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.compile import BUILTIN_SPECS
from engine.errors import GatewayError
from engine.source import load_file, validate
from engine.stream import parser_for
from engine.translate import Format, compile_format

FORMAT_FILES = sorted((BUILTIN_SPECS / "formats").glob("*.yaml"))


def _compile(path: Path) -> tuple[Format, dict[str, Any]]:
    doc, problems = load_file(path)
    problems += validate(doc, "format") if doc.data is not None else []
    found: list[str] = []
    fmt = compile_format(path.stem, doc.data, lambda p, m: found.append(f"{p}: {m}")) if not problems else None
    if problems or found or fmt is None:
        pytest.fail(f"{path} does not compile:\n" + "\n".join(map(str, problems + found)))
    return fmt, doc.data


def _cases() -> list[Any]:
    out = []
    for path in FORMAT_FILES:
        doc, _ = load_file(path)
        for case in (doc.data or {}).get("tests") or []:
            out.append(pytest.param(path, case, id=f"{path.stem}: {case.get('name')}"))
    return out


def matches(got: Any, want: Any, where: str = "") -> None:
    if want == "*":
        return
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: expected an object, got {got!r}"
        assert set(got) == set(want), f"{where}: keys differ: got {sorted(got)}, want {sorted(want)}"
        for k in want:
            matches(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list), f"{where}: expected a list, got {got!r}"
        assert len(got) == len(want), f"{where}: {len(got)} items, want {len(want)}:\n got {got!r}\nwant {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            matches(g, w, f"{where}[{i}]")
    else:
        assert got == want and type(got) is type(want), f"{where}: got {got!r}, want {want!r}"


def run_case(fmt: Format, case: dict[str, Any]) -> Any:
    kind, data, meta = case["kind"], case["input"], dict(case.get("meta") or {})
    if kind == "request.decode":
        return fmt.decode_request(data, meta)
    if kind == "request.encode":
        return fmt.encode_request(data, meta)
    if kind == "response.decode" and fmt.raw.get("modality"):
        # Modality answers are not chat responses: response.decode alone, as engine/modality_run.py runs it.
        assert fmt.resp_decode is not None
        return fmt.resp_decode({"src": data, "req": case.get("req") or {}, "meta": meta, "vars": {}})
    if kind == "response.decode":
        return fmt.decode_response(data)
    if kind == "response.encode":
        return fmt.encode_response(data, meta)
    if kind == "stream.decode":
        sep = "\n" if fmt.framing == "ndjson" else "\n\n"
        dec = fmt.decoder()
        events = dec.feed("".join(line + sep for line in data).encode())
        return events + dec.close()
    if kind == "stream.encode":
        if meta.get("framing"):
            fmt = _with_framing(fmt, meta["framing"])
        enc = fmt.encoder(meta)
        raw = b"".join(enc.push(ev) for ev in data) + enc.end()
        parser = parser_for(fmt.framing)
        return [orjson.loads(d) for _, d in [*parser.feed(raw), *parser.close()] if d != fmt.done]
    if kind == "error.encode":
        err = GatewayError(data["message"], status=data.get("status", 400), kind=data.get("kind"))
        return orjson.loads(fmt.encode_error(err))
    raise AssertionError(f"unknown test kind {kind}")


def _with_framing(fmt: Format, framing: str) -> Format:
    from dataclasses import replace

    return replace(fmt, framing=framing)


@pytest.mark.parametrize(("path", "case"), _cases())
def test_spec_case(path: Path, case: dict[str, Any]) -> None:
    fmt, _ = _compile(path)
    matches(run_case(fmt, case), case["expect"], case["kind"])


@pytest.mark.parametrize("path", FORMAT_FILES, ids=[p.stem for p in FORMAT_FILES])
def test_every_format_compiles_and_carries_tests(path: Path) -> None:
    _, raw = _compile(path)
    kinds = {c["kind"] for c in raw.get("tests") or []}
    assert kinds, f"{path.name} carries no test cases"
