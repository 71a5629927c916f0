"""Combo strategies: how one request orders a combo's targets, plus capability filtering.

A strategy only orders; it never drops a target. The attempt loop (attempts.py) walks the order
and moves on after a retryable failure, so every strategy also decides the fallback order.
Each strategy is `(targets, combo, info) -> permutation of targets`, registered by name with
`routing.register_strategy`; importing this module registers all of them.

`info` is what the pipeline knows about the request:
    "stats"         RoutingStats (below): long-lived, survives reloads
    "input_tokens"  int, an estimate of the prompt size
    "max_tokens"    int or None, the output cap the client asked for
    "needs"         set of capabilities the request uses: tools, vision, reasoning
Missing keys get neutral values, so `omniroute explain` and tests can pass a partial dict.

Why the state lives in RoutingStats and not in the Combo: a Combo belongs to one immutable
Runtime and is replaced on every reload, while a round-robin cursor or a learned latency must
carry on across reloads. RoutingStats is keyed by combo name and target key
(`connection/model`) only, so it survives any config change that keeps those names.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .routing import Target, register_strategy

if TYPE_CHECKING:
    from .runtime import Combo

DEFAULT_OUTPUT_ESTIMATE = 1024  # output tokens assumed for cost ranking when the client sets no cap
FEATURE_NEEDS = {"tools": "tools", "images": "vision", "reasoning": "reasoning"}


@dataclass(slots=True)
class TargetStats:
    """Counters of one target key. `latency_ms` is an EWMA of time to the first byte."""

    requests: int = 0
    failures: int = 0
    in_flight: int = 0
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        lat = None if self.latency_ms is None else round(self.latency_ms, 3)
        return {"requests": self.requests, "failures": self.failures, "in_flight": self.in_flight, "latency_ms": lat}


class RoutingStats:
    """What the strategies learn and remember between requests.

    `rng` is the only source of randomness of every strategy: seed it (`RoutingStats(seed=1)`)
    and each ordering is reproducible. A failure feeds `failure_penalty_ms` into the latency EWMA,
    so a target that keeps failing sinks in latency-optimized order instead of staying unmeasured.
    """

    def __init__(self, seed: int | None = None, *, alpha: float = 0.2, failure_penalty_ms: float = 10_000.0) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.rng = random.Random(seed)
        self.alpha = alpha
        self.failure_penalty_ms = failure_penalty_ms
        self.cursors: dict[str, int] = {}  # combo name -> round-robin position
        self.decks: dict[str, list[str]] = {}  # combo name -> target keys not yet first this cycle
        self.targets: dict[str, TargetStats] = {}

    def target(self, key: str) -> TargetStats:
        st = self.targets.get(key)
        if st is None:
            st = self.targets[key] = TargetStats()
        return st

    def started(self, key: str) -> None:
        st = self.target(key)
        st.requests += 1
        st.in_flight += 1

    def ended(self, key: str) -> None:
        st = self.targets.get(key)
        if st is not None and st.in_flight > 0:
            st.in_flight -= 1

    def observe(self, key: str, ok: bool, latency_ms: float | None = None) -> None:
        st = self.target(key)
        if not ok:
            st.failures += 1
            latency_ms = max(latency_ms or 0.0, self.failure_penalty_ms)
        if latency_ms is not None:
            prev = st.latency_ms
            st.latency_ms = latency_ms if prev is None else prev + self.alpha * (latency_ms - prev)

    def preview(self) -> RoutingStats:
        """A copy whose cursors, decks and random state can be advanced without touching these:
        `explain` shows the next order without consuming it."""
        other = RoutingStats(alpha=self.alpha, failure_penalty_ms=self.failure_penalty_ms)
        other.rng.setstate(self.rng.getstate())
        other.cursors = dict(self.cursors)
        other.decks = {k: list(v) for k, v in self.decks.items()}
        other.targets = self.targets  # read only by the strategies
        return other

    def snapshot(self, keys: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        wanted = self.targets if keys is None else keys
        return {k: (self.targets.get(k) or TargetStats()).as_dict() for k in wanted}


_FALLBACK_STATS = RoutingStats()  # used when a caller passes no stats (explain without a gateway)


def _stats(info: dict[str, Any]) -> RoutingStats:
    st = info.get("stats")
    return st if isinstance(st, RoutingStats) else _FALLBACK_STATS


def _needed_tokens(input_tokens: int, max_tokens: int | None) -> int:
    return max(0, int(input_tokens or 0)) + max(0, int(max_tokens or 0))


@register_strategy("weighted")
def weighted(targets: list[Target], combo: Combo, info: dict[str, Any]) -> list[Target]:
    """Random order biased by `weight`: a target of weight 3 comes first three times as often as
    one of weight 1 (Efraimidis-Spirakis keys). Weight 0 targets are fallbacks only, in order."""
    rng = _stats(info).rng
    live = [(rng.random() ** (1.0 / t.weight), i) for i, t in enumerate(targets) if t.weight > 0]
    live.sort(reverse=True)
    return [targets[i] for _, i in live] + [t for t in targets if t.weight <= 0]


@register_strategy("round-robin")
def round_robin(targets: list[Target], combo: Combo, info: dict[str, Any]) -> list[Target]:
    """Each request starts one target further along; the rest follow as fallbacks."""
    if len(targets) < 2:
        return targets
    cursors = _stats(info).cursors
    pos = cursors.get(combo.name, 0)
    cursors[combo.name] = pos + 1
    start = pos % len(targets)
    return targets[start:] + targets[:start]


@register_strategy("random")
def random_order(targets: list[Target], combo: Combo, info: dict[str, Any]) -> list[Target]:
    """Uniformly random order, independent between requests."""
    out = list(targets)
    _stats(info).rng.shuffle(out)
    return out


@register_strategy("strict-random")
def strict_random(targets: list[Target], combo: Combo, info: dict[str, Any]) -> list[Target]:
    """Random, but each target comes first exactly once per cycle (a shuffled deck dealt one card a
    request, reshuffled when empty). Fallbacks: the rest of the deck, then the targets already dealt."""
    if len(targets) < 2:
        return targets
    stats = _stats(info)
    keys = [t.key for t in targets]
    present = set(keys)
    deck = [k for k in stats.decks.get(combo.name, ()) if k in present]  # a reload may remove targets
    if not deck:
        deck = list(dict.fromkeys(keys))
        stats.rng.shuffle(deck)
    first = deck.pop(0)
    stats.decks[combo.name] = deck
    rank = {k: i for i, k in enumerate(deck)}
    head = [t for t in targets if t.key == first]
    rest = [t for t in targets if t.key != first]
    rest.sort(key=lambda t: rank.get(t.key, len(rank)))
    return head + rest


@register_strategy("least-used")
def least_used(targets: list[Target], combo: Combo, info: dict[str, Any]) -> list[Target]:
    """Fewest requests in flight first; ties keep the written order."""
    st = _stats(info).targets
    return sorted(targets, key=lambda t: st[t.key].in_flight if t.key in st else 0)


@register_strategy("cost-optimized")
def cost_optimized(targets: list[Target], combo: Combo, info: dict[str, Any]) -> list[Target]:
    """Cheapest first for this request's size (input estimate plus max_tokens, or a typical
    answer when there is no cap), by spec prices. Targets whose price is unknown come last.
    The key is `pricing.cost_micro_usd` of that usage before rounding, computed inline: this
    runs for every target of every request, and the general function costs ~5 µs a call."""
    inp = max(0, int(info.get("input_tokens") or 0))
    out = info.get("max_tokens")
    out = DEFAULT_OUTPUT_ESTIMATE if out is None else max(0, int(out))

    def key(t: Target) -> tuple[int, int]:
        p = t.model.price
        if p is None or (inp and p.input is None) or (out and p.output is None):
            return (1, 0)
        return (0, inp * (p.input or 0) + out * (p.output or 0))

    return sorted(targets, key=key)


@register_strategy("latency-optimized")
def latency_optimized(targets: list[Target], combo: Combo, info: dict[str, Any]) -> list[Target]:
    """Lowest learned latency first. A target never measured goes first once, so it gets measured;
    failures count as slow (see RoutingStats), so a failing target sinks."""
    st = _stats(info).targets

    def key(t: Target) -> float:
        s = st.get(t.key)
        return -1.0 if s is None or s.latency_ms is None else s.latency_ms

    return sorted(targets, key=key)


@register_strategy("context-optimized")
def context_optimized(targets: list[Target], combo: Combo, info: dict[str, Any]) -> list[Target]:
    """The smallest context window that fits input + max_tokens first (big-context models stay
    free for big requests); unknown context next; windows too small last, largest first."""
    need = _needed_tokens(info.get("input_tokens") or 0, info.get("max_tokens"))

    def key(t: Target) -> tuple[int, int]:
        ctx = t.model.context
        if ctx is None:
            return (1, 0)
        return (0, ctx) if ctx >= need else (2, -ctx)

    return sorted(targets, key=key)


def needs_of(features: Iterable[str]) -> set[str]:
    """Request features (canonical.features_used) -> model capabilities they require."""
    return {FEATURE_NEEDS[f] for f in features if f in FEATURE_NEEDS}


def filter_capable(
    targets: list[Target], needs: Iterable[str], input_tokens: int = 0, max_tokens: int | None = None
) -> tuple[list[Target], list[tuple[Target, str]]]:
    """Keep the targets whose model can serve the request, in order; return the others with the
    reason, for `explain` and the skip events. A model not in any spec passes (it is unknown, not
    incapable); a model with no declared context window passes the size check."""
    need_set = frozenset(needs)
    need_tokens = _needed_tokens(input_tokens, max_tokens)
    if not need_set and not need_tokens:
        return targets, []
    kept: list[Target] = []
    skipped: list[tuple[Target, str]] = []
    for t in targets:
        m = t.model
        missing = sorted(need_set - m.capabilities) if m.known else []
        if missing:
            skipped.append((t, f"model lacks {', '.join(missing)}"))
        elif m.context is not None and need_tokens > m.context:
            detail = f"~{input_tokens} input" + (f" + {max_tokens} max_tokens" if max_tokens else "")
            skipped.append((t, f"context window of {m.context} tokens is smaller than the {need_tokens} needed ({detail})"))
        else:
            kept.append(t)
    return kept, skipped


def describe_skips(skipped: list[tuple[Target, str]]) -> str:
    """One line for the error when no target is capable: 'a/m: model lacks vision; b/n: ...'."""
    return "; ".join(f"{t.key}: {why}" for t, why in skipped)


__all__ = [
    "FEATURE_NEEDS", "RoutingStats", "TargetStats", "context_optimized", "cost_optimized", "describe_skips",
    "filter_capable", "latency_optimized", "least_used", "needs_of", "random_order", "round_robin",
    "strict_random", "weighted",
]
