"""``GET /dashboard``: the live dashboard, one self-contained HTML page shipped in the package
(``static/dashboard.html``: plain JavaScript and <canvas> charts, no CDN, no external asset).

The page polls ``GET /metrics`` every second and draws output and prompt tokens/s, TTFT and
TPOT P50/P95/P99 (histogram_quantile over the last 5 s of bucket counts), running and
waiting requests, KV-cache usage, preemptions and the prefix-cache hit rate; every 2 s it
shows the findings of ``GET /advisor`` ("advisor not available" when the server has none).
The page holds no data, so it needs no API key; with ``--api-key`` open
``/dashboard#api_key=KEY`` and the page sends the key with its own requests (a URL fragment
never reaches the server or its logs).
"""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

DASHBOARD_PATH = "/dashboard"


@functools.cache
def dashboard_html() -> str:
    return resources.files("pagellm.entrypoints.openai").joinpath(
        "static/dashboard.html").read_text(encoding="utf-8")


def add_dashboard_route(app: FastAPI) -> None:
    @app.get(DASHBOARD_PATH, include_in_schema=False)
    async def dashboard():
        return HTMLResponse(dashboard_html(), headers={"Cache-Control": "no-cache"})
