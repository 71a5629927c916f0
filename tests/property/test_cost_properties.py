"""Cost is never negative, never decreases when tokens are added, and never exceeds the worst case."""

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.pricing import Price, cost_micro_usd, worst_case_micro_usd

PRICE_FIELD = st.one_of(st.none(), st.integers(0, 200_000_000))  # up to $200 per million tokens
prices = st.builds(Price, input=PRICE_FIELD, output=PRICE_FIELD, cached_input=PRICE_FIELD,
                   cache_write=PRICE_FIELD, reasoning=PRICE_FIELD,
                   per_image=st.one_of(st.none(), st.integers(0, 10**12)),  # up to $1 an image
                   per_audio_second=st.one_of(st.none(), st.integers(0, 10**10)))  # up to $0.01 a second
COUNT = st.integers(0, 5_000_000)
# Disjoint parts of a request's usage; OpenAI-style totals are built from them.
PARTS = ("uncached", "cached", "cache_write", "plain_output", "reasoning", "images")
parts = st.fixed_dictionaries({p: COUNT for p in PARTS}).map(lambda d: {**d, "images": d["images"] % 50})


def usage(p: dict[str, int], audio: float = 0.0) -> dict[str, float]:
    return {
        "input_tokens": p["uncached"] + p["cached"] + p["cache_write"],
        "cached_tokens": p["cached"], "cache_write_tokens": p["cache_write"],
        "output_tokens": p["plain_output"] + p["reasoning"], "reasoning_tokens": p["reasoning"],
        "images": p["images"], "audio_seconds": audio,
    }


@settings(max_examples=200)
@given(prices, parts, st.floats(0, 10_000, allow_nan=False))
def test_cost_is_never_negative(price, p, audio):
    cost = cost_micro_usd(price, usage(p, audio))
    assert cost is None or cost >= 0


@settings(max_examples=200)
@given(prices, parts, st.sampled_from(PARTS), st.integers(1, 1_000_000))
def test_cost_never_decreases_when_a_count_grows(price, p, part, extra):
    before = cost_micro_usd(price, usage(p))
    after = cost_micro_usd(price, usage({**p, part: p[part] + extra}))
    if before is not None and after is not None:
        assert after >= before
    if before is None:  # an unpriced count stays unpriced when it grows
        assert after is None


@settings(max_examples=200)
@given(prices, parts)
def test_cost_never_exceeds_the_reserved_worst_case(price, p):
    u = usage({**p, "images": 0})
    cost = cost_micro_usd(price, u)
    worst = worst_case_micro_usd(price, int(u["input_tokens"]), int(u["output_tokens"]))
    if cost is not None and worst is not None:
        assert cost <= worst
