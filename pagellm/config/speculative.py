"""``speculative_config``: speculative decoding settings, vLLM's current keys plus the older
engine arguments the tuning guides use (accepted as aliases, with a deprecation warning).

Methods: ``{"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": n,
"prompt_lookup_min": m}`` (prompt lookup, ``pagellm.worker.ngram_proposer``); a draft model
``{"model": DRAFT, "num_speculative_tokens": k}`` (``"method": "draft_model"`` implied,
``pagellm.worker.draft_proposer``); EAGLE heads ``{"method": "eagle" | "eagle3", "model":
HEAD, "num_speculative_tokens": k}`` (``pagellm.worker.eagle_proposer``). Whether DRAFT /
HEAD exist and fit the target model is checked before anything loads
(``pagellm.models.spec_models.check_speculative_model``). Every method takes the adaptive-k
keys of ``pagellm.config.spec_adaptive`` ("adaptive", "adaptive_ewma_decay",
"draft_token_cost", "max_num_draft_tokens_per_step").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pagellm.config.spec_adaptive import ADAPTIVE_KEYS, adaptive_settings
from pagellm.errors import ClientError

logger = logging.getLogger(__name__)

SPEC_KEYS = ("method", "model", "num_speculative_tokens", "prompt_lookup_max",
             "prompt_lookup_min") + ADAPTIVE_KEYS
METHODS = ("ngram", "eagle", "eagle3", "draft_model")
MODEL_METHODS = ("eagle", "eagle3", "draft_model")
"""The methods whose proposer is a model (``speculative_config["model"]`` names it)."""
NGRAM_DEFAULT_LOOKUP = 5
"""vLLM's n-gram window when neither prompt_lookup_min nor prompt_lookup_max is given."""


