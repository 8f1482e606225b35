"""Exception classes of the whole package, and (below, appended by each part) their HTTP mapping.

Every error carries `.param` (the offending field, tensor, file or request parameter; None if
none applies) and `.code` (a stable machine-readable string), so one function can render any of
them as an OpenAI-style error body.
"""
from __future__ import annotations


class LCKVError(Exception):
    """Base class: `message`, `.param` (str | None), `.code` (str)."""

    default_code = "invalid_value"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def __str__(self) -> str:
        return self.message if self.param is None else f"{self.message} (param: {self.param})"

    def __reduce__(self):
        # subclasses take other constructor arguments: rebuild from the fields, so an error raised in
        # the engine's process arrives in the server's as the same class with the same fields
        return _rebuild_error, (type(self), self.message, dict(self.__dict__))


def _rebuild_error(cls, message: str, fields: dict) -> "LCKVError":
    e = cls.__new__(cls)
    Exception.__init__(e, message)
    e.__dict__.update(fields)
    return e


class ConfigError(LCKVError):
    """Invalid model/serve/train configuration; `.param` names the field, e.g. "warmup_layers"."""

    default_code = "invalid_config"


class CheckpointError(LCKVError):
    """Unreadable or inconsistent checkpoint; `.param` names the tensor or file."""

    default_code = "invalid_checkpoint"


class BlobError(LCKVError):
    """A cache blob that cannot be used. `.code` is one of BLOB_CODES; `.param` is "blob"."""

    default_code = "blob_invalid"

    def __init__(self, message: str, code: str = "blob_invalid", param: str | None = "blob"):
        if code not in BLOB_CODES:
            raise ValueError(f"unknown blob error code {code!r}")
        super().__init__(message, param=param, code=code)


BLOB_CODES = ("blob_invalid", "blob_model_mismatch", "blob_version")


# ---- service (HTTP) errors and the one exception -> HTTP mapping -----------------------------------


class RequestError(LCKVError):
    """Bad request content; `.code` e.g. invalid_value, invalid_frame, invalid_json, context_length_exceeded."""


class ContextLengthError(RequestError):
    """A prompt over the service's limit; `.limits` travels as structured fields of the error body."""

    def __init__(self, prompt_tokens: int, max_prompt_tokens: int, param: str):
        super().__init__(f"the new prompt has {prompt_tokens} tokens, more than the limit of {max_prompt_tokens}",
                         param=param, code="context_length_exceeded")
        self.limits = {"prompt_tokens": prompt_tokens, "max_prompt_tokens": max_prompt_tokens}


class AuthError(LCKVError):
    default_code = "invalid_service_secret"


class ModelNotFoundError(LCKVError):
    default_code = "model_not_found"


class RequestTooLargeError(LCKVError):
    default_code = "request_too_large"


class OverloadedError(LCKVError):
    """Admission queue full; the caller should retry after `.retry_after` seconds."""

    default_code = "overloaded"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message, param=None)
        self.retry_after = retry_after


_HTTP = {  # class -> (status, OpenAI error type)
    RequestError: (400, "invalid_request_error"),
    AuthError: (401, "authentication_error"),
    ModelNotFoundError: (404, "invalid_request_error"),
    RequestTooLargeError: (413, "invalid_request_error"),
    OverloadedError: (503, "server_error"),
}


def http_error(exc: BaseException) -> tuple[int, str, str | None, str, str]:
    """Any exception -> (status, type, param, code, message) for an error body.

    Only our own request-facing errors keep their message; everything else (including config or
    checkpoint errors, which are the server's fault) becomes a sanitized 500.
    """
    if isinstance(exc, BlobError):
        if exc.code in ("blob_model_mismatch", "blob_version"):  # not the blob's fault: the edge rebuilds
            return 409, "invalid_request_error", "blob", exc.code, exc.message
        return 400, "invalid_request_error", "blob", "blob_invalid", exc.message
    for cls, (status, kind) in _HTTP.items():
        if isinstance(exc, cls):
            return status, kind, exc.param, exc.code, exc.message
    return 500, "server_error", None, "internal_error", "internal error"
