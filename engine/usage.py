"""Usage records: the schema and the batching writer (reading lives in engine.sqlcli).

Multi-process scheme (DuckDB admits one writing process per file):
- Each process claims a *slot* `wN` with an exclusive `flock` on `usage/wN.lock` (lowest free N;
  the kernel drops it when the process dies, even under `kill -9`). Only the slot's owner writes
  `usage/wN.duckdb`: workers never share a file, and a restarted worker reuses a slot.
- `record()` appends the dict to a deque: O(1), no I/O, nothing the event loop waits for.
- A flusher thread, every `flush_interval`, serialises the buffer with orjson into
  `usage/pending/wN-SEQ.usage.ndjson` (written as `.tmp`, then renamed: whole or absent). It then
  ingests every pending file of its slot in one transaction: ATTACH the slot's file to a private
  in-memory DuckDB, `INSERT ... SELECT FROM read_json(files)`, store the highest SEQ in `_writer`,
  COMMIT, DETACH (which checkpoints and drops the file lock), delete the files. A leftover file at
  or below that watermark was already ingested, so a crash between COMMIT and delete never
  duplicates.
- Readers (engine.sqlcli) ATTACH every `wN.duckdb` READ_ONLY for the length of one query. While a
  reader holds a file the writer cannot attach it: its batches wait as files on disk and go in at
  the next tick, so nobody sees a lock error and memory does not grow.
- Under load (BUSY_RECORDS waiting at a tick) the flusher lets records gather for BUSY_TICKS
  intervals: a flush has a fixed cost of ~20 ms, and records reach SQL 1.5 s late instead of 0.5 s.
- `kill -9` loses at most the in-memory buffer (one `flush_interval`, BUSY_TICKS under load);
  DuckDB's WAL rolls back a half-done transaction. `close()` flushes everything.

Public surface: USAGE_COLUMNS, AUDIT_COLUMNS, UsageStore, redact, ensure_schema, insert_sql.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import math
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import duckdb


class QueryError(Exception):
    """A usage query failed (bad SQL, or a file stayed locked); the message says why."""


class ReadOnlyQueryError(QueryError):
    """A statement that would write was refused."""


def jsonable(value: Any) -> Any:
    """A DuckDB value -> what orjson writes: timestamps as ISO-8601 UTC with Z, decimals exact."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())  # a JSON number, digit for digit
    if isinstance(value, datetime):
        if value.tzinfo is None:  # the usage tables keep naive UTC timestamps
            return value.isoformat() + "Z"
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


log = logging.getLogger("omniroute.usage")

_SENSITIVE = {
    "authorization", "proxy_authorization", "api_key", "apikey", "x_api_key", "x_goog_api_key", "key",
    "password", "passwd", "secret", "token", "access_token", "refresh_token", "id_token", "session_token",
    "client_secret", "cookie", "set_cookie", "credentials",
}
# Credentials that leak into free text: bearer tokens, provider key shapes, `?key=` URL parameters.
# Narrow on purpose: prompt text ("the basic idea") must survive.
_SECRET_IN_TEXT = re.compile(
    r"(Bearer\s+)[A-Za-z0-9._~+/=-]{12,}|\b()(?:sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,})"
    r"|([?&](?:key|api_key|apikey|token|access_token)=)[^&#\s\"']+"
)
_CHUNK = 200  # records serialised between two GIL yields
BUSY_RECORDS = 256  # a buffer this full at a tick waits for more, up to BUSY_TICKS ticks (UsageStore._run)
BUSY_TICKS = 3
_MAX_PAYLOAD = 1 << 20  # a payload larger than this is replaced by a marker: records stay small
_FLOCKS: dict[str, threading.Lock] = {}
_FLOCKS_GUARD = threading.Lock()


