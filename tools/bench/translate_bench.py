"""Translation CPU per request and per stream chunk, next to the untranslated path (in-process,
process CPU time over many iterations, so the figures do not depend on other load)."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson


def cpu_us(fn: Callable[[], object], n: int) -> float:
    fn()
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1e6


def main() -> None:
    from engine.compile import BUILTIN_SPECS
    from engine.source import load_file
    from engine.translate import compile_format
    from tools.bench.__main__ import table

    formats = {}
    for name in ("openai-chat", "anthropic-messages"):
        path = BUILTIN_SPECS / "formats" / f"{name}.yaml"
        if not path.exists():
            print(f"\n(translation benchmark skipped: {name} format not installed)")
            return
        doc, _ = load_file(path)
        fmt = compile_format(name, doc.data, lambda p, m: None)
        if fmt is None:
            return
        formats[name] = fmt
    oa, an = formats["openai-chat"], formats["anthropic-messages"]
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    anth_req = {
        "model": "openai/gpt-4.1", "max_tokens": 512, "system": "You are terse.",
        "messages": [{"role": "user", "content": "What's the weather in Paris? Answer in one line."},
                     {"role": "assistant", "content": "Let me check."}, {"role": "user", "content": "Thanks, go on."}],
        "tools": tools,
    }
    raw_req = orjson.dumps(anth_req)
    oa_resp = orjson.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny, 21C in Paris today."}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}})
    meta = {"id": "x", "created": 1, "model": "openai/gpt-4.1", "stream": False}

    def untranslated() -> object:
        body = orjson.loads(raw_req)
        body["model"] = "gpt-4.1"
        out = orjson.dumps(body)
        return orjson.loads(oa_resp), out

    def translated() -> object:
        canon = an.decode_request(orjson.loads(raw_req), {})
        up = orjson.dumps(oa.encode_request(canon, {"model": "gpt-4.1", "stream": False}))
        resp = oa.decode_response(orjson.loads(oa_resp))
        return orjson.dumps(an.encode_response(resp, meta)), up

    base = cpu_us(untranslated, 3000)
    tr = cpu_us(translated, 3000)
    chunk = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,"delta":{"content":" word"}}]}\n\n'
    dec = oa.decoder()
    enc = an.encoder({"id": "x", "model": "m"})
    enc.push({"type": "start"})

    def chunk_translated() -> object:
        return [enc.push(ev) for ev in dec.feed(chunk)]

    def chunk_passthrough() -> object:
        return chunk.replace(b"gpt-4.1", b"gpt-4.1")

    c_tr = cpu_us(chunk_translated, 20000)
    c_pt = cpu_us(chunk_passthrough, 20000)
    table(
        "Translation CPU (Anthropic client <-> OpenAI upstream), in-process",
        [
            ("request + non-stream answer", f"{base:.1f}", f"{tr:.1f}", f"{tr - base:+.1f}", "<= 300"),
            ("one stream chunk (text delta)", f"{c_pt:.2f}", f"{c_tr:.2f}", f"{c_tr - c_pt:+.2f}", "<= 30"),
        ],
        ("figure", "untranslated us", "translated us", "added us", "target added us"),
    )
