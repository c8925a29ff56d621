"""Reading a running server for ``pagellm advise`` and ``pagellm check``: its /metrics over a
window, and what it says of its configuration. Every network failure becomes a ClientError
that names the URL and what to check."""

from __future__ import annotations

import time

import httpx

from pagellm.errors import ClientError
from pagellm.tuning.advisor import KnobValues
from pagellm.tuning.metrics_window import Snapshot, parse_snapshot

TIMEOUT_S = 5.0


def get(url: str, timeout_s: float = TIMEOUT_S) -> httpx.Response:
    """GET ``url``; ClientError (never a traceback) when it cannot be reached or answers an
    error status."""
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.InvalidURL as error:
        raise ClientError(f"{url!r} is not a valid URL ({error})", param="url") from None
    except httpx.HTTPError as error:
        raise ClientError(f"cannot reach {url}: {type(error).__name__}: {error or 'no answer'}; "
                          "is the server running (pagellm serve) and the URL right?",
                          param="url") from None
    if response.status_code != 200:
        raise ClientError(f"{url} answered HTTP {response.status_code}", param="url")
    return response


def scrape(base_url: str) -> Snapshot:
    """One /metrics snapshot of the server at ``base_url``."""
    return parse_snapshot(get(base_url.rstrip("/") + "/metrics").text)


def scrape_window(base_url: str, window_s: float, interval_s: float) -> list[Snapshot]:
    """Snapshots every ``interval_s`` seconds for ``window_s`` seconds (at least two)."""
    snapshots = [scrape(base_url)]
    deadline = snapshots[0].time + window_s
    while True:
        time.sleep(max(0.0, min(interval_s, deadline - time.monotonic())))
        snapshots.append(scrape(base_url))
        if time.monotonic() >= deadline:
            return snapshots


def server_knobs(base_url: str) -> KnobValues:
    """The configuration a pagellm server reports in ``GET /advisor`` (all fields), else what
    vLLM's ``vllm:cache_config_info`` labels tell (the KV budget only)."""
    import msgspec

    try:
        data = get(base_url.rstrip("/") + "/advisor?window=1").json()
        return msgspec.convert(data["knobs"], KnobValues)
    except (ClientError, ValueError, KeyError, msgspec.ValidationError):
        pass
    text = get(base_url.rstrip("/") + "/metrics").text
    for line in text.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:
                                                              line.index("}")].split(","))
            labels = {k: v.strip('"') for k, v in labels.items()}
            kv = labels.get("kv_cache_memory_bytes")
            return KnobValues(
                gpu_memory_utilization=float(labels.get("gpu_memory_utilization", "nan")),
                kv_cache_memory_bytes=int(kv) if kv and kv != "None" else None)
    return KnobValues()