# One row per upstream attempt; the attempt that produced the client's answer has final = true, so
# `requests` (= usage WHERE final) has one row per client request. Every column is described in
# docs/analytics.md (a test keeps the two in step).
USAGE_COLUMNS: dict[str, str] = {
    "request_id": "VARCHAR", "attempt": "INTEGER", "final": "BOOLEAN", "ts": "TIMESTAMP",
    "key_name": "VARCHAR", "client_format": "VARCHAR", "route": "VARCHAR", "model_requested": "VARCHAR",
    "combo": "VARCHAR", "provider": "VARCHAR", "provider_spec": "VARCHAR", "account": "VARCHAR",
    "upstream_model": "VARCHAR", "modality": "VARCHAR", "status": "INTEGER", "error_class": "VARCHAR",
    "input_tokens": "BIGINT", "output_tokens": "BIGINT", "cached_tokens": "BIGINT",
    "cache_write_tokens": "BIGINT", "reasoning_tokens": "BIGINT", "images": "INTEGER",
    "audio_seconds": "DOUBLE", "cost_micro_usd": "BIGINT", "cost_usd": "DECIMAL(18,6)",
    "latency_ms": "DOUBLE", "ttfb_ms": "DOUBLE", "stream": "BOOLEAN", "cache": "VARCHAR",
    "bytes_in": "BIGINT", "bytes_out": "BIGINT", "lossy": "VARCHAR", "tags": "VARCHAR[]", "payload": "JSON",
}
AUDIT_COLUMNS: dict[str, str] = {
    "ts": "TIMESTAMP", "actor": "VARCHAR", "action": "VARCHAR", "target": "VARCHAR", "detail": "JSON",
}
_ZERO_DEFAULT = {"attempt", "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
                 "reasoning_tokens", "images", "audio_seconds", "bytes_in", "bytes_out"}
_EXPRS = {
    "ts": 'make_timestamp(CAST(round("ts" * 1000000) AS BIGINT))',
    "cost_usd": 'CAST(CAST("cost_micro_usd" AS DECIMAL(18,0)) * 0.000001 AS DECIMAL(18,6))',
    "final": 'coalesce("final", true)',
    "stream": 'coalesce("stream", false)',
    **{c: f'coalesce("{c}", 0)' for c in _ZERO_DEFAULT},
}


def ensure_schema(con: duckdb.DuckDBPyConnection, db: str) -> None:
    """Create the tables in attached database `db`, adding columns a newer version introduced."""
    for table, columns in (("usage", USAGE_COLUMNS), ("audit", AUDIT_COLUMNS)):
        cols = ", ".join(f'"{c}" {t}' for c, t in columns.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS {db}.{table} ({cols})")
    con.execute(f"CREATE TABLE IF NOT EXISTS {db}._writer (seq BIGINT)")
    have = set(con.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = ?",
                           [db]).fetchall())
    for table, columns in (("usage", USAGE_COLUMNS), ("audit", AUDIT_COLUMNS)):
        for c, t in columns.items():
            if (table, c) not in have:
                con.execute(f'ALTER TABLE {db}.{table} ADD COLUMN "{c}" {t}')


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def insert_sql(db: str, table: str) -> str:
    """INSERT reading NDJSON files (bound as the one parameter); unknown keys are ignored."""
    columns = USAGE_COLUMNS if table == "usage" else AUDIT_COLUMNS
    raw = {c: "DOUBLE" if c == "ts" else t for c, t in columns.items() if c != "cost_usd"}
    spec = "{" + ", ".join(f"'{c}': '{t}'" for c, t in raw.items()) + "}"
    exprs = ", ".join(f'{_EXPRS.get(c, chr(34) + c + chr(34))} AS "{c}"' for c in columns)
    return (f"INSERT INTO {db}.{table} BY NAME SELECT {exprs} FROM read_json(?, format = 'newline_delimited', "
            f"columns = {spec}, maximum_object_size = {4 * _MAX_PAYLOAD})")


def _coerce(value: Any, typ: str, column: str) -> Any:
    if value is None:
        return None
    try:
        if column == "ts":
            if isinstance(value, str):
                dt = datetime.fromisoformat(value)
                return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
            f = float(value)
            return f if math.isfinite(f) else None
        if typ in ("INTEGER", "BIGINT"):
            n = int(float(value)) if isinstance(value, str) else int(value)
            bound = 2**31 if typ == "INTEGER" else 2**63
            return n if -bound <= n < bound else None
        if typ == "DOUBLE":
            f = float(value)
            return f if math.isfinite(f) else None
        if typ == "BOOLEAN":
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if typ == "VARCHAR":
            return value if isinstance(value, str) else orjson.dumps(value).decode()
        if typ == "VARCHAR[]":
            items = value if isinstance(value, list) else [value]
            return [x if isinstance(x, str) else orjson.dumps(x).decode() for x in items]
        return value
    except (TypeError, ValueError, OverflowError):
        return None


