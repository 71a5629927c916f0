"""`python -m tools.fake_upstream --host 127.0.0.1 --port N`: serve the fake providers."""

from __future__ import annotations

import argparse

from granian import Granian
from granian.constants import Interfaces


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.fake_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--log", action="store_true", help="enable granian's own logging")
    args = parser.parse_args(argv)

    server = Granian(
        "tools.fake_upstream.app:app",
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=1,
        log_enabled=args.log,
        # Benchmarks drive many concurrent streams through the gateway; don't queue them here.
        backlog=2048,
    )

    def announce() -> None:
        # The listening socket is bound before startup hooks run, so connections queue from now on.
        print(f"fake_upstream listening on http://{args.host}:{args.port}", flush=True)

    server.on_startup(announce)
    server.serve()


if __name__ == "__main__":
    main()
