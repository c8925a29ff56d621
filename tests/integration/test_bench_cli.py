"""`pagellm bench throughput|latency`, run in-process on a
tiny random model."""

from __future__ import annotations

import json
import re

import pytest

from pagellm.entrypoints.cli.main import main
from tests.helpers.tiny_models import make_tiny_model_dir, tiny_config

SMALL_ENGINE = ["--kv-cache-memory-bytes", str(16 * 2**20), "--max-model-len", "256"]
THROUGHPUT_LINE = re.compile(r"^Throughput: \d+\.\d\d requests/s, \d+\.\d\d total tokens/s, "
                             r"\d+\.\d\d output tokens/s$", re.MULTILINE)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return str(make_tiny_model_dir(tmp_path_factory.mktemp("bench"), "llama"))


def test_bench_throughput_random(tiny_llama, tmp_path, capsys):
    out_json = tmp_path / "throughput.json"
    status = main(["bench", "throughput", "--model", tiny_llama, "--num-prompts", "4",
                   "--input-len", "16", "--output-len", "8", "--output-json", str(out_json),
                   "--disable-tqdm", *SMALL_ENGINE])
    assert status == 0
    stdout = capsys.readouterr().out
    assert THROUGHPUT_LINE.search(stdout)
    assert "Total num prompt tokens:  64\n" in stdout
    assert "Total num output tokens:  32\n" in stdout
    results = json.loads(out_json.read_text())
    assert results["num_requests"] == 4
    assert results["total_num_tokens"] == 4 * (16 + 8)
    assert results["elapsed_time"] > 0
    assert results["requests_per_second"] == pytest.approx(4 / results["elapsed_time"])
    assert results["tokens_per_second"] == pytest.approx(96 / results["elapsed_time"])
    assert results["output_tokens_per_second"] == pytest.approx(32 / results["elapsed_time"])


def test_bench_throughput_sharegpt(tiny_llama, tmp_path, capsys):
    dataset = tmp_path / "sharegpt.json"
    dataset.write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "Tell me a story about the sea"},
        {"from": "gpt", "value": "Once upon a time"}]}]))
    status = main(["bench", "throughput", "--model", tiny_llama, "--dataset-path", str(dataset),
                   "--num-prompts", "2", "--output-len", "4", "--disable-tqdm", *SMALL_ENGINE])
    assert status == 0
    stdout = capsys.readouterr().out
    # The tiny tokenizer has one token per byte; the one conversation is repeated.
    assert "Total num prompt tokens:  58\n" in stdout
    assert "Total num output tokens:  8\n" in stdout


def test_bench_latency(tiny_llama, tmp_path, capsys):
    out_json = tmp_path / "latency.json"
    status = main(["bench", "latency", "--model", tiny_llama, "--batch-size", "2",
                   "--input-len", "16", "--output-len", "8", "--num-iters-warmup", "1",
                   "--num-iters", "2", "--output-json", str(out_json), *SMALL_ENGINE])
    assert status == 0
    stdout = capsys.readouterr().out
    assert re.search(r"^Avg latency: [\d.e-]+ seconds$", stdout, re.MULTILINE)
    for percentage in (10, 25, 50, 75, 90, 99):
        assert re.search(rf"^{percentage}% percentile latency: [\d.e-]+ seconds$", stdout,
                         re.MULTILINE)
    results = json.loads(out_json.read_text())
    assert len(results["latencies"]) == 2
    assert list(results["percentiles"]) == ["10", "25", "50", "75", "90", "99"]
    assert 0 < results["avg_ttft"] < results["avg_latency"]
    assert results["decode_tokens_per_second"] > 0
    assert results["output_tokens_per_second"] == pytest.approx(2 * 8 / results["avg_latency"])


def test_bad_engine_argument_exits_with_the_field_name(capsys):
    assert main(["bench", "throughput", "--max-num-seqs", "0"]) == 2
    assert "max_num_seqs" in capsys.readouterr().err



def test_bench_throughput_on_config_only_directory(tmp_path, capsys):
    tiny_config("qwen3").save_pretrained(tmp_path)   # config.json only: no weights or tokenizer
    status = main(["bench", "throughput", "--model", str(tmp_path), "--num-prompts", "2",
                   "--input-len", "8", "--output-len", "4", "--disable-tqdm", *SMALL_ENGINE])
    assert status == 0
    assert THROUGHPUT_LINE.search(capsys.readouterr().out)
