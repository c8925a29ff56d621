"""``pagellm bench compare A B`` on a tiny random model: both configurations served in turn on
the same requests, every repeat recorded, the side-by-side table with the spread; a bad
configuration is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from tests.helpers.tiny_models import make_tiny_model_dir


def test_compare_two_configurations(tmp_path):
    model_dir = make_tiny_model_dir(tmp_path, "llama")
    config_b = tmp_path / "b.yaml"
    config_b.write_text("max-num-seqs: 4\nblock-size: 8\n")
    out = tmp_path / "ab.json"
    done = subprocess.run(
        [sys.executable, "-m", "pagellm.entrypoints.cli.main", "bench", "compare",
         "--max-num-seqs 1 --no-enable-prefix-caching", str(config_b), "--model", str(model_dir),
         "--serve-args", "--max-model-len 128 --kv-cache-memory-bytes 4194304",
         "--num-prompts", "3", "--random-input-len", "8", "--random-output-len", "4",
         "--repeats", "2", "--slo", "e2el_p99_ms=600000", "--work-dir", str(tmp_path / "work"),
         "--output-json", str(out)],
        env={**os.environ, "PYTHONPATH": os.getcwd()}, capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert yaml.safe_load((tmp_path / "work" / "A.yaml").read_text()) == {
        "model": str(model_dir), "max-model-len": 128, "kv-cache-memory-bytes": 4194304,
        "max-num-seqs": 1, "enable-prefix-caching": False}
    assert result["configs"]["B"]["block-size"] == 8
    assert result["configs"]["B"]["max-model-len"] == 128       # --serve-args for both
    for name in ("A", "B"):
        runs = result["runs"][name]
        assert len(runs) == 2 and all(run["completed"] == 3 for run in runs)
        assert all(run["goodput"] == run["request_throughput"] for run in runs)
    rows = result["tables"]["inf"]
    assert rows[0] == ["metric", "A (mean ± std)", "B (mean ± std)", "B / A"]
    assert [row[0] for row in rows[1:4]] == ["P50 TTFT (ms)", "P95 TTFT (ms)", "P99 TTFT (ms)"]
    assert len(rows) == 1 + 9 + 3 and all("±" in row[1] and "±" in row[2] for row in rows[1:])
    mean_a = sum(r["latencies_ms"]["e2el"]["p99"] for r in result["runs"]["A"]) / 2
    assert rows[9][1].startswith(f"{mean_a:.2f} ± ")
    assert "P99 E2EL (ms)" in done.stdout and "B / A" in done.stdout


def test_a_bad_configuration_is_a_one_line_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pagellm.entrypoints.cli.main", "bench", "compare",
         str(tmp_path / "missing.yaml"), "--max-num-seqs 2", "--work-dir", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": os.getcwd()}, capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is neither a file nor a string of serve flags" in done.stderr
