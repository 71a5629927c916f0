"""Read-only SQL over the usage data of every worker, and the `omniroute sql` command.

    omniroute sql "SELECT key_name, sum(cost_usd) FROM usage GROUP BY 1" [--format table|csv|json]
                  [--data-dir DIR] [--max-rows N] [--timeout S]

A reader is an in-memory DuckDB that ATTACHes every writer slot file (`DIR/usage/wN.duckdb`, see
engine.usage) READ_ONLY and exposes three views: `usage` (one row per upstream attempt), `requests`
(`usage WHERE final`: one row per client request) and `audit`. Safety is layered: only a single
SELECT-type statement passes `check_read_only`; the files are attached read-only; and before the
query runs, file system access is switched off and the configuration locked, so a query can
neither read other files (`read_csv('/etc/...')`), write any (`COPY ... TO`), nor undo that.

Exit codes: 0 ok, 1 SQL error or refused write (message on stderr), 2 usage error.

Public surface: QueryError, ReadOnlyQueryError, check_read_only, open_reader, run_query,
jsonable, main.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import duckdb
import orjson

from engine.usage import (
    AUDIT_COLUMNS,
    USAGE_COLUMNS,
    QueryError,
    ReadOnlyQueryError,
    _dir_lock,
    _is_lock_error,
    _quote,
    jsonable,
)

_READ_TYPES = {duckdb.StatementType.SELECT}  # SELECT, WITH, FROM-first, DESCRIBE, SHOW, SUMMARIZE


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one read statement, before anything runs."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(str(e).strip())
    if not statements:
        raise QueryError("empty query: give one SELECT statement")
    for st in statements:  # every statement, so "SELECT 1; DROP ..." is refused as a write
        if st.type not in _READ_TYPES:
            kind = st.type.name.replace("_", " ")
            raise ReadOnlyQueryError(
                f"refused a {kind} statement: usage data is read-only here; only read statements are "
                "allowed (SELECT, WITH ... SELECT, FROM ..., DESCRIBE, SHOW, SUMMARIZE)")
    if len(statements) > 1:
        raise QueryError(f"got {len(statements)} statements; send one SELECT at a time")


@contextlib.contextmanager
def open_reader(data_dir: Path | str, *, lock_wait: float = 5.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB over every slot file, views `usage`, `requests`, `audit`; session in UTC."""
    usage_dir = Path(data_dir) / "usage"
    slots = sorted((p.stem for p in usage_dir.glob("w*.duckdb") if p.stem[1:].isdigit()), key=lambda s: int(s[1:]))
    # This process's own writer must not have a file open while we have it attached (DuckDB's file
    # locks do not separate two users inside one process), hence the per-directory lock, held
    # until the connection is closed: a writer attaching between release and close conflicts.
    with _dir_lock(usage_dir) if slots else contextlib.nullcontext():
        con = duckdb.connect(":memory:")
        try:
            # Stored timestamps are naive UTC; a UTC session makes now(), current_date and
            # date_trunc agree with them whatever the machine's zone. Without ICU it is UTC anyway.
            with contextlib.suppress(duckdb.Error):
                con.execute("SET TimeZone = 'UTC'")
            for slot in slots:
                _attach_read_only(con, usage_dir / f"{slot}.duckdb", slot, lock_wait)
            _create_views(con, slots)
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            yield con
        finally:
            con.close()


