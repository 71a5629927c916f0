"""omniroute benchmark: `make bench` (or `python -m tools.bench [--quick]`).

Every figure is printed next to a baseline measured in the same run, because this machine is
shared and noisy: the fake upstream called directly, or the untranslated path. Not a test: nothing
here asserts; it reports.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import orjson

from tools.bench import load
from tools.fake_upstream.launch import FakeUpstream
from tools.gateway_proc import Gateway, cpu_seconds, rss_bytes


def table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    print(f"\n## {title}")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def proxy_section(seconds: float) -> None:
    # `{n}` makes every body unique (see load.py): the response cache is on by default and would
    # otherwise answer all but the first request without reaching upstream.
    body = orjson.dumps({"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": "Hello there {n}"}], "max_tokens": 16})
    direct_body = orjson.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hello there {n}"}], "max_tokens": 16})
    no_cache = {"x-omniroute-no-cache": "true"}
    with FakeUpstream() as fake, tempfile.TemporaryDirectory() as tmp:
        config = {"data_dir": f"{tmp}/data", "providers": {"openai": {"base_url": fake.url("openai"), "api_key": "sk-bench"}}}
        with Gateway(Path(tmp), config) as gw:
            time.sleep(1.0)
            idle_rss = rss_bytes(gw.proc.pid)  # type: ignore[union-attr]
            direct_url = fake.url("openai") + "/chat/completions"
            gw_url = gw.base_url + "/v1/chat/completions"
            load.run(gw_url, body, 4, 1.0)  # warm both paths
            load.run(direct_url, direct_body, 4, 0.5)
            rows, uncached = [], []
            fake_pid, gw_pid = fake._proc.pid, gw.proc.pid  # type: ignore[union-attr]
            for conc in (1, 16, 64):
                c0 = cpu_seconds(fake_pid)
                d = load.run(direct_url, direct_body, conc, seconds)
                direct_cpu = (cpu_seconds(fake_pid) - c0) / max(d.requests, 1) * 1000
                # Each phase's CPU runs until the gateway is idle again: the usage and cache writers
                # finish its last batches then, and would otherwise be billed to the next phase.
                settle(gw_pid)
                g0 = cpu_seconds(gw_pid)
                g = load.run(gw_url, body, conc, seconds)
                settle(gw_pid)
                gw_cpu = (cpu_seconds(gw_pid) - g0) / max(g.requests, 1) * 1000
                n0 = cpu_seconds(gw_pid)
                n = load.run(gw_url, body, conc, seconds, no_cache)
                settle(gw_pid)
                nc_cpu = (cpu_seconds(gw_pid) - n0) / max(n.requests, 1) * 1000
                rows.append(
                    (
                        str(conc),
                        f"{d.rps:,.0f}", f"{g.rps:,.0f}", f"{g.rps / d.rps:.2f}" if d.rps else "-",
                        f"{d.pct(50):.2f}/{d.pct(99):.2f}", f"{g.pct(50):.2f}/{g.pct(99):.2f}",
                        f"{direct_cpu:.3f}", f"{gw_cpu:.3f}", str(g.errors + d.errors),
                    )
                )
                uncached.append((str(conc), f"{n.rps:,.0f}", f"{nc_cpu:.3f}", f"{gw_cpu:.3f}", f"{(gw_cpu - nc_cpu) * 1000:+.0f}", str(n.errors)))
            table(
                "Non-stream chat, OpenAI route to an OpenAI upstream (no translation), one worker; every request a cache miss",
                rows,
                ("conns", "direct rps", "gateway rps", "ratio", "direct p50/p99 ms", "gateway p50/p99 ms", "upstream CPU ms/req", "gateway CPU ms/req", "errors"),
            )
            table(
                "The same with X-OmniRoute-No-Cache (the uncached path), and what a cache miss adds",
                uncached,
                ("conns", "rps", "gateway CPU ms/req, uncached", "with cache miss", "miss adds µs", "errors"),
            )
            sbody = orjson.dumps({"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": "[[words:8]] {n}"}], "stream": True})
            sdirect = orjson.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "[[words:8]] {n}"}], "stream": True})
            settle(gw_pid)  # the load above leaves usage and cache batches to write: not stream latency
            dt = load.ttfb(direct_url, sdirect, 200)
            gt = load.ttfb(gw_url, sbody, 200)
            table("Stream time to first byte (median of 200, sequential)", [(f"{dt:.3f}", f"{gt:.3f}", f"{gt - dt:+.3f}")], ("direct ms", "gateway ms", "added ms"))
            table("Gateway memory", [(f"{idle_rss / 2**20:.1f}",)], ("idle RSS MiB (every gateway process)",))


def settle(pid: int, timeout: float = 15.0) -> None:
    """Wait until process `pid` uses under 5% of a core over 0.25 s (its background writers done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c0 = cpu_seconds(pid)
        time.sleep(0.25)
        if cpu_seconds(pid) - c0 < 0.0125:
            return


def thin_section(seconds: float) -> None:
    """The floor: a proxy that does nothing but forward, with each upstream client."""
    import os
    import subprocess

    from tools.gateway_proc import ROOT, free_port

    body = orjson.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16})
    rows = []
    with FakeUpstream() as fake:
        for client in ("httpx", "httpx-aiohttp", "omniroute", "aiohttp"):
            port = free_port()
            env = {**os.environ, "THIN_TARGET": fake.url("openai") + "/chat/completions", "THIN_CLIENT": client}
            proc = subprocess.Popen(
                [sys.executable, "-m", "granian", "--interface", "rsgi", "--port", str(port), "--no-ws", "--log-level", "error", "tools.bench.thin_proxy:app"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                url = f"http://127.0.0.1:{port}/"
                for _ in range(100):
                    try:
                        load.run(url, body, 1, 0.05)
                        break
                    except Exception:
                        time.sleep(0.1)
                load.run(url, body, 4, 0.5)
                c0 = cpu_seconds(proc.pid)
                r = load.run(url, body, 16, seconds)
                cpu = (cpu_seconds(proc.pid) - c0) / max(r.requests, 1) * 1000
                rows.append((client, f"{r.rps:,.0f}", f"{cpu:.3f}"))
            finally:
                proc.terminate()
                proc.wait(10)
    table("Thinnest granian proxy (baseline), 16 connections", rows, ("upstream client", "rps", "proxy CPU ms/req"))


def main() -> int:
    p = argparse.ArgumentParser(prog="tools.bench")
    p.add_argument("--seconds", type=float, default=3.0, help="duration of each load step")
    p.add_argument("--only", choices=["thin", "proxy", "translate", "routing", "policy", "cache", "pipeline", "usage"], help="run one section")
    args = p.parse_args()
    print(f"omniroute benchmark (python {sys.version.split()[0]})")
    if args.only in (None, "thin"):
        thin_section(args.seconds)
    if args.only in (None, "proxy"):
        proxy_section(args.seconds)
    if args.only == "pipeline":
        from tools.bench import pipeline_bench

        pipeline_bench.main()
    if args.only in (None, "translate"):
        from tools.bench import translate_bench

        translate_bench.main()
    sections = {"routing": "Routing decision", "policy": "Policy evaluation", "cache": "Response cache", "usage": "Usage analytics"}
    for name, title in sections.items():
        if args.only not in (None, name):
            continue
        try:
            module = importlib.import_module(f"tools.bench.{name}_bench")
        except ImportError:
            continue
        table(title, [tuple(r) for r in module.run()], ("figure", "measured", "target"))
        if name == "cache":
            from tools.bench import pipeline_bench

            pipeline_bench.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
