"""The operators' console in a real browser: Debian's chromium through chromedriver (Selenium),
headless, with every host but the gateway unresolvable (the console must work offline). Log
in, watch the live counters, look a user up, see a debit made during the test appear, read
the audit log; a read key sees users but not the live view; a wrong key is told so."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.books import assert_books_balance
from tests.conftest import ADMIN_KEY
from tests.processes import Running, flushed, gateway_process

USER = "team/alice"  # a '/' in an id: the page must send it as %2F


def _binary(name: str) -> str:
    found = shutil.which(name)
    assert found, (
        f"{name} is missing: apt-get install chromium chromium-driver (.ci/services --tests)"
    )
    return found


@pytest.fixture(scope="module")
def gw() -> Iterator[Running]:
    with gateway_process(METERING_FLUSH_INTERVAL="0.2") as running:
        yield running

        async def books() -> None:
            async with flushed(running) as (pool, redis, keys):
                assert await assert_books_balance(pool, redis, keys) >= 1

        asyncio.run(books())


@pytest.fixture(scope="module")
def admin(gw: Running) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # offline but for the gateway
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_binary("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def wait(what: str, check: Callable[[], Any], seconds: float = 15) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            found = check()
            if found:
                return found
        except Exception:  # the page may be between states
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"the console never showed {what}")
        time.sleep(0.1)


def text(driver: WebDriver, element: str) -> str:
    return str(driver.find_element(By.ID, element).text)


def log_in(driver: WebDriver, url: str, key: str) -> None:
    driver.get(f"{url}/console")
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "login-button").click()


def look_up(driver: WebDriver, user: str) -> None:
    field = driver.find_element(By.ID, "user-id")
    field.clear()
    field.send_keys(user)
    driver.find_element(By.ID, "user-button").click()


def debit(admin: httpx.Client, amount: str, request_id: str) -> None:
    body = {"user_id": USER, "amount": amount, "request_id": request_id, "model": "m1"}
    r = admin.post("/api/v1/credits/debit", json=body)
    assert r.status_code == 200, r.text


def no_page_errors(driver: WebDriver) -> None:
    """Nothing the page did failed: no script error, no blocked or refused load."""
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe


def test_an_admin_sees_live_counters_a_user_and_a_debit_made_meanwhile(
    gw: Running, admin: httpx.Client, browser: WebDriver
) -> None:
    price = {"input_per_million": "1", "output_per_million": "2"}
    assert admin.put("/api/v1/pricing/m1", json=price).status_code == 200  # audited
    debit(admin, "0.5", "console-1")
    log_in(browser, gw.url, ADMIN_KEY)
    wait("who is logged in", lambda: text(browser, "who") == "admin key")
    wait("the flusher's state", lambda: text(browser, "flusher-status").startswith("ok"))
    wait("the debit in the outcome totals", lambda: "ok" in text(browser, "outcomes"))
    assert "priced" not in browser.page_source  # nothing but what the gateway said

    browser.find_element(By.CSS_SELECTOR, "[data-tab=user]").click()
    look_up(browser, USER)
    wait("the balance", lambda: text(browser, "u-remaining") == "4.500000")
    wait("the allocation block", lambda: "allocation" in text(browser, "blocks"))

    debit(admin, "1.25", "console-2")  # made while the console is open

    def ledger_shows_it() -> bool:
        look_up(browser, USER)
        time.sleep(0.3)
        return "console-2" in text(browser, "ledger") and text(browser, "u-remaining") == "3.250000"

    wait("the new debit in the ledger", ledger_shows_it)
    bars = browser.find_element(By.ID, "usage-chart")  # one day's bar (two across midnight)
    wait("the usage chart's bar", lambda: bars.get_attribute("data-bars") in ("1", "2"))
    assert "2 requests, 1.750000 credits" in text(browser, "usage-note")

    browser.find_element(By.CSS_SELECTOR, "[data-tab=live]").click()
    wait(
        "the rate chart's series",
        lambda: (
            "ok" in (browser.find_element(By.ID, "rate-chart").get_attribute("data-series") or "")
        ),
    )
    browser.find_element(By.CSS_SELECTOR, "[data-tab=audit]").click()
    wait("the audit log", lambda: "pricing.set" in text(browser, "audit-log"))

    stored = browser.execute_script("return [localStorage.length, sessionStorage.length]")
    assert stored == [0, 1]  # the key is in the tab's session only
    no_page_errors(browser)


def test_a_read_key_sees_users_and_is_told_the_live_view_needs_admin(
    gw: Running, admin: httpx.Client, browser: WebDriver
) -> None:
    made = admin.post("/api/v1/admin/keys", json={"name": "console-read", "scopes": ["read"]})
    assert made.status_code == 201, made.text
    log_in(browser, gw.url, made.json()["key"])
    wait("who is logged in", lambda: text(browser, "who") == "read key")
    assert "needs an admin key" in text(browser, "live-note")
    browser.find_element(By.CSS_SELECTOR, "[data-tab=user]").click()
    look_up(browser, USER)
    wait("the balance", lambda: re.fullmatch(r"[0-9]+\.[0-9]{6}", text(browser, "u-remaining")))
    browser.find_element(By.CSS_SELECTOR, "[data-tab=audit]").click()
    assert "needs an admin key" in text(browser, "audit-note")
    browser.find_element(By.ID, "logout").click()
    assert browser.execute_script("return sessionStorage.length") == 0
    no_page_errors(browser)


def test_a_wrong_key_is_refused_on_the_page(gw: Running, browser: WebDriver) -> None:
    log_in(browser, gw.url, "not-a-key")
    wait("the refusal", lambda: "refused this key" in text(browser, "login-error"))
    assert not browser.find_element(By.ID, "app").is_displayed()
