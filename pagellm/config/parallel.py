"""Parallelism and devices: tensor parallelism on one host (mp executor) or across the hosts
of a Ray cluster (ray executor), and data parallelism (independent engine replicas behind one
server or LLM); pipeline parallelism is not built yet."""

from __future__ import annotations

from dataclasses import dataclass

EXECUTOR_BACKENDS = ("uni", "mp", "ray")


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    """Shard every layer across this many ranks (devices), one worker process each."""
    pipeline_parallel_size: int = 1
    """Split the layers across this many stages (not supported yet beyond 1)."""
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

    def __post_init__(self) -> None:
        from pagellm.config.checks import check_choice, check_range, not_supported_yet

        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            check_range(name, getattr(self, name), 1)
        if self.pipeline_parallel_size != 1:
            not_supported_yet("pipeline_parallel_size", self.pipeline_parallel_size)
        if self.enable_expert_parallel:
            not_supported_yet("enable_expert_parallel", True)
        check_choice("distributed_executor_backend", self.distributed_executor_backend,
                     (None, *EXECUTOR_BACKENDS))
        if self.distributed_executor_backend == "ray":
            _check_ray_installed()
        if self.distributed_executor_backend == "uni" and self.world_size > 1:
            from pagellm.errors import ClientError
            raise ClientError(f"distributed_executor_backend='uni' runs one rank, but "
                              f"tensor_parallel_size={self.tensor_parallel_size}: use 'mp'",
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

    def verify_with_model(self, hf_config) -> None:
        """ClientError (naming the model field and tensor_parallel_size) when the model's
        heads or MLP width cannot be split across the tensor-parallel ranks."""
        from pagellm.errors import ClientError

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