def _attach_read_only(con: duckdb.DuckDBPyConnection, db: Path, alias: str, lock_wait: float) -> None:
    deadline = time.monotonic() + lock_wait
    delay = 0.005
    while True:
        try:
            con.execute(f"ATTACH '{_quote(db)}' AS {alias} (READ_ONLY)")
            return
        except duckdb.Error as e:
            # A writer holds its file for a few milliseconds per flush; wait that out.
            if not _is_lock_error(e) or time.monotonic() > deadline:
                raise QueryError(f"cannot open {db} for reading: {str(e).strip()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _create_views(con: duckdb.DuckDBPyConnection, slots: list[str]) -> None:
    have = set(con.execute("SELECT database_name, table_name FROM duckdb_tables()").fetchall())
    for table, columns in (("usage", USAGE_COLUMNS), ("audit", AUDIT_COLUMNS)):
        parts = [f"SELECT *, '{s}' AS worker FROM {s}.main.{table}" for s in slots if (s, table) in have]
        if parts:
            con.execute(f"CREATE VIEW {table} AS " + " UNION ALL BY NAME ".join(parts))
        else:  # no data yet: an empty table with the right columns keeps every query valid
            cols = ", ".join(f'"{c}" {t}' for c, t in columns.items())
            con.execute(f"CREATE TABLE {table} ({cols}, worker VARCHAR)")
    con.execute("CREATE VIEW requests AS SELECT * FROM usage WHERE final")


def run_query(data_dir: Path | str, sql: str, params: Sequence[Any] | dict[str, Any] | None = None, *,
              max_rows: int | None = None, timeout: float | None = 30.0,
              lock_wait: float = 5.0) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only statement over the usage data in `data_dir`: (columns, rows).

    With `max_rows`, at most max_rows + 1 rows come back (the extra one tells "truncated")."""
    with open_reader(data_dir, lock_wait=lock_wait) as con:
        check_read_only(con, sql)
        timer = threading.Timer(timeout, con.interrupt) if timeout else None
        if timer:
            timer.start()
        try:
            cur = con.execute(sql, params) if params is not None else con.execute(sql)
            columns = [d[0] for d in cur.description or []]
            rows = cur.fetchmany(max_rows + 1) if max_rows is not None else cur.fetchall()
        except duckdb.InterruptException:
            raise QueryError(f"query cancelled after {timeout} s; narrow it (WHERE ts >= ..., LIMIT)")
        except duckdb.Error as e:
            raise QueryError(str(e).strip())
        finally:
            if timer:
                timer.cancel()
        return columns, rows


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal | int | float):
        return str(value)
    v = jsonable(value)
    return v if isinstance(v, str) else orjson.dumps(v).decode()


def _write_table(out: TextIO, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [[("NULL" if v is None else _text(v)).replace("\n", " ") for v in row] for row in rows]
    cells = [[c if len(c) <= 80 else c[:79] + "…" for c in row] for row in cells]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(r[i], int | float | Decimal) or r[i] is None for r in rows)
               for i in range(len(columns))]

    def line(values: list[str]) -> str:
        return " | ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    out.write(line(columns).rstrip() + "\n")
    out.write("-+-".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write(line(row).rstrip() + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def write_result(out: TextIO, columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> None:
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(columns)
        w.writerows([_text(v) for v in row] for row in rows)
    elif fmt == "json":
        data = [{c: jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _write_table(out, columns, rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omniroute sql", description="Read-only SQL over usage analytics "
                                "(views: usage, requests, audit; see docs/analytics.md).")
    p.add_argument("query", help='one SELECT statement, e.g. "SELECT count(*) FROM requests"')
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--data-dir", default="./data", help="the gateway's data_dir (default ./data)")
    p.add_argument("--max-rows", type=int, default=None, help="print at most N rows")
    p.add_argument("--timeout", type=float, default=None, help="cancel the query after S seconds")
    return p


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage message
        return 0 if e.code == 0 else 2
    if args.max_rows is not None and args.max_rows < 0:
        print("omniroute sql: --max-rows must be >= 0", file=sys.stderr)
        return 2
    usage_dir = Path(args.data_dir) / "usage"
    if not usage_dir.is_dir():
        print(f"omniroute sql: note: no usage data in {usage_dir} yet (is --data-dir right?)", file=sys.stderr)
    try:
        columns, rows = run_query(args.data_dir, args.query, max_rows=args.max_rows, timeout=args.timeout)
    except QueryError as e:
        print(f"omniroute sql: {e}", file=sys.stderr)
        return 1
    truncated = args.max_rows is not None and len(rows) > args.max_rows
    write_result(sys.stdout, columns, rows[: args.max_rows] if truncated else rows, args.format)
    if truncated:
        print(f"omniroute sql: output cut at --max-rows {args.max_rows}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
