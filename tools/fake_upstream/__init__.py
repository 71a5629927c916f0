"""Fake upstream AI providers (OpenAI, Anthropic, Gemini, Ollama) on loopback, for tests and benchmarks.

Start one with `tools.fake_upstream.launch.FakeUpstream`, or `python -m tools.fake_upstream`.
"""

from .launch import FakeUpstream

__all__ = ["FakeUpstream"]
