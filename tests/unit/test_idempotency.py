"""Idempotency registry: concurrent duplicates run once, replays after finishing, 409 on a different
body, the window, stream recording and replay, abandoned first runs, transient failures, bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.errors import ClientError
from engine.http import JSONResponse, Response, StreamingResponse
from engine.idempotency import IdempotencyRegistry, Replay, Ticket, key_from_headers, request_digest


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


D1 = request_digest("POST", "/v1/chat/completions", b'{"model":"m","messages":[]}')
D2 = request_digest("POST", "/v1/chat/completions", b'{"model":"m","messages":[1]}')


async def _drain(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [c async for c in chunks]


async def _body(resp: Response) -> bytes:
    if isinstance(resp, StreamingResponse):
        return b"".join(await _drain(resp.chunks))
    return resp.body


def test_concurrent_duplicates_run_the_work_once() -> None:
    reg = IdempotencyRegistry()
    calls = 0

    async def handle() -> tuple[int, bytes, dict[str, str]]:
        nonlocal calls
        got = await reg.begin("team-a", "key-1", D1)
        if isinstance(got, Ticket):
            calls += 1
            await asyncio.sleep(0.02)  # the upstream call; the duplicates arrive meanwhile
            resp = got.wrap(JSONResponse({"answer": 42}, headers={"x-omniroute-model": "m"}))
        else:
            resp = got.response()
        return resp.status, await _body(resp), resp.headers

    async def main() -> list[tuple[int, bytes, dict[str, str]]]:
        return await asyncio.gather(*(handle() for _ in range(10)))

    results = asyncio.run(main())
    assert calls == 1
    assert {(s, b) for s, b, _ in results} == {(200, b'{"answer":42}')}
    assert sum(h.get("x-omniroute-idempotent") == "true" for _, _, h in results) == 9
    assert all(h["x-omniroute-model"] == "m" for _, _, h in results)


def test_replay_after_finish_and_window_expiry() -> None:
    clock = Clock()
    reg = IdempotencyRegistry(window_s=5, clock=clock)

    async def main() -> None:
        t = await reg.begin(None, "k", D1)
        assert isinstance(t, Ticket)
        t.complete(201, {"x-a": "1"}, body=b"done")
        clock.t += 4.9
        again = await reg.begin(None, "k", D1)
        assert isinstance(again, Replay) and (again.status, again.body) == (201, b"done")
        assert again.response().headers == {"x-a": "1", "x-omniroute-idempotent": "true"}
        assert reg.stats() == {"activeKeys": 1, "windowMs": 5000}
        clock.t += 0.2
        assert reg.stats()["activeKeys"] == 0
        assert isinstance(await reg.begin(None, "k", D1), Ticket)

    asyncio.run(main())


def test_same_key_different_body_is_409() -> None:
    reg = IdempotencyRegistry()

    async def main() -> None:
        t = await reg.begin("a", "k", D1)
        assert isinstance(t, Ticket)
        with pytest.raises(ClientError) as running:
            await reg.begin("a", "k", D2)
        t.complete(200, body=b"x")
        with pytest.raises(ClientError) as finished:
            await reg.begin("a", "k", D2)
        for e in (running.value, finished.value):
            assert e.status == 409 and e.kind == "conflict"
            assert "Idempotency-Key 'k' was already used with a different request" in e.message
        assert request_digest("POST", "/v1/messages", b"{}") != request_digest("POST", "/v1/chat/completions", b"{}")

    asyncio.run(main())


def test_keys_are_scoped_per_api_key() -> None:
    reg = IdempotencyRegistry()

    async def main() -> None:
        a = await reg.begin("team-a", "k", D1)
        b = await reg.begin("team-b", "k", D2)  # another tenant, same key: no conflict, its own run
        assert isinstance(a, Ticket) and isinstance(b, Ticket)

    asyncio.run(main())


def test_stream_is_recorded_and_replayed_whole() -> None:
    reg = IdempotencyRegistry()
    upstream_calls = 0

    async def events() -> AsyncIterator[bytes]:
        nonlocal upstream_calls
        upstream_calls += 1
        for i in range(3):
            await asyncio.sleep(0.005)
            yield f"data: {i}\n\n".encode()

    async def handle() -> tuple[str, bytes, dict[str, str]]:
        got = await reg.begin(None, "s", D1)
        resp = got.wrap(StreamingResponse(events(), headers={"x-omniroute-model": "m"})) if isinstance(got, Ticket) else got.response()
        assert isinstance(resp, StreamingResponse)
        return resp.media_type or "", await _body(resp), resp.headers

    async def main() -> None:
        results = await asyncio.gather(*(handle() for _ in range(4)))
        assert upstream_calls == 1
        assert {(m, b) for m, b, _ in results} == {("text/event-stream", b"data: 0\n\ndata: 1\n\ndata: 2\n\n")}
        later = await reg.begin(None, "s", D1)
        assert isinstance(later, Replay) and later.chunks == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]

    asyncio.run(main())


def test_broken_stream_is_not_replayed_a_waiter_takes_over() -> None:
    reg = IdempotencyRegistry()
    runs = 0

    async def events(fail: bool) -> AsyncIterator[bytes]:
        yield b"data: partial\n\n"
        await asyncio.sleep(0.01)
        if fail:
            raise RuntimeError("upstream dropped")
        yield b"data: whole\n\n"

    async def handle() -> bytes:
        nonlocal runs
        got = await reg.begin(None, "s", D1)
        if isinstance(got, Replay):
            return await _body(got.response())
        runs += 1
        try:
            return b"".join(await _drain(got.record_stream(events(fail=runs == 1))))
        except RuntimeError:
            return b"error"

    async def main() -> list[bytes]:
        return await asyncio.gather(*(handle() for _ in range(5)))

    results = asyncio.run(main())
    assert runs == 2  # the first broke; exactly one waiter ran it again, the rest joined that run
    assert sorted(results) == [b"data: partial\n\ndata: whole\n\n"] * 4 + [b"error"]


def test_abandoned_ticket_and_context_manager() -> None:
    reg = IdempotencyRegistry()

    async def main() -> None:
        t = await reg.begin(None, "k", D1)
        assert isinstance(t, Ticket)
        with pytest.raises(ValueError), t:
            raise ValueError("no answer")
        assert reg.stats()["activeKeys"] == 0
        assert isinstance(await reg.begin(None, "k", D1), Ticket)

    asyncio.run(main())


def test_transient_failures_go_to_joined_waiters_but_are_not_remembered() -> None:
    reg = IdempotencyRegistry()

    async def main() -> None:
        t = await reg.begin(None, "k", D1)
        assert isinstance(t, Ticket)
        waiter = asyncio.ensure_future(reg.begin(None, "k", D1))
        await asyncio.sleep(0)
        t.complete(503, body=b"busy")
        got = await waiter
        assert isinstance(got, Replay) and got.status == 503
        assert isinstance(await reg.begin(None, "k", D1), Ticket)  # a later retry runs afresh

    asyncio.run(main())


def test_cancelled_waiter_does_not_disturb_the_first() -> None:
    reg = IdempotencyRegistry()

    async def main() -> None:
        t = await reg.begin(None, "k", D1)
        assert isinstance(t, Ticket)
        waiter = asyncio.ensure_future(reg.begin(None, "k", D1))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        t.complete(200, body=b"ok")
        got = await reg.begin(None, "k", D1)
        assert isinstance(got, Replay) and got.body == b"ok"

    asyncio.run(main())


def test_memory_is_bounded() -> None:
    reg = IdempotencyRegistry(max_keys=10)

    async def main() -> None:
        for i in range(50):
            t = await reg.begin(None, f"k{i}", D1)
            assert isinstance(t, Ticket)
            t.complete(200, body=b"x")
        assert reg.stats()["activeKeys"] <= 10

    asyncio.run(main())


@pytest.mark.parametrize(("headers", "want"), [
    ({"idempotency-key": " abc "}, "abc"), ({"x-request-id": "r1"}, "r1"), ({}, None), ({"idempotency-key": ""}, None),
])
def test_key_from_headers(headers: dict[str, str], want: Any) -> None:
    assert key_from_headers(headers) == want


def test_overlong_key_is_rejected() -> None:
    with pytest.raises(ClientError, match="at most 255"):
        key_from_headers({"idempotency-key": "x" * 256})
