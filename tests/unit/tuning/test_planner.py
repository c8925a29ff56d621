"""The capacity planner: shapes from config.json, per-GPU arithmetic, the OOM order of fixes,
bad input as ClientError, and the CLI's exit codes and messages."""

from __future__ import annotations

import pytest

from pagellm.config.cache import DEFAULT_CPU_KV_CACHE_BYTES
from pagellm.config.kv_sizing import kv_heads_per_rank
from pagellm.entrypoints.cli.main import main
from pagellm.errors import ClientError
from pagellm.tuning.planner import (PlanInputs, gpu_memory_gib, kv_geometry, load_model_shape,
                                    plan, suggest_fixes, weight_bytes_per_gpu)

LLAMA_8B = load_model_shape("llama-3.1-8b")


def test_shipped_shape_and_kv_bytes_per_token():
    assert (LLAMA_8B.num_layers, LLAMA_8B.num_kv_heads, LLAMA_8B.head_dim) == (32, 8, 128)
    per_token, per_block = kv_geometry(PlanInputs(model=LLAMA_8B))
    assert per_token == 32 * 2 * 8 * 128 * 2          # layers x K,V x heads x dim x bf16
    assert per_block == 16 * per_token
    tp4 = kv_geometry(PlanInputs(model=LLAMA_8B, tensor_parallel_size=4))[0]
    assert tp4 == per_token // 4
    fp8 = kv_geometry(PlanInputs(model=LLAMA_8B, kv_cache_dtype="fp8"))[0]
    assert fp8 == per_token // 2


def test_weights_match_the_parameter_count():
    weights = weight_bytes_per_gpu(PlanInputs(model=LLAMA_8B))
    assert 8.0e9 * 2 < weights < 8.1e9 * 2           # Llama 3.1 8B: 8.03 B parameters, bf16
    tp2 = weight_bytes_per_gpu(PlanInputs(model=LLAMA_8B, tensor_parallel_size=2))
    assert tp2 == pytest.approx(weights / 2, rel=0.01)
    int4 = weight_bytes_per_gpu(PlanInputs(model=LLAMA_8B, quantization="int4"))
    assert int4 < weights / 2.5


def test_kv_heads_replicate_beyond_their_count():
    assert [kv_heads_per_rank(8, tp) for tp in (1, 2, 8, 16)] == [8, 4, 1, 1]


def test_cpu_budget_is_the_engines_default():
    result = plan(PlanInputs(model=LLAMA_8B, device="cpu", max_model_len=4096))
    assert result.kv_budget_bytes == DEFAULT_CPU_KV_CACHE_BYTES
    # float32 on CPU (the engine's "auto"): twice the bf16 bytes per token
    assert result.num_blocks == DEFAULT_CPU_KV_CACHE_BYTES // (16 * 2 * 131072)


def test_fits_on_h100_and_concurrency():
    result = plan(PlanInputs(model=LLAMA_8B, gpu_memory_gib=gpu_memory_gib("h100-80g", None),
                             max_model_len=8192, typical_lengths=(1024,)))
    assert result.fits
    assert result.max_concurrency_at_max_len == result.num_blocks * 16 / 8192
    assert result.concurrency_at[1024] == min(256, result.num_blocks // 64)


def test_oom_order_of_fixes():
    inputs = PlanInputs(model=LLAMA_8B, gpu_memory_gib=22.0, max_model_len=32768)
    result = plan(inputs)
    assert not result.fits
    fixes = suggest_fixes(inputs, result)
    assert fixes[0].startswith("--max-model-len ")
    assert fixes[1].startswith("quantize to fp8")
    assert any(f.startswith("--tensor-parallel-size 2") for f in fixes)
    fitting = int(fixes[0].split()[1])
    assert plan(PlanInputs(model=LLAMA_8B, gpu_memory_gib=22.0, max_model_len=fitting)).fits
    # weights alone do not fit: max_model_len cannot help, quantization and TP can
    small = PlanInputs(model=LLAMA_8B, gpu_memory_gib=12.0, max_model_len=4096)
    small_fixes = suggest_fixes(small, plan(small))
    assert not any(f.startswith("--max-model-len") for f in small_fixes)
    assert small_fixes[0].startswith("quantize to")


@pytest.mark.parametrize("change, message", [
    (dict(gpu_memory_gib=None), "name a GPU"),
    (dict(tensor_parallel_size=3), "tensor_parallel_size=3"),
    (dict(max_model_len=10**6), "max_model_len must be in"),
    (dict(quantization="q2"), "quantization must be one of"),
    (dict(block_size=24), "block_size must be a power of two"),
    (dict(pipeline_parallel_size=64), "pipeline_parallel_size=64"),
    (dict(dtype="int3"), "dtype must be one of"),
])
def test_impossible_inputs_are_client_errors(change, message):
    with pytest.raises(ClientError, match=message):
        plan(PlanInputs(**{"model": LLAMA_8B, "gpu_memory_gib": 80.0, **change}))


def test_unknown_gpu_and_model():
    with pytest.raises(ClientError, match="unknown GPU 'B300'.*H100-80G"):
        gpu_memory_gib("B300", None)
    with pytest.raises(ClientError, match="not a directory with config.json"):
        load_model_shape("/nonexistent/model")


def test_cli_exit_codes_and_no_traceback(capsys, tmp_path):
    assert main(["plan", "qwen3-0.6b", "--gpu", "H200", "--max-model-len", "8192"]) == 0
    assert "fits: yes" in capsys.readouterr().out
    assert main(["plan", "llama-3.1-8b", "--gpu", "A10G", "--max-model-len", "32768"]) == 1
    out = capsys.readouterr().out
    assert "fits: NO" in out and "--max-model-len 2" in out
    assert main(["plan", "llama-3.1-8b", "--gpu", "B300"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU" in err and "Traceback" not in err
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    assert main(["plan", str(bad), "--gpu", "H200"]) == 2
    assert "not a usable model config" in capsys.readouterr().err


def test_the_default_gguf_model_has_a_shape():
    shape = load_model_shape("default")        # SmolLM2-135M's metadata, read from the GGUF
    assert (shape.num_layers, shape.hidden_size, shape.num_heads, shape.num_kv_heads,
            shape.vocab_size) == (30, 576, 9, 3, 49152)


def test_a_cpu_plan_speaks_of_ranks_and_suggests_the_kv_budget(capsys):
    assert main(["plan", "qwen3-0.6b", "--device", "cpu", "--kv-cache-memory-bytes",
                 "10000000", "--max-model-len", "32768"]) == 1
    out = capsys.readouterr().out
    assert "weights per rank:" in out and "CUDA" not in out and "--tensor-parallel-size" not in out
    suggested = int(out.split("--kv-cache-memory-bytes ")[1].split()[0])
    assert main(["plan", "qwen3-0.6b", "--device", "cpu", "--kv-cache-memory-bytes",
                 str(suggested), "--max-model-len", "32768"]) == 0      # the fix fits


def test_pipeline_stages_size_the_busiest_rank():
    # 32 layers over 3 stages: 11, 11, 10 -> the KV of 11 layers per block on the busiest rank
    per_token = kv_geometry(PlanInputs(model=LLAMA_8B, pipeline_parallel_size=3))[0]
    assert per_token == 11 * 2 * 8 * 128 * 2
