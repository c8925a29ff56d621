"""Measure the device's two ceilings in the same run as a benchmark (BENCHMARKS.md):
device-to-device copy bandwidth (bytes read + written) and a large bf16 matmul."""

from __future__ import annotations

import json
import os

import torch


def measure_ceilings() -> dict:
    from triton.testing import do_bench

    n_bytes = 2 * 1024**3
    src = torch.randn(n_bytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    bandwidth = 2 * n_bytes / (copy_ms * 1e-3)
    del src, dst
    size = 8192
    a = torch.randn(size, size, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(size, size, dtype=torch.bfloat16, device="cuda")
    mm_ms = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    flops = 2 * size**3 / (mm_ms * 1e-3)
    return {"device": torch.cuda.get_device_name(), "copy_bytes_per_s": bandwidth,
            "bf16_matmul_flops": flops}


if __name__ == "__main__":
    result = measure_ceilings()
    print(f"ceilings: copy {result['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
          f"bf16 matmul {result['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s on {result['device']}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "ceilings.json"), "w") as f:
            json.dump(result, f)
