from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Gateway, demo_providers
from tools.fake_upstream.launch import FakeUpstream


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as f:
        yield f


@pytest.fixture(scope="module")
def gateway_factory(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Any]:
    """Start gateways for a module: `gateway_factory(config_overrides)`; all are stopped at the end."""
    started: list[Gateway] = []

    def make(extra: dict[str, Any] | None = None, *, env: dict[str, str] | None = None, workers: int = 1) -> Gateway:
        work = tmp_path_factory.mktemp("gw")
        config: dict[str, Any] = {"data_dir": str(work / "data"), "providers": demo_providers(fake.base_url)}
        config.update(extra or {})
        gw = Gateway(Path(work), config, env=env, workers=workers).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any) -> Gateway:
    return gateway_factory(
        {
            "aliases": {"fast": "openai/gpt-4.1-mini"},
            "combos": {"duo": {"strategy": "priority", "targets": ["openai/fail-503", "openai/gpt-4.1"]}},
        }
    )


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`launch(config, workers=1, ipv6=False)`: a gateway on exactly this config (no default
    providers), stopped with its whole process group when the module ends."""
    started: list[Gateway] = []

    def make(config: dict[str, Any], *, workers: int = 1, ipv6: bool = False) -> Gateway:
        work = tmp_path_factory.mktemp("gw")
        config = {"data_dir": str(work / "data"), **config}
        if ipv6:
            config["server"] = {**config.get("server", {}), "host": "::1"}
        g = Gateway(Path(work), config, workers=workers)
        if ipv6:
            g.base_url = f"http://[::1]:{g.port}"
        started.append(g)
        return g.start()

    yield make
    for g in started:
        g.stop()
