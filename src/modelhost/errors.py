"""modelhost's two exception roots; they know nothing about the web.

:class:`StartupError` is everything that stops a start (a bad setting, keys file, model file,
database URL, a model that cannot load or convert): the operator reads its one line, which may
name server files, so it is never rendered to a client and the CLI catches this one type.

Every failure a client can see is a :class:`ModelhostError` with a stable ``code``, an HTTP
``status`` and a message that never holds a traceback, a server path, file contents or a secret.
``http/errors.py`` maps them to responses in one place; workers send them across the process
boundary as ``(code, message)`` records and the parent rebuilds them with :func:`from_code`.

    ModelhostError
    ├── MalformedRequest        400 malformed_request
    ├── Unauthorized            401 unauthorized
    ├── Forbidden               403 forbidden
    ├── NotFound                404 not_found
    ├── MethodNotAllowed        405 method_not_allowed
    ├── RequestTimeout          408 request_timeout
    ├── TooLarge                413 body_too_large | image_too_large | download_too_large
    ├── UnsupportedMedia        415 unsupported_media_type | unsupported_image_format
    ├── InvalidInput            422 invalid_parameter | image_decode_failed | url_not_allowed |
    │                               url_fetch_failed | unknown_label | input_quarantined
    ├── RateLimited             429 rate_limited
    ├── Unavailable             503 overloaded | draining | not_ready | worker_crashed |
    │                               db_unavailable
    ├── Timeout                 504 deadline_exceeded | fetch_timeout
    └── InternalError           500 internal_error | model_failed
"""

from __future__ import annotations

from collections.abc import Mapping


class ModelhostError(Exception):
    """Base class: a client-visible failure with a stable code."""

    status: int = 500
    default_code: str = "internal_error"

    def __init__(self, message: str, code: str | None = None, retry_after: float | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.retry_after = retry_after
        self.headers = dict(headers or {})  # what the refusal must say besides its body


class MalformedRequest(ModelhostError):
    status, default_code = 400, "malformed_request"


class Unauthorized(ModelhostError):
    status, default_code = 401, "unauthorized"


class Forbidden(ModelhostError):
    status, default_code = 403, "forbidden"


class NotFound(ModelhostError):
    status, default_code = 404, "not_found"


class MethodNotAllowed(ModelhostError):
    status, default_code = 405, "method_not_allowed"


class RequestTimeout(ModelhostError):
    status, default_code = 408, "request_timeout"


class TooLarge(ModelhostError):
    status, default_code = 413, "body_too_large"


class UnsupportedMedia(ModelhostError):
    status, default_code = 415, "unsupported_media_type"


class InvalidInput(ModelhostError):
    status, default_code = 422, "invalid_parameter"


class RateLimited(ModelhostError):
    status, default_code = 429, "rate_limited"


class Unavailable(ModelhostError):
    """503: the server cannot take this request now; always carries ``retry_after``."""

    status, default_code = 503, "overloaded"

    def __init__(self, message: str, code: str | None = None, retry_after: float | None = 1.0):
        super().__init__(message, code, retry_after if retry_after is not None else 1.0)


class Timeout(ModelhostError):
    status, default_code = 504, "deadline_exceeded"


class InternalError(ModelhostError):
    status, default_code = 500, "internal_error"


_BY_CODE: dict[str, type[ModelhostError]] = {
    "malformed_request": MalformedRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "request_timeout": RequestTimeout,
    "body_too_large": TooLarge,
    "image_too_large": TooLarge,
    "download_too_large": TooLarge,
    "unsupported_media_type": UnsupportedMedia,
    "unsupported_image_format": UnsupportedMedia,
    "invalid_parameter": InvalidInput,
    "image_decode_failed": InvalidInput,
    "url_not_allowed": InvalidInput,
    "url_fetch_failed": InvalidInput,
    "unknown_label": InvalidInput,
    "input_quarantined": InvalidInput,
    "rate_limited": RateLimited,
    "overloaded": Unavailable,
    "draining": Unavailable,
    "not_ready": Unavailable,
    "worker_crashed": Unavailable,
    "db_unavailable": Unavailable,
    "deadline_exceeded": Timeout,
    "fetch_timeout": Timeout,
}


def from_code(code: str, message: str) -> ModelhostError:
    """Rebuild an error from the ``(code, message)`` record a worker sent."""
    return _BY_CODE.get(code, InternalError)(message, code)


class StartupError(Exception):
    """Stops a start: the CLI prints its message as one line and exits 2 (never sent to a
    client: the message may name server files)."""
