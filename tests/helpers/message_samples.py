"""Samples of the wire messages with every field set away from its default (built from the
types, so a field added later is covered), and a field-for-field comparison that handles
numpy arrays. Shared by the engine-message and worker-message round-trip tests."""

from __future__ import annotations

import dataclasses

import msgspec
import numpy as np

from pagellm.lora.request import LoRARequest
from pagellm.sampling_params import SamplingParams, StructuredOutputsParams

MI = msgspec.inspect


def sample_params() -> SamplingParams:
    """Valid SamplingParams with every field away from its default."""
    params = SamplingParams(n=2, presence_penalty=0.5, frequency_penalty=-0.5,
                            repetition_penalty=1.1, temperature=0.7, top_p=0.9, top_k=5, min_p=0.1,
                            seed=2**62, stop=["\n\n", "END"], stop_token_ids=[7, 9],
                            ignore_eos=True, max_tokens=None, min_tokens=2, logprobs=3,
                            prompt_logprobs=1, detokenize=False, skip_special_tokens=False,
                            spaces_between_special_tokens=False, include_stop_str_in_output=True,
                            logit_bias={"5": -2.5}, output_kind="delta",
                            structured_outputs=StructuredOutputsParams(
                                json={"type": "object"}, disable_any_whitespace=True))
    params.all_stop_token_ids = {0, 2}
    return params


def sample(info: MI.Type, default=msgspec.NODEFAULT, seed: int = 1):
    """A value of the msgspec type ``info`` that differs from ``default`` (optional types get
    a value, never None; containers one element). Raises TypeError for a type it cannot make."""
    if isinstance(info, MI.BoolType):
        return not default if isinstance(default, bool) else True
    if isinstance(info, MI.IntType):
        return 1000 + seed
    if isinstance(info, MI.FloatType):
        return 0.5 + seed
    if isinstance(info, MI.StrType):
        return f"s{seed}"
    if isinstance(info, MI.LiteralType):
        return next(v for v in info.values if v != default)
    if isinstance(info, MI.CustomType) and info.cls is np.ndarray:
        return np.arange(seed, seed + 6, dtype=np.int32).reshape(2, 3)
    if isinstance(info, MI.DataclassType) and info.cls is SamplingParams:
        return sample_params()
    if isinstance(info, MI.DataclassType) and info.cls is LoRARequest:
        return LoRARequest(f"a{seed}", seed, f"/adapters/{seed}", "base")
    if isinstance(info, MI.DataclassType) and info.cls is StructuredOutputsParams:
        # exactly one constraint may be set; the options away from their defaults
        return StructuredOutputsParams(regex=f"s{seed}", disable_any_whitespace=True,
                                       disable_additional_properties=True,
                                       whitespace_pattern="")
    if isinstance(info, (MI.StructType, MI.DataclassType)):
        return sample_struct(info.cls, seed)
    if isinstance(info, MI.UnionType):
        return sample(next(t for t in info.types if not isinstance(t, MI.NoneType)), default, seed)
    if isinstance(info, MI.ListType):
        return [sample(info.item_type, seed=seed + 1)]
    if isinstance(info, (MI.SetType, MI.FrozenSetType)):
        return {sample(info.item_type, seed=seed + 1)}
    if isinstance(info, MI.TupleType):
        return tuple(sample(t, seed=seed + i) for i, t in enumerate(info.item_types))
    if isinstance(info, MI.VarTupleType):
        return (sample(info.item_type, seed=seed + 1),)
    if isinstance(info, MI.DictType):
        return {sample(info.key_type, seed=seed): sample(info.value_type, seed=seed)}
    raise TypeError(f"no sample for {info}: extend sample")


def sample_struct(cls: type, seed: int = 1):
    """An instance of the Struct or dataclass ``cls`` with every field set away from its
    default (nested too)."""
    fields = MI.type_info(cls).fields
    return cls(**{f.name: sample(f.type, f.default, seed + i) for i, f in enumerate(fields)})


def field_names(value) -> list[str]:
    if isinstance(value, msgspec.Struct):
        return list(value.__struct_fields__)
    return [f.name for f in dataclasses.fields(value)]


def leaves_at_default(message) -> list[str]:
    """Fields of ``message`` (top level) still equal to their declared default: a field the
    sample leaves at its default could be dropped on the wire unnoticed."""
    at_default = []
    for f in MI.type_info(type(message)).fields:
        value = getattr(message, f.name)
        if f.default is not msgspec.NODEFAULT and not isinstance(value, np.ndarray) \
                and value == f.default:
            at_default.append(f.name)
        elif f.default_factory is not msgspec.NODEFAULT and value == f.default_factory():
            at_default.append(f.name)
    return at_default


def assert_same(decoded, original, path: str = "message") -> None:
    """Field-for-field equality, arrays by dtype and value (``==`` on a Struct holding
    arrays is ambiguous)."""
    assert type(decoded) is type(original) or (
        isinstance(original, tuple) and isinstance(decoded, (tuple, list))), path
    if isinstance(original, np.ndarray):
        assert decoded.dtype == original.dtype and np.array_equal(decoded, original), path
    elif isinstance(original, msgspec.Struct) or dataclasses.is_dataclass(original):
        for name in field_names(original):
            assert_same(getattr(decoded, name), getattr(original, name), f"{path}.{name}")
    elif isinstance(original, (list, tuple)):
        assert len(decoded) == len(original), path
        for index, (a, b) in enumerate(zip(decoded, original)):
            assert_same(a, b, f"{path}[{index}]")
    elif isinstance(original, dict):
        assert decoded.keys() == original.keys(), path
        for key in original:
            assert_same(decoded[key], original[key], f"{path}[{key!r}]")
    else:
        assert decoded == original, path
