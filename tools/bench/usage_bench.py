"""Usage analytics figures: record() CPU on the request path, writer throughput, and a group-by
over one million records through `omniroute sql`. Run alone: `python -m tools.bench.usage_bench`."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.sqlcli import run_query
from engine.usage import UsageStore
from tools.gen_usage import generate

GROUP_BY = ("SELECT provider, count(*) AS requests, sum(cost_usd) AS usd, "
            "quantile_cont(latency_ms, 0.95) AS p95_ms FROM usage GROUP BY provider ORDER BY usd DESC")


def _record(i: int) -> dict[str, object]:
    return {"request_id": f"req-{i:08d}", "attempt": 0, "final": True, "ts": time.time(), "key_name": "team-a",
            "client_format": "openai-chat", "route": "/v1/chat/completions", "model_requested": "coding",
            "combo": "coding", "provider": "openai", "provider_spec": "openai", "account": "acct-1",
            "upstream_model": "gpt-4.1", "status": 200, "error_class": None, "input_tokens": 1200,
            "output_tokens": 300, "cached_tokens": 100, "cache_write_tokens": 0, "reasoning_tokens": 0,
            "cost_micro_usd": 4600, "latency_ms": 812.5, "ttfb_ms": 120.2, "stream": True, "cache": "MISS",
            "bytes_in": 5000, "bytes_out": 2400, "modality": "chat"}


def record_cpu_us(n: int = 200_000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = UsageStore(tmp)
        recs = [_record(i) for i in range(n)]
        t = time.process_time()
        for r in recs:
            store.record(r)
        per_call = (time.process_time() - t) / n * 1e6
        store._buf.clear()  # not measuring the write here
        store.close()
    return per_call


def writer_throughput(n: int = 100_000) -> tuple[float, float]:
    """(records/s for one big flush, seconds of lag after feeding 5,000/s for 3 s to the flusher)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = UsageStore(tmp)
        for i in range(n):
            store.record(_record(i))
        t = time.perf_counter()
        store.flush()
        rate = n / (time.perf_counter() - t)
        store.close()
    with tempfile.TemporaryDirectory() as tmp:
        store = UsageStore(tmp, flush_interval=0.5)
        store.start()
        total, t0 = 15_000, time.perf_counter()
        for i in range(total):  # paced at 5,000/s, from this (the "event loop") thread
            store.record(_record(i))
            if i % 50 == 49:
                time.sleep(max(0.0, t0 + (i + 1) / 5000 - time.perf_counter()))
        fed = time.perf_counter()
        while store.written < total and time.perf_counter() - fed < 30:
            time.sleep(0.01)
        lag = time.perf_counter() - fed
        store.close()
    return rate, lag


def sql_group_by(n: int = 1_000_000) -> tuple[float, float, float]:
    """(seconds to generate, in-process query seconds (median of 5), `omniroute sql` wall seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        generate(tmp, n, workers=2, seed=0.5)
        gen = time.perf_counter() - t
        times = []
        for _ in range(5):
            t = time.perf_counter()
            run_query(tmp, GROUP_BY)
            times.append(time.perf_counter() - t)
        cli = Path(sys.executable).with_name("omniroute")
        cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "engine.cli"]
        walls = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([*cmd, "sql", GROUP_BY, "--data-dir", tmp], check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
    return gen, statistics.median(times), min(walls)


def run() -> list[tuple[str, str, str]]:
    cpu = record_cpu_us()
    rate, lag = writer_throughput()
    gen, query_s, cli_s = sql_group_by()
    return [
        ("record() CPU per call", f"{cpu:.2f} µs", "<= 20 µs"),
        ("writer throughput, one 100k-record flush", f"{rate:,.0f} records/s", ">= 5,000 records/s"),
        ("writer lag after 3 s at 5,000 records/s", f"{lag:.2f} s", "keeps up (< 1 s)"),
        ("generate 1M records (tools/gen_usage.py)", f"{gen:.1f} s", "-"),
        ("group-by over 1M records, in-process", f"{query_s:.3f} s", "< 1 s"),
        ("`omniroute sql` group-by over 1M records, wall", f"{cli_s:.3f} s", "< 1 s"),
    ]


if __name__ == "__main__":
    for row in run():
        print("  ".join(row))
