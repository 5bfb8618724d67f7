"""Logging for `metering serve`, applied by uvicorn in every worker. The app factory itself
configures no logging (a library must not take over the root logger).

Lines are JSON by default (METERING_LOG_FORMAT=text for people): time, level, logger, message
and the fields a call site passes in `extra` (user_id, request_id, transaction_id, tier). Log
lines carry key names at most, never keys.

Whatever a client sent can end up in a message (an id, a name, an error's text). A JSON line
escapes it; a text line escapes control characters and line separators itself (TextFormatter),
and indents a traceback's lines, so no input can start a line of its own that reads as a log
record."""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any

from uvicorn.config import LOGGING_CONFIG

FIELDS = ("user_id", "request_id", "transaction_id", "tier", "reservation_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """Control characters and line separators as visible escapes (\\n, \\x1b, \\u2028)."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """One line a record: the message escaped; a traceback follows, each line indented."""

    def format(self, record: logging.LogRecord) -> str:
        safe = copy.copy(record)
        safe.msg, safe.args = escape_controls(record.getMessage()), None
        safe.exc_info, safe.exc_text, safe.stack_info = None, None, None
        line = super().format(safe)
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n    | {escape_controls(t)}" for t in trace.splitlines())
        return line


def serve_log_config(level: str = "INFO", fmt: str = "json") -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    if fmt == "json":
        config["formatters"]["metering"] = {"()": "gateway.base.logs.JsonFormatter"}
    else:
        config["formatters"]["metering"] = {
            "()": "gateway.base.logs.TextFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        }
    config["handlers"]["metering"] = {
        "formatter": "metering",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["metering"] = {"handlers": ["metering"], "level": level, "propagate": False}
    config["loggers"]["apscheduler"] = {"handlers": ["metering"], "level": "WARNING"}
    return config
