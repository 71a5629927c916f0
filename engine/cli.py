"""The `omniroute` command: serve | check | demo | sql | explain.

Exit codes: 0 ok, 1 invalid config (or a failed command), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import __version__

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omniroute", description="One local endpoint for every AI client.")
    p.add_argument("--version", action="version", version=f"omniroute {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def server_args(sp: argparse.ArgumentParser, config_required: bool) -> None:
        sp.add_argument("-c", "--config", default=None if not config_required else "config.yaml", help="config file (default config.yaml)")
        sp.add_argument("--host", help="listen address (default from config, else 127.0.0.1)")
        sp.add_argument("--port", type=int, help="listen port (default from config, else 20128)")
        sp.add_argument("--workers", type=int, help="worker processes (default from config, else 1)")

    server_args(sub.add_parser("serve", help="run the gateway"), True)
    server_args(sub.add_parser("demo", help="run the gateway on built-in fake upstreams (no API key needed)"), False)
    c = sub.add_parser("check", help="load and compile the config and specs; print every problem")
    c.add_argument("-c", "--config", default="config.yaml")
    sub.add_parser("sql", help="read-only SQL over the usage data (see `omniroute sql --help`)", add_help=False)
    e = sub.add_parser("explain", help="show the route plan for a model: policies, attempts, skips")
    e.add_argument("-c", "--config", default="config.yaml")
    e.add_argument("model")
    e.add_argument("--key", help="API key name the request would use (for policies)")
    e.add_argument("--needs", help="capabilities the request needs: tools,vision,reasoning")
    e.add_argument("--input-tokens", help="estimated input size")
    e.add_argument("--max-tokens", help="max output tokens asked")
    e.add_argument("--stream", action="store_true", help="a streaming request")
    e.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sql":  # its own options, in any order: sqlcli parses them
        from .sqlcli import main as sql_main

        return sql_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "serve":
        return _serve(args.config, args.host, args.port, args.workers)
    if args.command == "demo":
        return _demo(args.host, args.port, args.workers)
    if args.command == "explain":
        query = {"model": args.model, "key": args.key, "needs": args.needs, "input_tokens": args.input_tokens,
                 "max_tokens": args.max_tokens, "stream": "true" if args.stream else None, "json": "1" if args.json else None}
        return _explain(args.config, {k: v for k, v in query.items() if v})
    return 2


def _load(config: str) -> Any:
    from .compile import build
    from .errors import SpecError

    try:
        return build(config)
    except SpecError as e:
        print(f"{len(e.problems)} problem(s) in the configuration:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return None


def _check(config: str) -> int:
    rt = _load(config)
    if rt is None:
        return 1
    s = rt.summary()
    print(
        f"ok: {config}: {s['providers']} providers, {s['models']} models, {s['aliases']} aliases, "
        f"{s['combos']} combos, {s['keys']} keys ({s['provider_specs']} provider specs, {s['formats']} formats; "
        f"fingerprint {rt.fingerprint})"
    )
    return 0


def _preflight(config: str) -> tuple[str, int, int] | None:
    """Validate the config in a forked child, so granian's supervisor never holds the compiled
    runtime (each worker builds its own): that keeps the memory of multi-worker serving down."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        rt = _load(config)
        if rt is not None:
            os.write(write, f"{rt.server.host} {rt.server.port} {rt.server.workers}".encode())
        os._exit(0 if rt is not None else 1)
    os.close(write)
    with os.fdopen(read) as f:
        answer = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not answer:
        return None
    host, port, workers = answer.split()
    return host, int(port), int(workers)


def _serve(config: str, host: str | None, port: int | None, workers: int | None, banner: str = "") -> int:
    os.environ["OMNIROUTE_CONFIG"] = str(Path(config).resolve())
    os.environ["OMNIROUTE_SERVER_PID"] = str(os.getpid())  # who /api/shutdown signals
    rt = None
    if workers is None or workers == 1:  # one worker is the usual case: compile once, here
        rt = _load(config)
        if rt is None:
            return 1
        settings = (rt.server.host, rt.server.port, workers or rt.server.workers)
        if settings[2] != 1:
            rt = None  # several workers after all: they build their own
    else:
        preflight = _preflight(config)
        if preflight is None:
            return 1
        settings = preflight
    host, port, workers = host or settings[0], port or settings[1], workers or settings[2]
    if banner:
        print(banner.format(host=host, port=port), flush=True)
    print(f"omniroute {__version__} serving on http://{host}:{port} (config {config})", flush=True)
    if rt is not None:
        return _serve_embedded(rt, host, port)
    from granian.constants import Interfaces
    from granian.server import Server

    Server(
        "engine.app:_from_env",
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        workers=workers,
        factory=True,
        websockets=False,
        log_enabled=True,
        log_access=False,
    ).serve()
    return 0


