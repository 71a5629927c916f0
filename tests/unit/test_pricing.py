"""Cost arithmetic against hand-computed figures (integer micro-USD, rounded half up once)."""

from decimal import Decimal

import pytest

from engine.pricing import MICRO, Price, cost_micro_usd, micro_to_usd, usd_to_micro, worst_case_micro_usd

OPENAI = Price.from_spec({"input": 2.0, "output": 8.0, "cached_input": 0.5})
ANTHROPIC = Price.from_spec({"input": 3, "output": 15, "cached_input": 0.3, "cache_write": 3.75})


def test_from_spec_stores_exact_micro_usd_per_million():
    assert Price(input=2_000_000, output=8_000_000, cached_input=500_000) == OPENAI
    # 0.1 + 0.2 style float noise never reaches the integers
    assert Price.from_spec({"input": 0.075, "output": 0.3}) == Price(input=75_000, output=300_000)
    assert Price.from_spec({"input": "1.25"}) == Price(input=1_250_000)


def test_from_spec_none_and_empty_mean_no_price():
    assert Price.from_spec(None) is None
    assert Price.from_spec({}) is None
    assert Price.from_spec({"input": None}) is None


def test_from_spec_override_keeps_base_fields():
    merged = Price.from_spec({"output": 10}, base=OPENAI)
    assert merged == Price(input=2_000_000, output=10_000_000, cached_input=500_000)
    assert Price.from_spec(None, base=OPENAI) is OPENAI


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"input": -1}, "finite number >= 0"),
        ({"input": True}, "must be a number"),
        ({"input": "abc"}, "must be a number"),
        ({"input": float("nan")}, "finite number"),
        ({"inptu": 1}, "unknown price field"),
        ({"input": 0.0000001}, "more than 6 decimal places"),
        ({"per_audio_second": 1e-13}, "more than 12 decimal places"),
    ],
)
def test_from_spec_rejects_bad_values_with_a_message(spec, message):
    with pytest.raises(ValueError, match=message):
        Price.from_spec(spec)


def test_plain_chat_cost():
    # 800 uncached x $2/M = 1600 µ$, 200 cached x $0.5/M = 100 µ$, 500 out x $8/M = 4000 µ$
    usage = {"input_tokens": 1000, "cached_tokens": 200, "output_tokens": 500}
    assert cost_micro_usd(OPENAI, usage) == 5700


def test_cache_write_and_read_prices():
    # 2000 uncached x 3 = 6000; 6000 cached x 0.3 = 1800; 2000 written x 3.75 = 7500; 1000 out x 15 = 15000
    usage = {"input_tokens": 10_000, "cached_tokens": 6000, "cache_write_tokens": 2000, "output_tokens": 1000}
    assert cost_micro_usd(ANTHROPIC, usage) == 30_300
    assert micro_to_usd(30_300) == Decimal("0.030300")


def test_cached_and_cache_write_fall_back_to_input_price():
    price = Price.from_spec({"input": 1, "output": 2})
    usage = {"input_tokens": 1000, "cached_tokens": 300, "cache_write_tokens": 200, "output_tokens": 10}
    assert cost_micro_usd(price, usage) == 1000 + 20


def test_reasoning_tokens_at_reasoning_price_else_output():
    with_reasoning = Price.from_spec({"input": 1, "output": 4, "reasoning": 10})
    usage = {"input_tokens": 100, "output_tokens": 300, "reasoning_tokens": 100}
    assert cost_micro_usd(with_reasoning, usage) == 100 + 200 * 4 + 100 * 10
    without = Price.from_spec({"input": 1, "output": 4})
    assert cost_micro_usd(without, usage) == 100 + 300 * 4


def test_rounds_half_up_once_on_the_total():
    cheap = Price.from_spec({"input": 0.075, "output": 0.3})
    assert cost_micro_usd(cheap, {"input_tokens": 1}) == 0  # 0.075 µ$
    assert cost_micro_usd(cheap, {"input_tokens": 7}) == 1  # 0.525 µ$
    assert cost_micro_usd(cheap, {"input_tokens": 6, "output_tokens": 1}) == 1  # 0.45 + 0.3 = 0.75 µ$
    assert cost_micro_usd(cheap, {"input_tokens": 20}) == 2  # 1.5 µ$ rounds up


def test_images_and_audio():
    img = Price.from_spec({"per_image": 0.04})
    assert cost_micro_usd(img, {"images": 3}) == 120_000
    audio = Price.from_spec({"per_audio_second": 0.0001})
    assert cost_micro_usd(audio, {"audio_seconds": 61.5}) == 6150
    assert cost_micro_usd(audio, {"audio_seconds": float("inf")}) == 0
    # Groq's Whisper prices, finer than a micro-dollar per second
    whisper = Price.from_spec({"per_audio_second": 0.00003083})
    assert whisper == Price(per_audio_second=30_830_000)
    assert cost_micro_usd(whisper, {"audio_seconds": 3600}) == 110_988  # $0.110988 an hour
    turbo = Price.from_spec({"per_audio_second": 0.00001111})
    assert cost_micro_usd(turbo, {"audio_seconds": 10.5}) == 117  # 116.655 µ$ rounds up
    assert cost_micro_usd(turbo, {"audio_seconds": 10.5, "input_tokens": 1}) is None  # tokens nothing prices


def test_no_price_is_null_cost_never_a_guess():
    assert cost_micro_usd(None, {"input_tokens": 10}) is None
    input_only = Price.from_spec({"input": 0.1})  # an embedding model
    assert cost_micro_usd(input_only, {"input_tokens": 1000}) == 100
    assert cost_micro_usd(input_only, {"input_tokens": 1000, "output_tokens": 1}) is None
    assert cost_micro_usd(Price.from_spec({"output": 1}), {"images": 1}) is None


def test_free_model_costs_zero():
    assert cost_micro_usd(Price.from_spec({"input": 0, "output": 0}), {"input_tokens": 10**9, "output_tokens": 10**9}) == 0


def test_bad_counts_are_clamped_not_trusted():
    usage = {"input_tokens": 100, "cached_tokens": 500, "output_tokens": -5, "reasoning_tokens": None}
    # uncached clamps to 0; 500 cached x 0.5 = 250 µ$; output counts as 0
    assert cost_micro_usd(OPENAI, usage) == 250
    assert cost_micro_usd(OPENAI, {"input_tokens": "x", "output_tokens": 10.9}) == 80


def test_worst_case_uses_dearest_prices_and_rounds_up():
    # input at max(3, 3.75, 0.3) = 3.75 -> 3750; output at 15 -> 7500
    assert worst_case_micro_usd(ANTHROPIC, 1000, 500) == 11_250
    assert worst_case_micro_usd(Price.from_spec({"input": 0.075, "output": 0}), 1, 0) == 1
    assert worst_case_micro_usd(None, 10, 10) is None
    assert worst_case_micro_usd(Price.from_spec({"input": 1}), 10, 10) is None
    assert worst_case_micro_usd(Price.from_spec({"input": 1}), 10, 0) == 10


def test_usd_conversions_and_to_dict():
    assert usd_to_micro(50) == 50 * MICRO
    assert usd_to_micro("0.000001") == 1
    assert micro_to_usd(None) is None
    assert micro_to_usd(1_234_567) == Decimal("1.234567")
    assert ANTHROPIC.to_dict() == {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75}
    assert Price.from_spec({"per_image": 0.04, "per_audio_second": 0.00003083}).to_dict() == {
        "per_image": 0.04, "per_audio_second": 0.00003083}
