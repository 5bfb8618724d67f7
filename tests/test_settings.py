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


def test_the_renewal_rate_is_a_number_of_users_a_second() -> None:
    assert settings_from_env({}).renew_rate == 0.0  # unpaced
    assert settings_from_env({"METERING_RENEW_RATE": "2500"}).renew_rate == 2500.0
    for bad in ("-1", "nan"):
        with pytest.raises(SystemExit, match="METERING_RENEW_RATE must be >= 0"):
            settings_from_env({"METERING_RENEW_RATE": bad})
    with pytest.raises(SystemExit, match="METERING_RENEW_RATE"):
        settings_from_env({"METERING_RENEW_RATE": "fast"})
