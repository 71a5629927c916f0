"""Specs + config -> one immutable Runtime, or a SpecError listing every located problem.

`build()` is the whole of `omniroute check` and of a reload: load every file, validate it against
its schema, compile expressions, resolve every cross-reference (a combo target naming an unknown
model fails here, not at request time). Nothing in here runs per request.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import Problem, SpecError
from .pricing import Price
from .routing import STRATEGIES
from .runtime import (
    CAPABILITIES,
    DEFAULT_TIMEOUTS,
    Account,
    ApiKey,
    Combo,
    ComboTarget,
    Connection,
    Model,
    ProviderSpec,
    Runtime,
    ServerSettings,
)
from .source import Doc, load_file, load_yaml, validate
from .translate import Format, compile_format

BUILTIN_SPECS = Path(os.environ.get("OMNIROUTE_SPECS", Path(__file__).resolve().parent.parent / "specs"))
MAX_COMBO_DEPTH = 3
_frozen = MappingProxyType


def spec_dirs(config: Mapping[str, Any], config_file: Path | None) -> list[Path]:
    dirs = [BUILTIN_SPECS]
    base = config_file.parent if config_file else Path.cwd()
    for d in config.get("spec_dirs") or []:
        if isinstance(d, str):
            dirs.append((base / d).resolve())
    return dirs


class _Build:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[Problem] = []
        self.digest = hashlib.sha256()

    def read(self, path: Path, schema_name: str, *, expand: bool = False, text: str | None = None) -> Doc | None:
        if text is None:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                self.problems.append(Problem(str(path), 0, 0, "", f"cannot read file ({e.__class__.__name__})"))
                return None
        self.digest.update(str(path).encode() + b"\0" + text.encode() + b"\0")
        doc, problems = load_yaml(text, str(path), env=self.env, expand=expand)
        self.problems.extend(problems)
        if doc.data is None:
            if problems:
                return None
            doc.data = {}  # an empty document is an empty mapping
        if not isinstance(doc.data, dict):
            self.problems.append(doc.problem((), "the document must be a mapping of keys to values"))
            return None
        schema_problems = validate(doc, schema_name)
        self.problems.extend(schema_problems)
        return None if schema_problems else doc


def _spec_files(dirs: list[Path], kind: str) -> dict[str, Path]:
    """id -> file; a later directory overrides an earlier one (user specs override built-ins)."""
    out: dict[str, Path] = {}
    for d in dirs:
        sub = d / kind
        if sub.is_dir():
            for f in sorted(sub.glob("*.yaml")):
                out[f.stem] = f
    return out


def _model(mid: str, raw: Mapping[str, Any], base: Model | None = None) -> Model:
    price = Price.from_spec(raw["price"]) if "price" in raw else (base.price if base else None)
    caps = raw.get("capabilities")
    return Model(
        id=mid,
        type=raw.get("type", base.type if base else "chat"),
        name=raw.get("name", base.name if base else mid),
        context=raw.get("context", base.context if base else None),
        max_output=raw.get("max_output", base.max_output if base else None),
        capabilities=frozenset(caps) if caps is not None else (base.capabilities if base else frozenset()),
        price=price,
        upstream=raw.get("upstream", base.upstream if base else mid),
        dimensions=raw.get("dimensions", base.dimensions if base else None),
    )


# Spec files rarely change between reloads: their compiled form is reused while the text is the
# same (Format and ProviderSpec are immutable, so sharing them across Runtimes is safe).
_MEMO: dict[tuple[Any, ...], tuple[Any, list[Problem]]] = {}


def _memo(b: _Build, path: Path, schema_name: str, extra: Any, fn: Any) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        b.problems.append(Problem(str(path), 0, 0, "", f"cannot read file ({e.__class__.__name__})"))
        return None
    b.digest.update(str(path).encode() + b"\0" + text.encode() + b"\0")
    key = (schema_name, str(path), hashlib.sha256(text.encode()).digest(), extra)
    hit = _MEMO.get(key)
    if hit is None:
        sub = _Build(b.env)
        doc = sub.read(path, schema_name, text=text)
        result = fn(sub, doc) if doc is not None else None
        hit = (result, sub.problems)
        if len(_MEMO) > 1024:
            _MEMO.clear()
        _MEMO[key] = hit
    b.problems.extend(hit[1])
    return hit[0]


def _compile_format(b: _Build, doc: Doc) -> Format | None:
    fid = Path(doc.file).stem
    return compile_format(fid, doc.data, lambda p, msg: b.problems.append(doc.problem(p, msg)))


def _formats(b: _Build, dirs: list[Path]) -> dict[str, Format]:
    formats: dict[str, Format] = {}
    for fid, path in _spec_files(dirs, "formats").items():
        fmt = _memo(b, path, "format", None, _compile_format)
        if fmt is not None:
            formats[fid] = fmt
    return formats


def _compile_provider(format_ids: frozenset[str]) -> Any:
    def compile_one(b: _Build, doc: Doc) -> ProviderSpec | None:
        raw = doc.data
        ok = True
        if raw["format"] not in format_ids:
            b.problems.append(doc.problem(("format",), f"unknown wire format '{raw['format']}' (valid values: {', '.join(sorted(format_ids))})"))
            ok = False
        auth = raw["auth"]
        if auth["kind"] == "header" and not auth.get("header"):
            b.problems.append(doc.problem(("auth",), "auth kind 'header' needs 'header' (the header name)"))
            ok = False
        if auth["kind"] == "query" and not auth.get("param"):
            b.problems.append(doc.problem(("auth",), "auth kind 'query' needs 'param' (the query parameter name)"))
            ok = False
        if not raw.get("base_url") and not raw.get("requires_base_url"):
            b.problems.append(doc.problem((), "give base_url, or set requires_base_url: true"))
            ok = False
        if not any(k in raw["endpoints"] for k in ("chat", "embeddings", "images", "transcriptions")):
            b.problems.append(doc.problem(("endpoints",), "a provider needs at least one of chat, embeddings, images, transcriptions"))
            ok = False
        models = {}
        for mid, m in (raw.get("models") or {}).items():
            try:
                models[mid] = _model(mid, m)
            except (ValueError, TypeError) as e:
                b.problems.append(doc.problem(("models", mid, "price"), str(e)))
                ok = False
        if not ok:
            return None
        return ProviderSpec(
            id=Path(doc.file).stem,
            name=raw["name"],
            format=raw["format"],
            base_url=(raw.get("base_url") or "").rstrip("/"),
            requires_base_url=bool(raw.get("requires_base_url")),
            auth=_frozen(dict(auth)),
            headers=_frozen(dict(raw.get("headers") or {})),
            endpoints=_frozen(dict(raw["endpoints"])),
            rate_limit_headers=_frozen(dict(raw.get("rate_limit_headers") or {})),
            timeouts=_frozen(dict(raw.get("timeouts") or {})),
            aliases=tuple(raw.get("aliases") or ()),
            models=_frozen(models),
            file=doc.file,
        )

    return compile_one


def _providers(b: _Build, dirs: list[Path], formats: Mapping[str, Format]) -> dict[str, ProviderSpec]:
    providers: dict[str, ProviderSpec] = {}
    files = _spec_files(dirs, "providers")
    format_ids = frozenset(formats)
    alias_owner: dict[str, str] = {}
    for pid, path in files.items():
        spec = _memo(b, path, "provider", format_ids, _compile_provider(format_ids))
        if spec is None:
            continue
        clash = False
        for i, alias in enumerate(spec.aliases):
            other = alias_owner.get(alias) or (alias if alias in files else None)
            if other and other != pid:
                doc, _ = load_file(path)
                b.problems.append(doc.problem(("aliases", i), f"alias '{alias}' is already used by provider '{other}'"))
                clash = True
            alias_owner.setdefault(alias, pid)
        if not clash:
            providers[pid] = spec
    return providers


def _connections(b: _Build, doc: Doc, providers: Mapping[str, ProviderSpec], formats: Mapping[str, Format]) -> dict[str, Connection]:
    out: dict[str, Connection] = {}
    for cid, raw in (doc.data.get("providers") or {}).items():
        here = ("providers", cid)
        if raw.get("enabled") is False:
            continue
        sid = raw.get("spec", cid)
        spec = providers.get(sid)
        if spec is None:
            where = (*here, "spec") if "spec" in raw else here
            b.problems.append(doc.problem(where, f"unknown provider '{sid}' (valid values: {', '.join(sorted(providers))})"))
            continue
        base_url = (raw.get("base_url") or spec.base_url).rstrip("/")
        if not base_url:
            b.problems.append(doc.problem(here, f"provider '{sid}' needs base_url (the address of your server)"))
            continue
        accounts_raw = raw.get("accounts") or ([{"api_key": raw["api_key"]}] if "api_key" in raw else [])
        if "api_key" in raw and "accounts" in raw:
            b.problems.append(doc.problem((*here, "api_key"), "give either api_key or accounts, not both"))
        needs_key = spec.auth["kind"] != "none" and not spec.auth.get("optional")
        accounts = []
        for i, a in enumerate(accounts_raw):
            key = a.get("api_key") or ""
            if needs_key and not key:
                b.problems.append(doc.problem((*here, "accounts", i), "missing api_key (the provider needs a key)"))
            accounts.append(Account(label=a.get("label") or (cid if len(accounts_raw) == 1 else f"{cid}#{i + 1}"), api_key=key, weight=a.get("weight", 1.0)))
        if not accounts:
            if needs_key:
                b.problems.append(doc.problem(here, f"missing api_key: provider '{sid}' needs a key (api_key: ${{ENV_VAR}})"))
                continue
            accounts.append(Account(label=cid, api_key=""))
        models = dict(spec.models)
        for mid, m in (raw.get("models") or {}).items():
            bad = [k for k in m if k not in ("name", "type", "context", "max_output", "capabilities", "price", "upstream", "dimensions")]
            if bad:
                b.problems.append(doc.problem((*here, "models", mid, bad[0]), f"unknown key '{bad[0]}' (valid keys: capabilities, context, dimensions, max_output, name, price, type, upstream)"))
                continue
            caps = [c for c in m.get("capabilities") or [] if c not in CAPABILITIES]
            if caps:
                b.problems.append(doc.problem((*here, "models", mid, "capabilities"), f"unknown capability '{caps[0]}' (valid values: {', '.join(CAPABILITIES)})"))
                continue
            try:
                models[mid] = _model(mid, m, spec.models.get(mid))
            except (ValueError, TypeError) as e:
                b.problems.append(doc.problem((*here, "models", mid), str(e)))
        out[cid] = Connection(
            id=cid,
            spec=spec,
            format=formats[spec.format],
            base_url=base_url,
            accounts=tuple(accounts),
            headers=_frozen({**spec.headers, **(raw.get("headers") or {})}),
            models=_frozen(models),
            timeouts=_frozen({**DEFAULT_TIMEOUTS, **spec.timeouts, **(raw.get("timeouts") or {})}),
        )
    return out


def build(config_file: Path | str | None, *, env: Mapping[str, str] | None = None, generation: int = 1, text: str | None = None) -> Runtime:
    """Load and compile everything. Raises SpecError with every problem found."""
    env = os.environ if env is None else env
    b = _Build(env)
    path = Path(config_file) if config_file else None
    if path is None and text is None:
        raise SpecError([Problem("config.yaml", 0, 0, "", "no config file given (use -c config.yaml)")])
    cfg_name = str(path) if path else "<config>"
    if text is None and path is not None and not path.exists():
        raise SpecError([Problem(cfg_name, 0, 0, "", "config file not found")])
    doc = b.read(path or Path(cfg_name), "config", expand=True, text=text)
    config: dict[str, Any] = doc.data if doc else {}
    dirs = spec_dirs(config, path)
    formats = _formats(b, dirs)
    providers = _providers(b, dirs, formats)
    if doc is None:
        raise SpecError(b.problems)
    connections = _connections(b, doc, providers, formats)
    from .routing import check_references  # cross-references need the resolver

    prefixes: dict[str, str] = {cid: cid for cid in connections}
    for cid, conn in connections.items():
        for alias in conn.spec.aliases:
            prefixes.setdefault(alias, cid)
    model_index: dict[str, list[str]] = {}
    prices: dict[str, Price] = {}
    for cid, conn in connections.items():
        for mid, m in conn.models.items():
            model_index.setdefault(mid, []).append(cid)
            if m.price is not None:
                prices[f"{cid}/{mid}"] = m.price
    combos = {}
    for name, raw in (config.get("combos") or {}).items():
        strategy = raw.get("strategy", "priority")
        if strategy not in STRATEGIES:
            b.problems.append(doc.problem(("combos", name, "strategy"), f"unknown strategy '{strategy}' (valid values: {', '.join(STRATEGIES)})"))
        targets = tuple(ComboTarget(t, 1.0) if isinstance(t, str) else ComboTarget(t["model"], t.get("weight", 1.0)) for t in raw["targets"])
        settings = {k: v for k, v in raw.items() if k not in ("strategy", "targets")}
        combos[name] = Combo(name, strategy, targets, _frozen(settings))
    keys, keys_by_hash = _keys(b, doc)
    server_raw = config.get("server") or {}
    require = server_raw.get("require_api_key", False)
    env_require = env.get("REQUIRE_API_KEY")
    if env_require is not None:
        require = env_require.strip().lower() in ("1", "true", "yes", "on")
    server = ServerSettings(
        host=server_raw.get("host", "127.0.0.1"),
        port=server_raw.get("port", 20128),
        workers=server_raw.get("workers", 1),
        require_api_key=require,
        max_body_bytes=server_raw.get("max_body_bytes", 32 * 1024 * 1024),
        admin_password_hash=server_raw.get("admin_password_hash"),
    )
    base = path.parent if path else Path.cwd()
    runtime = Runtime(
        generation=generation,
        fingerprint=b.digest.hexdigest()[:16],
        config_file=cfg_name,
        data_dir=str((base / config.get("data_dir", "data")).resolve()),
        server=server,
        settings=_frozen(dict(config.get("settings") or {})),
        formats=_frozen(formats),
        providers=_frozen(providers),
        connections=_frozen(connections),
        prefixes=_frozen(prefixes),
        aliases=_frozen(dict(config.get("aliases") or {})),
        combos=_frozen(combos),
        keys=_frozen(keys),
        keys_by_hash=_frozen(keys_by_hash),
        model_index=_frozen({k: tuple(v) for k, v in model_index.items()}),
        prices=_frozen(prices),
        raw_config=_frozen(config),
        watch_paths=tuple(str(p) for p in ([path] if path else []) + dirs),
    )
    b.problems.extend(check_references(runtime, doc))
    _check_policies_and_resilience(b, doc, runtime)
    if b.problems:
        raise SpecError(b.problems)
    return runtime


def _check_policies_and_resilience(b: _Build, doc: Doc, rt: Runtime) -> None:
    """Policies and resilience profiles compile here too, so a bad rule is a located load error."""
    from .errors import GatewayError
    from .policy import compile_policies
    from .resilience import check_config
    from .routing import resolve

    for path, msg in check_config(doc.data):
        b.problems.append(doc.problem(path, msg))
    from .cache import CacheRules

    try:
        CacheRules.from_config(doc.data.get("cache"))
    except ValueError as e:
        b.problems.append(doc.problem(("cache", "semantic"), str(e)))
    pset = compile_policies(doc.data.get("policies"), rt.keys, lambda p, m: b.problems.append(doc.problem(p, m)), config_validated=True)
    for path, model in pset.route_targets():
        try:
            resolve(rt, model, order=False)
        except GatewayError as e:
            b.problems.append(doc.problem(path, e.message))


def _keys(b: _Build, doc: Doc) -> tuple[dict[str, ApiKey], dict[str, ApiKey]]:
    keys: dict[str, ApiKey] = {}
    by_hash: dict[str, ApiKey] = {}
    for i, raw in enumerate(doc.data.get("keys") or []):
        name = raw["name"]
        if name in keys:
            b.problems.append(doc.problem(("keys", i, "name"), f"duplicate key name '{name}'"))
            continue
        digest = raw.get("key_sha256") or hashlib.sha256(raw["key"].encode()).hexdigest()
        if digest in by_hash:
            b.problems.append(doc.problem(("keys", i), f"key '{name}' has the same secret as key '{by_hash[digest].name}'"))
            continue
        budget = None
        if raw.get("budget"):
            from .budget import BudgetSpec

            bud = raw["budget"]
            try:
                budget = BudgetSpec.from_config(bud)
            except ValueError as e:
                b.problems.append(doc.problem(("keys", i, "budget"), str(e)))
        key = ApiKey(
            name=name, sha256=digest, models=tuple(raw.get("models") or ()), budget=budget, admin=bool(raw.get("admin")),
            log_payloads=bool(raw.get("log_payloads")), rpm=raw.get("rpm"), rpd=raw.get("rpd"), tpm=raw.get("tpm"),
            tpd=raw.get("tpd"), max_concurrent=raw.get("max_concurrent"), schedule=raw.get("schedule"),
        )
        keys[name] = key
        by_hash[digest] = key
    return keys, by_hash


def check(config_file: Path | str, env: Mapping[str, str] | None = None) -> Runtime:
    """`omniroute check`: exactly what a reload does, minus the swap."""
    return build(config_file, env=env)


__all__ = ["BUILTIN_SPECS", "build", "check", "load_file"]
