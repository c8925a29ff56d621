"""The executor <-> worker messages (``pagellm.distributed.worker_proc``): every call and reply
type round-trips through msgpack with every field, nested ones included (SchedulerOutput,
ModelRunnerOutput, their numpy arrays), set away from its default; samples are built from the
types, so a field added later is covered."""

from __future__ import annotations

import dataclasses
import typing

import msgspec
import numpy as np
import pytest

from pagellm.distributed.worker_proc import (ExecutorCall, WorkerReply, call_decoder, encoder,
                                             reply_decoder)
from pagellm.sampling_params import SamplingParams
from tests.unit.test_engine_messages import _params as sample_sampling_params
from tests.unit.test_engine_messages import sample_value as engine_sample_value

MI = msgspec.inspect


def sample(info: MI.Type, default=msgspec.NODEFAULT, seed: int = 1):
    """``test_engine_messages.sample_value`` plus dataclasses and numpy arrays."""
    if isinstance(info, MI.CustomType) and info.cls is np.ndarray:
        return np.arange(seed, seed + 6, dtype=np.int32).reshape(2, 3)
    if isinstance(info, MI.DataclassType) and info.cls is SamplingParams:
        return sample_sampling_params()         # valid values, every field set
    if isinstance(info, MI.DataclassType) and info.cls.__name__ != "StructuredOutputsParams":
        return info.cls(**{f.name: sample(f.type, f.default, seed + i)
                           for i, f in enumerate(info.fields)})
    if isinstance(info, MI.StructType):
        return info.cls(**{f.name: sample(f.type, f.default, seed + i)
                           for i, f in enumerate(info.fields)})
    if isinstance(info, MI.UnionType):
        return sample(next(t for t in info.types if not isinstance(t, MI.NoneType)), default,
                      seed)
    if isinstance(info, MI.ListType):
        return [sample(info.item_type, seed=seed + 1)]
    if isinstance(info, MI.DictType):
        return {sample(info.key_type, seed=seed): sample(info.value_type, seed=seed)}
    if isinstance(info, MI.TupleType):
        return tuple(sample(t, seed=seed + i) for i, t in enumerate(info.item_types))
    if isinstance(info, MI.VarTupleType):
        return (sample(info.item_type, seed=seed + 1),)
    return engine_sample_value(info, default, seed)


def assert_same(decoded, original, path: str = "message") -> None:
    """Field-for-field equality, arrays by value (``==`` on a dataclass holding arrays is
    ambiguous)."""
    assert type(decoded) is type(original) or (
        isinstance(original, tuple) and isinstance(decoded, (tuple, list))), path
    if isinstance(original, np.ndarray):
        assert decoded.dtype == original.dtype and np.array_equal(decoded, original), path
    elif isinstance(original, msgspec.Struct) or dataclasses.is_dataclass(original):
        names = (original.__struct_fields__ if isinstance(original, msgspec.Struct)
                 else [f.name for f in dataclasses.fields(original)])
        for name in names:
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


def _leaves_at_default(message) -> list[str]:
    """Fields of ``message`` (top level) still equal to their declared default."""
    return [f.name for f in MI.type_info(type(message)).fields
            if f.default is not msgspec.NODEFAULT and getattr(message, f.name) == f.default]


@pytest.mark.parametrize("message_type", typing.get_args(ExecutorCall) + typing.get_args(WorkerReply),
                         ids=lambda t: t.__name__)
def test_every_worker_message_roundtrips_with_every_field_set(message_type):
    message = sample(MI.type_info(message_type))
    assert _leaves_at_default(message) == []
    decoder = call_decoder if message_type in typing.get_args(ExecutorCall) else reply_decoder
    assert_same(decoder.decode(encoder.encode(message)), message)


def test_a_dropped_field_would_show():
    message = sample(MI.type_info(typing.get_args(WorkerReply)[0]))
    changed = msgspec.structs.replace(message, rank=message.rank + 1)
    with pytest.raises(AssertionError, match="message.rank"):
        assert_same(reply_decoder.decode(encoder.encode(changed)), message)
