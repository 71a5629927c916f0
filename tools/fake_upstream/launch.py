"""Run the fake upstream server as a subprocess on a free loopback port.

    with FakeUpstream() as fake:
        client = openai.OpenAI(base_url=fake.url("openai"), api_key="sk-test")
        fake.script(503, 200, model="gpt-4o")       # next matching request fails, then normal
        assert fake.stats()["counts"]["openai.chat"] == 1

Each instance owns its own process and port, so any number can run side by side (pytest-xdist).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parents[2]

# The base URL a provider spec points at: the provider's own API root on the fake.
PREFIXES = {
    "openai": "/openai/v1",
    "anthropic": "/anthropic/v1",
    "gemini": "/gemini/v1beta",
    "ollama": "/ollama",
    "together": "/together/v1",
    "fireworks": "/fireworks/inference/v1",
}
# What each official SDK takes as base URL: the SDKs append their own version segment
# (anthropic adds /v1/..., google-genai adds the api_version it is given, v1beta here).
SDK_PREFIXES = {"openai": "/openai/v1", "anthropic": "/anthropic", "gemini": "/gemini", "ollama": "/ollama"}

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class FakeUpstream:
    """A fake-provider server in a subprocess. `start()`/`stop()`, or use it as a context manager."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, startup_timeout: float = 15.0
    ) -> None:
        self.host = host
        self.port = port or 0
        self._fixed_port = port is not None
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        if self._proc is not None:
            return self
        attempts = 1 if self._fixed_port else 5
        failure = ""
        for _ in range(attempts):
            if not self._fixed_port:
                self.port = free_port(self.host)
            failure = self._spawn()
            if not failure:
                atexit.register(self.stop)
                return self
        raise RuntimeError(f"fake upstream did not start on {self.host}:{self.port}: {failure}")

    def _spawn(self) -> str:
        """Start the subprocess and wait for it to answer; an error description, or "" on success."""
        token = os.urandom(8).hex()
        env = dict(os.environ, FAKE_UPSTREAM_TOKEN=token, PYTHONUNBUFFERED="1")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the subprocess
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tools.fake_upstream", "--host", self.host, "--port", str(self.port)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            # Its own process group, so stop() can also reach granian's worker process.
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return self._abandon(f"exited with {self._proc.returncode}")
            try:
                health = self._call("GET", "/_health", timeout=1.0)
            except (OSError, ValueError):
                time.sleep(0.03)
                continue
            except RuntimeError:
                return self._abandon("another server answered on that port")
            if health.get("token") == token:
                return ""
            return self._abandon("another server answered on that port")
        return self._abandon(f"no answer within {self.startup_timeout:g}s")

    def _abandon(self, why: str) -> str:
        detail = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            detail = self._stderr.read().decode(errors="replace")[-2000:]
        self.stop()
        return f"{why}\n{detail}".strip()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                # Not reaped yet, so the group id is still ours: take granian's worker down too.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        atexit.unregister(self.stop)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- addresses ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, provider: str) -> str:
        """Base URL for a provider spec: openai -> /openai/v1, anthropic -> /anthropic/v1,
        gemini -> /gemini/v1beta, ollama -> /ollama, together -> /together/v1,
        fireworks -> /fireworks/inference/v1."""
        return self.base_url + PREFIXES[provider]

    def sdk_url(self, provider: str) -> str:
        """Base URL for the provider's official SDK (see SDK_PREFIXES)."""
        return self.base_url + SDK_PREFIXES[provider]

    # --- control -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_stats")
        return result

    def reset(self) -> None:
        self._call("POST", "/_reset", {})

    def script(
        self, *responses: int | dict[str, Any] | list[Any], model: str | None = None, route: str | None = None
    ) -> None:
        """Queue forced outcomes for matching requests, consumed in order.

        Each response is a status (`503`) or a dict `{"status", "headers", "delay_ms", "body"}`;
        status 200 means "answer normally". `route` is a route id ("openai.chat") or a provider.
        """
        flat: list[Any] = []
        for item in responses:
            flat.extend(item if isinstance(item, list) else [item])
        match = {k: v for k, v in (("model", model), ("route", route)) if v is not None}
        self._call("POST", "/_script", {"match": match, "responses": flat})

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with _NO_PROXY.open(request, timeout=timeout) as response:
                return orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(
                f"{method} {path} -> {exc.code}: {exc.read().decode(errors='replace')}"
            ) from None
