"""Idempotency: one answer per `Idempotency-Key` (or `X-Request-Id`) per API key within a window.

Why a registry of in-flight and finished requests rather than a cache of answers: a duplicate that
arrives while the first is still running must not call upstream a second time. It waits for the
first and gets the same answer (a stream's duplicate gets the whole recorded stream). A duplicate
after the first finished, within the window (5 s by default), gets the recorded answer at once. The
answer is replayed with `X-OmniRoute-Idempotent: true`.

Rules:
- Keys are scoped per API key: two tenants may use the same Idempotency-Key without meeting.
- The same key with a different request (method, path or body bytes) is a 409 naming the key,
  never someone else's answer.
- If the first run ends without an answer (an exception escaped, the client went away, the stream
  broke), the ticket is abandoned: one waiter takes over and runs the request itself, the others
  wait for it. So upstream is still called once at a time, and no one gets a half answer.
- A first answer that is a transient failure (429 or 5xx) is given to the waiters that joined it,
  but not remembered for later repeats: a retry after it finished deserves a fresh attempt.

State is per process (a Redis-backed registry can replace it behind the same `begin`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from .errors import ClientError
from .http import Response, StreamingResponse

MAX_KEY_LENGTH = 255
REPLAY_HEADER = "x-omniroute-idempotent"
_DROP_HEADERS = frozenset(("content-length", "content-type", "server-timing", "x-omniroute-cache"))


def request_digest(method: str, path: str, body: bytes) -> str:
    """What must match for a repeat to be the same request: method, path and the body bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{method} {path}\n".encode())
    h.update(body)
    return h.hexdigest()


def key_from_headers(headers: dict[str, str]) -> str | None:
    """The client's idempotency key (lower-cased header names), validated."""
    key = headers.get("idempotency-key") or headers.get("x-request-id")
    if key is None:
        return None
    key = key.strip()
    if not key:
        return None
    if len(key) > MAX_KEY_LENGTH or any(ord(c) < 32 for c in key):
        raise ClientError(f"Idempotency-Key must be at most {MAX_KEY_LENGTH} printable characters", param="Idempotency-Key")
    return key


@dataclass
class Replay:
    """A recorded answer: `body` for a plain response, `chunks` for a stream."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    chunks: list[bytes] | None = None
    media_type: str = "application/json"

    def response(self) -> Response:
        """The replay as a response, marked with X-OmniRoute-Idempotent: true."""
        headers = {**self.headers, REPLAY_HEADER: "true"}
        if self.chunks is None:
            return Response(self.body or b"", self.status, headers, media_type=self.media_type)
        return StreamingResponse(_replay(self.chunks), self.status, headers, media_type=self.media_type)


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


@dataclass
class _Entry:
    digest: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: Replay | None = None
    finished_at: float | None = None


class Ticket:
    """The right (and duty) to run a request: end it with `complete`, `wrap` or `abandon`.
    Used as a context manager it abandons on any exit without an answer."""

    __slots__ = ("_entry", "_k", "_registry", "key")

    def __init__(self, registry: IdempotencyRegistry, k: tuple[str, str], entry: _Entry) -> None:
        self._registry = registry
        self._k = k
        self._entry = entry
        self.key = k[1]

    @property
    def finished(self) -> bool:
        return self._entry.done.is_set()

    def complete(self, status: int, headers: dict[str, str] | None = None, body: bytes | None = None,
                 chunks: list[bytes] | None = None, media_type: str = "application/json") -> None:
        if self.finished:
            return
        kept = {k: v for k, v in (headers or {}).items() if k.lower() not in _DROP_HEADERS}
        self._registry._finish(self._k, self._entry, Replay(status, kept, body, chunks, media_type))

    def abandon(self) -> None:
        if not self.finished:
            self._registry._finish(self._k, self._entry, None)

    async def record_stream(self, chunks: AsyncIterator[bytes], status: int = 200, headers: dict[str, str] | None = None,
                            media_type: str = "text/event-stream") -> AsyncIterator[bytes]:
        """Yield `chunks` while recording them; complete at the normal end, abandon on any other
        end (client gone, error raised), so a half stream is never replayed."""
        seen: list[bytes] = []
        completed = False
        try:
            async for c in chunks:
                if c:
                    seen.append(c)
                yield c
            completed = True
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            if completed:
                self.complete(status, headers, chunks=seen, media_type=media_type)
            else:
                self.abandon()

    def wrap(self, resp: Response) -> Response:
        """Record `resp` as this key's answer: at once for a plain response, as it streams otherwise."""
        if isinstance(resp, StreamingResponse):
            resp.chunks = self.record_stream(resp.chunks, resp.status, resp.headers, resp.media_type or "text/event-stream")
            return resp
        self.complete(resp.status, resp.headers, body=resp.body, media_type=resp.media_type or "application/json")
        return resp

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.abandon()


class IdempotencyRegistry:
    """In-flight and recently finished requests by (scope, key). Memory is bounded: finished entries
    leave after the window, and at most `max_keys` entries are held (oldest finished out first)."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic, *, max_keys: int = 10_000) -> None:
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._finished: dict[tuple[str, str], float] = {}  # insertion order = finish order

    async def begin(self, scope: str | None, key: str, body_digest: str) -> Ticket | Replay:
        """A Ticket when this caller must run the request; a Replay of the first one's answer
        otherwise (waiting for it when it is still running). 409 when the key was used for a
        different request."""
        k = (scope or "", key)
        while True:
            self._expire()
            entry = self._entries.get(k)
            if entry is None:
                return self._ticket(k, body_digest)
            if entry.digest != body_digest:
                raise ClientError(
                    f"Idempotency-Key '{key}' was already used with a different request within the last "
                    f"{self.window_s:g} s; use a new key for a new request", status=409, kind="conflict",
                    param="Idempotency-Key")
            if not entry.done.is_set():
                await entry.done.wait()  # Event.wait is cancel-safe: a waiter leaving harms no one
            if entry.result is not None:
                return entry.result
            # the first run ended without an answer: loop, and the first waiter to wake takes over

    def stats(self) -> dict[str, int]:
        self._expire()
        return {"activeKeys": len(self._entries), "windowMs": round(self.window_s * 1000)}

    def _ticket(self, k: tuple[str, str], digest: str) -> Ticket:
        entry = _Entry(digest)
        self._entries[k] = entry
        if len(self._entries) > self.max_keys:
            self._shed()
        return Ticket(self, k, entry)

    def _finish(self, k: tuple[str, str], entry: _Entry, result: Replay | None) -> None:
        entry.result = result
        entry.finished_at = self._clock()
        entry.done.set()
        if self._entries.get(k) is not entry:
            return  # shed or replaced meanwhile
        transient = result is not None and (result.status == 429 or result.status >= 500)
        if result is None or transient or self.window_s <= 0:
            del self._entries[k]  # waiters already hold the entry; later repeats start afresh
        else:
            self._finished.pop(k, None)
            self._finished[k] = entry.finished_at

    def _expire(self) -> None:
        if not self._finished:
            return
        limit = self._clock() - self.window_s
        fin = self._finished
        while fin:
            k, at = next(iter(fin.items()))
            if at > limit:
                break
            del fin[k]
            entry = self._entries.get(k)
            if entry is not None and entry.finished_at == at:
                del self._entries[k]

    def _shed(self) -> None:
        """Over max_keys: drop the oldest finished entries (running ones are never dropped)."""
        while len(self._entries) > self.max_keys and self._finished:
            k = next(iter(self._finished))
            del self._finished[k]
            self._entries.pop(k, None)
