"""Multi-LoRA serving: adapters (PEFT format) applied per token next to one base model.

- ``request``: ``LoRARequest``, the user-facing handle (vLLM's name and fields).
- ``peft``: read and validate a PEFT adapter directory (ClientError at load).
- ``ops``: the batched shrink/expand (torch twin; Triton on CUDA in ``ops_triton``).
- ``layers``: the LoRA-aware linear method wrapped around a parallel linear layer's own.
- ``manager``: host cache (LRU) and device slots (LRU among adapters not in the batch).
"""
