"""Logging: JSON lines in services mode, plain lines on a terminal.

The context of the message being handled (stage, job key, correlation id) is kept in a
context variable and added to every line logged while it is handled.
"""

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("musedrp_log_context", default=None)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "service": self.service,
            "logger": record.name, "message": record.getMessage(), **(CONTEXT.get() or {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + service + " %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        ctx = CONTEXT.get() or {}
        text = super().format(record)
        return f"{text}  [{ctx['job_key']}]" if "job_key" in ctx else text


def setup(service: str, fmt: str = "auto") -> logging.Logger:
    """Configure the root logger once for a service process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if use_json else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    return logging.getLogger(f"musedrp.{service}")