@dataclass(frozen=True)
class SpeculativeConfig:
    speculative_config: dict | None = None
    """Speculative decoding, vLLM's keys: {"method": "ngram", "num_speculative_tokens": k,
    "prompt_lookup_max": n, "prompt_lookup_min": m} (prompt lookup); {"model": DRAFT,
    "num_speculative_tokens": k} (a draft model with the target's vocabulary); {"method":
    "eagle"|"eagle3", "model": HEAD, "num_speculative_tokens": k} (an EAGLE head in its
    Hugging Face format)."""
    speculative_model: str | None = None
    """Deprecated alias: "[ngram]" = speculative_config {"method": "ngram"}."""
    num_speculative_tokens: int | None = None
    """Deprecated alias of speculative_config's "num_speculative_tokens"."""
    ngram_prompt_lookup_max: int | None = None
    """Deprecated alias of speculative_config's "prompt_lookup_max"."""
    ngram_prompt_lookup_min: int | None = None
    """Deprecated alias of speculative_config's "prompt_lookup_min"."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_resolved", _resolve(self))

    @property
    def enabled(self) -> bool:
        """Speculative decoding is on."""
        return self._resolved is not None

    @property
    def method(self) -> str | None:
        return None if self._resolved is None else self._resolved["method"]

    @property
    def num_spec_tokens(self) -> int:
        """k: draft tokens proposed per request per step (0 when off)."""
        return 0 if self._resolved is None else self._resolved["num_speculative_tokens"]

    @property
    def model(self) -> str | None:
        """The draft model or EAGLE head path (None for n-gram or when off)."""
        return None if self._resolved is None else self._resolved.get("model")

    @property
    def uses_model(self) -> bool:
        """A draft model or an EAGLE head proposes (it has a KV cache of its own)."""
        return self.method in MODEL_METHODS

    @property
    def num_lookahead_tokens(self) -> int:
        """Slots allocated past each scheduled step for the proposer's own KV writes: k for
        a draft model or EAGLE head (it writes its drafts' K/V before the next step is
        scheduled), 0 for n-gram and when off (vLLM's rule)."""
        return self.num_spec_tokens if self.uses_model else 0

    @property
    def adaptive(self) -> dict | None:
        """Adaptive k settings {"adaptive", "adaptive_ewma_decay", "draft_token_cost",
        "max_num_draft_tokens_per_step"} (``pagellm.config.spec_adaptive``); None when
        speculation is off."""
        return None if self._resolved is None else self._resolved["adaptive"]

    @property
    def lookup_range(self) -> tuple[int, int]:
        """(prompt_lookup_min, prompt_lookup_max): the n-gram lengths tried."""
        return self._resolved["prompt_lookup_min"], self._resolved["prompt_lookup_max"]


def _resolve(config: SpeculativeConfig) -> dict | None:
    """The effective settings {"method", "num_speculative_tokens", "prompt_lookup_max",
    "prompt_lookup_min"} (n-gram) or {"method", "num_speculative_tokens", "model"}, or None
    when speculation is off. ClientError for a bad key or value."""
    if config.speculative_config is not None and not isinstance(config.speculative_config, dict):
        raise ClientError(
            f"speculative_config must be a dict such as {{\"method\": \"ngram\", "
            f"\"num_speculative_tokens\": 4}} (a JSON object on the command line), got "
            f"{config.speculative_config!r}", param="speculative_config")
    spec = dict(config.speculative_config or {})
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ClientError(f"speculative_config: unknown key(s) {unknown}; allowed: "
                          f"{list(SPEC_KEYS)}", param="speculative_config")
    _merge_aliases(config, spec)
    if not spec:
        return None
    method = spec.get("method")
    model = spec.get("model")
    if model == "[ngram]":
        del spec["model"]
        method, model = method or "ngram", None
    if method is None and model is not None:
        method = "draft_model"
    if method is None:
        raise ClientError("speculative_config needs \"method\" (e.g. \"ngram\") or \"model\"",
                          param="speculative_config")
    if method not in METHODS:
        raise ClientError(f"speculative_config: method must be one of {list(METHODS)}, got "
                          f"{method!r}", param="speculative_config")
    if method != "ngram":
        return {**_model_settings(method, spec), "adaptive": adaptive_settings(spec)}
    return {**_ngram_settings(spec), "adaptive": adaptive_settings(spec)}


def _merge_aliases(config: SpeculativeConfig, spec: dict) -> None:
    """Fill ``spec`` from the deprecated engine arguments (a key given both ways must agree)."""
    aliases = (("speculative_model", "model"), ("num_speculative_tokens", "num_speculative_tokens"),
               ("ngram_prompt_lookup_max", "prompt_lookup_max"),
               ("ngram_prompt_lookup_min", "prompt_lookup_min"))
    for alias, key in aliases:
        value = config.__dict__[alias]
        if value is None:
            continue
        logger.warning("%s is deprecated (as in vLLM); use speculative_config={%r: %r}",
                       alias, key, value)
        if key in spec and spec[key] != value:
            raise ClientError(f"{alias}={value!r} contradicts speculative_config's {key}="
                              f"{spec[key]!r}; give one", param=alias)
        spec[key] = value


def _num_spec_tokens(method: str, spec: dict) -> int:
    k = spec.get("num_speculative_tokens")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ClientError("speculative_config: num_speculative_tokens must be an integer >= 1 "
                          f"for method \"{method}\", got {k!r}", param="speculative_config")
    return k


def _model_settings(method: str, spec: dict) -> dict:
    """A draft model's or EAGLE head's settings: "model" (a local path) is required; the
    n-gram keys do not apply."""
    model = spec.get("model")
    if not isinstance(model, str) or not model:
        raise ClientError(f"speculative_config: method \"{method}\" needs \"model\": the path "
                          "of the draft model or EAGLE head", param="speculative_config")
    extra = sorted(key for key in ("prompt_lookup_max", "prompt_lookup_min") if key in spec)
    if extra:
        raise ClientError(f"speculative_config: {extra} only apply to method \"ngram\", not "
                          f"\"{method}\"", param="speculative_config")
    return {"method": method, "num_speculative_tokens": _num_spec_tokens(method, spec),
            "model": model}


def _ngram_settings(spec: dict) -> dict:
    if spec.get("model") is not None:
        raise ClientError("speculative_config: method \"ngram\" takes no \"model\"",
                          param="speculative_config")
    k = _num_spec_tokens("ngram", spec)
    low, high = spec.get("prompt_lookup_min"), spec.get("prompt_lookup_max")
    if low is None and high is None:
        low = high = NGRAM_DEFAULT_LOOKUP
    low = high if low is None else low
    high = low if high is None else high
    for name, value in (("prompt_lookup_min", low), ("prompt_lookup_max", high)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ClientError(f"speculative_config: {name} must be an integer >= 1, got "
                              f"{value!r}", param="speculative_config")
    if low > high:
        raise ClientError(f"speculative_config: prompt_lookup_min={low} exceeds "
                          f"prompt_lookup_max={high}", param="speculative_config")
    return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": high,
            "prompt_lookup_min": low}
