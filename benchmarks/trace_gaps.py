"""Where the GPU idles between kernels: read a torch.profiler Chrome trace (a worker's
``rank0.trace.json`` written by ``profile_decode.py`` with ``PAGELLM_TORCH_PROFILER_DIR`` set)
and report the device's busy time, its idle gaps (sum, count, the largest), and for the largest
gaps the kernel before and after and the host events (CUDA runtime calls, CPU ops) that ran
during them — the host work the GPU waited for.

    PAGELLM_TORCH_PROFILER_DIR=$OUT/prof PYTHONPATH=. python benchmarks/profile_decode.py -tp 2
    python benchmarks/trace_gaps.py $OUT/prof/rank0.trace.json --min-gap-us 5 --top 8
"""

from __future__ import annotations

import argparse
import json
from collections import Counter


def load_events(path: str) -> tuple[list[dict], list[dict]]:
    """(GPU kernels and memcpy/memset, host events), each with ts/dur in µs, sorted by ts."""
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    device, host = [], []
    for event in events:
        if event.get("ph") != "X" or "dur" not in event:
            continue
        category = event.get("cat", "")
        if category in ("kernel", "gpu_memcpy", "gpu_memset"):
            device.append(event)
        elif category in ("cuda_runtime", "cuda_driver", "cpu_op", "user_annotation",
                          "python_function"):
            host.append(event)
    device.sort(key=lambda e: e["ts"])
    host.sort(key=lambda e: e["ts"])
    return device, host


def gaps(device: list[dict], min_gap_us: float) -> tuple[float, float, list[tuple]]:
    """(busy µs, span µs, [(gap µs, start, kernel before, kernel after)]) over the device
    timeline with overlapping kernels merged (several streams)."""
    busy, end, found = 0.0, None, []
    start_ts = device[0]["ts"]
    previous = None
    for event in device:
        ts, dur = event["ts"], event["dur"]
        if end is None or ts >= end:
            if end is not None and ts - end >= min_gap_us:
                found.append((ts - end, end, previous["name"], event["name"]))
            busy += dur
            end = ts + dur
        elif ts + dur > end:
            busy += ts + dur - end
            end = ts + dur
        previous = event
    return busy, end - start_ts, found


def host_during(host: list[dict], start: float, stop: float) -> Counter:
    """µs of each host event name overlapping [start, stop)."""
    overlap = Counter()
    for event in host:
        if event["ts"] >= stop:
            break
        lo, hi = max(start, event["ts"]), min(stop, event["ts"] + event["dur"])
        if hi > lo:
            overlap[event["name"][:60]] += hi - lo
    return overlap


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--min-gap-us", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    device, host = load_events(args.trace)
    if not device:
        raise SystemExit(f"{args.trace}: no GPU kernels in the trace")
    busy, span, found = gaps(device, args.min_gap_us)
    idle = sum(gap for gap, *_ in found)
    print(f"device span {span / 1e3:.2f} ms, busy {busy / 1e3:.2f} ms ({busy / span:.1%}), "
          f"{len(found)} gaps >= {args.min_gap_us:g} us summing {idle / 1e3:.2f} ms")
    pairs = Counter()
    for gap, _, before, after in found:
        pairs[(before[:40], after[:40])] += gap
    print("gap us by (kernel before -> kernel after):")
    for (before, after), total in pairs.most_common(args.top):
        print(f"  {total:9.0f}  {before} -> {after}")
    print(f"largest {args.top} gaps and the host work during them:")
    for gap, start, before, after in sorted(found, reverse=True)[:args.top]:
        during = host_during(host, start, start + gap).most_common(3)
        print(f"  {gap:8.1f} us  {before[:30]} -> {after[:30]} | "
              + ", ".join(f"{name} {us:.0f}" for name, us in during))


if __name__ == "__main__":
    main()
