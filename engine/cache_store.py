"""The response cache's two tiers: a bounded in-memory LRU in front of a SQLite file that survives
restarts and is shared by the worker processes of one data directory.

Why this shape:
- The memory tier answers a hit without I/O. It is bounded by entries *and* bytes (the serialized
  answer), because one long answer must not be able to push out a thousand short ones unnoticed.
  Answers are kept as orjson bytes: the size is exact, and every hit gets a fresh dict the caller
  may change.
- Writes never happen on the event loop: `put` queues the row for one writer thread, which gathers
  the rows of up to 50 ms into one transaction and purges expired rows when idle (SQLite WAL lets
  readers go on). Another worker sees a new answer up to 50 ms late; a crash loses at most those.
- A memory miss looks the key up in an index of the file's keys (a dict), and only a key the file
  holds costs a primary-key query. That is what lets one worker answer from another worker's
  answers and a restarted server keep its cache, without a query per miss.
- Several processes may share the file: WAL mode and a busy timeout let SQLite serialize writers.
  `clear` empties this process's memory and the shared file; another worker's memory tier keeps
  its copies until they expire or are evicted (documented limit of per-process memory).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .cache import CacheRules, SemanticIndex, storable

log = logging.getLogger("omniroute.cache")
_OVERHEAD = 96  # bytes counted per memory entry besides the answer: key, tuple, dict slot
LINGER_S = 0.05  # how long a write waits to share a transaction (see _Disk._next_batch)
CATCH_UP_S = 0.25  # how often the writer looks for rows other processes wrote (see _Disk)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, body BLOB NOT NULL, created REAL NOT NULL, expires REAL NOT NULL
);
DROP INDEX IF EXISTS entries_expires;
DROP INDEX IF EXISTS entries_model;
"""
# No secondary index: each cost ~1.5 µs of writer CPU per stored answer, and the queries they served
# (the purge once a minute, DELETE /api/cache?model=) scan at most persistent_max_entries rows.


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # a crash may lose the last cached answers, never corrupt
    return conn


