"""The usage writer: records land in DuckDB off the request path, survive shutdown and crashes,
and several writer processes never fight over a file."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import orjson
import pytest

from engine.sqlcli import open_reader, run_query
from engine.usage import AUDIT_COLUMNS, BUSY_RECORDS, USAGE_COLUMNS, UsageStore, redact

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 15, 12, 0, tzinfo=UTC).timestamp()


def base(**kw):
    rec = {"request_id": "r1", "attempt": 0, "final": True, "ts": T0, "key_name": "team-a",
           "client_format": "openai-chat", "route": "/v1/chat/completions", "model_requested": "coding",
           "combo": "coding", "provider": "openai", "provider_spec": "openai", "account": "acct-1",
           "upstream_model": "gpt-4.1", "status": 200, "error_class": None, "input_tokens": 1000,
           "output_tokens": 500, "cached_tokens": 200, "cache_write_tokens": 0, "reasoning_tokens": 0,
           "cost_micro_usd": 5700, "latency_ms": 812.5, "ttfb_ms": 120.0, "stream": False, "cache": "MISS",
           "bytes_in": 2048, "bytes_out": 4096, "modality": "chat"}
    rec.update(kw)
    return rec


def rows(data_dir, sql, params=None):
    return run_query(data_dir, sql, params)[1]


def child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_records_for_every_kind_of_outcome(tmp_path):
    store = UsageStore(tmp_path)
    store.record(base(request_id="ok"))
    store.record(base(request_id="upstream-error", status=503, error_class="server", input_tokens=0,
                      output_tokens=0, cached_tokens=0, cost_micro_usd=0))
    # fallback: the first target is rate limited, the second answers
    store.record(base(request_id="fb", attempt=0, final=False, status=429, error_class="rate_limit",
                      provider="claude-pool", input_tokens=0, output_tokens=0, cost_micro_usd=0))
    store.record(base(request_id="fb", attempt=1, final=True))
    store.record(base(request_id="st", stream=True, ttfb_ms=80.0))
    store.record(base(request_id="cancel", stream=True, status=499, error_class="cancelled", output_tokens=42,
                      cost_micro_usd=1936))
    store.close()
    got = {r[0]: r[1:] for r in rows(tmp_path, "SELECT request_id, attempt, status, error_class, stream, "
                                     "cost_usd FROM requests ORDER BY request_id")}
    assert got == {
        "cancel": (0, 499, "cancelled", True, Decimal("0.001936")),
        "fb": (1, 200, None, False, Decimal("0.005700")),
        "ok": (0, 200, None, False, Decimal("0.005700")),
        "st": (0, 200, None, True, Decimal("0.005700")),
        "upstream-error": (0, 503, "server", False, Decimal("0.000000")),
    }
    assert rows(tmp_path, "SELECT attempt, final, provider, error_class FROM usage WHERE request_id = 'fb' ORDER BY attempt") == [
        (0, False, "claude-pool", "rate_limit"), (1, True, "openai", None)]
    assert rows(tmp_path, "SELECT count(*), count(*) FILTER (WHERE final) FROM usage") == [(6, 5)]


def test_every_field_round_trips(tmp_path):
    store = UsageStore(tmp_path)
    rec = base(lossy="tool_choice", tags=["batch", "eu"], images=2, audio_seconds=1.5, ttfb_ms=None,
               cost_micro_usd=None, surprise_key="ignored")
    store.record(dict(rec))
    store.close()
    cols, [row] = run_query(tmp_path, "SELECT * EXCLUDE (worker) FROM usage")
    got = dict(zip(cols, row, strict=True))
    assert list(USAGE_COLUMNS) == cols
    assert got["ts"] == datetime(2026, 3, 15, 12, 0)  # naive UTC
    assert got["tags"] == ["batch", "eu"] and got["lossy"] == "tool_choice"
    assert got["cost_micro_usd"] is None and got["cost_usd"] is None  # unpriced stays null
    assert got["ttfb_ms"] is None and got["audio_seconds"] == 1.5 and got["images"] == 2
    assert got["payload"] is None  # nothing stored unless the pipeline passes one


def test_missing_fields_get_safe_defaults(tmp_path):
    store = UsageStore(tmp_path)
    before = time.time()
    store.record({"request_id": "bare"})
    store.close()
    [(final, attempt, tokens, stream, ts)] = rows(tmp_path, "SELECT final, attempt, input_tokens, stream, epoch(ts) FROM usage")
    assert (final, attempt, tokens, stream) == (True, 0, 0, False)
    assert before - 1 <= ts <= time.time() + 1


def test_bad_values_are_coerced_not_lost(tmp_path):
    store = UsageStore(tmp_path)
    store.record(base(request_id="good"))
    store.record(base(request_id="bad", status="teapot", input_tokens="12", tags={"x"}, latency_ms=float("nan"),
                      ts=datetime(2026, 3, 15, 12, 0, tzinfo=UTC), attempt=2**40, final="yes"))
    store.close()
    got = rows(tmp_path, "SELECT request_id, status, input_tokens, tags, latency_ms, ts, attempt, final FROM usage ORDER BY 1")
    assert got[0] == ("bad", None, 12, ["x"], None, datetime(2026, 3, 15, 12, 0), 0, True)
    assert got[1][0] == "good"


def test_payloads_are_stored_without_credentials(tmp_path):
    store = UsageStore(tmp_path)
    payload = {
        "request": {"headers": {"Authorization": "Bearer sk-live-abcdefghijklmnopqrst", "X-Goog-Api-Key": "AIzaXX"},
                    "body": {"model": "gpt-4.1", "max_tokens": 10, "messages": [{"role": "user", "content": "the basic idea"}],
                             "nested": [{"client_secret": "s", "refresh_token": "t", "password": "p"}]},
                    "url": "https://generativelanguage.googleapis.com/v1beta/models/x:generateContent?key=AIzaSyA12345&alt=sse"},
        "raw_headers": [["x-api-key", "sk-ant-123"], ["content-type", "application/json"]],
        "response": {"text": "your key sk-proj-ABCDEFGHIJKLMNOPQRSTUV leaked"},
    }
    store.record(base(payload=payload))
    store.close()
    [(stored,)] = rows(tmp_path, "SELECT payload FROM usage")
    text = stored
    for secret in ("sk-live", "AIzaXX", "AIzaSyA12345", "sk-ant-123", "sk-proj-ABC", '"s"', '"t"', '"p"'):
        assert secret not in text
    p = orjson.loads(stored)
    assert p["request"]["headers"] == {"Authorization": "***", "X-Goog-Api-Key": "***"}
    assert p["request"]["body"]["max_tokens"] == 10 and p["request"]["body"]["messages"][0]["content"] == "the basic idea"
    assert p["raw_headers"] == [["x-api-key", "***"], ["content-type", "application/json"]]
    assert p["request"]["url"].endswith("?key=***&alt=sse")


def test_redact_leaves_the_input_alone():
    original = {"api_key": "k", "inner": {"token": "t"}, "input_tokens": 5}
    assert redact(original) == {"api_key": "***", "inner": {"token": "***"}, "input_tokens": 5}
    assert original["api_key"] == "k"


def test_huge_payload_is_replaced_by_a_marker(tmp_path):
    store = UsageStore(tmp_path)
    store.record(base(payload={"blob": "x" * (2 << 20)}))
    store.close()
    [(p,)] = rows(tmp_path, "SELECT payload FROM usage")
    assert orjson.loads(p)["truncated"] is True


def test_record_is_cheap_and_never_touches_disk(tmp_path):
    store = UsageStore(tmp_path)
    recs = [base(request_id=str(i)) for i in range(20_000)]
    t = time.process_time()
    for r in recs:
        store.record(r)
    per_call = (time.process_time() - t) / len(recs)
    assert per_call < 20e-6
    assert not list((tmp_path / "usage").glob("w*.duckdb"))  # nothing written until a flush
    store.close()
    assert rows(tmp_path, "SELECT count(*) FROM usage") == [(20_000,)]


def test_full_buffer_drops_and_counts(tmp_path):
    store = UsageStore(tmp_path, max_buffer=3)
    for i in range(5):
        store.record(base(request_id=str(i)))
    assert store.stats()["dropped"] == 2
    store.close()


def test_the_flusher_thread_writes_on_its_own(tmp_path):
    store = UsageStore(tmp_path, flush_interval=0.05)
    store.start()
    store.record(base())
    store.audit("admin@127.0.0.1", "config.reload", "config.yaml", {"fingerprint": "abc", "api_key": "k"})
    deadline = time.time() + 5
    while time.time() < deadline and rows(tmp_path, "SELECT count(*) FROM usage") != [(1,)]:
        time.sleep(0.05)
    assert rows(tmp_path, "SELECT count(*) FROM usage") == [(1,)]
    [(actor, action, target, detail)] = rows(tmp_path, "SELECT actor, action, target, detail FROM audit")
    assert (actor, action, target) == ("admin@127.0.0.1", "config.reload", "config.yaml")
    assert orjson.loads(detail) == {"fingerprint": "abc", "api_key": "***"}
    store.close()
    assert list(AUDIT_COLUMNS) == ["ts", "actor", "action", "target", "detail"]


def test_under_load_the_flusher_gathers_a_few_ticks(tmp_path):
    """BUSY_RECORDS waiting at a tick: no flush before BUSY_TICKS intervals, then all of them."""
    store = UsageStore(tmp_path, flush_interval=0.4)
    n = BUSY_RECORDS + 50
    for i in range(n):
        store.record({**base(), "request_id": f"r{i}"})
    store.start()
    time.sleep(0.6)  # a tick went by (a quiet store would have flushed at it); the window ends at 1.2 s
    assert store.written == 0
    deadline = time.time() + 5
    while time.time() < deadline and store.written < n:
        time.sleep(0.02)
    assert store.written == n
    store.close()
    assert rows(tmp_path, "SELECT count(DISTINCT request_id) FROM usage") == [(n,)]


def test_a_leftover_already_ingested_is_not_duplicated(tmp_path):
    store = UsageStore(tmp_path)
    store.record(base(request_id="first"))
    store.flush()
    # A dead owner's batch at or below the watermark: it was committed before the crash.
    leftover = tmp_path / "usage" / "pending" / "w0-00000000000000000001.usage.ndjson"
    leftover.write_bytes(orjson.dumps(base(request_id="dup")) + b"\n")
    store.record(base(request_id="second"))
    store.close()
    assert rows(tmp_path, "SELECT request_id FROM usage ORDER BY 1") == [("first",), ("second",)]
    assert not leftover.exists()


def test_orphaned_batches_of_a_dead_slot_are_adopted(tmp_path):
    pending = tmp_path / "usage" / "pending"
    pending.mkdir(parents=True)
    (tmp_path / "usage" / "w7.lock").touch()
    (pending / f"w7-{time.time_ns():020d}.usage.ndjson").write_bytes(orjson.dumps(base(request_id="orphan")) + b"\n")
    store = UsageStore(tmp_path)
    store.start()
    assert rows(tmp_path, "SELECT request_id, worker FROM usage") == [("orphan", "w7")]
    store.close()


def test_older_files_gain_new_columns_and_mix_with_new_ones(tmp_path):
    usage = tmp_path / "usage"
    usage.mkdir()
    for name in ("w0", "w1"):
        con = duckdb.connect(str(usage / f"{name}.duckdb"))
        con.execute("CREATE TABLE usage (request_id VARCHAR, ts TIMESTAMP, cost_micro_usd BIGINT)")
        con.execute("INSERT INTO usage VALUES (?, TIMESTAMP '2026-01-01 00:00:00', 5)", [f"old-{name}"])
        con.close()
    store = UsageStore(tmp_path)  # claims w0, whose file has the old schema
    store.record(base(request_id="new", lossy="x"))
    store.close()
    assert rows(tmp_path, "SELECT request_id, worker, lossy FROM usage ORDER BY 1") == [
        ("new", "w0", "x"), ("old-w0", "w0", None), ("old-w1", "w1", None)]


def test_two_stores_in_one_process_take_different_slots(tmp_path):
    a, b = UsageStore(tmp_path), UsageStore(tmp_path)
    assert {a.slot, b.slot} == {"w0", "w1"}
    a.record(base(request_id="a"))
    b.record(base(request_id="b"))
    a.close()
    b.close()
    assert rows(tmp_path, "SELECT request_id, worker FROM usage ORDER BY 1") == [("a", a.slot), ("b", b.slot)]


SIGTERM_CHILD = """
    import signal, sys, time
    from engine.usage import UsageStore
    store = UsageStore(sys.argv[1], flush_interval=60)  # nothing flushes before the signal
    store.start()
    def stop(signum, frame):
        store.close()
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    for i in range(int(sys.argv[2])):
        store.record({"request_id": str(i), "attempt": 0, "key_name": "k", "cost_micro_usd": 1})
    print("ready", flush=True)
    time.sleep(60)
