"""Triton kernels for the GPU fast path, one module per job, each with a torch twin in
``pagellm.ops`` that is the CPU path and the test oracle:

| module            | kernel(s)                                   | torch twin                      |
|-------------------|---------------------------------------------|---------------------------------|
| paged_attention   | mixed-batch paged attention; split-KV decode | ops.attention.paged_attention_torch |
| kv_cache          | write new K/V at slot_mapping               | ops.attention.write_kv_cache    |
| norm              | RMSNorm, fused residual-add + RMSNorm       | ops.norm                        |
| activation        | SiLU-and-mul                                | ops.activation.silu_and_mul     |

Importing this package (or any module in it) imports triton, so only GPU code paths import
it, lazily, inside functions: the CPU path never needs triton.
"""
