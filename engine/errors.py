"""The one error hierarchy of omniroute.

    OmniError                      every error omniroute raises on purpose
    ├── SpecError                  a config or spec file is wrong; carries every Problem found
    └── GatewayError               a request cannot be served; has an HTTP status and a class
        ├── ClientError            the client's request is wrong (400, 401, 403, 404, 409, 413, 422)
        ├── RateLimited            a budget, rate limit or cooldown says no (429, Retry-After)
        ├── UpstreamError          the upstream answered an error (status kept) or failed in transit
        └── Unavailable            nothing left to try: breakers open, accounts cooling (503)

`GatewayError.kind` is the canonical error class (see ERROR_KINDS); each format spec maps it to its
own wire shape, so the client sees the error in the format of the endpoint it called.
"""

from __future__ import annotations

from dataclasses import dataclass

# canonical error class -> default HTTP status
ERROR_KINDS: dict[str, int] = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "rate_limit": 429,
    "server": 500,
    "bad_gateway": 502,
    "unavailable": 503,
    "timeout": 504,
    "overloaded": 529,
}


def kind_for_status(status: int) -> str:
    if status == 408 or status == 504:
        return "timeout"
    if status == 529:
        return "overloaded"
    if status >= 500:
        return "unavailable" if status == 503 else "server"
    for kind, code in ERROR_KINDS.items():
        if code == status:
            return kind
    return "invalid_request"


class OmniError(Exception):
    """Base of every error omniroute raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One located problem in a file: `FILE:LINE:COL: key.path: message`."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(OmniError):
    """Loading or compiling found problems. `problems` holds all of them, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


class GatewayError(OmniError):
    status = 500
    kind = "server"
    record_class: str | None = None  # overrides the error class in usage records ("budget")

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind
        elif status is not None:
            self.kind = kind_for_status(status)
        self.headers: dict[str, str] = headers or {}
        self.param = param


class ClientError(GatewayError):
    status = 400
    kind = "invalid_request"


class RateLimited(GatewayError):
    status = 429
    kind = "rate_limit"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        headers = {"retry-after": str(max(1, int(retry_after + 0.999)))} if retry_after is not None else None
        super().__init__(message, headers=headers, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class UpstreamError(GatewayError):
    """An upstream failure. `retryable` says whether another target could do better."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        kind: str | None = None,
        provider: str = "",
        model: str = "",
        attempt: int = 0,
        retryable: bool | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(message, status=status, kind=kind, headers=headers)
        self.provider = provider
        self.model = model
        self.attempt = attempt
        self.retry_after = retry_after
        self.body = body
        self.retryable = is_retryable_status(status) if retryable is None else retryable


class Unavailable(GatewayError):
    status = 503
    kind = "unavailable"


def is_retryable_status(status: int) -> bool:
    """Failures another target or account can fix: timeouts, throttling, server errors, and
    auth/quota problems that belong to one account. A plain client error is not one."""
    return status in (401, 402, 403, 408, 429) or status >= 500
