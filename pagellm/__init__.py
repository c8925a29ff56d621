"""pagellm: a high-throughput, memory-efficient LLM inference and serving engine."""

from pagellm.errors import (ClientError, EngineDeadError, NotSupportedError, ServerError,
                            ServiceUnavailableError)
from pagellm.lora.request import LoRARequest
from pagellm.outputs import CompletionOutput, Logprob, RequestOutput
from pagellm.sampling_params import SamplingParams

__version__ = "0.1.0"

__all__ = ["LLM", "LLMEngine", "SamplingParams", "LoRARequest", "RequestOutput", "CompletionOutput", "Logprob",
           "ClientError", "ServerError", "EngineDeadError", "NotSupportedError",
           "ServiceUnavailableError", "__version__"]


def __getattr__(name):
    # The engine pulls in torch; import it only when asked for.
    if name == "LLM":
        from pagellm.engine.llm import LLM
        return LLM
    if name == "LLMEngine":
        from pagellm.engine.llm_engine import LLMEngine
        return LLMEngine
    raise AttributeError(name)
