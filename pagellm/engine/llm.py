"""The offline API: ``LLM(model=...).generate(...)`` / ``.chat(...)``, like vLLM's."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from pagellm.engine.input_processor import PromptType
from pagellm.engine.llm_engine import LLMEngine
from pagellm.engine.tokenizer import apply_chat_template
from pagellm.errors import ClientError
from pagellm.lora.request import LoRARequest
from pagellm.outputs import RequestOutput
from pagellm.sampling_params import SamplingParams

ChatMessages = list[dict]


class LLM:
    """An engine in this process. Every keyword argument is an engine argument under vLLM's
    name (``max_num_seqs``, ``enable_prefix_caching``, ...); unknown names raise ClientError."""

    def __init__(self, model: str = "default", **engine_args):
        self.llm_engine = LLMEngine.from_engine_args(model=model, **engine_args)

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def shutdown(self) -> None:
        """Stop the engine's worker processes now (they also stop when this process exits)."""
        self.llm_engine.shutdown()

    def start_profile(self) -> None:
        """Start torch.profiler on every rank (vLLM's ``LLM.start_profile``); not under data
        parallelism, nor twice (ClientError)."""
        executor = self._executor()
        if getattr(self, "_profiling", False):
            raise ClientError("start_profile() called twice without stop_profile()")
        executor.profile(True)
        self._profiling = True

    def stop_profile(self) -> list[str]:
        """Stop the profiler: each rank's top kernels by device time as text (also written
        under $PAGELLM_TORCH_PROFILER_DIR when set). ClientError without start_profile()."""
        executor = self._executor()
        if not getattr(self, "_profiling", False):
            raise ClientError("stop_profile() without start_profile()")
        self._profiling = False
        return executor.profile(False)

    def _executor(self):
        if self.llm_engine.engine_core is None:
            raise ClientError("profiling runs on one engine core: not with data_parallel_size > 1")
        return self.llm_engine.engine_core.executor

    def generate(self, prompts: PromptType | Sequence[PromptType],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True, priority: list[int] | None = None,
                 lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None
                 ) -> list[RequestOutput]:
        """Generate for every prompt (text, token ids, or a dict with either); outputs come
        back in input order. ``lora_request``: one adapter for every prompt, or one per
        prompt (None = the base model). A bad prompt or adapter raises before any request
        is queued."""
        prompts = _as_list(prompts)
        params = _params_per_prompt(sampling_params, len(prompts))
        if priority is not None and len(priority) != len(prompts):
            raise ClientError("priority needs one value per prompt", param="priority")
        loras = _loras_per_prompt(lora_request, len(prompts))
        return self._run(prompts, params, priority or [0] * len(prompts), use_tqdm, loras)

    def chat(self, messages: ChatMessages | list[ChatMessages],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool = True, chat_template: str | None = None,
             add_generation_prompt: bool = True, continue_final_message: bool = False,
             chat_template_kwargs: dict | None = None,
             lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None
             ) -> list[RequestOutput]:
        """Apply the chat template (``chat_template`` or the model's, rendered in the bounded
        sandbox) to one conversation or a list of them, then generate.
        ``continue_final_message``: the reply continues the last (assistant) message; needs
        ``add_generation_prompt=False``. ``chat_template_kwargs``: extra template variables.
        ``lora_request``: as in ``generate``."""
        if not messages or not isinstance(messages, Sequence) or isinstance(messages, str):
            raise ClientError("messages must be a non-empty list of messages (or of "
                              "conversations)", param="messages")
        conversations = [messages] if isinstance(messages[0], dict) else list(messages)
        if not all(conversations):
            raise ClientError("messages must not be empty", param="messages")
        for conversation in conversations:
            _check_messages(conversation)
        tokenizer = self.llm_engine.tokenizer
        prompts = [apply_chat_template(tokenizer, conversation, add_generation_prompt,
                                       chat_template, continue_final_message,
                                       **(chat_template_kwargs or {}))
                   for conversation in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm,
                             lora_request=lora_request)

    def _run(self, prompts, params, priorities, use_tqdm, loras) -> list[RequestOutput]:
        engine = self.llm_engine
        # Tokenize and validate everything (once) before queueing anything.
        processed = [engine.process_request(p, sp) for p, sp in zip(prompts, params)]
        for lora in loras:
            engine.input_processor.check_lora_request(lora)
        request_ids = [engine.add_request(prompt, sp, priority=priority, validated=True,
                                          lora_request=lora)
                       for (prompt, sp), priority, lora in zip(processed, priorities, loras)]
        order = {request_id: index for index, request_id in enumerate(request_ids)}
        results: list[RequestOutput | None] = [None] * len(request_ids)
        bar = tqdm(total=len(request_ids), desc="Processed prompts", disable=not use_tqdm)
        try:
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished:
                        results[order[output.request_id]] = output
                        bar.update(1)
        except BaseException:
            for request_id in request_ids:
                engine.abort_request(request_id)
            raise
        finally:
            bar.close()
        return results


def _as_list(prompts) -> list:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if not isinstance(prompts, Sequence):
        raise ClientError("prompts must be a string, a list of token ids, a prompt dict, or a "
                          f"list of those; got {type(prompts).__name__}", param="prompts")
    prompts = list(prompts)
    if prompts and isinstance(prompts[0], int):
        return [prompts]        # one prompt given as token ids
    return prompts


def _check_messages(conversation) -> None:
    """ClientError (a ValueError) for a message that is not a dict with a string ``role`` and
    a ``content`` (an assistant message may carry ``tool_calls`` instead), as the OpenAI chat
    API requires."""
    for index, message in enumerate(conversation):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ClientError(f"messages[{index}] must be a dict with a string 'role', got "
                              f"{message!r:.80}", param="messages")
        if message.get("content") is None and not (message["role"] == "assistant"
                                                   and message.get("tool_calls")):
            raise ClientError(f"messages[{index}] ({message['role']}) has no 'content'",
                              param="messages")


def _loras_per_prompt(lora_request, count: int) -> list[LoRARequest | None]:
    if lora_request is None or isinstance(lora_request, LoRARequest):
        return [lora_request] * count
    if isinstance(lora_request, (str, bytes, dict)) or not isinstance(lora_request, Sequence):
        raise ClientError("lora_request must be a LoRARequest, a list of them (one per prompt, "
                          f"None for the base model) or None; got {type(lora_request).__name__}",
                          param="lora_request")
    loras = list(lora_request)
    if len(loras) != count:
        raise ClientError(f"lora_request needs one entry per prompt ({count}), got {len(loras)}",
                          param="lora_request")
    return loras


def _params_per_prompt(sampling_params, count: int) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * count
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * count
    if not isinstance(sampling_params, Sequence) or not all(
            isinstance(one, SamplingParams) for one in sampling_params):
        raise ClientError("sampling_params must be a SamplingParams or a list of them (one per "
                          f"prompt); got {type(sampling_params).__name__} (for a dict, pass "
                          "SamplingParams(**the_dict))", param="sampling_params")
    sampling_params = list(sampling_params)
    if len(sampling_params) != count:
        raise ClientError(f"got {len(sampling_params)} SamplingParams for {count} prompts",
                          param="sampling_params")
    return sampling_params
