"""A real headless Chromium for browser tests, driven by Selenium.

``headless_chromium(download_dir)`` yields a selenium WebDriver. Chromium and its driver are the
Debian packages ``chromium`` and ``chromium-driver``; a fresh CI machine has neither, so the
first use installs them with apt-get (root only: otherwise the test fails, saying what to
install — a browser test must not skip). A file lock keeps two test processes from running
apt-get at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile

import pytest

PACKAGES = ("chromium", "chromium-driver")
APT_TIMEOUT_S = 900


def _binaries() -> tuple[str | None, str | None]:
    return (shutil.which("chromium") or shutil.which("chromium-browser"),
            shutil.which("chromedriver"))


def ensure_chromium() -> tuple[str, str]:
    """(chromium path, chromedriver path), installing the Debian packages when missing.
    Fails the test (never skips) when they are missing and cannot be installed."""
    from filelock import FileLock

    with FileLock(os.path.join(tempfile.gettempdir(), "pagellm-chromium-install.lock")):
        browser, driver = _binaries()
        if browser and driver:
            return browser, driver
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.fail("the dashboard test needs Chromium: install the Debian packages "
                        f"{' '.join(PACKAGES)} (apt-get install -y {' '.join(PACKAGES)}, as "
                        "root), then rerun", pytrace=False)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", *PACKAGES]):
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=APT_TIMEOUT_S)
            if done.returncode != 0:
                pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n"
                            f"{done.stdout[-2000:]}{done.stderr[-2000:]}", pytrace=False)
        browser, driver = _binaries()
        if not (browser and driver):
            pytest.fail(f"apt-get installed {' '.join(PACKAGES)} but chromium/chromedriver "
                        "are not on PATH", pytrace=False)
        return browser, driver


@contextlib.contextmanager
def headless_chromium(width: int = 1400, height: int = 1000):
    """A Selenium Chrome WebDriver on headless Chromium; quits on the way out."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
