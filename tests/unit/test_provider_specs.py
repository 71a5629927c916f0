"""Checks on the shipped provider specs in ``specs/providers/*.yaml``.

These use PyYAML and jsonschema directly (not the engine loader) so they pin the data itself:
every file validates against ``engine/schemas/provider.schema.json``, the required providers
exist, aliases are unambiguous, prices are sane and model types agree with the endpoints.
Read-only and independent of each other, so they are safe under ``pytest -n``.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC_DIR = ROOT / "specs" / "providers"
SCHEMA_PATH = ROOT / "engine" / "schemas" / "provider.schema.json"

REQUIRED_IDS = {
    "openai",
    "anthropic",
    "gemini",
    "ollama",
    "openrouter",
    "groq",
    "deepseek",
    "mistral",
    "together",
    "fireworks",
    "nebius",
    "xai",
    "cerebras",
    "openai-compatible",
    "nvidia",
}

# Customary short aliases every shipped spec must keep (others may be added).
EXPECTED_ALIASES = {
    "openai": "oai",
    "anthropic": "cc",
    "gemini": "gc",
    "deepseek": "ds",
    "openrouter": "or",
    "groq": "gq",
    "mistral": "mis",
    "together": "tg",
    "fireworks": "fw",
    "xai": "grok",
    "cerebras": "cb",
    "nebius": "nb",
    "nvidia": "nv",
}

# Chat wire formats a provider may declare (file stems of specs/formats).
CHAT_FORMATS = {"openai-chat", "anthropic-messages", "gemini", "ollama"}
FORMAT_DIR = ROOT / "specs" / "formats"
# Endpoints of the non-chat modalities, which may name a format of their own (endpoints.<kind>.format).
MODALITY_ENDPOINTS = {"embeddings", "images", "transcriptions"}

# Providers allowed to ship without any chat model (the model list comes from the server).
NO_FIXED_MODELS = {"openai-compatible"}

# Models whose real price list has output cheaper than input, as "provider/model": reason.
# Empty today; add an entry (with the source) rather than loosening the check.
OUTPUT_BELOW_INPUT_OK: dict[str, str] = {}

# Model type -> endpoint that must exist to serve it.
ENDPOINT_FOR_TYPE = {
    "chat": "chat",
    "embedding": "embeddings",
    "image": "images",
    "audio": "transcriptions",
}

TOKEN_PRICE_KEYS = {"input", "output", "cached_input", "cache_write", "reasoning"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _spec_paths() -> list[Path]:
    return sorted(SPEC_DIR.glob("*.yaml"))


SPEC_PATHS = _spec_paths()
SPEC_IDS = [p.stem for p in SPEC_PATHS]


@functools.cache
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@functools.cache
def _load(stem: str) -> dict:
    data = yaml.load((SPEC_DIR / f"{stem}.yaml").read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    assert isinstance(data, dict), f"{stem}.yaml: top level must be a mapping"
    return data


@functools.cache
def _modality_formats() -> dict[str, str]:
    """Installed format id -> the modality it serves, for the formats that declare one."""
    out: dict[str, str] = {}
    for path in sorted(FORMAT_DIR.glob("*.yaml")):
        modality = (yaml.safe_load(path.read_text()) or {}).get("modality")
        if modality:
            out[path.stem] = modality
    return out


def _all_specs() -> dict[str, dict]:
    return {stem: _load(stem) for stem in SPEC_IDS}


def _models(spec: dict) -> dict[str, dict]:
    return spec.get("models") or {}


def _model_type(model: dict) -> str:
    return model.get("type", "chat")


def _all_models() -> list[tuple[str, str, dict]]:
    return [(stem, mid, m) for stem, spec in _all_specs().items() for mid, m in _models(spec).items()]


def _allowed_capabilities() -> set[str]:
    return set(_schema()["$defs"]["model"]["properties"]["capabilities"]["items"]["enum"])


# --- per-file checks ------------------------------------------------------------------------


@pytest.mark.parametrize("stem", SPEC_IDS)
def test_validates_against_schema(stem: str) -> None:
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(_load(stem)), key=lambda e: list(e.absolute_path))
    messages = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    assert not messages, f"{stem}.yaml:\n" + "\n".join(messages)


@pytest.mark.parametrize("stem", SPEC_IDS)
def test_file_stem_is_a_valid_id(stem: str) -> None:
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", stem), stem


@pytest.mark.parametrize("stem", SPEC_IDS)
def test_header_comment_names_source_and_date(stem: str) -> None:
    text = (SPEC_DIR / f"{stem}.yaml").read_text(encoding="utf-8")
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    block = "\n".join(header)
    assert header, f"{stem}.yaml must start with a comment block"
    assert re.search(r"https?://", block), f"{stem}.yaml header must name its source URL"
    assert re.search(r"[Aa]s of \d{4}-\d{2}-\d{2}", block), f"{stem}.yaml header must give an as-of date"


TRANSCRIPTION_ONLY = {"deepgram", "assemblyai"}  # speech-to-text services with their own formats


@pytest.mark.parametrize("stem", SPEC_IDS)
def test_core_fields(stem: str) -> None:
    spec = _load(stem)
    assert spec.get("name"), stem
    assert spec.get("description"), f"{stem}: description is required for shipped specs"
    assert re.match(r"https://", spec.get("docs", "")), f"{stem}: docs must be an https URL"
    if stem in TRANSCRIPTION_ONLY:
        assert spec["format"] == stem and set(spec["endpoints"]) == {"transcriptions"}, stem
        return
    assert spec["format"] in CHAT_FORMATS, f"{stem}: format {spec['format']!r}"
    assert "chat" in spec["endpoints"], f"{stem}: a chat endpoint is required"
    assert "format" not in spec["endpoints"]["chat"], f"{stem}: the chat endpoint speaks the provider's format"
    modalities = _modality_formats()
    for name, endpoint in spec["endpoints"].items():
        if "format" not in endpoint:
            continue
        # Only a non-chat modality endpoint may name its own wire format, and it must be an
        # installed format of that modality (Together's and Fireworks' images, say).
        assert name in MODALITY_ENDPOINTS, f"{stem}: endpoints.{name} must not override format"
        fid = endpoint["format"]
        assert fid in modalities, f"{stem}: endpoints.{name}.format {fid!r} is not an installed modality format"
        assert modalities[fid] == name, f"{stem}: endpoints.{name}.format {fid!r} serves {modalities[fid]}, not {name}"


@pytest.mark.parametrize("stem", SPEC_IDS)
def test_base_url_rules(stem: str) -> None:
    spec = _load(stem)
    if spec.get("requires_base_url"):
        assert "base_url" not in spec, f"{stem}: a spec that requires base_url should not ship one"
    else:
        assert spec.get("base_url"), f"{stem}: base_url is required unless requires_base_url"
        url = spec["base_url"]
        assert not url.endswith("/"), f"{stem}: base_url must not end with '/' (paths start with '/')"
        if spec["auth"]["kind"] != "none":
            assert url.startswith("https://"), f"{stem}: keyed providers must use https"


@pytest.mark.parametrize("stem", SPEC_IDS)
def test_auth_is_complete(stem: str) -> None:
    auth = _load(stem)["auth"]
    if auth["kind"] == "header":
        assert auth.get("header"), f"{stem}: auth kind header needs a header name"
    if auth["kind"] == "query":
        assert auth.get("param"), f"{stem}: auth kind query needs a param name"


@pytest.mark.parametrize("stem", SPEC_IDS)
def test_model_types_have_endpoints(stem: str) -> None:
    spec = _load(stem)
    for mid, model in _models(spec).items():
        endpoint = ENDPOINT_FOR_TYPE[_model_type(model)]
        assert endpoint in spec["endpoints"], (
            f"{stem}/{mid}: type {_model_type(model)} needs endpoints.{endpoint}"
        )


@pytest.mark.parametrize("stem", SPEC_IDS)
def test_capabilities_are_allowed(stem: str) -> None:
    allowed = _allowed_capabilities()
    for mid, model in _models(_load(stem)).items():
        caps = model.get("capabilities", [])
        assert set(caps) <= allowed, f"{stem}/{mid}: unknown capabilities {set(caps) - allowed}"
        assert len(caps) == len(set(caps)), f"{stem}/{mid}: repeated capability"


@pytest.mark.parametrize("stem", SPEC_IDS)
def test_limits_are_consistent(stem: str) -> None:
    for mid, model in _models(_load(stem)).items():
        if "context" in model and "max_output" in model:
            assert model["max_output"] <= model["context"], f"{stem}/{mid}: max_output > context"
        if "dimensions" in model:
            assert _model_type(model) == "embedding", (
                f"{stem}/{mid}: dimensions only make sense for embeddings"
            )


# --- cross-file checks ----------------------------------------------------------------------


def test_required_providers_exist() -> None:
    missing = REQUIRED_IDS - set(SPEC_IDS)
    assert not missing, f"missing provider specs: {sorted(missing)}"


def test_aliases_unique_and_not_provider_ids() -> None:
    owner: dict[str, str] = {}
    for stem, spec in _all_specs().items():
        for alias in spec.get("aliases", []):
            assert alias not in SPEC_IDS, f"{stem}: alias {alias!r} collides with a provider id"
            assert alias not in owner, f"alias {alias!r} used by both {owner[alias]} and {stem}"
            owner[alias] = stem


def test_customary_aliases_present() -> None:
    specs = _all_specs()
    for stem, alias in EXPECTED_ALIASES.items():
        assert alias in specs[stem].get("aliases", []), f"{stem} should have alias {alias!r}"
    assert set(specs["anthropic"]["aliases"]) >= {"cc", "claude"}


def test_every_provider_has_a_chat_model() -> None:
    for stem, spec in _all_specs().items():
        if stem in NO_FIXED_MODELS or stem in TRANSCRIPTION_ONLY:
            continue
        chats = [mid for mid, m in _models(spec).items() if _model_type(m) == "chat"]
        assert chats, f"{stem}: needs at least one chat model"


def test_wire_details_of_native_formats() -> None:
    specs = _all_specs()
    anthropic = specs["anthropic"]
    assert anthropic["format"] == "anthropic-messages"
    assert anthropic["auth"] == {"kind": "header", "header": "x-api-key"}
    assert anthropic["headers"]["anthropic-version"] == "2023-06-01"
    assert anthropic["endpoints"]["count_tokens"]["path"] == "/messages/count_tokens"

    gemini = specs["gemini"]
    assert gemini["format"] == "gemini"
    assert gemini["auth"] == {"kind": "header", "header": "x-goog-api-key"}
    chat = gemini["endpoints"]["chat"]
    assert "{model}" in chat["path"] and "{model}" in chat["stream_path"]
    assert "alt=sse" in chat["stream_path"]

    ollama = specs["ollama"]
    assert ollama["format"] == "ollama"
    assert ollama["auth"]["kind"] == "none"
    assert ollama["endpoints"]["chat"]["path"] == "/api/chat"

    generic = specs["openai-compatible"]
    assert generic["requires_base_url"] is True
    assert generic["auth"] == {"kind": "bearer", "optional": True}


def test_prices_are_non_negative() -> None:
    for stem, mid, model in _all_models():
        for key, value in model.get("price", {}).items():
            assert value >= 0, f"{stem}/{mid}: price.{key} is negative"


def test_output_price_not_below_input() -> None:
    for stem, mid, model in _all_models():
        price = model.get("price", {})
        if "input" in price and "output" in price and f"{stem}/{mid}" not in OUTPUT_BELOW_INPUT_OK:
            assert price["output"] >= price["input"], f"{stem}/{mid}: output price below input price"


def test_cached_input_not_above_input() -> None:
    for stem, mid, model in _all_models():
        price = model.get("price", {})
        if "input" in price and "cached_input" in price:
            assert price["cached_input"] <= price["input"], f"{stem}/{mid}: cache read dearer than input"


def test_price_units_match_model_type() -> None:
    for stem, mid, model in _all_models():
        price = set(model.get("price", {}))
        kind = _model_type(model)
        if kind == "image":
            assert price <= {"per_image"}, f"{stem}/{mid}: image models are priced per_image"
        elif kind == "audio":
            assert price <= {"per_audio_second"}, f"{stem}/{mid}: audio models are priced per_audio_second"
        elif kind == "embedding":
            assert price <= {"input"}, f"{stem}/{mid}: embedding models are priced on input tokens"
        else:
            assert price <= TOKEN_PRICE_KEYS, f"{stem}/{mid}: chat models are priced per token"


def test_embedding_models_declare_type() -> None:
    for stem, mid, model in _all_models():
        if "embed" in mid.lower():
            assert model.get("type") == "embedding", f"{stem}/{mid}: looks like an embedding model"
        if model.get("type") == "embedding":
            assert "capabilities" not in model, f"{stem}/{mid}: embedding models have no chat capabilities"


def test_local_providers_are_free() -> None:
    for mid, model in _models(_all_specs()["ollama"]).items():
        assert all(v == 0 for v in model.get("price", {}).values()), f"ollama/{mid} must cost nothing"
