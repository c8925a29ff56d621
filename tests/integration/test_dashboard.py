"""GET /dashboard in a real headless Chromium: the page loads from the server alone (no
external asset), its charts update from /metrics while requests run, the advisor panel shows
/advisor's findings or says it is not available, and a screenshot is taken."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from tests.helpers.browser import headless_chromium
from tests.helpers.server import tiny_server

API_KEY = "dash-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_server(tmp_path_factory, "dashboard", "--api-key", API_KEY,
                     "--max-num-seqs", "2") as (proc, base):
        yield base


def test_the_page_is_self_contained_and_needs_no_key(server):
    page = httpx.get(server + "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # nothing loaded from elsewhere: no src/href to a URL, no import of a remote module
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert "<canvas" in page.text and "fetch(\"/metrics\"" in page.text
    assert httpx.get(server + "/metrics").status_code == 401     # the data still needs the key


def _chart(driver, name: str) -> list:
    return driver.execute_script(
        f"return window.pagellmDashboard.charts.{name}.series.map(s => s.data.slice())")


def _load(server: str, stop: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(timeout=120, headers=headers) as client:
        while not stop.is_set():
            threads = [threading.Thread(target=client.post, args=(server + "/v1/completions",),
                                        kwargs={"json": {"model": "tiny", "prompt": "hello " * 20,
                                                         "max_tokens": 24, "ignore_eos": True}})
                       for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()


def test_charts_update_while_requests_run(server, tmp_path):
    advisor = httpx.get(server + "/advisor", headers={"Authorization": f"Bearer {API_KEY}"})
    with headless_chromium() as driver:
        driver.get(f"{server}/dashboard#api_key={API_KEY}")
        _wait(driver, "return window.pagellmDashboard.state.polls >= 2", 30)
        idle_tokens = _chart(driver, "tokens")
        assert max(v or 0 for v in idle_tokens[0]) == 0        # nothing generated yet
        stop = threading.Event()
        load = threading.Thread(target=_load, args=(server, stop))
        load.start()
        try:
            _wait(driver, "return window.pagellmDashboard.charts.tokens.series[0].data"
                          ".some(v => v > 0)", 90)
            _wait(driver, "return window.pagellmDashboard.charts.ttft.series[2].data"
                          ".some(v => v > 0)", 60)
        finally:
            stop.set()
            load.join()
        busy = _chart(driver, "tokens")
        assert busy != idle_tokens and max(v or 0 for v in busy[0]) > 0
        assert max(v or 0 for v in busy[1]) > 0                # prompt tokens/s too
        assert any(v and v > 0 for v in _chart(driver, "tpot")[2])
        assert driver.execute_script("return window.pagellmDashboard.state.errors") == 0
        status = driver.find_element("id", "status").text
        assert status.startswith("updated"), status
        advisor_text = driver.find_element("id", "advisor-body").text
        if advisor.status_code == 404:
            assert advisor_text == "advisor not available on this server"
        else:
            assert advisor.status_code == 200 and "failed" not in advisor_text
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"


def _wait(driver, script: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if driver.execute_script(script):
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for: {script}")
