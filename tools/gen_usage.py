"""Generate synthetic usage records into a data directory, for benchmarks and for trying queries.

    python -m tools.gen_usage --data-dir ./data -n 1000000 [--days 30] [--workers 2] [--seed 0.5]

Rows are made inside DuckDB (INSERT ... SELECT FROM range(n)), a million in a few seconds, and
spread over `--workers` slot files claimed exactly as a gateway worker claims them, so it is safe
to run next to a live server and the union over several files is exercised. The mix is plausible,
not real: 20 keys, 8 providers, 24 models, 5 combos, ~4% errors, ~8% fallbacks, prices $0.15-15/M.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from engine.usage import UsageStore, ensure_schema

_ROWS_SQL = """
WITH base AS (
    SELECT i, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
           (random() * 8)::INT % 8 AS p, (random() * 3)::INT % 3 AS m
    FROM range($n) t(i)
), shaped AS (
    SELECT *, CASE WHEN r1 < 0.04 THEN 1 ELSE 0 END AS failed,
           CASE WHEN r2 < 0.08 THEN 1 ELSE 0 END AS fell_back,
           (50 + r3 * r3 * 20000)::BIGINT AS tin, (10 + r4 * 1500)::BIGINT AS tout,
           [0.15, 0.5, 1, 2, 2.5, 3, 5, 15][p + 1] AS price_in
    FROM base
)
SELECT
    printf('gen-%d-%d', $worker, i) AS request_id,
    fell_back AS attempt, true AS final,
    $start + to_microseconds(CAST(random() * $span_us AS BIGINT)) AS ts,
    printf('key-%02d', (i * 7919) % 20) AS key_name,
    ['openai-chat', 'anthropic-messages', 'openai-responses', 'gemini', 'ollama'][(i % 5) + 1] AS client_format,
    '/v1/chat/completions' AS route,
    CASE WHEN i % 3 = 0 THEN printf('combo-%d', i % 5) ELSE printf('model-%d-%d', p, m) END AS model_requested,
    CASE WHEN i % 3 = 0 THEN printf('combo-%d', i % 5) END AS combo,
    ['openai', 'anthropic', 'gemini', 'groq', 'mistral', 'deepseek', 'openrouter', 'local'][p + 1] AS provider,
    ['openai', 'anthropic', 'gemini', 'groq', 'mistral', 'deepseek', 'openrouter', 'ollama'][p + 1] AS provider_spec,
    printf('acct-%d', i % 3) AS account,
    printf('model-%d-%d', p, m) AS upstream_model, 'chat' AS modality,
    CASE WHEN failed = 1 THEN [429, 500, 503, 504][(i % 4) + 1] ELSE 200 END AS status,
    CASE WHEN failed = 1 THEN ['rate_limit', 'server', 'server', 'timeout'][(i % 4) + 1] END AS error_class,
    CASE WHEN failed = 1 THEN 0 ELSE tin END AS input_tokens,
    CASE WHEN failed = 1 THEN 0 ELSE tout END AS output_tokens,
    CASE WHEN failed = 1 THEN 0 ELSE (tin * r2 * 0.5)::BIGINT END AS cached_tokens,
    0 AS cache_write_tokens, 0 AS reasoning_tokens, 0 AS images, 0.0 AS audio_seconds,
    CASE WHEN failed = 1 THEN 0 ELSE round(tin * price_in + tout * price_in * 4)::BIGINT END AS cost_micro_usd,
    CAST(CASE WHEN failed = 1 THEN 0 ELSE round(tin * price_in + tout * price_in * 4)::BIGINT END AS DECIMAL(18,0))
        * 0.000001 AS cost_usd,
    100 + r3 * 3000 + p * 50 AS latency_ms, 50 + r3 * 400 AS ttfb_ms, i % 2 = 0 AS stream,
    CASE WHEN i % 10 = 0 THEN 'HIT' ELSE 'MISS' END AS cache,
    tin * 4 AS bytes_in, tout * 4 AS bytes_out, NULL AS lossy, NULL AS tags, NULL AS payload
FROM shaped
"""


def generate(data_dir: Path | str, n: int, *, days: float = 30.0, workers: int = 2, seed: float | None = None) -> int:
    """Append `n` synthetic records (ending now, spread over `days`); returns how many were written."""
    if n < 0 or workers < 1 or days <= 0:
        raise ValueError("need n >= 0, workers >= 1 and days > 0")
    stores = [UsageStore(data_dir) for _ in range(workers)]  # each claims a free slot
    try:
        end = time.time()
        con = duckdb.connect(":memory:")
        if seed is not None:
            con.execute("SELECT setseed(?)", [seed])
        for k, store in enumerate(stores):
            share = n // workers + (1 if k < n % workers else 0)
            con.execute(f"ATTACH '{store.dir / (store.slot + '.duckdb')}' AS g")
            ensure_schema(con, "g")
            con.execute(f"INSERT INTO g.usage BY NAME {_ROWS_SQL}", {
                "n": share, "worker": k,
                "start": datetime.fromtimestamp(end - days * 86400, UTC).replace(tzinfo=None),  # naive UTC
                "span_us": int(days * 86400 * 1e6),
            })
            con.execute("DETACH g")
        con.close()
    finally:
        for store in stores:
            store.close()
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gen_usage", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="./data")
    p.add_argument("-n", type=int, default=1_000_000, help="records to generate (default 1,000,000)")
    p.add_argument("--days", type=float, default=30.0, help="spread them over the last N days")
    p.add_argument("--workers", type=int, default=2, help="slot files to spread them over")
    p.add_argument("--seed", type=float, default=None, help="DuckDB random seed in [-1, 1] for repeatable data")
    args = p.parse_args(argv)
    t = time.perf_counter()
    try:
        n = generate(args.data_dir, args.n, days=args.days, workers=args.workers, seed=args.seed)
    except (ValueError, duckdb.Error) as e:
        print(f"gen_usage: {e}", file=sys.stderr)
        return 1
    print(f"wrote {n:,} records to {Path(args.data_dir) / 'usage'} in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
