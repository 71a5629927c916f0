"""`omniroute demo`: the gateway on the built-in fake upstreams, answering as its banner says."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx
import openai

from tests.support import free_port


def test_demo_answers_the_printed_curl_and_sdk_snippet(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    log = (tmp_path / "demo.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "demo", "--port", str(port)], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        banner = (tmp_path / "demo.log").read_text()
        assert f"curl -s {base}/v1/chat/completions" in banner and 'api_key="demo"' in banner
        r = httpx.post(f"{base}/v1/chat/completions", json={"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": "Hello"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello! You said: Hello"
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="demo", max_retries=0)
        out = c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hello"}])
        assert out.choices[0].message.content == "Hello! You said: Hello"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the fake upstream and granian's worker too
