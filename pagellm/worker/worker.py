"""One rank: owns the device, the model, the KV cache and the model runner. Under pipeline
parallelism the model, the KV cache and the memory profile cover only this stage's layers."""

from __future__ import annotations

import gc
import logging
import time

import torch

from pagellm.config.cache import kv_cache_torch_dtype
from pagellm.config.engine_args import EngineConfig
from pagellm.config.kv_sizing import (check_max_model_len_fits, cpu_kv_budget, cuda_kv_budget,
                                      fixed_kv_budget, num_kv_blocks)
from pagellm.distributed.parallel_state import get_pp_group
from pagellm.errors import ClientError
from pagellm.models.loader import LoadStats, load_model
from pagellm.platforms import Platform
from pagellm.worker.kv_cache import KVCache, KVCacheSpec
from pagellm.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)

GiB = 1024**3


class Worker:
    def __init__(self, config: EngineConfig, platform: Platform, hf_config, dtype: torch.dtype):
        self.config = config
        self.platform = platform
        self.dtype = dtype
        start = time.perf_counter()
        if platform.is_cuda:
            torch.cuda.set_device(platform.device)
            from pagellm.ops.triton import pdl
            pdl.configure(config.parallel.tensor_parallel_size)
            # An engine deleted earlier in this process may still be waiting for the cyclic
            # GC; collect it and hand its cached blocks back before memory is measured, or
            # its tensors count against this engine's KV budget.
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(platform.device)
        self.load_stats = LoadStats()
        """What this rank read from the checkpoint and holds (its shard under TP)."""
        self.model = load_model(config.model.model, hf_config, config.load.load_format, dtype,
                                platform.device, seed=config.model.seed, stats=self.load_stats,
                                quantization=config.model.quantization)
        self.model.eval()
        if platform.is_cuda:
            # quantizing at load (fp8) held the dense weights for a while: that peak is gone
            # and must not shrink the KV cache (the resident weights still count)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(platform.device)
        logger.info("Loaded %s (%s, weights %.2f GiB on this rank) in %.1f s",
                    config.model.model, dtype, self.load_stats.param_bytes / GiB,
                    time.perf_counter() - start)
        self.runner = ModelRunner(self.model, platform, config.cache.block_size,
                                  config.model.max_logprobs, config.scheduler.max_num_seqs,
                                  config.model.max_model_len, seed=config.model.seed,
                                  speculative_config=config.speculative)
        if config.lora.enable_lora:
            self.runner.lora_manager = make_lora_manager(self.model, hf_config, config,
                                                         dtype, platform.device)
        self.spec = KVCacheSpec(self.model.num_layers, config.cache.block_size,
                                self.model.num_kv_heads, self.model.head_dim,
                                kv_cache_torch_dtype(config.cache.kv_cache_dtype, dtype))
        self.proposer_spec = None
        """The draft model's / EAGLE head's KV layout (same blocks, own tensors), or None."""
        if config.speculative.uses_model:
            self.runner.proposer = make_model_proposer(config, self.model, dtype, platform.device)
            self.proposer_spec = self.runner.proposer.kv_cache_spec(config.cache.block_size,
                                                                    self.spec.dtype)

    def determine_num_blocks(self) -> tuple[int, int]:
        """(device KV blocks, CPU swap blocks) from the memory budget (the arithmetic is
        ``pagellm.config.kv_sizing``, shared with ``pagellm plan``)."""
        cache = self.config.cache
        per_block = self.spec.bytes_per_block
        if self.proposer_spec is not None:    # a block holds the proposer's K/V too
            per_block += self.proposer_spec.bytes_per_block
        if fixed_kv_budget(cache) is None and self.platform.is_cuda:
            budget = self._cuda_kv_budget()
        else:
            budget = cpu_kv_budget(cache)
        num_blocks, num_swap_blocks = num_kv_blocks(budget, per_block, cache.swap_space)
        max_model_len = self.config.model.max_model_len
        check_max_model_len_fits(num_blocks, cache.block_size, max_model_len, budget)
        self._log_kv_cache_dtype()
        # Swap space is reserved only under preemption_mode='swap' (EngineCore drops it
        # otherwise), so only then does the line mention it.
        swap = (f"; swap space: {num_swap_blocks} blocks"
                if self.config.scheduler.preemption_mode == "swap" else "")
        logger.info("KV cache: %d blocks (%d tokens, %.2f GiB); maximum concurrency for "
                    "%d tokens per request: %.2fx%s", num_blocks, num_blocks * cache.block_size,
                    num_blocks * per_block / GiB, max_model_len,
                    num_blocks * cache.block_size / max_model_len, swap)
        return num_blocks, num_swap_blocks

    def _log_kv_cache_dtype(self) -> None:
        """With a quantized KV cache, say how many more blocks the budget buys."""
        if self.spec.dtype == self.dtype:
            return
        kv_bytes = torch.empty((), dtype=self.spec.dtype).element_size()
        model_bytes = torch.empty((), dtype=self.dtype).element_size()
        logger.info("KV cache dtype %s (kv_cache_dtype=%s): %d byte(s) per element instead of %d "
                    "(%s), %.1fx the blocks of an auto cache in the same memory", self.spec.dtype,
                    self.config.cache.kv_cache_dtype, kv_bytes, model_bytes, self.dtype,
                    model_bytes / kv_bytes)

    def _cuda_kv_budget(self) -> int:
        """gpu_memory_utilization × total − weights − peak activations of a profiling forward
        at max_num_batched_tokens (what else the process holds counts as used)."""
        device = self.platform.device
        self.profile_run()
        free, total = torch.cuda.mem_get_info(device)
        peak = torch.cuda.max_memory_allocated(device)
        non_torch = (total - free) - torch.cuda.memory_reserved(device)
        budget = cuda_kv_budget(self.config.cache.gpu_memory_utilization, total, peak, non_torch)
        logger.info("CUDA memory: total %.2f GiB, torch peak %.2f GiB, other %.2f GiB -> KV "
                    "cache budget %.2f GiB", total / GiB, peak / GiB, non_torch / GiB, budget / GiB)
        if budget <= 0:
            raise ClientError(
                f"no memory left for the KV cache at gpu_memory_utilization="
                f"{self.config.cache.gpu_memory_utilization}: raise it, or lower "
                "max_num_batched_tokens", param="gpu_memory_utilization")
        return budget

    @torch.inference_mode()
    def profile_run(self) -> None:
        """A forward at the full token budget, every request sharing one small throwaway
        cache: it bounds the activation peak without a real KV cache."""
        from pagellm.layers.attention_metadata import AttentionMetadata

        num_tokens = self.config.scheduler.max_num_batched_tokens
        device = self.platform.device
        num_reqs = min(num_tokens, self.config.scheduler.max_num_seqs)
        per_req = [num_tokens // num_reqs + (1 if i < num_tokens % num_reqs else 0)
                   for i in range(num_reqs)]
        num_blocks = -(-max(per_req) // self.spec.block_size)
        caches = [torch.empty(self.spec.layer_shape(num_blocks), dtype=self.spec.dtype, device=device)
                  for _ in range(self.spec.num_layers)]
        starts = [0]
        for n in per_req:
            starts.append(starts[-1] + n)
        positions = torch.cat([torch.arange(n) for n in per_req]).to(device)   # [num_tokens]
        metadata = AttentionMetadata(
            num_reqs=num_reqs, num_tokens=num_tokens, block_size=self.spec.block_size,
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
            seq_lens=torch.tensor(per_req, dtype=torch.int32, device=device),
            block_tables=torch.arange(num_blocks, dtype=torch.int32, device=device).repeat(num_reqs, 1),
            slot_mapping=positions.clone(), query_start_loc_cpu=starts, seq_lens_cpu=per_req,
            max_query_len=max(per_req), max_seq_len=max(per_req))
        input_ids = torch.zeros(num_tokens, dtype=torch.int64, device=device)
        intermediate = None
        if not get_pp_group().is_first_rank:     # stand-ins for the previous stage's output
            from pagellm.models.utils import IntermediateTensors
            zeros = torch.zeros((num_tokens, self.model.config.hidden_size), dtype=self.dtype,
                                device=device)
            intermediate = IntermediateTensors(zeros, zeros.clone())
        hidden = self.model(input_ids, positions, caches, metadata, intermediate)
        if get_pp_group().is_last_rank:
            self.model.compute_logits(hidden[-num_reqs:])
        self.platform.synchronize()
        del caches, hidden

    def initialize_cache(self, num_blocks: int, num_swap_blocks: int) -> None:
        kv_cache = KVCache(self.spec, num_blocks, num_swap_blocks, self.platform.device,
                           pin_memory=self.platform.pin_memory())
        self.runner.bind_kv_cache(kv_cache)
        if self.proposer_spec is not None:
            self.runner.proposer.bind_kv_cache(KVCache(
                self.proposer_spec, num_blocks, num_swap_blocks, self.platform.device,
                pin_memory=self.platform.pin_memory()))
        if self.platform.is_cuda and not self.config.model.enforce_eager:
            if get_pp_group().world_size > 1:   # graphs capture a whole-model forward only
                logger.info("pipeline parallelism: CUDA graphs are not captured (eager mode)")
            elif self.config.speculative.method == "eagle3":   # the graphs keep no aux states
                logger.info("EAGLE-3: CUDA graphs are not captured (eager mode)")
            else:
                self._capture_cuda_graphs(kv_cache)

    def _capture_cuda_graphs(self, kv_cache: KVCache) -> None:
        """Capture the graphs ``compilation_config`` asks for (``worker/cuda_graph.py``)."""
        from pagellm.worker.cuda_graph import make_cuda_graph_runner

        lora = self.runner.lora_manager
        scheduler, speculative = self.config.scheduler, self.config.speculative
        graphs = make_cuda_graph_runner(
            self.model, kv_cache, self.config.compilation.cuda_graph_options,
            scheduler.max_num_seqs, scheduler.max_num_batched_tokens,
            self.config.model.max_model_len, self.config.cache.block_size, self.platform.device,
            lora_context=lora.context if lora is not None else None,
            uniform_query_len=1 + speculative.num_spec_tokens if speculative.enabled else None)
        if graphs is not None:
            graphs.capture()
        self.runner.cuda_graphs = graphs

    def profile(self, is_start: bool) -> str:
        """Start (``is_start``) or stop torch.profiler on this rank (vLLM's start_profile /
        stop_profile). A stop returns the top kernels by device time and the total device time
        as text, and writes the table (and a Chrome trace) under $PAGELLM_TORCH_PROFILER_DIR
        when set. RuntimeError for a stop without a start."""
        import os

        from torch.profiler import ProfilerActivity, profile

        if is_start:
            activities = [ProfilerActivity.CPU]
            if self.platform.is_cuda:
                activities.append(ProfilerActivity.CUDA)
            self._profiler = profile(activities=activities)
            self._profiler.__enter__()
            return ""
        if getattr(self, "_profiler", None) is None:
            raise RuntimeError("stop_profile() without start_profile()")
        self.platform.synchronize()
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        events = profiler.key_averages()
        device_us = sum(e.self_device_time_total for e in events
                        if e.device_type.name == "CUDA")
        table = events.table(sort_by="self_cuda_time_total" if self.platform.is_cuda
                             else "self_cpu_time_total", row_limit=15, max_name_column_width=70)
        summary = f"{table}\ndevice time total: {device_us / 1e3:.2f} ms"
        directory = os.environ.get("PAGELLM_TORCH_PROFILER_DIR")
        if directory:
            from pagellm.distributed.parallel_state import get_world_group
            rank = get_world_group().rank_in_group
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, f"rank{rank}.txt"), "w") as f:
                f.write(summary)
            profiler.export_chrome_trace(os.path.join(directory, f"rank{rank}.trace.json"))
        return summary

    def execute_model(self, sched):
        """Run a step and wait for its output (ModelRunnerOutput)."""
        return self.runner.resolve(self.runner.execute_model_async(sched))

    def execute_model_async(self, sched):
        """Launch a step; a PendingStep to ``resolve`` (see ModelRunner.execute_model_async)."""
        return self.runner.execute_model_async(sched)

    def sample_tokens(self, grammar_output):
        """Mask and sample a step launched with ``has_structured_output_requests``; its
        PendingStep (see ModelRunner.sample_tokens)."""
        return self.runner.sample_tokens(grammar_output)

    def resolve(self, step):
        return self.runner.resolve(step)