"""


def test_sigterm_loses_nothing(tmp_path):
    n = 20_000
    p = child(SIGTERM_CHILD, str(tmp_path), str(n))
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0, p.stderr.read()
    assert rows(tmp_path, "SELECT count(*), count(DISTINCT request_id), sum(cost_micro_usd) FROM usage") == [(n, n, n)]


KILL_CHILD = """
    import sys, time
    from engine.usage import UsageStore
    store = UsageStore(sys.argv[1], flush_interval=0.2)
    store.start()
    print("go", flush=True)
    i = 0
    while True:
        store.record({"request_id": str(i), "attempt": i, "ts": time.time()})
        i += 1
        time.sleep(0.0005)
"""


def test_kill_9_loses_at_most_the_last_second_and_the_files_open(tmp_path):
    p = child(KILL_CHILD, str(tmp_path))
    assert p.stdout.readline().strip() == "go", p.stderr.read()
    time.sleep(1.5)
    killed_at = time.time()
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    [(count, last, newest)] = rows(tmp_path, "SELECT count(*), max(attempt), epoch(max(ts)) FROM usage")
    assert count == last + 1  # batches go in whole and in order: no holes
    assert newest >= killed_at - 1.0
    # the slot is free again, and a new writer opens the file and adopts what was pending
    store = UsageStore(tmp_path)
    assert store.slot == "w0"
    store.start()
    store.close()
    [(after,)] = rows(tmp_path, "SELECT count(*) FROM usage")
    assert after >= count


WRITER_CHILD = """
    import sys, time
    from engine.usage import UsageStore
    store = UsageStore(sys.argv[1], flush_interval=0.05)
    store.start()
    for i in range(int(sys.argv[2])):
        store.record({"request_id": f"{sys.argv[3]}-{i}", "key_name": sys.argv[3]})
        if i % 100 == 0:
            time.sleep(0.02)
    store.close()