def sanitize(path: Path, columns: dict[str, str]) -> None:
    """Rewrite an NDJSON batch so every value fits its column type (bad values become NULL)."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        clean = {c: _coerce(rec.get(c), t, c) for c, t in columns.items() if c != "cost_usd"}
        if clean.get("ts") is None:
            clean["ts"] = time.time()
        out.append(orjson.dumps(clean))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"\n".join(out) + b"\n")
    os.rename(tmp, path)


def _is_sensitive(name: str) -> bool:
    n = name.lower().replace("-", "_")
    return n in _SENSITIVE or n.endswith(("_api_key", "_secret", "_password", "_token"))


def redact(value: Any) -> Any:
    """A copy of `value` with credentials replaced by "***": values of keys named like one (any
    depth), `[name, value]` header pairs, and bearer tokens or `?key=` parameters inside strings."""
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and _is_sensitive(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str) and _is_sensitive(value[0]):
            return [value[0], "***"]
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _SECRET_IN_TEXT.sub(lambda m: (m.group(1) or m.group(2) or m.group(3) or "") + "***", value)
    return value


def _dir_lock(usage_dir: Path) -> threading.Lock:
    """One lock per usage directory per process: DuckDB's file locks are per process, so this
    process's reader and writer must not have the same file open at once."""
    key = str(usage_dir.resolve())
    with _FLOCKS_GUARD:
        return _FLOCKS.setdefault(key, threading.Lock())


def _default(obj: Any) -> Any:
    return list(obj) if isinstance(obj, set | frozenset) else str(obj)


def _dumps(rec: dict[str, Any]) -> bytes:
    for field in ("payload", "detail"):
        value = rec.get(field)
        if value is not None:
            rec = dict(rec)
            clean = orjson.dumps(redact(value), default=_default, option=orjson.OPT_NON_STR_KEYS)
            rec[field] = orjson.Fragment(clean) if len(clean) <= _MAX_PAYLOAD else {"truncated": True, "bytes": len(clean)}
    return orjson.dumps(rec, default=_default, option=orjson.OPT_NON_STR_KEYS)


def _close_at_exit(ref: weakref.ref[UsageStore]) -> None:
    store = ref()
    if store is not None:
        store.close()


def _is_lock_error(e: BaseException) -> bool:
    import duckdb  # imported on first use: an idle gateway does not pay its memory

    return isinstance(e, duckdb.IOException) and "lock" in str(e).lower()


