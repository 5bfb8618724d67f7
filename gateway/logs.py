"""Logging for `metering serve`, applied by uvicorn in every worker. The app factory itself
configures no logging (a library must not take over the root logger).

Lines are JSON by default (METERING_LOG_FORMAT=text for people): time, level, logger, message
and the fields a call site passes in `extra` (user_id, request_id, transaction_id, tier). Log
lines carry key names at most, never keys."""

from __future__ import annotations

import copy
import json
import logging
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


def serve_log_config(level: str = "INFO", fmt: str = "json") -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    if fmt == "json":
        config["formatters"]["metering"] = {"()": "gateway.logs.JsonFormatter"}
    else:
        config["formatters"]["metering"] = {
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        }
    config["handlers"]["metering"] = {
        "formatter": "metering",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["metering"] = {"handlers": ["metering"], "level": level, "propagate": False}
    config["loggers"]["apscheduler"] = {"handlers": ["metering"], "level": "WARNING"}
    return config
