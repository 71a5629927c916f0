"""Test support: the launcher lives in tools/ (the benchmark uses it too)."""

from __future__ import annotations

from typing import Any

from tools.gateway_proc import ROOT, Gateway, free_port

__all__ = ["ROOT", "Gateway", "demo_providers", "free_port"]


def demo_providers(fake_url: str) -> dict[str, Any]:
    """Connections for all four fake upstream formats."""
    return {
        "openai": {"base_url": f"{fake_url}/openai/v1", "api_key": "sk-fake-openai", "models": {"fail-503": {}, "fail-429": {}}},
        "anthropic": {"base_url": f"{fake_url}/anthropic/v1", "api_key": "sk-fake-anthropic"},
        "gemini": {"base_url": f"{fake_url}/gemini/v1beta", "api_key": "fake-gemini-key"},
        "ollama": {"base_url": f"{fake_url}/ollama"},
    }
