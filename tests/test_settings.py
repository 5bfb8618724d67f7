"""Configuration from the environment: a bad value stops the start with a message that names it."""

from __future__ import annotations

import pytest

from gateway.base.settings import settings_from_env


def test_renew_cron_is_a_crontab_or_off() -> None:
    assert settings_from_env({"METERING_RENEW_CRON": "off"}).renew_cron == "off"
    assert settings_from_env({"METERING_RENEW_CRON": "0 * * * *"}).renew_cron == "0 * * * *"
    assert settings_from_env({"METERING_RENEW_CRON": ""}).renew_cron == "*/10 * * * *"  # unset
    with pytest.raises(SystemExit, match="METERING_RENEW_CRON 'every hour' is not a crontab"):
        settings_from_env({"METERING_RENEW_CRON": "every hour"})
