"""Model resolution: a requested name -> the ordered list of targets to try.

Names resolve in the order of the API contract: a user alias, then a combo, then
`provider/model` (split at the first '/', the provider being a connection id or a provider's short
alias), then a bare model id listed by exactly one connection. Combos expand recursively (depth
and cycles are checked at load); their strategy, a registered unit in `strategies.py`, orders the
targets for each request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ClientError, Problem

if TYPE_CHECKING:
    from .runtime import Combo, Connection, Model, Runtime
    from .source import Doc

_BAD_NAME = re.compile(r"(\.\./|/\.\.|[\x00-\x1f\x7f])")


@dataclass(frozen=True)
class Target:
    connection: Connection
    model: Model
    ref: str  # the name this target was reached by, for explain and usage
    weight: float = 1.0

    @property
    def key(self) -> str:
        return f"{self.connection.id}/{self.model.id}"


@dataclass
class Resolution:
    requested: str
    targets: list[Target]
    combo: Combo | None = None
    chain: list[str] = field(default_factory=list)  # aliases and combos passed through


# A strategy orders a combo's targets for one request: (targets, combo, request info) -> order.
Strategy = Callable[[list[Target], "Combo", dict[str, Any]], list[Target]]
STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    def deco(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return deco


@register_strategy("priority")
def _priority(targets: list[Target], combo: Combo, info: dict[str, Any]) -> list[Target]:
    """In the order written; later targets are fallbacks."""
    return targets


def check_name(name: str) -> None:
    if not name or _BAD_NAME.search(name):
        raise ClientError("invalid model name: it must not be empty, contain '../' or control characters", param="model")


def resolve(rt: Runtime, name: str, info: dict[str, Any] | None = None, *, order: bool = True) -> Resolution:
    """Resolve `name` to targets. Raises ClientError (400) naming the candidates when it can't."""
    check_name(name)
    res = Resolution(requested=name, targets=[])
    _expand(rt, name, res, info or {}, depth=0, order=order)
    return res


def _expand(rt: Runtime, name: str, res: Resolution, info: dict[str, Any], depth: int, order: bool, weight: float = 1.0) -> None:
    if depth > 8:
        raise ClientError(f"model '{res.requested}' resolves through too many aliases", param="model")
    alias = rt.aliases.get(name)
    if alias is not None:
        res.chain.append(name)
        _expand(rt, alias, res, info, depth + 1, order, weight)
        return
    combo = rt.combos.get(name)
    if combo is not None:
        res.chain.append(name)
        if res.combo is None:
            res.combo = combo
        sub = Resolution(requested=name, targets=[])
        for t in combo.targets:
            _expand(rt, t.ref, sub, info, depth + 1, order, t.weight)
        targets = sub.targets
        if order:
            targets = STRATEGIES[combo.strategy](targets, combo, info)
        res.targets.extend(targets)
        res.chain.extend(c for c in sub.chain if c not in res.chain)
        return
    conn, model_id = split(rt, name)
    if conn is not None:
        res.targets.append(Target(conn, conn.model(model_id), name, weight))
        return
    owners = rt.model_index.get(name, ())
    if len(owners) == 1:
        c = rt.connections[owners[0]]
        res.targets.append(Target(c, c.models[name], name, weight))
        return
    if len(owners) > 1:
        options = ", ".join(f"{o}/{name}" for o in owners)
        raise ClientError(f"model '{name}' is offered by several providers; name one of: {options}", param="model")
    raise ClientError(_unknown(rt, name), param="model")


def split(rt: Runtime, name: str) -> tuple[Connection | None, str]:
    prefix, sep, rest = name.partition("/")
    if sep and rest:
        cid = rt.prefixes.get(prefix)
        if cid is not None:
            return rt.connections[cid], rest
    return None, name


def _unknown(rt: Runtime, name: str) -> str:
    prefix, sep, _ = name.partition("/")
    if sep and prefix not in rt.prefixes:
        known = ", ".join(sorted(rt.connections)) or "none configured"
        return f"unknown model '{name}': no provider '{prefix}' (configured providers: {known})"
    close = sorted(k for k in (*rt.aliases, *rt.combos, *rt.model_index) if name.lower() in k.lower())[:8]
    hint = f" (did you mean: {', '.join(close)})" if close else " (use provider/model, an alias or a combo; GET /v1/models lists them)"
    return f"unknown model '{name}'{hint}"


def check_references(rt: Runtime, doc: Doc) -> list[Problem]:
    """Load-time checks: aliases and combo targets resolve, nested combos have no cycle and a
    depth of at most 3, and named models are known to their provider."""
    problems: list[Problem] = []

    def check_ref(ref: str, where: tuple[Any, ...]) -> None:
        if ref in rt.aliases or ref in rt.combos:
            return
        conn, mid = split(rt, ref)
        if conn is not None:
            if mid not in conn.models and conn.models:
                valid = ", ".join(sorted(conn.models)[:12])
                problems.append(doc.problem(where, f"unknown model '{mid}' for provider '{conn.id}' (valid values: {valid})"))
            return
        owners = rt.model_index.get(ref, ())
        if len(owners) == 1:
            return
        if len(owners) > 1:
            problems.append(doc.problem(where, f"'{ref}' is offered by several providers; write one of: {', '.join(f'{o}/{ref}' for o in owners)}"))
            return
        problems.append(doc.problem(where, _unknown(rt, ref)))

    for name, target in rt.aliases.items():
        if name in rt.combos:
            problems.append(doc.problem(("aliases", name), f"'{name}' is both an alias and a combo"))
        check_ref(target, ("aliases", name))
    for name, combo in rt.combos.items():
        for i, t in enumerate(combo.targets):
            check_ref(t.ref, ("combos", name, "targets", i))
    # cycles and depth, through aliases and combos alike
    graph: dict[str, list[str]] = {n: [rt.aliases[n]] for n in rt.aliases}
    for n, c in rt.combos.items():
        graph[n] = [t.ref for t in c.targets]

    def depth(node: str, stack: tuple[str, ...]) -> int:
        if node in stack:
            raise _Cycle((*stack, node))
        if node not in graph:
            return 0
        own = 1 if node in rt.combos else 0
        return own + max((depth(n, (*stack, node)) for n in graph[node]), default=0)

    for n in graph:
        section = "combos" if n in rt.combos else "aliases"
        try:
            d = depth(n, ())
        except _Cycle as c:
            problems.append(doc.problem((section, n), f"cycle: {' -> '.join(c.path)}"))
            continue
        if section == "combos" and d > 3:
            problems.append(doc.problem((section, n), f"combos nest {d} deep; at most 3 levels are allowed"))
    return problems


class _Cycle(Exception):
    def __init__(self, path: Iterable[str]) -> None:
        super().__init__()
        self.path = list(path)


from . import strategies as _strategies  # noqa: E402,F401 - registers the combo strategies
