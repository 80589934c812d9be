"""Headless Chromium (Debian's ``chromium`` through ``/usr/bin/chromedriver``, driven by
selenium) for the tests that look at pages as a person does: the Prefect UI, the sign-in."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_TIMEOUT = 30


class BrowserMissing(RuntimeError):
    """Chromium or its driver is not installed."""


@contextmanager
def chromium(output: Path) -> Iterator[WebDriver]:
    """A headless Chromium whose screenshots go to ``output``; times shown in UTC."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        raise BrowserMissing(
            f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        options.add_argument(argument)
    service = Service(str(CHROMEDRIVER), env={**os.environ, "TZ": "UTC"})
    driver = webdriver.Chrome(options=options, service=service)
    output.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def body(driver: WebDriver) -> str:
    """The page's text; read again when the page changed under the read (a form posting on:
    the body found is stale, or Chromium says its node "does not belong to the document")."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By

    for _ in range(20):
        try:
            return str(driver.find_element(By.TAG_NAME, "body").text)
        except StaleElementReferenceException:
            continue
        except WebDriverException as exc:
            if "does not belong to the document" not in str(exc):
                raise
    return ""


def screenshot(driver: WebDriver, output: Path, name: str) -> Path:
    path = output / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"\nscreenshot: {path}")
    return path


def wait_for(driver: WebDriver, output: Path, name: str, *texts: str) -> str:
    """Wait until the page shows every text; return its text. On a timeout, a screenshot
    ``<name>-timeout`` and AssertionError naming the missing texts."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(current: WebDriver) -> bool:
        page = body(current)
        return all(text in page for text in texts)

    try:
        WebDriverWait(driver, PAGE_TIMEOUT, poll_frequency=0.25).until(shown)
    except TimeoutException:
        page = body(driver)
        screenshot(driver, output, f"{name}-timeout")
        missing = [text for text in texts if text not in page]
        raise AssertionError(
            f"{driver.current_url} does not show {missing}:\n{page[-3000:]}"
        ) from None
    return body(driver)
