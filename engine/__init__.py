"""omniroute: one local endpoint for every AI client, many upstream providers behind it.

Public surface:
    build(config_file) -> Runtime        load + compile specs and config (raises SpecError)
    check(config_file) -> Runtime        the same, as `omniroute check` runs it
    create_app(config_file) -> App       the app serving that config (RSGI for granian, also ASGI)
    SpecError, GatewayError              the errors a caller handles
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["GatewayError", "SpecError", "__version__", "build", "check", "create_app"]

if TYPE_CHECKING:
    from .app import create_app
    from .compile import build, check
    from .errors import GatewayError, SpecError


def __getattr__(name: str) -> Any:
    # Lazy: `omniroute --version` and the CLI's usage errors should not pay for importing the engine.
    if name in ("build", "check"):
        from . import compile as _c

        return getattr(_c, name)
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("GatewayError", "SpecError"):
        from . import errors

        return getattr(errors, name)
    raise AttributeError(name)
