"""Any YAML document fed to the loader either compiles or raises SpecError with located problems."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.compile import build
from engine.errors import SpecError
from engine.runtime import Runtime

KEYS = [
    "server", "host", "port", "workers", "require_api_key", "data_dir", "settings", "strict_translation", "providers",
    "openai", "anthropic", "spec", "api_key", "accounts", "label", "base_url", "models", "price", "input", "aliases",
    "combos", "strategy", "targets", "model", "weight", "keys", "name", "key", "budget", "period", "limit_usd", "x",
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["openai/gpt-4.1", "priority", "monthly", "${HOME}", "${NOPE}", "${X:-1}", "http://x", "", "a/b/../c"]),
    st.text(max_size=12),
)
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)), max_leaves=25)


def check(text: str) -> None:
    try:
        rt = build(None, text=text, env={"HOME": "/root"})
    except SpecError as e:
        assert e.problems, "a SpecError always carries problems"
        for p in e.problems:
            assert p.file and p.message
        return
    assert isinstance(rt, Runtime)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_structured_documents(doc: object) -> None:
    check(yaml.safe_dump(doc))


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc:-[]{}'\"\\n #&*!|>%@`\t ,?$")), max_size=60))
def test_arbitrary_text(text: str) -> None:
    check(text)