def _serve_embedded(rt: Any, host: str, port: int) -> int:
    """One worker: granian embedded in this process, serving the runtime already compiled. A
    supervisor process would hold about 30 MB to watch a single worker, which the reloader and
    App.startup/shutdown already make self-sufficient."""
    import asyncio
    import logging
    import signal

    from granian.constants import Interfaces
    from granian.server.embed import Server

    from .app import App
    from .gateway import Gateway

    class _Quiet(logging.Filter):  # granian flags embedding as experimental on every start
        def filter(self, record: logging.LogRecord) -> bool:
            return "experimental" not in record.getMessage()

    async def main() -> None:
        app = App(Gateway(rt))
        await app.startup()  # before serving: no request meets closed stores
        try:
            server = Server(app, address=host, port=port, interface=Interfaces.RSGI, websockets=False, log_enabled=True, log_access=False)
            logging.getLogger("_granian").addFilter(_Quiet())
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, server.stop)
            await server.serve()
        finally:
            await app.shutdown()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - declared dependency; plain asyncio still serves
        asyncio.run(main())
    else:
        uvloop.run(main())
    return 0


DEMO_BANNER = """
omniroute demo: every provider below is a built-in fake upstream on loopback; no key, no network.

  curl -s http://{host}:{port}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "openai/gpt-4.1", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="http://{host}:{port}/v1", api_key="demo"); \\
print(c.chat.completions.create(model="demo", messages=[{{"role": "user", "content": "Hello"}}]).choices[0].message.content)'

Models: openai/gpt-4.1, anthropic/claude-sonnet-4-5, gemini/gemini-2.5-flash, ollama/llama3.2, combo 'demo'.
"""


def _demo(host: str | None, port: int | None, workers: int | None) -> int:
    root = str(Path(__file__).resolve().parent.parent)  # the checkout: tools/ lives beside engine/
    if root not in sys.path:
        sys.path.insert(0, root)
    from tools.fake_upstream.launch import FakeUpstream

    with FakeUpstream() as fake, tempfile.TemporaryDirectory(prefix="omniroute-demo-") as tmp:
        os.environ["OMNIROUTE_FAKE_URL"] = fake.base_url
        os.environ["OMNIROUTE_DEMO_DATA"] = tmp
        return _serve(str(DEMO_CONFIG), host, port, workers, DEMO_BANNER)


def _explain(config: str, query: dict[str, str]) -> int:
    rt = _load(config)
    if rt is None:
        return 1
    import json

    from .admin.routing_api import explain_route
    from .errors import GatewayError
    from .policy import compile_policies
    from .resilience import Resilience
    from .strategies import RoutingStats

    resilience = Resilience()
    resilience.configure(rt)
    policies = compile_policies(rt.raw_config.get("policies"), rt.keys, lambda p, m: None, config_validated=True)
    try:
        plan = explain_route(rt, resilience, RoutingStats(), policies, query)
    except (GatewayError, ValueError) as e:
        print(f"error: {getattr(e, 'message', e)}", file=sys.stderr)
        return 1
    if query.get("json"):
        print(json.dumps(plan, indent=2, default=str))
        return 0
    head = f"combo {plan['combo']} ({plan['strategy']})" if plan["combo"] else "direct"
    print(f"{plan['model']}: {head}" + (f", routed to {plan['routed_to']} by policy" if plan["routed_to"] else ""))
    if plan["chain"]:
        print(f"  via: {' -> '.join(plan['chain'])}")
    for rule in plan["policies"]:
        if rule.get("matched"):
            actions = "; ".join(f"{k} {json.dumps(v)}" for k, v in (rule.get("actions") or {}).items())
            print(f"  policy '{rule.get('rule')}' matched: {actions or 'no action'}")
    if plan["denied"]:
        print(f"  DENIED: {plan['denied']}")
    for a in plan["attempts"]:
        usable = ", ".join(f"{x['label']}{'' if x['usable'] else ' (' + str(x['why']) + ')'}" for x in a["accounts"])
        skip = f"  SKIPPED: {a['skipped']}" if a["skipped"] else ""
        print(f"  {a['position']}. {a['key']}  format={a['format']}  accounts=[{usable}]{skip}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