class _Disk:
    """The persistent tier: reads on the caller's thread, writes through one writer thread.

    `known` maps every key in the file to its expiry, so a miss (most lookups) costs a dict
    lookup, not a SQLite query (~6 µs). Only the writer thread changes it: when it writes our rows,
    and when another process (a sibling worker, a second server on the same data directory) has
    committed, which `PRAGMA data_version` tells; their new rows are read by rowid, within one
    CATCH_UP_S. A key missing from `known` can only cost a false miss, never a wrong answer."""

    def __init__(self, path: Path, clock: Callable[[], float], purge_every_s: float, max_entries: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._clock = clock
        self._purge_every = purge_every_s
        self.max_entries = max_entries
        writer = _connect(path)
        writer.executescript(_SCHEMA)
        self._reader = _connect(path)
        self._read_lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._urgent = threading.Event()
        self.known: dict[str, float] = {}
        self._last_rowid = 0
        self._version = writer.execute("PRAGMA data_version").fetchone()[0]
        self._catch_up(writer)
        self._thread = threading.Thread(target=self._run, args=(writer,), name="omniroute-cache-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ caller side

    def lookup(self, key: str, now: float) -> tuple[bytes, str, float] | None:
        expires = self.known.get(key)
        if expires is None or expires <= now:
            return None
        try:
            with self._read_lock:
                row = self._reader.execute("SELECT body, model, expires FROM entries WHERE key=?", (key,)).fetchone()
        except sqlite3.Error as e:
            log.warning("cache lookup failed: %s", e)
            return None
        if row is None:
            return None
        if row[2] <= now:
            self._queue.put(("del", key))
            return None
        return row

    def put(self, key: str, model: str, body: bytes, created: float, expires: float) -> None:
        self._queue.put(("put", key, model, body, created, expires))

    def call(self, fn: Callable[[sqlite3.Connection], Any], timeout: float = 30.0) -> Any:
        """Run `fn(conn)` on the writer thread after every queued write; wait for its result."""
        fut: cf.Future[Any] = cf.Future()
        self._queue.put(("call", fn, fut))
        self._urgent.set()
        return fut.result(timeout)

    def count(self, now: float) -> int:
        with self._read_lock:
            row = self._reader.execute("SELECT COUNT(*) FROM entries WHERE expires > ?", (now,)).fetchone()
        return int(row[0])

    def clear(self, model: str | None, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM entries WHERE expires <= ?", (now,))
            if model is None:
                removed = conn.execute("DELETE FROM entries").rowcount
            else:
                removed = conn.execute("DELETE FROM entries WHERE model = ?", (model,)).rowcount
            self._reindex(conn)
            return int(removed)

        return int(self.call(run))

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(("stop",))
            self._urgent.set()
            self._thread.join(30)
        self._reader.close()

    # ------------------------------------------------------------ writer thread

    def _run(self, conn: sqlite3.Connection) -> None:
        last_purge = time.monotonic()
        stop = False
        while not stop:
            batch = self._next_batch()
            writes: list[tuple[Any, ...]] = []
            for op in batch:  # in order: a call sees every write queued before it, none after
                if op[0] == "put" or op[0] == "del":
                    writes.append(op)
                    continue
                if writes:
                    self._write(conn, writes)
                    writes = []
                if op[0] == "stop":
                    stop = True
                    continue
                try:
                    op[2].set_result(op[1](conn))
                except Exception as e:
                    op[2].set_exception(e)
            if writes:
                self._write(conn, writes)
            try:
                self._catch_up(conn)
                if time.monotonic() - last_purge >= self._purge_every:
                    last_purge = time.monotonic()
                    self._purge(conn)
            except sqlite3.Error as e:
                log.warning("cache maintenance failed: %s", e)
        conn.close()

    def _next_batch(self) -> list[tuple[Any, ...]]:
        """Writes wait LINGER_S for company: a transaction per answer, and a thread wake-up per
        queued row, cost more CPU than the rest of a cache miss, and an answer written 50 ms later
        is still a cache. A call (flush, clear, close) sets `_urgent` and ends the wait at once."""
        try:
            batch = [self._queue.get(timeout=min(self._purge_every, CATCH_UP_S))]
        except queue.Empty:
            return []
        if batch[0][0] in ("put", "del"):
            self._urgent.wait(LINGER_S)
        self._urgent.clear()
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch

    def _write(self, conn: sqlite3.Connection, ops: list[tuple[Any, ...]]) -> None:
        """One transaction for a batch; a failure loses these rows from the file only."""
        puts = [op[1:] for op in ops if op[0] == "put"]
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._catch_up(conn)  # rows other processes committed first, before ours move the rowid on
            now = self._clock()
            conn.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)", puts)
            conn.executemany("DELETE FROM entries WHERE key = ? AND expires <= ?", [(op[1], now) for op in ops if op[0] == "del"])
            self._last_rowid = conn.execute("SELECT max(rowid) FROM entries").fetchone()[0] or 0
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            log.warning("cache write failed; these answers stay in memory only: %s", e)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return
        known = self.known
        for key, _, _, _, expires in puts:
            known[key] = expires

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """Index the rows other processes committed since we last looked."""
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version and self._last_rowid:
            return
        self._version = version
        known = self.known
        for rowid, key, expires in conn.execute("SELECT rowid, key, expires FROM entries WHERE rowid > ?", (self._last_rowid,)):
            known[key] = expires
            self._last_rowid = max(self._last_rowid, rowid)

    def _purge(self, conn: sqlite3.Connection) -> None:
        """Expired rows out; beyond `max_entries`, the rows closest to expiry too."""
        now = self._clock()
        conn.execute("DELETE FROM entries WHERE expires <= ?", (now,))
        extra = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] - self.max_entries
        if extra > 0:
            conn.execute("DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries ORDER BY expires LIMIT ?)", (extra,))
        self._reindex(conn)

    def _reindex(self, conn: sqlite3.Connection) -> None:
        """`known` rebuilt from the file (after deletes): swapped whole, so readers never see it
        half-built; rows another process adds meanwhile come back with the next catch-up."""
        self.known = {key: expires for key, expires in conn.execute("SELECT key, expires FROM entries")}
        self._last_rowid = conn.execute("SELECT max(rowid) FROM entries").fetchone()[0] or 0
        self._version = conn.execute("PRAGMA data_version").fetchone()[0]


class ResponseCache:
    """Canonical responses by cache key (see cache.cache_key), with TTL, LRU bounds and a
    persistent tier under `data_dir` (memory only when `data_dir` is None or unusable)."""

    def __init__(self, data_dir: Path | None, rules: CacheRules, clock: Callable[[], float] = time.time, *,
                 purge_every_s: float = 60.0) -> None:
        self.rules = rules
        self._clock = clock
        self._mem: OrderedDict[str, tuple[bytes, str, float, int]] = OrderedDict()  # body, model, expires, size
        self._bytes = 0
        self._lock = threading.Lock()  # the admin API clears from a worker thread
        self.hits = 0
        self.misses = 0
        self.semantic: SemanticIndex | None = None
        self._disk: _Disk | None = None
        if data_dir is not None:
            try:
                self._disk = _Disk(Path(data_dir) / "cache.sqlite3", clock, purge_every_s, rules.persistent_max_entries)
            except (OSError, sqlite3.Error) as e:
                log.error("response cache persistent tier disabled: the data directory is not usable: %s", e)
        self.configure(rules)

    def configure(self, rules: CacheRules) -> None:
        """Apply new rules (config reload): bounds shrink at once, the semantic index follows."""
        self.rules = rules
        with self._lock:
            self._evict()
        if self._disk is not None:
            self._disk.max_entries = rules.persistent_max_entries  # applied at the next purge
        if not rules.semantic_enabled:
            self.semantic = None
        elif self.semantic is None:
            self.semantic = SemanticIndex(rules.semantic_max_entries, ttl_s=rules.ttl_s, clock=self._clock)
        else:
            self.semantic.max_entries, self.semantic.ttl_s = rules.semantic_max_entries, rules.ttl_s

    @property
    def persistent(self) -> bool:
        return self._disk is not None

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached canonical response for `key` if still fresh, else None (counted as a miss)."""
        now = self._clock()
        with self._lock:
            entry = self._mem.get(key)
            if entry is not None:
                if entry[2] > now:
                    self._mem.move_to_end(key)
                    self.hits += 1
                    return orjson.loads(entry[0])
                self._drop(key)
        if self._disk is not None:
            row = self._disk.lookup(key, now)
            if row is not None:
                body, model, expires = row
                with self._lock:
                    self._remember(key, body, model, expires)
                    self.hits += 1
                return orjson.loads(body)
        self.misses += 1
        return None

    def put(self, key: str, response: dict[str, Any], model: str) -> bool:
        """Store a complete canonical response; False when the rules refuse it (see cache.storable)."""
        if not self.rules.enabled or not storable(response, self.rules):
            return False
        self.put_bytes(key, orjson.dumps(response), model)
        return True

    def put_bytes(self, key: str, body: bytes, model: str) -> None:
        """Store an entry already serialized (cache.wire_entry): the caller checked it is storable."""
        now = self._clock()
        expires = now + self.rules.ttl_s
        with self._lock:
            self._remember(key, body, model, expires)
        if self._disk is not None:
            self._disk.put(key, model, body, now, expires)

    def clear(self, model: str | None = None) -> int:
        """Remove every entry (or those of `model`) from all tiers; the number removed. Blocks until
        the writer thread has done it: call it from a worker thread, not the event loop."""
        with self._lock:
            keys = [k for k, e in self._mem.items() if model is None or e[1] == model]
            for k in keys:
                self._drop(k)
        if self.semantic is not None:
            self.semantic.clear(model)
        removed = len(keys)
        if self._disk is not None:
            try:
                removed = max(removed, self._disk.clear(model, self._clock()))
            except (sqlite3.Error, cf.TimeoutError) as e:
                log.warning("cache clear of the persistent tier failed: %s", e)
        return removed

    def flush(self) -> None:
        """Wait until every queued write reached the file (tests, shutdown)."""
        if self._disk is not None:
            self._disk.call(lambda conn: None)

    def stats(self) -> dict[str, Any]:
        """The `semanticCache` object of GET /api/cache, plus bytes and raw counters."""
        total = self.hits + self.misses
        db_size = 0
        if self._disk is not None:
            try:
                db_size = self._disk.count(self._clock())
            except sqlite3.Error:
                db_size = -1
        return {
            "memorySize": len(self._mem),
            "memoryMaxSize": self.rules.max_entries,
            "memoryBytes": self._bytes,
            "memoryMaxBytes": self.rules.max_bytes,
            "dbSize": db_size,
            "hitRate": round(self.hits / total, 4) if total else 0.0,
            "hits": self.hits,
            "misses": self.misses,
            "semanticSize": len(self.semantic) if self.semantic is not None else 0,
            "persistent": self._disk is not None,
        }

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        if self._disk is not None:
            self._disk.close()
            self._disk = None

    # ------------------------------------------------------------ memory tier (lock held)

    def _remember(self, key: str, body: bytes, model: str, expires: float) -> None:
        size = len(body) + len(key) + _OVERHEAD
        self._drop(key)
        if size > self.rules.max_bytes or self.rules.max_entries <= 0:
            return  # too big for memory: it lives in the persistent tier only
        self._mem[key] = (body, model, expires, size)
        self._bytes += size
        self._evict()

    def _evict(self) -> None:
        mem = self._mem
        while mem and (len(mem) > self.rules.max_entries or self._bytes > self.rules.max_bytes):
            _, entry = mem.popitem(last=False)
            self._bytes -= entry[3]

    def _drop(self, key: str) -> None:
        entry = self._mem.pop(key, None)
        if entry is not None:
            self._bytes -= entry[3]