"""


def test_two_writer_processes_all_records_arrive_without_lock_errors(tmp_path):
    n = 3000
    procs = [child(WRITER_CHILD, str(tmp_path), str(n), name) for name in ("a", "b")]
    reads = 0
    while any(p.poll() is None for p in procs):
        run_query(tmp_path, "SELECT key_name, count(*) FROM usage GROUP BY 1")  # must never raise
        reads += 1
        time.sleep(0.02)
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    assert reads > 0
    assert rows(tmp_path, "SELECT key_name, count(*), count(DISTINCT worker) FROM usage GROUP BY 1 ORDER BY 1") == [
        ("a", n, 1), ("b", n, 1)]
    assert rows(tmp_path, "SELECT count(DISTINCT worker) FROM usage") == [(2,)]


READER_CHILD = """
    import sys, time
    from engine.sqlcli import open_reader
    with open_reader(sys.argv[1]) as con:
        con.execute("SELECT count(*) FROM usage").fetchall()
        print("holding", flush=True)
        time.sleep(1.0)
"""


def test_a_reader_holding_the_file_only_delays_the_writer(tmp_path):
    store = UsageStore(tmp_path)
    store.record(base(request_id="before"))
    store.flush()
    reader = child(READER_CHILD, str(tmp_path))
    assert reader.stdout.readline().strip() == "holding", reader.stderr.read()
    store.record(base(request_id="during"))
    assert store.flush() > 0  # batch kept on disk, no error
    assert reader.wait(timeout=10) == 0
    assert store.flush() == 0
    store.close()
    assert rows(tmp_path, "SELECT count(*) FROM usage") == [(2,)]


def test_reader_with_no_data_yet_sees_empty_tables(tmp_path):
    assert rows(tmp_path, "SELECT count(*) FROM usage") == [(0,)]
    assert rows(tmp_path, "SELECT count(*) FROM requests") == [(0,)]
    with open_reader(tmp_path / "missing") as con:
        assert con.execute("SELECT count(*) FROM audit").fetchall() == [(0,)]


def test_every_column_is_documented():
    doc = (ROOT / "docs" / "analytics.md").read_text()
    for column in [*USAGE_COLUMNS, *AUDIT_COLUMNS, "worker"]:
        assert f"`{column}`" in doc, f"docs/analytics.md does not describe column {column}"


def test_a_failed_batch_write_keeps_the_records(tmp_path, monkeypatch):
    store = UsageStore(tmp_path)
    store.record(base(request_id="kept"))
    pending = tmp_path / "usage" / "pending"
    pending.chmod(0o500)  # no new files: as good as a full disk
    try:
        if os.geteuid() == 0:  # root ignores permissions; fail the rename instead
            monkeypatch.setattr(os, "rename", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        with pytest.raises(OSError):
            store.flush()
    finally:
        pending.chmod(0o700)
        monkeypatch.undo()
    assert store.stats()["buffered"] == 1
    store.close()
    assert rows(tmp_path, "SELECT request_id FROM usage") == [("kept",)]