class UsageStore:
    """The per-process usage writer. Create one per worker process, after the fork."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        flush_interval: float = 0.5,
        max_buffer: int = 1_000_000,
        close_timeout: float = 10.0,
    ) -> None:
        self.dir = Path(data_dir) / "usage"
        self.pending_dir = self.dir / "pending"
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.close_timeout = close_timeout
        self._buf: deque[dict[str, Any]] = deque()
        self._audit: deque[dict[str, Any]] = deque()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._last_seq = 0
        self._mine: set[str] = set()  # pending files this process wrote and has not ingested yet
        self._schema_for: tuple[int, int] | None = None  # (device, inode) of the file whose schema and watermark we know
        self._mark = 0
        self._closed = False
        self.recorded = 0
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._pid = os.getpid()
        self.slot, self._slot_fd = self._claim_slot()
        for stale in self.pending_dir.glob(f"{self.slot}-*.tmp"):  # the previous owner died writing it
            stale.unlink(missing_ok=True)
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- request path -------------------------------------------------------------------------

    def record(self, rec: dict[str, Any]) -> None:
        """Queue one record (the store takes ownership of the dict). Never blocks, never raises."""
        if "ts" not in rec:
            rec["ts"] = time.time()
        if len(self._buf) >= self.max_buffer:
            self.dropped += 1
            return
        self.recorded += 1
        self._buf.append(rec)

    def audit(self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
        """Queue one audit event: who changed which configuration or key, and how."""
        self._audit.append({"ts": time.time(), "actor": actor, "action": action, "target": target, "detail": detail})

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Ingest what a previous run left pending (so a budget rebuild right after sees it), then
        start the flusher thread."""
        if self._thread is None:
            with contextlib.suppress(Exception):  # a locked file is retried by the flusher
                self._adopt_orphans()
                with self._flush_lock:
                    self._ingest(self.slot)
            self._thread = threading.Thread(target=self._run, name=f"usage-writer-{self.slot}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.flush_interval):
            # Each flush has a fixed cost (~20 ms: ATTACH, INSERT setup, COMMIT, DETACH's
            # checkpoint), ~40 µs per request at 1,000 requests/s if paid twice a second. Under
            # load, records wait a few ticks and go in as one bigger batch.
            if len(self._buf) >= BUSY_RECORDS and time.monotonic() - last < BUSY_TICKS * self.flush_interval * 0.99:
                continue
            last = time.monotonic()
            try:
                self.flush()
            except Exception as e:  # the writer must outlive a bad batch or a full disk
                self.last_error = str(e)
                log.exception("usage flush failed; records stay pending on disk", extra={"slot": self.slot})

    def close(self) -> None:
        """Flush everything and stop. Idempotent. Waits up to `close_timeout` for readers to let go
        of the file; whatever is still pending then stays on disk and is ingested at next start."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + self.close_timeout
        while True:
            try:
                left = self.flush()
            except Exception as e:
                self.last_error, left = str(e), -1
            if left == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if left:
            log.warning("usage close left batches pending on disk; the next start ingests them",
                        extra={"slot": self.slot, "pending": left})
        if self._con is not None:
            self._con.close()
            self._con = None
        os.close(self._slot_fd)

    # -- writing ------------------------------------------------------------------------------

    def flush(self) -> int:
        """Write the buffer to a pending file and ingest all pending files of this slot. Blocking:
        call from a thread, not the event loop. Returns how many pending files are left (0 = all
        records are in DuckDB)."""
        if os.getpid() != self._pid:  # a forked child shares the parent's slot lock
            raise RuntimeError("this UsageStore was created in another process; create one per worker after the fork")
        with self._flush_lock:
            self._spill("usage", self._buf)
            self._spill("audit", self._audit)
            return self._ingest(self.slot)

    def _spill(self, kind: str, buf: deque[dict[str, Any]]) -> None:
        if not buf:
            return
        batch = []
        with contextlib.suppress(IndexError):
            while True:
                batch.append(buf.popleft())
        seq = self._last_seq = max(time.time_ns(), self._last_seq + 1)
        final = self.pending_dir / f"{self.slot}-{seq:020d}.{kind}.ndjson"
        tmp = final.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                for i in range(0, len(batch), _CHUNK):
                    f.write(b"\n".join(map(_dumps, batch[i : i + _CHUNK])) + b"\n")
                    # Serialising holds the GIL; yielding it between chunks keeps the event loop's
                    # waits under a millisecond instead of a whole 5 ms switch interval.
                    time.sleep(0)
            os.rename(tmp, final)
        except OSError:  # disk full or gone: keep the records for the next tick
            buf.extendleft(reversed(batch))
            raise
        self._mine.add(final.name)

    def _pending(self, slot: str) -> list[Path]:
        return sorted(self.pending_dir.glob(f"{slot}-*.ndjson"))

    def _ingest(self, slot: str) -> int:
        files = self._pending(slot)
        if not files:
            return 0
        import duckdb  # first use here: an idle gateway does not pay its memory

        if self._con is None:
            self._con = duckdb.connect(":memory:")
        con = self._con
        db = self.dir / f"{slot}.duckdb"
        with _dir_lock(self.dir):
            try:
                con.execute(f"ATTACH '{_quote(db)}' AS wdb")
            except duckdb.Error as e:
                if _is_lock_error(e):  # a reader holds it: try again next tick
                    return len(files)
                raise
            try:
                ident = _file_id(db)
                if ident != self._schema_for:  # once per file: the slot's owner is its only writer
                    ensure_schema(con, "wdb")
                    row = con.execute("SELECT max(seq) FROM wdb._writer").fetchone()
                    self._mark = (row[0] if row else None) or 0
                    self._schema_for = ident
                mark = self._mark
                # A file a dead owner left at or below the watermark was ingested before that
                # owner could delete it; files this process wrote are new whatever their SEQ.
                todo = [f for f in files if f.name in self._mine or _seq(f) > mark]
                if todo:
                    self._mark = max(mark, _seq(todo[-1]))
                    try:
                        self._insert(con, todo, self._mark)
                    except BaseException:
                        self._schema_for = None  # read the watermark and schema again next time
                        raise
                self._last_seq = max(self._last_seq, mark)
            finally:
                con.execute("DETACH wdb")
        for f in files:
            f.unlink(missing_ok=True)
            self._mine.discard(f.name)
        return 0

    def _insert(self, con: duckdb.DuckDBPyConnection, files: list[Path], mark: int) -> None:
        import duckdb

        usage = [str(f) for f in files if f.name.endswith(".usage.ndjson")]
        audit = [str(f) for f in files if f.name.endswith(".audit.ndjson")]
        for attempt in (1, 2):
            con.execute("BEGIN TRANSACTION")
            try:
                n = 0
                if usage:
                    row = con.execute(insert_sql("wdb", "usage"), [usage]).fetchone()
                    n = row[0] if row else 0
                if audit:
                    con.execute(insert_sql("wdb", "audit"), [audit])
                con.execute("DELETE FROM wdb._writer")
                con.execute("INSERT INTO wdb._writer VALUES (?)", [mark])
                con.execute("COMMIT")
                self.written += n
                return
            except duckdb.Error as e:
                con.execute("ROLLBACK")
                if isinstance(e, duckdb.IOException):  # disk trouble: keep the files, retry later
                    raise
                if attempt == 2:
                    self._quarantine(files, e)
                    return
                # One record with a wrong type fails the whole batch: coerce every record of these
                # files to the column types and try once more.
                for f in files:
                    sanitize(f, AUDIT_COLUMNS if f.name.endswith(".audit.ndjson") else USAGE_COLUMNS)

    def _quarantine(self, files: list[Path], error: Exception) -> None:
        # Never let one unreadable batch block every later one: set it aside for a human.
        rejected = self.dir / "rejected"
        rejected.mkdir(exist_ok=True)
        for f in files:
            os.replace(f, rejected / f.name)
        self.last_error = str(error)
        log.error("usage batch rejected after coercion; moved aside", extra={"files": len(files), "error": str(error)})

    def _claim_slot(self) -> tuple[str, int]:
        for n in range(4096):
            fd = os.open(self.dir / f"w{n}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return f"w{n}", fd
        raise RuntimeError(f"no free usage slot in {self.dir}: more than 4096 writer processes?")

    def _adopt_orphans(self) -> None:
        """Ingest batches a dead process left behind in a slot nobody holds any more."""
        for lock in self.dir.glob("w*.lock"):
            slot = lock.stem
            if slot == self.slot or not self._pending(slot):
                continue
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            else:
                with self._flush_lock, contextlib.suppress(Exception):
                    self._ingest(slot)
            finally:
                os.close(fd)

    # -- reading ------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None, *,
              max_rows: int | None = None, timeout: float | None = 30.0) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Read-only SQL over every worker's flushed records; raises sqlcli.QueryError (and its
        subclass ReadOnlyQueryError for writes). Blocking: call from a thread."""
        from engine.sqlcli import run_query  # sqlcli builds on this module's schema

        return run_query(self.dir.parent, sql, params, max_rows=max_rows, timeout=timeout)

    def stats(self) -> dict[str, Any]:
        return {"slot": self.slot, "recorded": self.recorded, "written": self.written, "dropped": self.dropped,
                "buffered": len(self._buf), "pending_files": len(self._pending(self.slot)),
                "last_error": self.last_error}


def _seq(path: Path) -> int:
    return int(path.name.split("-", 1)[1].split(".", 1)[0])


def _quote(path: Path | str) -> str:
    return str(path).replace("'", "''")
