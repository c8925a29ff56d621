"""StagingBuffers (persistent host/device buffers for the step inputs), run on CPU through its
copy path: values and shapes come back exact, buffers are allocated only while sizes grow,
and a step's views survive the next step (the ring) and are reused the step after."""

from __future__ import annotations

import numpy as np
import torch

from pagellm.worker.staging import StagingBuffers

CPU = torch.device("cpu")


def _step(staging: StagingBuffers, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    staging.begin_step()
    out = {name: staging.to_device(name, array) for name, array in arrays.items()}
    staging.end_step()
    return out


def test_values_shapes_and_dtypes_come_back_exact():
    staging = StagingBuffers(CPU, copies=True)
    table = np.arange(12, dtype=np.int32).reshape(3, 4)
    ids = np.array([5, 9, 2], dtype=np.int64)
    out = _step(staging, {"block_tables": table, "input_ids": ids})
    assert out["block_tables"].dtype == torch.int32 and out["block_tables"].shape == (3, 4)
    assert out["block_tables"].tolist() == table.tolist()
    assert out["input_ids"].tolist() == [5, 9, 2]
    assert out["input_ids"].data_ptr() != torch.from_numpy(ids).data_ptr()   # a real copy


def test_no_allocation_once_sizes_settle():
    staging = StagingBuffers(CPU, copies=True)
    rng = np.random.default_rng(0)
    for size in (5, 100, 300, 300):                    # growth in both slots: new buffers
        _step(staging, {"input_ids": rng.integers(0, 9, size)})
    settled = staging.num_allocations
    for _ in range(20):                                # any size up to the largest: none
        size = int(rng.integers(1, 300))
        array = rng.integers(0, 1000, size)
        assert _step(staging, {"input_ids": array})["input_ids"].tolist() == array.tolist()
    assert staging.num_allocations == settled
    assert settled == 2 * 4           # (host + device) x (slot 0: 8, 512; slot 1: 128, 512)


def test_a_steps_views_survive_the_next_step():
    staging = StagingBuffers(CPU, copies=True)
    first = _step(staging, {"positions": np.array([1, 2, 3])})["positions"]
    second = _step(staging, {"positions": np.array([7, 8, 9])})["positions"]
    assert first.tolist() == [1, 2, 3] and second.tolist() == [7, 8, 9]
    third = _step(staging, {"positions": np.array([4, 5, 6])})["positions"]
    assert third.data_ptr() == first.data_ptr()       # the ring came round


def test_cpu_default_uses_the_array_in_place():
    array = np.arange(4, dtype=np.int64)
    tensor = _step(StagingBuffers(CPU), {"input_ids": array})["input_ids"]
    assert tensor.data_ptr() == array.ctypes.data
