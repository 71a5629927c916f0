"""The immutable Runtime: everything a request needs, compiled once from specs and config.

A request takes `gateway.runtime` once at entry and uses only that object, so a reload that swaps
in a new Runtime never changes anything under a request already running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .pricing import Price
from .translate import Format

# Seconds. A spec's and then the config's `timeouts` override these, key by key, at compile time.
# connect: TCP/TLS; first_byte: until the answer's headers; idle: between two reads of the body;
# total: the whole exchange, a stream included.
DEFAULT_TIMEOUTS = {"connect": 10.0, "first_byte": 120.0, "idle": 120.0, "total": 900.0}

CAPABILITIES = ("tools", "vision", "reasoning", "json", "audio")
MODEL_TYPES = ("chat", "embedding", "image", "audio")


@dataclass(frozen=True)
class Model:
    id: str
    type: str = "chat"
    name: str = ""
    context: int | None = None
    max_output: int | None = None
    capabilities: frozenset[str] = frozenset()
    price: Price | None = None
    upstream: str = ""  # the id sent upstream
    dimensions: int | None = None
    known: bool = True  # declared in a spec or the config (unknown ones are passed through)


@dataclass(frozen=True)
class ProviderSpec:
    id: str
    name: str
    format: str
    base_url: str
    requires_base_url: bool
    auth: MappingProxyType[str, Any]
    headers: MappingProxyType[str, str]
    endpoints: MappingProxyType[str, Any]
    rate_limit_headers: MappingProxyType[str, str]
    timeouts: MappingProxyType[str, float]
    aliases: tuple[str, ...]
    models: MappingProxyType[str, Model]
    file: str


@dataclass(frozen=True)
class Account:
    label: str
    api_key: str = field(repr=False)
    weight: float = 1.0


@dataclass(frozen=True)
class Connection:
    """A provider spec bound to a base URL and credentials: what `provider/...` names."""

    id: str
    spec: ProviderSpec
    format: Format
    base_url: str
    accounts: tuple[Account, ...]
    headers: MappingProxyType[str, str]
    models: MappingProxyType[str, Model]
    timeouts: MappingProxyType[str, float]

    def model(self, model_id: str) -> Model:
        m = self.models.get(model_id)
        if m is not None:
            return m
        # Providers add models faster than specs are edited: pass unknown ids through unpriced.
        return Model(id=model_id, upstream=model_id, known=False, capabilities=frozenset(CAPABILITIES))


@dataclass(frozen=True)
class ComboTarget:
    ref: str
    weight: float = 1.0


@dataclass(frozen=True)
class Combo:
    name: str
    strategy: str
    targets: tuple[ComboTarget, ...]
    settings: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str = field(repr=False)
    models: tuple[str, ...] = ()
    budget: Any = None  # budget.BudgetSpec
    admin: bool = False
    log_payloads: bool = False
    rpm: int | None = None  # per-key shortcuts; they compile into policy rules
    rpd: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    max_concurrent: int | None = None
    schedule: Any = None


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 20128
    workers: int = 1
    require_api_key: bool = False
    max_body_bytes: int = 32 * 1024 * 1024
    admin_password_hash: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Runtime:
    generation: int
    fingerprint: str
    config_file: str
    data_dir: str
    server: ServerSettings
    settings: MappingProxyType[str, Any]
    formats: MappingProxyType[str, Format]
    providers: MappingProxyType[str, ProviderSpec]
    connections: MappingProxyType[str, Connection]
    prefixes: MappingProxyType[str, str]  # connection id or provider alias -> connection id
    aliases: MappingProxyType[str, str]
    combos: MappingProxyType[str, Combo]
    keys: MappingProxyType[str, ApiKey]  # by name
    keys_by_hash: MappingProxyType[str, ApiKey]
    model_index: MappingProxyType[str, tuple[str, ...]]  # bare model id -> connection ids
    prices: MappingProxyType[str, Price]  # "connection/model" -> price
    raw_config: MappingProxyType[str, Any] = field(repr=False, default_factory=lambda: MappingProxyType({}))
    watch_paths: tuple[str, ...] = ()

    @property
    def strict(self) -> bool:
        return bool(self.settings.get("strict_translation", False))

    def summary(self) -> dict[str, int]:
        return {
            "providers": len(self.connections),
            "models": sum(len(c.models) for c in self.connections.values()),
            "aliases": len(self.aliases),
            "combos": len(self.combos),
            "keys": len(self.keys),
            "formats": len(self.formats),
            "provider_specs": len(self.providers),
        }
