"""Logging for `metering serve`, applied by uvicorn in every worker. The app factory itself
configures no logging (a library must not take over the root logger). Log lines carry key
names at most, never keys."""

from __future__ import annotations

import copy
from typing import Any

from uvicorn.config import LOGGING_CONFIG


def serve_log_config(level: str = "INFO") -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
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
