"""Applying a policy decision to a canonical request: set, cap, system prompt, thinking budget.

Kept apart from evaluation because it is the one place that knows the canonical request's shape
(see canonical.py) and the one representation of thinking budgets every format spec maps from.

Public surface: EFFORT_TOKENS, effort_for_tokens, apply_to_request, Op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .policy import Decision

# The same table the anthropic-messages spec uses, so an effort maps to one budget everywhere.
EFFORT_TOKENS = {"low": 1024, "medium": 4096, "high": 16384}

Op = tuple[str, str, Any]  # ("set" | "cap" | "system" | "thinking", field or mode, value)


class HasOps(Protocol):
    @property
    def ops(self) -> tuple[Op, ...]: ...


def effort_for_tokens(tokens: int) -> str:
    """The effort level of a token budget, on the thresholds the anthropic-messages spec decodes with."""
    return "low" if tokens < 4096 else ("medium" if tokens < 16384 else "high")


def apply_to_request(req: dict[str, Any], decision: Decision | HasOps) -> dict[str, Any]:
    """A copy of the canonical request with the decision's set, cap, system prompt and thinking
    budget applied in rule order. The input is not changed (each target may get its own copy).

    Thinking budgets in the canonical `reasoning` field: off is {"effort": "none", "budget_tokens": 0};
    tokens N is {"effort": effort_for_tokens(N), "budget_tokens": N}; effort E is
    {"effort": E, "budget_tokens": EFFORT_TOKENS[E]}; passthrough leaves `reasoning` as sent.
    Both fields are always set, so every format spec finds the one it maps.
    """
    if not decision.ops:
        return req
    out = dict(req)
    for kind, what, value in decision.ops:
        if kind == "set":
            if what == "reasoning_effort":
                out["reasoning"] = {"effort": value, "budget_tokens": EFFORT_TOKENS[value]}
            else:
                out[what] = value
        elif kind == "cap":
            current = out.get(what)
            if current is None:
                if what == "max_tokens":  # unset means the upstream's own (often large) default
                    out[what] = value
            elif current > value:
                out[what] = value
        elif kind == "system":
            current = out.get("system") or ""
            if what == "replace":
                out["system"] = value or None
            elif value:
                joined = f"{value}\n\n{current}" if what == "prepend" else f"{current}\n\n{value}"
                out["system"] = joined if current else value
        elif kind == "thinking":
            if what == "off":
                out["reasoning"] = {"effort": "none", "budget_tokens": 0}
            elif what == "tokens":
                out["reasoning"] = {"effort": effort_for_tokens(value), "budget_tokens": value}
            elif what == "effort":
                out["reasoning"] = {"effort": value, "budget_tokens": EFFORT_TOKENS[value]}
    return out