def make_model_proposer(config: EngineConfig, target: torch.nn.Module, dtype: torch.dtype,
                        device: torch.device):
    """The draft-model or EAGLE proposer of ``config.speculative``, its model loaded with the
    target's load format (checked earlier by ``check_speculative_model``)."""
    from pagellm.models.default_model import resolve_model_path
    from pagellm.models.spec_models import load_draft_model, load_eagle_head
    from pagellm.worker.draft_proposer import DraftModelProposer
    from pagellm.worker.eagle_proposer import EagleProposer

    spec, start = config.speculative, time.perf_counter()
    path = resolve_model_path(spec.model)
    stats, load_format, seed = LoadStats(), config.load.load_format, config.model.seed
    k, max_model_len = spec.num_spec_tokens, config.model.max_model_len
    if spec.method == "draft_model":
        model = load_draft_model(path, load_format, dtype, device, seed, stats)
        proposer = DraftModelProposer(model, k, max_model_len, device)
    else:
        head = load_eagle_head(spec.method, path, target, load_format, dtype, device, seed, stats)
        proposer = EagleProposer(head, target, k, max_model_len, device)
    logger.info("Loaded %s proposer %s (weights %.3f GiB) in %.1f s; k=%d", spec.method, path,
                stats.param_bytes / GiB, time.perf_counter() - start, k)
    return proposer


def make_lora_manager(model, hf_config, config: EngineConfig, dtype: torch.dtype,
                      device: torch.device):
    """The worker's ``LoRAModelManager``: slots in ``lora_dtype`` (auto = the model's),
    sharded as ``fully_sharded_loras`` asks."""
    from pagellm.lora.manager import LoRAModelManager

    lora = config.lora
    lora_dtype = dtype if lora.lora_dtype == "auto" else getattr(torch, lora.lora_dtype)
    return LoRAModelManager(model, hf_config, lora.max_loras, lora.max_lora_rank,
                            lora.cpu_loras, lora_dtype, device, lora.fully_sharded_loras)
