"""Parallelism and devices: tensor and pipeline parallelism on one host (mp executor) or
across the hosts of a Ray cluster (ray executor), and data parallelism (independent engine
replicas behind one server or LLM)."""

from __future__ import annotations

from dataclasses import dataclass

EXECUTOR_BACKENDS = ("uni", "mp", "ray")


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    """Shard every layer across this many ranks (devices), one worker process each."""
    pipeline_parallel_size: int = 1
    """Split the decoder layers across this many stages, one group of tensor_parallel_size
    ranks each; the engine keeps this many batches in flight so the stages overlap."""
    pipeline_layer_partition: str | None = None
    """Decoder layers per pipeline stage, comma-separated, first stage first (e.g. "3,3";
    vLLM's VLLM_PP_LAYER_PARTITION); must sum to the model's layer count. None = balanced,
    with the remainder on the stages before the last (as vLLM does)."""
    data_parallel_size: int = 1
    """Independent engine replicas (each a whole engine core in its own process, with its own
    scheduler, KV cache and tensor_parallel_size x pipeline_parallel_size ranks) behind one
    server or LLM; a load balancer routes each request by queue length, KV usage and
    prefix-cache affinity. On CUDA it needs data x tensor x pipeline parallel size devices."""
    enable_expert_parallel: bool = False
    """Shard MoE experts instead of tensor-parallel slicing (not supported yet)."""
    distributed_executor_backend: str | None = None
    """uni (one rank in the engine process), mp (one worker process per rank on this host) or
    ray (one Ray actor per rank, on the nodes of a Ray cluster); None = uni for one rank, mp
    for more."""
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, or cuda."""
    disable_custom_all_reduce: bool = False
    """Always use NCCL for tensor-parallel all-reduces. Otherwise (CUDA, mp executor) small
    messages take a one-shot all-reduce over peer GPU memory wherever a start-up measurement
    finds it faster than NCCL (vLLM's custom all-reduce; see distributed/custom_all_reduce.py)."""

    def __post_init__(self) -> None:
        from pagellm.config.checks import check_choice, check_range, not_supported_yet

        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            check_range(name, getattr(self, name), 1)
        self.layer_partition()      # the partition's form is checked here, its sum later
        if self.enable_expert_parallel:
            not_supported_yet("enable_expert_parallel", True)
        check_choice("distributed_executor_backend", self.distributed_executor_backend,
                     (None, *EXECUTOR_BACKENDS))
        if self.distributed_executor_backend == "ray":
            _check_ray_installed()
        if self.distributed_executor_backend == "uni" and self.world_size > 1:
            from pagellm.errors import ClientError
            raise ClientError(f"distributed_executor_backend='uni' runs one rank, but "
                              f"tensor_parallel_size={self.tensor_parallel_size} x "
                              f"pipeline_parallel_size={self.pipeline_parallel_size} = "
                              f"{self.world_size}: use 'mp'",
                              param="distributed_executor_backend")
        check_choice("device", self.device, ("auto", "cpu", "cuda"))

    @property
    def world_size(self) -> int:
        """Ranks (worker processes) of one engine: tensor x pipeline parallel size."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def executor_backend(self) -> str:
        """The executor that runs the ranks (``distributed_executor_backend`` resolved)."""
        return self.distributed_executor_backend or ("mp" if self.world_size > 1 else "uni")

    @property
    def output_rank(self) -> int:
        """The rank that reports each step's sampled tokens: TP rank 0 of the last stage
        (every rank of that stage samples the same tokens)."""
        return (self.pipeline_parallel_size - 1) * self.tensor_parallel_size

    def layer_partition(self) -> list[int] | None:
        """``pipeline_layer_partition`` as a list of ints (None when not given). ClientError
        when it is not ``pipeline_parallel_size`` positive integers."""
        from pagellm.errors import ClientError

        text = self.pipeline_layer_partition
        if text is None:
            return None
        try:
            counts = [int(part) for part in str(text).split(",")]
        except ValueError:
            counts = []
        if len(counts) != self.pipeline_parallel_size or min(counts) < 1:
            raise ClientError(f"pipeline_layer_partition must be {self.pipeline_parallel_size} "
                              f"positive integers separated by commas (one per pipeline stage), "
                              f"got {text!r}", param="pipeline_layer_partition")
        return counts

    def verify_with_model(self, hf_config) -> None:
        """ClientError (naming the model field and the parallel size) when the model's heads
        or MLP width cannot be split across the tensor-parallel ranks, or its layers across
        the pipeline stages."""
        from pagellm.errors import ClientError

        stage_layer_counts(hf_config.num_hidden_layers, self.pipeline_parallel_size,
                           self.layer_partition())

        tp = self.tensor_parallel_size
        heads = hf_config.num_attention_heads
        kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
        problems = []
        if heads % tp:
            problems.append(f"num_attention_heads={heads} is not divisible by it")
        if kv_heads % tp and tp % kv_heads:
            problems.append(f"num_key_value_heads={kv_heads} neither divides it nor is divisible "
                            "by it")
        if hf_config.intermediate_size % tp:
            problems.append(f"intermediate_size={hf_config.intermediate_size} is not divisible "
                            "by it")
        if problems:
            raise ClientError(f"tensor_parallel_size={tp} does not fit the model: "
                              f"{'; '.join(problems)}", param="tensor_parallel_size")


def _check_ray_installed() -> None:
    """ClientError when the ray package is missing (checked without importing it)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        from pagellm.errors import ClientError
        raise ClientError("distributed_executor_backend='ray' needs the ray package: "
                          "pip install ray (or pip install pagellm[ray])",
                          param="distributed_executor_backend")


def stage_layer_counts(num_layers: int, pp_size: int, partition: list[int] | None = None
                       ) -> list[int]:
    """Decoder layers of each pipeline stage: ``partition`` when given (it must sum to
    ``num_layers``), else ``num_layers // pp_size`` each with the remainder added one by one
    to the stages before the last (vLLM's get_pp_indices: the last stage also runs the final
    norm and the LM head). ClientError when a stage would get no layer or the sum is wrong."""
    from pagellm.errors import ClientError

    if pp_size > num_layers:
        raise ClientError(f"pipeline_parallel_size={pp_size} is larger than the model's "
                          f"num_hidden_layers={num_layers}: every stage needs at least one layer",
                          param="pipeline_parallel_size")
    if partition is not None:
        if sum(partition) != num_layers:
            raise ClientError(f"pipeline_layer_partition {','.join(map(str, partition))} sums to "
                              f"{sum(partition)}, but the model has num_hidden_layers={num_layers}",
                              param="pipeline_layer_partition")
        return list(partition)
    counts = [num_layers // pp_size] * pp_size
    for stage in range(num_layers % pp_size):
        counts[-2 - stage] += 1
    return counts


def stage_layer_range(num_layers: int, pp_size: int, stage: int,
                      partition: list[int] | None = None) -> tuple[int, int]:
    """[start, end) of the decoder layers pipeline stage ``stage`` runs."""
    counts = stage_layer_counts(num_layers, pp_size, partition)
    start = sum(counts[:stage])
    return start, start + counts[stage]
