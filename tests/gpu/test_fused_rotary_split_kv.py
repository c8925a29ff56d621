"""Session 8's decode-layer kernels on CUDA: the fused q/k-norm + rotary + KV-cache write vs
its torch twin, the split-KV merge by the last segment program vs the separate merge launch
(bit for bit, eagerly and replayed in a CUDA graph), the attention layer on both paths, and
greedy model output with the fused path equal to the unfused one (tiny Llama and Qwen3)."""

from __future__ import annotations

import gc

import pytest
import torch

from pagellm import LLM, SamplingParams
from tests.gpu.kernel_cases import (check_layer_rotary_paths, check_rotary_and_cache,
                                    check_split_merge, random_paged_batch)
from tests.helpers.tiny_models import make_tiny_model_dir

pytestmark = pytest.mark.gpu

TOLERANCE = 1e-2
FP8 = torch.float8_e4m3fn
# (num_heads, num_kv_heads, head_dim): GQA 4 (Llama-8B), 6 at an odd head dim, 1, Qwen3 2/1
LAYOUTS = [(32, 8, 128), (12, 2, 80), (4, 4, 64), (16, 8, 128)]


# (dtype, layout, qk_norm): every layout in bf16 with and without the norms, fp16 and fp32
ROTARY_CASES = ([(torch.bfloat16, layout, qk_norm)
                 for layout in LAYOUTS for qk_norm in (True, False)]
                + [(torch.float16, LAYOUTS[1], True), (torch.float32, LAYOUTS[0], True),
                   (torch.float32, LAYOUTS[1], False)])


@pytest.mark.parametrize("dtype,layout,qk_norm", ROTARY_CASES)
def test_rotary_and_cache_matches_twin(dtype, layout, qk_norm):
    num_heads, num_kv_heads, head_dim = layout
    tolerance = 1e-5 if dtype == torch.float32 else TOLERANCE
    for num_tokens, num_padding in ((1, 0), (9, 3), (300, 0)):
        q_error, cache_error, intact = check_rotary_and_cache(
            num_tokens, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
            qk_norm=qk_norm, num_padding=num_padding, block_size=16, dtype=dtype)
        assert q_error < tolerance and cache_error < tolerance and intact, num_tokens


@pytest.mark.parametrize("layout,qk_norm", [(LAYOUTS[0], False), (LAYOUTS[1], True),
                                            (LAYOUTS[3], True)])
def test_rotary_and_cache_fp8(layout, qk_norm):
    num_heads, num_kv_heads, head_dim = layout
    q_error, cache_error, intact = check_rotary_and_cache(
        50, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, qk_norm=qk_norm,
        num_padding=2, block_size=16, kv_cache_dtype=FP8, k_scale=0.5, v_scale=2.0)
    assert q_error < TOLERANCE and cache_error < 0.02 and intact


def test_partial_rotary_dim():
    q_error, cache_error, intact = check_rotary_and_cache(
        20, num_heads=8, num_kv_heads=2, head_dim=128, rotary_dim=64, qk_norm=True,
        dtype=torch.float32)
    assert q_error < 1e-5 and cache_error < 1e-5 and intact


@pytest.mark.parametrize("layout,cache_dtype", [(layout, None) for layout in LAYOUTS]
                         + [(LAYOUTS[0], FP8), (LAYOUTS[1], FP8)])
def test_split_merge_bits_equal_two_kernel_path(layout, cache_dtype):
    num_heads, num_kv_heads, head_dim = layout
    for seq_lens, num_kv_splits in (([8192, 8000, 4097], 33), ([100, 513, 2048, 9], 7),
                                    ([300, 40], 2)):
        same_bits, error = check_split_merge(seq_lens, num_kv_splits, num_heads=num_heads,
                                             num_kv_heads=num_kv_heads, head_dim=head_dim,
                                             kv_cache_dtype=cache_dtype)
        assert same_bits and error < TOLERANCE, seq_lens


@pytest.mark.parametrize("cache_dtype", [None, FP8])
def test_split_merge_at_the_most_segments(cache_dtype):
    """MAX_KV_SPLITS segments (the deepest merge tree, walked in head-dim chunks)."""
    same_bits, error = check_split_merge([33000, 20000], 256, num_heads=32, num_kv_heads=8,
                                         head_dim=128, kv_cache_dtype=cache_dtype)
    assert same_bits and error < TOLERANCE


def test_split_merge_in_a_cuda_graph_needs_no_host_work():
    """Captured once at the longest context, replayed with other lengths (each within its
    request's blocks): every replay equals the two-kernel path run eagerly (the counters
    reset themselves)."""
    from pagellm.ops.triton.paged_attention import paged_attention_triton

    seq_lens = [4096, 3000, 64, 1]
    query, kv_cache, meta = random_paged_batch([1] * 4, seq_lens, block_size=16, num_heads=32,
                                               num_kv_heads=8, head_dim=128,
                                               dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(query)

    def attend(merge_in_split_kernel: bool, into: torch.Tensor):
        paged_attention_triton(query, kv_cache, meta.block_tables, meta.query_start_loc,
                               meta.seq_lens, 0.088, max_query_len=1, max_seq_len=4096,
                               num_kv_splits=16, out=into,
                               merge_in_split_kernel=merge_in_split_kernel)

    attend(True, out)                                   # warm-up: compile, counters
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attend(True, out)
    for lens in ([4096, 3000, 64, 1], [17, 3000, 60, 16], [1, 2999, 1, 9]):
        meta.seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        out.fill_(float("nan"))
        graph.replay()
        expected = torch.full_like(query, float("nan"))
        attend(False, expected)
        assert torch.equal(out, expected), lens


@pytest.mark.parametrize("qk_norm", [True, False])
def test_attention_layer_fused_and_unfused(qk_norm):
    fused, unfused = check_layer_rotary_paths([1, 37, 1, 128, 5], [300, 37, 17, 700, 5],
                                              qk_norm=qk_norm, num_heads=32, num_kv_heads=8,
                                              head_dim=128)
    assert fused < TOLERANCE and unfused < TOLERANCE


GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
PROMPTS = [list(range(3, 3 + n)) for n in (1, 5, 17, 33, 120)]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused_models")
    return {"llama": make_tiny_model_dir(root / "a", "llama"),
            "qwen3": make_tiny_model_dir(root / "b", "qwen3")}


def _greedy(model_dir, **kwargs) -> list[list[int]]:
    llm = LLM(str(model_dir), device="cuda", dtype="float32", max_model_len=512,
              kv_cache_memory_bytes=2**28, **kwargs)
    tokens = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return tokens


@pytest.mark.parametrize("name,kv_cache_dtype", [("llama", "auto"), ("qwen3", "auto"),
                                                 ("llama", "fp8")])
def test_greedy_output_fused_equals_unfused(name, kv_cache_dtype, model_dirs, monkeypatch):
    """CUDA graphs on: prefills run the fused launch eagerly, decodes in the graph (split-KV
    at max_model_len 512 (the tiny models' limit), merged by ticket)."""
    monkeypatch.setenv("PAGELLM_ATTENTION_BACKEND", "triton")
    runs = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("PAGELLM_FUSED_ROTARY_KV_WRITE", fused)
        runs[fused] = _greedy(model_dirs[name], kv_cache_dtype=kv_cache_dtype)
    assert runs["1"] == runs["0"]
    assert all(len(tokens) == GREEDY.max_tokens for tokens in runs["1"])
