"""Errors by blame.

``ClientError``: the request is wrong (HTTP 400); only that request ends.
``ServerError``: pagellm failed (HTTP 500).
``EngineDeadError``: the engine core is gone; every in-flight request ends with it.
``ServiceUnavailableError``: the server is shutting down and takes no new work (HTTP 503).
``NotSupportedError``: a known option whose feature is not built yet (a ClientError).
"""


class PagellmError(Exception):
    """Base class of every error pagellm raises on purpose."""


class ClientError(PagellmError, ValueError):
    """Bad input: the message says which field and what to change."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class NotSupportedError(ClientError):
    """An option that exists in the config but whose feature is not built yet."""


class ServerError(PagellmError, RuntimeError):
    """An internal failure; not the caller's fault."""


class EngineDeadError(ServerError):
    """The engine core died; no request can make progress."""


class ServiceUnavailableError(ServerError):
    """The server is draining for shutdown: new requests are refused and requests still
    running at the end of the drain timeout end with this error (HTTP 503)."""
