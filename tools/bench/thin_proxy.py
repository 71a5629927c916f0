"""The thinnest possible granian proxy, as a baseline for the gateway's own cost.

`THIN_CLIENT` picks the upstream client: httpx (its own transport), httpx-aiohttp, omniroute (httpx
requests through engine/transport.py, as the gateway sends them), or aiohttp.
Run: THIN_TARGET=http://... granian --interface rsgi tools.bench.thin_proxy:app
"""

from __future__ import annotations

import os
from typing import Any

TARGET = os.environ.get("THIN_TARGET", "")
CLIENT = os.environ.get("THIN_CLIENT", "httpx-aiohttp")
_client: Any = None


def _make() -> Any:
    if CLIENT == "aiohttp":
        import aiohttp

        return aiohttp.ClientSession()
    if CLIENT == "omniroute":
        from engine.transport import AiohttpTransport

        return AiohttpTransport()
    import httpx

    # trust_env off everywhere, as in the gateway: otherwise each request reads proxy variables
    # and ~/.netrc, which is the client's configuration cost, not the proxy's.
    if CLIENT == "httpx":
        return httpx.AsyncClient(trust_env=False)
    from httpx_aiohttp import AiohttpTransport

    return httpx.AsyncClient(transport=AiohttpTransport(trust_env=False), trust_env=False)


class _Proxy:
    """RSGI, as the gateway serves: the floor is the fastest interface granian offers."""

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        global _client
        body = await proto()
        if _client is None:
            _client = _make()
        headers = {"content-type": "application/json", "authorization": "Bearer x"}
        if CLIENT == "aiohttp":
            async with _client.post(TARGET, data=body, headers=headers) as r:
                data = await r.read()
                status = r.status
        elif CLIENT == "omniroute":
            import httpx

            r = await _client.handle_async_request(httpx.Request("POST", TARGET, content=body, headers=headers))
            data, status = await r.aread(), r.status_code
            await r.aclose()
        else:
            r = await _client.post(TARGET, content=body, headers=headers)
            data, status = r.content, r.status_code
        proto.response_bytes(status, [("content-type", "application/json")], data)


app = _Proxy()
