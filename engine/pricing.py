"""Model prices and the cost of one request, in integer micro-USD.

Why integers: money must add up exactly across millions of records, and floats do not (0.1 + 0.2).
A provider spec writes prices the way vendors publish them: USD per million tokens
(`{input: 2.0, output: 8.0, cached_input: 0.5}`), USD per image or per audio second
(`{per_audio_second: 0.00003083}`). `Price` keeps every field on one integer scale, micro-USD per
million units (tokens, images or seconds), converted through `Decimal(str(value))`: input 2.0 is
exactly 2_000_000, and $0.00003083 per second is 30_830_000. A cost is then
`sum(count * price) / 1e6` micro-USD, computed on integers and rounded once, half up, at the end.

Token semantics (OpenAI's, which the pipeline normalises every upstream to):
- `input_tokens` is the TOTAL input, cached reads and cache writes included; the uncached part is
  `input - cached - cache_write` (clamped at 0 when an upstream reports inconsistent counts).
- `output_tokens` includes `reasoning_tokens`.

Honesty rule: a cost is never a guess. No price, or a count > 0 that nothing prices (say output
tokens for a model whose spec gives only an input price), gives `None`, recorded as a null cost.

Public surface: Price, cost_micro_usd, worst_case_micro_usd, usd_to_micro, micro_to_usd.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from typing import Any

MICRO = 1_000_000  # micro-USD per USD, and tokens per "million tokens"
_HALF = MICRO // 2

# spec field -> Price attribute; the attribute names say the unit
_SPEC_FIELDS = {
    "input": "input",
    "output": "output",
    "cached_input": "cached_input",
    "cache_write": "cache_write",
    "reasoning": "reasoning",
    "per_image": "per_image",
    "per_audio_second": "per_audio_second",
}


def usd_to_micro(value: Any, what: str = "price", scale: int = MICRO) -> int:
    """USD as written in YAML or JSON (int, float, numeric string) -> exact integer micro-USD
    (with `scale` = 10**12: micro-USD per million units, for per-unit prices)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{what} must be a number of USD, got {value!r}")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what} must be a number of USD, got {value!r}")
    if not d.is_finite() or d < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    micro = d * scale
    if micro != micro.to_integral_value():
        places = len(str(scale)) - 1
        raise ValueError(f"{what} has more than {places} decimal places ({value!r}), finer than prices are kept")
    return int(micro)


def micro_to_usd(micro: int | None) -> Decimal | None:
    """Integer micro-USD -> exact Decimal USD with 6 places (None stays None)."""
    if micro is None:
        return None
    return Decimal(micro).scaleb(-6).quantize(Decimal("0.000001"))


@dataclass(frozen=True, slots=True)
class Price:
    """Prices of one model, each in micro-USD per million units: tokens for the first five
    fields, images for `per_image`, seconds for `per_audio_second`.

    Every field is optional: None means "the spec does not say", never "free" (0 means free).
    """

    input: int | None = None
    output: int | None = None
    cached_input: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None
    per_image: int | None = None
    per_audio_second: int | None = None

    @classmethod
    def from_spec(cls, d: Mapping[str, Any] | None, base: Price | None = None) -> Price | None:
        """A spec's `price:` mapping -> Price; None or {} (and no base) -> None.

        `base` lets a config override change some fields of a spec's price and keep the rest.
        """
        if d is None:
            return base
        if not isinstance(d, Mapping):
            raise ValueError(f"price must be a mapping of {sorted(_SPEC_FIELDS)} to USD, got {d!r}")
        unknown = sorted(set(d) - set(_SPEC_FIELDS))
        if unknown:
            raise ValueError(f"unknown price field(s) {unknown} (valid fields: {sorted(_SPEC_FIELDS)})")
        values: dict[str, int | None] = (
            {f.name: getattr(base, f.name) for f in fields(cls)} if base is not None else {}
        )
        for key, value in d.items():
            per_unit = key.startswith("per_")
            unit = key.replace("_", " ") if per_unit else "per million tokens"
            values[_SPEC_FIELDS[key]] = (None if value is None else
                                         usd_to_micro(value, f"price.{key} (USD {unit})", MICRO * MICRO if per_unit else MICRO))
        price = cls(**values)
        return None if price.is_empty() else price

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def to_dict(self) -> dict[str, float]:
        """USD per million tokens (per unit for per_* fields), omitting unknown ones: for /api/pricing."""
        out: dict[str, float] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = float(Decimal(v).scaleb(-12 if f.name.startswith("per_") else -6))
        return out


def _count(usage: Mapping[str, Any], name: str) -> int:
    """A non-negative integer count; upstreams sometimes send null, floats or negatives."""
    v = usage.get(name)
    if v is None or isinstance(v, bool):
        return 0
    try:
        n = int(v)
    except (TypeError, ValueError):
        return 0
    return n if n > 0 else 0


def _part(count: int, price: int | None) -> int | None:
    """count * price, in micro-USD * 1e-6; None when there are units that nothing prices."""
    if count == 0:
        return 0
    if price is None:
        return None
    return count * price


def cost_micro_usd(price: Price | None, usage: Mapping[str, Any]) -> int | None:
    """Cost of one attempt in integer micro-USD, rounded half up; None when it cannot be known."""
    if price is None:
        return None
    inp = _count(usage, "input_tokens")
    cached = _count(usage, "cached_tokens")
    cache_write = _count(usage, "cache_write_tokens")
    out = _count(usage, "output_tokens")
    reasoning = _count(usage, "reasoning_tokens")
    # Inconsistent counts (cached + writes > input, reasoning > output) are clamped rather than
    # trusted to subtract: a cost must never go negative.
    uncached = max(0, inp - cached - cache_write)
    plain_out = max(0, out - reasoning)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    write_price = price.cache_write if price.cache_write is not None else price.input
    reasoning_price = price.reasoning if price.reasoning is not None else price.output

    parts = (
        _part(uncached, price.input),
        _part(cached, cached_price),
        _part(cache_write, write_price),
        _part(plain_out, price.output),
        _part(reasoning, reasoning_price),
        _part(_count(usage, "images"), price.per_image),
    )
    audio = _audio_part(usage.get("audio_seconds"), price.per_audio_second)
    if audio is None or any(p is None for p in parts):
        return None
    # Audio is counted in milliseconds, hence the common factor of 1000.
    total = sum(parts) * 1000 + audio  # type: ignore[arg-type]
    return (total + _HALF * 1000) // (MICRO * 1000)


def _audio_part(seconds: Any, price: int | None) -> int | None:
    # Whole milliseconds keep the arithmetic on integers; finer than any provider bills.
    try:
        s = float(seconds or 0)
    except (TypeError, ValueError):
        return 0
    if not math.isfinite(s) or s <= 0:
        return 0
    ms = round(s * 1000)
    if price is None:
        return None
    return ms * price


def worst_case_micro_usd(price: Price | None, input_tokens: int, max_output_tokens: int) -> int | None:
    """The most a request can cost: every input token at the dearest input-side price (a cache
    write can cost more than a plain read), every output token at the dearer of the
    output and reasoning prices. Rounded up, so a reservation never falls short by rounding."""
    if price is None:
        return None
    inp = max(0, int(input_tokens))
    out = max(0, int(max_output_tokens))
    in_prices = [p for p in (price.input, price.cache_write, price.cached_input) if p is not None]
    out_prices = [p for p in (price.output, price.reasoning) if p is not None]
    if (inp and not in_prices) or (out and not out_prices):
        return None
    total = inp * max(in_prices, default=0) + out * max(out_prices, default=0)
    return -(-total // MICRO)
