"""One log format for every pagellm process (API server, engine core, CLI clients).

    INFO 2026-11-30 12:00:00.123 api-server pagellm.server: Serving tiny on http://127.0.0.1:8000
    INFO 2026-11-30 12:00:01.456 engine-core pagellm.worker.worker: KV cache: ...

``init_logging(process_label)`` installs it on the root logger, routes uvicorn's loggers
through it (uvicorn is started with ``log_config=None``), and quiets the HTTP client
libraries, whose INFO line per request ("HTTP Request: POST ...") is noise in a terminal
client.
"""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(levelname)s %(asctime)s.%(msecs)03d {label} %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "urllib3", "filelock")
"""Libraries that log at INFO per request or per file; shown from WARNING up."""

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def formatter(process_label: str) -> logging.Formatter:
    """The formatter of every handler pagellm installs; ``process_label`` names the process
    (``api-server``, ``engine-core``, ``pagellm``)."""
    return logging.Formatter(LOG_FORMAT.format(label=process_label), DATE_FORMAT)


def init_logging(process_label: str = "pagellm", level: int = logging.INFO) -> None:
    """Log to stderr in pagellm's format from ``level`` up; idempotent (a second call replaces
    the handler an earlier call installed; handlers others installed stay)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(process_label))
    handler.pagellm_handler = True
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "pagellm_handler", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in UVICORN_LOGGERS:       # through the root handler, not uvicorn's own
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
